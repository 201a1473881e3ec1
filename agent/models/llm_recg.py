"""LLM-RecG (Li, Wang, Sundaram, Liu; RecSys 2025; ../shared/METHODS.md, "LLM-RecG"): zero-shot
cross-domain sequential recommendation, on a SASRec or GRU4Rec backbone (``backbone``).

Item level. Frozen text embedding (our MiniLM vectors for LLM2Vec, PCA-whitened as in
sasrec-text) -> LayerNorm -> a projection and an "alignment" projection, both Linear(d, hidden),
merged by Linear(2 hidden, hidden). No per-item parameter: an item of a domain never seen in
training is encoded from its text by the SAME trained layers. (The reference code re-creates
the projections randomly when it loads the target domain; here the one encoder built at
``build`` serves every domain, and a checkpoint restores it.)

Training (phase 1): BPR (``loss``; any of agent/models/ranking.py's) with ``num_negatives``
(5) same-domain negatives per position on the source domains' sequences
(``source_domains``; items of other domains are dropped from the histories) + the
generalization loss ``losses.generalization_loss`` on ``gen_items`` items
sampled per domain from ALL the catalog's domains, the target's included (its item text is
available in the zero-shot setting, its interactions are not).

Sequence level (phase 2, ``sequence_level``). With the phase-1 network fixed: k-means
(``clusters``) over the source users' representations (each train row's last state) gives
centroids s_i; a user's representation y attends to them, a_i = softmax_i(cos(y, s_i) / tau),
and g = W_f [y ; sum_i a_i s_i] is the user vector that scores items. The paper does not say
how W_f is trained (nor is it in the public code); we train W_f alone for ``fusion_epochs``
with the same ranking loss on the source rows, starting from W_f = [I 0] (g = y, the phase-1
model), and keep it only if the valid score improves on that start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.distributed import negative_seed
from agent.models.gru4rec import GRU4Rec
from agent.models.losses import generalization_loss
from agent.models.method_base import MethodNet, MethodRecommender
from agent.models.method_training import TrainRows, train_rows
from agent.models.sasrec import SASRec
from agent.models.sasrec_text import TextItemEncoder
from agent.models.training import make_ranking_loss, next_item_loss

log = logging.getLogger(__name__)


class MergedProjection(nn.Module):
    """LayerNorm -> [projection ; alignment projection] -> Linear merge."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.projection = nn.Linear(dim, hidden)
        self.alignment = nn.Linear(dim, hidden)
        self.merge = nn.Linear(2 * hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        out: Tensor = self.merge(torch.cat([self.projection(x), self.alignment(x)], dim=-1))
        return out


class RecGItemEncoder(TextItemEncoder):
    """``TextItemEncoder`` (frozen table, fixed whitening) with the merged-projection adapter."""

    def __init__(self, table: np.ndarray, hidden: int, *, whiten: bool = True) -> None:
        super().__init__(table, hidden, adapter="linear", whiten=whiten)
        self.adapter = nn.Sequential(MergedProjection(self.get_buffer("proj").shape[1], hidden))


class RecGNet(MethodNet):
    def __init__(self, table: np.ndarray, config: dict[str, Any]) -> None:
        super().__init__()
        net, method = config["network"], config["method"]
        hidden = int(net["hidden"])
        self.max_len = int(net["max_len"])
        items = RecGItemEncoder(table, hidden, whiten=bool(config["text"]["whiten"]))
        self.backbone: SASRec | GRU4Rec
        if method["backbone"] == "gru4rec":
            self.backbone = GRU4Rec(
                items, max_len=self.max_len, layers=method["gru_layers"], dropout=net["dropout"]
            )
        else:
            sizes = {k: net[k] for k in ("max_len", "layers", "heads", "dropout")}
            self.backbone = SASRec(items, **sizes)
        self.fusion = nn.Linear(2 * hidden, hidden, bias=False)
        with torch.no_grad():  # W_f = [I 0]: g = y until the fusion phase trains it
            self.fusion.weight.zero_()
            self.fusion.weight[:, :hidden].copy_(torch.eye(hidden))
        self.register_buffer("centroids", torch.zeros(int(method["clusters"]), hidden))
        self.register_buffer("fused", torch.tensor(False))  # saved: a checkpoint knows
        self.attention_tau = float(method["attention_tau"])

    def fuse(self, y: Tensor) -> Tensor:
        """g = W_f [y ; sum_i a_i s_i], a = softmax(cos(y, s) / tau); y itself before phase 2."""
        if not bool(self.get_buffer("fused")):
            return y
        s = self.get_buffer("centroids")
        a = torch.softmax(
            F.normalize(y, dim=-1) @ F.normalize(s, dim=-1).T / self.attention_tau, -1
        )
        out: Tensor = self.fusion(torch.cat([y, a @ s], dim=-1))
        return out

    def user_vectors(self, ids: Tensor) -> Tensor:
        return self.fuse(self.backbone.last_hidden(ids))

    def item_vectors(self) -> Tensor:
        return self.backbone.items.all_items()


class LLMRecGRecommender(MethodRecommender):
    name = "llm-recg"
    uses_train_loss = False  # methods.llm_recg.loss

    def method_config(self) -> dict[str, Any]:
        m = self.methods.llm_recg
        unknown = set(m.source_domains) - set(self.data.catalog.domains)
        if unknown:
            raise ValueError(f"methods.llm_recg.source_domains: unknown domains {sorted(unknown)}")
        keys = ("backbone", "gru_layers", "clusters", "attention_tau", "source_domains")
        return m.model_dump(include=set(keys))

    def make_net(self, config: dict[str, Any]) -> RecGNet:
        return RecGNet(self.table, config)

    def load(self, path: Path) -> None:
        """Load a checkpoint; with ``sequence_level = false`` score without the phase-2 fusion.

        Phase 2 trains W_f alone with the phase-1 network frozen, so a fused checkpoint holds
        the phase-1 model unchanged: switching fusion off at load gives the "-seq" ablation
        of the same training run, with no second run.
        """
        super().load(path)
        net = self.net
        assert isinstance(net, RecGNet)
        if not self.methods.llm_recg.sequence_level and bool(net.get_buffer("fused")):
            net.get_buffer("fused").fill_(False)
            log.info("llm-recg: sequence_level=false: %s scored without the cluster fusion", path)

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        m = self.methods.llm_recg
        net = self.net
        assert isinstance(net, RecGNet)
        rows = train_rows(self.data, net.max_len, domains=m.source_domains or None)
        gen = torch.Generator(device=self.device).manual_seed(negative_seed(self.settings.seed))
        loss = make_ranking_loss(
            self,
            rows.inputs,
            rows.targets,
            name=m.loss,
            num_negatives=m.num_negatives,
            generator=gen,
        )
        pools = domain_pools(self.data, self.device)
        backbone, encoder = net.backbone, net.backbone.items

        def step(x: Tensor, y: Tensor, _rows: Tensor) -> dict[str, Tensor]:
            rec, _ = next_item_loss(backbone, x, y, loss, net.fuse)
            parts = {"rec": rec}
            if m.alpha > 0 and not bool(net.get_buffer("fused")):
                ids, doms = sample_domains(pools, m.gen_items, gen)
                parts["gen"] = generalization_loss(
                    encoder(ids),
                    doms,
                    alpha=m.alpha,
                    beta=m.beta,
                    tau=m.gen_tau,
                    intra=m.intra,
                    inter=m.inter,
                )
            parts["loss"] = rec + parts.get("gen", rec.new_zeros(()))
            return parts

        report = self.train_net(rows, step, valid_fn, out)
        if not m.sequence_level or m.fusion_epochs <= 0:
            return report
        self.fit_centroids(rows)
        frozen = [p for p in net.parameters() if p.requires_grad and p is not net.fusion.weight]
        for p in frozen:
            p.requires_grad_(False)
        try:
            fusion = self.train_net(
                rows,
                step,
                valid_fn,
                out,
                params=net.fusion.parameters(),
                epochs=m.fusion_epochs,
                eval_start=True,
                label="fusion",
            )
        finally:
            for p in frozen:
                p.requires_grad_(True)
        for entry in fusion.history:
            entry["phase"] = 2.0
        report.history += fusion.history
        report.epochs += fusion.epochs
        report.seconds += fusion.seconds
        if fusion.best_valid_ndcg10 >= report.best_valid_ndcg10:
            report.best_valid_ndcg10 = fusion.best_valid_ndcg10
        return report

    @torch.no_grad()
    def fit_centroids(self, rows: TrainRows) -> None:
        """k-means over the source users' representations (each row's last state)."""
        from sklearn.cluster import KMeans

        net = self.net
        assert isinstance(net, RecGNet)
        net.eval()
        ids = torch.from_numpy(rows.targets)  # the row's items after the first: all but one
        reps = (
            torch.cat(
                [
                    net.backbone.last_hidden(ids[s : s + 512].to(self.device))
                    for s in range(0, len(ids), 512)
                ]
            )
            .cpu()
            .numpy()
        )
        k = min(len(net.get_buffer("centroids")), len(reps))
        fitted = KMeans(n_clusters=k, random_state=self.settings.seed, n_init=3).fit(reps)
        centroids = torch.zeros_like(net.get_buffer("centroids"))
        centroids[:k] = torch.from_numpy(fitted.cluster_centers_).to(centroids)
        net.get_buffer("centroids").copy_(centroids)
        net.get_buffer("fused").fill_(True)
        log.info("llm-recg: k-means over %d source users -> %d centroids", len(reps), k)


def domain_pools(data: Dataset, device: torch.device) -> list[Tensor]:
    """Dense item ids of each catalog domain."""
    return [torch.from_numpy(data.catalog.domain_items(d)).to(device) for d in data.catalog.domains]


def sample_domains(
    pools: list[Tensor], per_domain: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Up to ``per_domain`` distinct items of every domain: (ids, domain labels)."""
    ids, labels = [], []
    for d, pool in enumerate(pools):
        pick = pool[torch.randperm(len(pool), generator=gen, device=pool.device)[:per_domain]]
        ids.append(pick)
        labels.append(torch.full_like(pick, d))
    return torch.cat(ids), torch.cat(labels)
