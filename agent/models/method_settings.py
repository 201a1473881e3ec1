"""Settings of the three published methods (``settings.methods``): LLM4CDSR, LLM-RecG, SemaCDR,
and the LLM item semantics SemaCDR reads. Every part of a method has a switch, for ablations
(``--set methods.llm4cdsr.beta=0``). Backbone sizes (hidden, layers, heads, dropout, max_len),
optimiser, epochs and early stopping come from ``settings.train``, as for the baselines, so a
method and its backbone are compared at the same size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The ranking losses of the sequential models (agent/models/ranking.py); here, not there, so
# that the settings model (agent/config.py) can name them without importing torch.
RankingLossName = Literal["bce", "bpr", "ce", "sampled-softmax", "gbce"]


class LLM4CDSRSettings(BaseModel):
    """LLM4CDSR (METHODS.md, "LLM4CDSR"): loss = rec + alpha * reg + beta * profile."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = 0.1  # contrastive regularization between domain-A and domain-B items; 0 = off
    beta: float = 0.1  # profile <-> sequence alignment (users with a cached profile); 0 = off
    threads: bool = True  # the domain-A and domain-B SASRec threads; False = mixed thread only
    tau: float = 1.0  # temperature of both contrastive terms (paper: 1)


class LLMRecGSettings(BaseModel):
    """LLM-RecG (METHODS.md, "LLM-RecG"): L = L_rec (BPR) + L_gen; sequence-level fusion."""

    model_config = ConfigDict(extra="forbid")

    backbone: Literal["sasrec", "gru4rec"] = "sasrec"
    gru_layers: int = 1
    # the ranking loss (paper: BPR with 5 negatives); train.loss does not apply to LLM-RecG
    loss: RankingLossName = "bpr"
    num_negatives: int = 5  # negatives per position of the sampled losses (paper: 5)
    alpha: float = 0.001  # weight of the generalization loss (paper's best); 0 = "-Sem" items
    beta: float | None = None  # inter-domain weight; None = alpha * N / D**3 (see losses.py)
    intra: bool = True  # intra-domain diversity term
    inter: bool = True  # inter-domain compactness term (identically 0 with two domains)
    gen_tau: float = 0.1  # temperature of both entropy terms (not reported in the paper)
    gen_items: int = 256  # N: items sampled per domain for each step's generalization loss
    # Domains whose training sequences train the model (items of others are dropped from the
    # histories); empty = all. The zero-shot protocol trains on one domain, e.g. ["food"].
    source_domains: list[str] = Field(default_factory=list)
    # k-means over source users + attention fusion; false when loading a fused checkpoint
    # scores it without the fusion (the "-seq" ablation of the same run)
    sequence_level: bool = True
    clusters: int = 10  # k of the k-means (not reported in the paper)
    attention_tau: float = 1.0  # a_i = softmax_i(cos(y, s_i) / attention_tau)
    fusion_epochs: int = 3  # second phase: W_f alone, backbone and centroids fixed


ViewName = Literal["agnostic", "specific"]


def _all_views() -> list[ViewName]:
    return ["agnostic", "specific"]


class SemaCDRSettings(BaseModel):
    """SemaCDR (METHODS.md, "SemaCDR"): multiview items, view alignment, adaptive fusion gate."""

    model_config = ConfigDict(extra="forbid")

    # LLM views beside the item's own text; [] = own text only
    views: list[ViewName] = Field(default_factory=_all_views)
    gate: bool = True  # learned per-item softmax over views; False = mean of the present views
    align_weight: float = 0.1  # contrastive alignment of each LLM view with the own-text view
    align_items: int = 256  # items (with that view) per step in the alignment loss
    tau: float = 1.0
    domain_sequences: bool = True  # also train on each domain's own sub-sequences


class ItemSemanticsSettings(BaseModel):
    """LLM descriptions of items (SemaCDR's domain-agnostic and domain-specific views)."""

    model_config = ConfigDict(extra="forbid")

    # Items described when a SemaCDR model is fitted: the most frequent in train rows first;
    # those already cached cost nothing. 0 = use only what is cached.
    max_items: int = 200
    agnostic_template: str = "item_semantics_agnostic.j2"
    specific_template: str = "item_semantics_specific.j2"
    max_tokens: int = 80
    max_chars: int = 400  # a description is cut to this before it is embedded
    batch_items: int = 8  # items per LLM batch; each finished batch is cached at once
    cache_dir: Path | None = None  # default: <work_dir>/semantics


class MethodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    llm4cdsr: LLM4CDSRSettings = Field(default_factory=LLM4CDSRSettings)
    llm_recg: LLMRecGSettings = Field(default_factory=LLMRecGSettings)
    semacdr: SemaCDRSettings = Field(default_factory=SemaCDRSettings)
    semantics: ItemSemanticsSettings = Field(default_factory=ItemSemanticsSettings)
