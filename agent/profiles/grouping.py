"""Groups of a user's domain history, as LLM4CDSR builds them: k-means clusters of item
embeddings (fitted once on the whole catalogue, seeded, cached on disk), or recency chunks
when the domain history is too short for clusters to mean anything."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from agent.config import ProfileSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    key: str  # "cluster-<label>" or "recent-<n>" (0 = newest)
    item_ids: tuple[str, ...]  # oldest first


def item_clusters(embeddings: np.ndarray, k: int, seed: int, cache_dir: Path) -> np.ndarray:
    """Cluster label per dense item id (row 0, the padding, gets -1); cached by content."""
    from sklearn.cluster import KMeans

    vectors = np.ascontiguousarray(embeddings[1:], dtype=np.float32)
    digest = hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
    path = cache_dir / f"clusters-k{k}-seed{seed}-{digest}.npy"
    if path.is_file():
        labels: np.ndarray = np.load(path)
        return labels
    started = time.perf_counter()
    k_eff = max(1, min(k, len(vectors)))
    fitted = KMeans(n_clusters=k_eff, random_state=seed, n_init=1).fit(vectors)
    labels = np.concatenate([[-1], fitted.labels_]).astype(np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.npy")
    np.save(tmp, labels)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written file behind
    log.info(
        "k-means: %d items -> %d clusters in %.1fs (cached %s)",
        len(vectors),
        k_eff,
        time.perf_counter() - started,
        path.name,
    )
    return labels


def group_history(
    history: Sequence[str],
    index: Mapping[str, int],
    labels: np.ndarray,
    params: ProfileSettings,
) -> tuple[Literal["clusters", "recency"], list[Group]]:
    """Groups of one domain's history (oldest first), newest group first, at most max_groups."""
    known = [i for i in history if i in index]
    if len(known) < params.min_items_for_clusters:
        size = max(1, params.chunk_size)
        chunks = [known[max(0, end - size) : end] for end in range(len(known), 0, -size)]
        groups = [Group(f"recent-{n}", tuple(c)) for n, c in enumerate(chunks)]
        return "recency", groups[: params.max_groups]
    by_label: dict[int, list[str]] = {}
    last_seen: dict[int, int] = {}
    for pos, item_id in enumerate(known):
        label = int(labels[index[item_id]])
        by_label.setdefault(label, []).append(item_id)
        last_seen[label] = pos
    # The clusters touched most recently first: with max_groups they are the ones kept.
    order = sorted(by_label, key=lambda lab: -last_seen[lab])
    groups = [
        Group(f"cluster-{lab}", tuple(by_label[lab][-params.titles_per_group :])) for lab in order
    ]
    return "clusters", groups[: params.max_groups]
