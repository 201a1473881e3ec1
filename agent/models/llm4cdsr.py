"""LLM4CDSR (Liu et al., SIGIR 2025; ../shared/METHODS.md, "LLM4CDSR") as a trainable model.

Item level. The frozen semantic item table is our MiniLM item vectors (the item index of
issue 1) instead of ada-002. The paper reduces them by PCA (1024-d jointly for the mixed
thread, 128-d per domain for the domain threads); MiniLM has only 384 dimensions, so every
thread reads the PCA-whitened table with all components kept (``TextItemEncoder``). Mixed
thread adapter: ``train.text_adapter`` (``linear`` is the paper's Linear -> Linear with no
nonlinearity, ``mlp`` our default). Domain threads: their own trainable linear map
(LayerNorm, Linear(d, hidden)), where the paper uses a frozen per-domain PCA-128 table: a
learned linear map contains that projection as a special case.

Tri-thread SASRec (``methods.llm4cdsr.threads``). Three SASRec backbones (causal mask ON,
unlike the reference code): the mixed sequence, the domain-A items alone, the domain-B items
alone. Training: ``train.loss`` (by default BCE with one sampled negative per position, as in
the paper); at each mixed position whose target is of domain d, the d-thread's logit (its
state after the user's last d item so far, scored against its own item vectors) is added to
the mixed thread's logit; a target that is the user's first d item has no d-history and gets
the mixed logit alone.
Prediction: mixed-thread score + the candidate's domain-thread score.

Contrastive regularization (``alpha``): per user of the batch with items of both domains, one
random A item and one random B item, adapted by the mixed thread's adapter, then
``losses.contrastive_regularization`` (tau = 1).

Profile alignment (``beta``): a user's cached hierarchical profile (issue 2; the profile text
embedded with the item embedder) through a user adapter Linear(d, d/2) -> Linear(d/2, hidden),
aligned with the mixed thread's last-position state by the same contrastive loss. Only train
users whose profile is in the profile cache (profiled with ``--split train`` on the same
history) take part; the others have none and none is made up. The count is logged, kept in
``profile_users`` and in every history entry of the fit report.

Loss = rec + alpha * reg + beta * profile (paper: alpha, beta in {0.1, 1}).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.distributed import negative_seed
from agent.models.losses import contrastive_regularization
from agent.models.method_base import MethodNet, MethodRecommender
from agent.models.method_training import TrainRows, train_rows
from agent.models.ranking import RankingLoss
from agent.models.sasrec import SASRec
from agent.models.sasrec_text import TextItemEncoder
from agent.models.training import make_ranking_loss

log = logging.getLogger(__name__)


def domain_subsequence(ids: Tensor, in_domain: Tensor) -> tuple[Tensor, Tensor]:
    """The items of one domain alone, and where each position's latest one went.

    ``ids`` (B, N) left-padded, ``in_domain`` (B, N) bool -> ``sub`` (B, N): the marked ids in
    order, left-padded; ``where`` (B, N): the column of ``sub`` that holds the latest marked
    item at or before each position, -1 where there is none yet.
    """
    n = ids.shape[1]
    order = torch.sort(in_domain.long(), dim=1, stable=True).indices  # unmarked first
    sub = torch.where(in_domain, ids, torch.zeros_like(ids)).gather(1, order)
    count = in_domain.long().cumsum(1)
    where = n - count[:, -1:] + count - 1
    return sub, torch.where(count > 0, where, torch.full_like(where, -1))


class TriThreadNet(MethodNet):
    def __init__(self, table: np.ndarray, domain_of: np.ndarray, config: dict[str, Any]) -> None:
        super().__init__()
        net, text, method = config["network"], config["text"], config["method"]
        hidden = int(net["hidden"])
        self.max_len = int(net["max_len"])
        sizes = {k: net[k] for k in ("max_len", "layers", "heads", "dropout")}

        def encoder(adapter: str) -> TextItemEncoder:
            return TextItemEncoder(
                table, hidden, adapter=adapter, width=text["width"], whiten=text["whiten"]
            )

        self.mixed = SASRec(encoder(text["adapter"]), **sizes)
        n_domains = int(domain_of.max()) + 1
        threads = [SASRec(encoder("linear"), **sizes) for _ in range(n_domains)]
        self.threads = nn.ModuleList(threads if method["threads"] else [])
        self.register_buffer("domain_of", torch.from_numpy(np.maximum(domain_of, 0)), False)
        self.profile_adapter: nn.Module | None = None
        if method["profile"]:
            d = int(text["dim"])
            self.profile_adapter = nn.Sequential(nn.Linear(d, d // 2), nn.Linear(d // 2, hidden))

    def thread(self, d: int) -> SASRec:
        thread = self.threads[d]
        assert isinstance(thread, SASRec)
        return thread

    def thread_states(self, ids: Tensor, d: int) -> tuple[Tensor, Tensor]:
        """Domain-d thread over the d items of ``ids``: (states (B, M, H), where (B, N))."""
        in_d = (ids > 0) & (self.get_buffer("domain_of")[ids] == d)
        sub, where = domain_subsequence(ids, in_d)
        first = int(sub.shape[1] - in_d.sum(1).max().clamp(min=1))  # trim shared padding
        states: Tensor = self.thread(d)(sub[:, first:])
        return states, torch.where(where >= 0, where - first, where)

    def user_vectors(self, ids: Tensor) -> Tensor:
        parts = [self.mixed.last_hidden(ids)]
        for d in range(len(self.threads)):
            states, _ = self.thread_states(ids, d)
            parts.append(states[:, -1, :])  # zeros for a user with no d item
        return torch.cat(parts, dim=-1)

    def item_vectors(self) -> Tensor:
        parts = [self.mixed.items.all_items()]
        dom = self.get_buffer("domain_of")
        for d in range(len(self.threads)):
            own = (dom == d).unsqueeze(-1).to(parts[0].dtype)
            own[0] = 0.0
            parts.append(self.thread(d).items.all_items() * own)
        return torch.cat(parts, dim=-1)

    def position_users(self, x: Tensor, y: Tensor, hidden: Tensor) -> Tensor:
        """(P, U) user vectors at the real positions of ``y``: the mixed state, then each
        domain thread's state (after the user's latest d item so far) at the positions whose
        target is of domain d, zeros elsewhere. Against ``item_vectors`` (whose domain-d part
        is zero off domain d) this scores mixed + the target's domain thread, as the paper."""
        real = y > 0
        parts = [hidden[real]]
        target_dom = self.get_buffer("domain_of")[y[real]]
        for d in range(len(self.threads)):
            states, where = self.thread_states(x, d)
            at = where[real]
            use = (at >= 0) & (target_dom == d)
            rows = torch.nonzero(real)[:, 0]
            picked = states[rows, at.clamp(min=0)]  # (P, H)
            parts.append(picked * use.unsqueeze(-1).to(picked.dtype))
        return torch.cat(parts, dim=-1)

    def items_of(self, ids: Tensor, mixed: Tensor | None = None) -> Tensor:
        """(n, U) item vectors of flat ``ids`` (``item_vectors``' rows); ``mixed``: the mixed
        thread's vectors of ``ids`` if the caller has them."""
        parts = [self.mixed.items(ids) if mixed is None else mixed]
        dom = self.get_buffer("domain_of")[ids]
        for d in range(len(self.threads)):
            own = ((dom == d) & (ids > 0)).unsqueeze(-1).to(parts[0].dtype)
            parts.append(self.thread(d).items(ids) * own)
        return torch.cat(parts, dim=-1)

    def rec_logits(self, x: Tensor, y: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(positive logits (P,), negative logits (P, K), mixed hidden states (B, N, H)) at
        the real positions, for the negatives ``neg`` (B, N, K): mixed thread + the target's
        domain thread."""
        real = y > 0
        pos_ids, neg_ids = y[real], neg[real]
        scored = torch.cat([pos_ids, neg_ids.flatten()])
        # one mixed-encoder call for inputs and scored items (the text adapter runs once per item)
        mixed = self.mixed.items(torch.cat([x.flatten(), scored]))
        hidden = self.mixed(x, mixed[: x.numel()].view(*x.shape, -1))
        users = self.position_users(x, y, hidden)
        vectors = self.items_of(scored, mixed[x.numel() :])
        pos = (users * vectors[: len(pos_ids)]).sum(-1)
        neg_logit = (vectors[len(pos_ids) :].view(*neg_ids.shape, -1) @ users.unsqueeze(-1))[..., 0]
        return pos, neg_logit, hidden

    def rec_loss(self, x: Tensor, y: Tensor, loss: RankingLoss) -> tuple[Tensor, Tensor]:
        """(the ranking loss at the real positions, mixed hidden states (B, N, H))."""
        if loss.full or loss.shared:
            hidden = self.mixed(x)
            users = self.position_users(x, y, hidden)
            return loss(users, y, self.items_of, self.item_vectors), hidden
        negatives = loss.negatives(y)
        pos, neg, hidden = self.rec_logits(x, y, negatives)
        real = y > 0
        return loss.from_logits(pos, neg, y[real], negatives[real]), hidden


class LLM4CDSRRecommender(MethodRecommender):
    name = "llm4cdsr"

    def __init__(
        self, data: Dataset, settings: Settings, *, table: np.ndarray | None = None
    ) -> None:
        super().__init__(data, settings, table=table)
        self.profile_users = 0

    def method_config(self) -> dict[str, Any]:
        m = self.methods.llm4cdsr
        return {"threads": m.threads, "profile": m.beta > 0}

    def make_net(self, config: dict[str, Any]) -> TriThreadNet:
        return TriThreadNet(self.table, self.data.catalog.domain_of, config)

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        m = self.methods.llm4cdsr
        net = self.net
        assert isinstance(net, TriThreadNet)
        rows = train_rows(self.data, net.max_len)
        profiles = self._profiles(rows) if net.profile_adapter is not None else None
        domain_of = net.get_buffer("domain_of")
        gen = torch.Generator(device=self.device).manual_seed(negative_seed(self.settings.seed))
        loss = make_ranking_loss(self, rows.inputs, rows.targets, generator=gen)
        pair = len(self.data.catalog.domains) >= 2 and m.alpha > 0

        def step(x: Tensor, y: Tensor, r: Tensor) -> dict[str, Tensor]:
            rec, hidden = net.rec_loss(x, y, loss)
            parts = {"rec": rec}
            if pair:  # one random A item and one random B item per user with both
                seq = torch.cat([x[:, :1], y], dim=1)
                dom = torch.where(seq > 0, domain_of[seq], -1)
                noise = torch.rand(seq.shape, generator=gen, device=seq.device)
                picks = [torch.where(dom == d, noise, -1.0).max(1) for d in (0, 1)]
                both = (picks[0].values >= 0) & (picks[1].values >= 0)
                if int(both.sum()) >= 2:  # a pair alone has nothing to be contrasted with
                    a, b = (seq[both].gather(1, p.indices[both, None])[:, 0] for p in picks)
                    parts["reg"] = contrastive_regularization(
                        net.mixed.items(a), net.mixed.items(b), m.tau
                    )
            if profiles is not None and net.profile_adapter is not None:
                index = profiles[0][r.to(self.device)]
                has = index >= 0
                if int(has.sum()) >= 2:
                    user = net.profile_adapter(profiles[1][index[has]])
                    parts["profile"] = contrastive_regularization(user, hidden[has, -1], m.tau)
            weights = {"rec": 1.0, "reg": m.alpha, "profile": m.beta}
            parts["loss"] = sum((weights[n] * v for n, v in parts.items()), x.new_zeros(()).float())
            return parts

        report = self.train_net(rows, step, valid_fn, out)
        for entry in report.history:
            entry["profile_users"] = float(self.profile_users)
        return report

    def _profiles(self, rows: TrainRows) -> tuple[Tensor, Tensor] | None:
        """(profile row per training row (-1: none), profile vectors) for the train users
        whose profile is cached; None when none is."""
        vectors, found = cached_profile_vectors(self.data, self.settings, rows.users)
        self.profile_users = int((found >= 0).sum())
        log.info(
            "llm4cdsr: %d of %d train users have a cached profile (beta term on those only)",
            self.profile_users,
            len(rows.users),
        )
        if self.profile_users < 2:
            return None
        per_row = torch.from_numpy(found[rows.user]).to(self.device)
        return per_row, torch.from_numpy(vectors).to(self.device)


def cached_profile_vectors(
    data: Dataset, settings: Settings, users: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (F, d), row of ``vectors`` per user or -1) for the ``users`` that have a
    cross-domain profile in the profile cache built on their train history (latest wins).

    Reads the cache's sqlite table directly (``agent.profiles.cache.ProfileCache`` looks
    profiles up by their full key, which needs the LLM settings that built them).
    """
    found = np.full(len(users), -1, dtype=np.int64)
    path = Path(settings.profile_cache_dir) / "profiles.sqlite"
    if not path.is_file() or not users:
        return np.zeros((0, 1), dtype=np.float32), found
    from agent.profiles.schema import ProfileTree

    position = {u: i for i, u in enumerate(users)}
    lengths = {u.user_id: len(u.history) for u in data.iter_split("train")}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT user_id, tree FROM profiles ORDER BY created").fetchall()
    texts: dict[str, str] = {}
    for user_id, tree_json in rows:
        if user_id in position:
            tree = ProfileTree.model_validate_json(tree_json)
            if tree.split == "train" and tree.history_len == lengths.get(user_id):
                texts[user_id] = _profile_text(tree)
    if not texts:
        return np.zeros((0, 1), dtype=np.float32), found
    from agent.items.semantics import embed_texts

    order = list(texts)
    vectors = embed_texts([texts[u] for u in order], settings)
    for row, user_id in enumerate(order):
        found[position[user_id]] = row
    return vectors, found


def _profile_text(tree: Any) -> str:
    from agent.profiles.user_store import profile_text  # the text the users collection embeds

    text: str = profile_text(tree.profile)
    return text
