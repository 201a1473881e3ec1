"""Why an item is recommended, in terms of the user's own history.

For a recommended item, the history items it follows from: those that train rows most often
follow with it (transitions a -> item, then co-visits within a few positions) and, to fill up,
those nearest to it by text embedding; plus how many history items of its domain are similar
to it. The text names them and the stage that placed it: "follows your Lodge cast iron
skillet and Pyrex measuring cup; similar to 3 kitchen items you bought; ranked #2 by
sasrec-hybrid". Computed from the data, never by the LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.data.schema import Dataset, display_title
from agent.models.base import UNKNOWN_ITEM_SCORE
from agent.rerank.features import ItemStats, item_stats

BECAUSE = 2  # history items named per reason
SIMILAR = 0.5  # cosine at which a history item counts as similar (MiniLM text vectors)
CLOSE = 0.35  # cosine at which a history item is named as "close to" (without interactions)
HISTORY = 50  # newest history items looked at
TITLE_CHARS = 48  # a history title as a reason names it


@dataclass(frozen=True)
class Because:
    """A history item a recommendation follows from, and why."""

    item_id: str
    title: str
    similarity: float  # cosine of the text vectors
    transitions: int  # train rows in which the recommended item came right after this one
    covisits: int  # train rows' co-occurrences within a few positions

    @property
    def relation(self) -> str:
        if self.transitions:
            return "follows"  # train rows go from it to the recommended item
        if self.covisits:
            return "bought together with"
        return "close to"  # by text alone


@dataclass(frozen=True)
class Explanation:
    item_id: str
    domain: str
    because: list[Because] = field(default_factory=list)
    similar: int = 0  # history items of the item's domain with cosine >= SIMILAR

    def text(self, placed: str) -> str:
        """One line: the history items it follows, the similar count, and ``placed`` (the
        stage that ranked it, e.g. "ranked #2 by sasrec-hybrid")."""
        parts = []
        by_relation: dict[str, list[str]] = {}
        for b in self.because:
            by_relation.setdefault(b.relation, []).append(b.title)
        for relation, names in by_relation.items():
            shown = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            parts.append(f"{relation} your {shown}")
        if self.similar:
            noun = "item" if self.similar == 1 else "items"
            parts.append(f"similar to {self.similar} {self.domain} {noun} you bought")
        parts.append(placed)
        return "; ".join(parts)


class Explainer:
    """Explanations over one dataset (``embeddings``: one row per dense id, row 0 padding)."""

    def __init__(
        self, data: Dataset, embeddings: np.ndarray, stats: ItemStats | None = None
    ) -> None:
        if embeddings.shape[0] != len(data.catalog) + 1:
            raise ValueError(
                f"item embeddings have {embeddings.shape[0]} rows, expected "
                f"{len(data.catalog) + 1} (one per item and a padding row)"
            )
        self.data = data
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.vectors = embeddings / np.maximum(norms, 1e-12)
        self.stats = stats if stats is not None else item_stats(data)

    def explain(self, history: Sequence[str], item_ids: Sequence[str]) -> list[Explanation]:
        """One explanation per item of ``item_ids``, from the newest ``HISTORY`` items."""
        recent = [i for i in dict.fromkeys(reversed(history)) if i in self.data.items][:HISTORY]
        if not recent:
            return [Explanation(i, self.data.items[i].domain) for i in item_ids]
        index = self.data.catalog.index
        past = np.array([index[i] for i in recent])
        out = []
        for item_id in item_ids:
            item = self.data.items[item_id]
            dense = index[item_id]
            cosine = self.vectors[past] @ self.vectors[dense]
            trans = np.asarray(self.stats.transitions[past, dense].todense()).ravel()
            covis = np.asarray(self.stats.covisit[past, dense].todense()).ravel()
            same = np.array([self.data.items[i].domain == item.domain for i in recent])
            # Interactions first (the data says they go together), then text similarity.
            order = np.lexsort((-cosine, -covis, -trans))
            because = [
                Because(
                    item_id=recent[j],
                    title=display_title(self.data.items[recent[j]].title, TITLE_CHARS),
                    similarity=round(float(cosine[j]), 4),
                    transitions=int(trans[j]),
                    covisits=int(covis[j]),
                )
                for j in order
                if recent[j] != item_id and (trans[j] or covis[j] or cosine[j] >= CLOSE)
            ][:BECAUSE]
            similar = int(((cosine >= SIMILAR) & same).sum())
            out.append(Explanation(item_id, item.domain, because, similar))
        return out


def stage_text(
    pos: int,
    retrieval_rank: int,
    retrieval_score: float,
    *,
    retriever: str,
    reranker: str | None,
    reranked: bool,
    fallback: str | None = None,
    fusion: float | None = None,
) -> str:
    """Which stage placed the item at ``pos`` (1-based): "ranked #2 by sasrec-hybrid", or
    "placed #1 by ranker (retrieved #4 by sasrec-hybrid)"."""
    if retrieval_score <= UNKNOWN_ITEM_SCORE:
        return f"unknown to {retriever}: ranked after the items it knows"
    if reranked:
        text = f"placed #{pos} by {reranker} (retrieved #{retrieval_rank} by {retriever})"
        if fusion is not None:
            text += f", fused with the retriever's score (weight {fusion:g})"
        return text
    text = f"ranked #{retrieval_rank} by {retriever}"
    if fallback is not None:
        text += f" (kept in retrieval order: {fallback.replace('_', ' ')})"
    return text
