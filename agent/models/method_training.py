"""The training rows of the three methods: SASRec's next-item rows, optionally restricted to
some domains or extended by each user's single-domain sequences.

The loop is the SASRec trainer's (``agent.models.training.fit_loop``), with the loss supplied
by the method, so each method adds its own terms (contrastive regularization, profile
alignment, generalization loss, view alignment) to its own ranking loss; each history entry
also holds the mean of every loss component.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.data.schema import Dataset
from agent.models.neural import left_pad


@dataclass
class TrainRows:
    """Next-item training rows: ``inputs``/``targets`` (rows, max_len) left-padded, shifted
    by one as in SASRec; ``user[r]`` indexes the train user (``users``) row r comes from."""

    inputs: np.ndarray
    targets: np.ndarray
    user: np.ndarray
    users: list[str]

    def __len__(self) -> int:
        return len(self.inputs)


def train_rows(
    data: Dataset,
    max_len: int,
    *,
    domains: Sequence[str] | None = None,
    per_domain: bool = False,
) -> TrainRows:
    """Rows from the train users' histories (valid/test rows never train).

    ``domains``: keep only items of these domains in each history (zero-shot training on a
    source domain); ``per_domain``: add, after each mixed row, one row per domain of the
    user's items of that domain alone (SemaCDR's single-domain sequences).
    """
    catalog = data.catalog
    keep = (
        None
        if not domains
        else np.isin(catalog.domain_of, [catalog.domains.index(d) for d in domains])
    )
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    owner: list[int] = []
    users: list[str] = []
    for user in data.iter_split("train"):
        ids = catalog.encode(user.history)
        if keep is not None:
            ids = [i for i in ids if keep[i]]
        seqs = [ids]
        if per_domain:
            doms = catalog.domain_of[ids] if ids else np.zeros(0, dtype=np.int64)
            present = np.unique(doms)
            if len(present) > 1:  # a one-domain user's domain row would repeat the mixed row
                seqs += [[i for i, d in zip(ids, doms, strict=True) if d == p] for p in present]
        added = False
        for seq in seqs:
            tail = seq[-(max_len + 1) :]
            if len(tail) < 2:
                continue
            inputs.append(tail[:-1])
            targets.append(tail[1:])
            owner.append(len(users))
            added = True
        if added:
            users.append(user.user_id)
    return TrainRows(
        left_pad(inputs, max_len),
        left_pad(targets, max_len),
        np.asarray(owner, dtype=np.int64),
        users,
    )
