"""The recipes of reranker training data, from train rows only.

- ``random`` (LlamaRec): a seeded sample of train rows; in each, ``per_user`` cut points; the
  history before the cut, the next item as target, 19 negatives drawn uniformly from the
  target's domain outside the row (no item the user ever touched), shuffled.
- ``hard`` (the retriever's mistakes): a retriever is trained on the train rows with each row's
  last item held out (``holdout_dataset``), so it never saw those targets; it ranks the
  held-out item's domain for the rest of the row; the candidates are its top 20, the target
  put at a random place in place of the 20th when it is missing (counted), then shuffled.
- ``hard-sampled``: the same retriever ranks what the test protocol shows it (``sampled-999``):
  the target and 999 negatives drawn uniformly from its domain outside the row. Its top 20
  then look like the lists the reranker sees at inference, where the target is in the top 20
  for ~40% of users; over the whole domain (``hard``) it is there for ~3%, so the inserted
  target is the odd one out and the adapter learns to pick outliers (measured, README). So a
  row whose target the retriever misses is skipped, not inserted (as LlamaRec reranks only
  users whose target was retrieved), and rows are drawn until ``max_examples`` are made.

No valid or test row is read: ``check_no_leakage`` proves every example is a cut of its user's
own train row, and the holdout retriever's data has no train row's last item.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from agent.data.schema import Dataset, UserSequence
from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender
from agent.pipeline.retrieve import top_n
from finetune.examples import Recipe, RerankExample

log = logging.getLogger(__name__)


class LeakageError(AssertionError):
    """A training example that is not a cut of a train row (a bug, never expected)."""


def usable_rows(data: Dataset) -> list[UserSequence]:
    """Train rows with at least one (history, next item) pair."""
    return [u for u in data.split("train") if len(u.items) >= 2]


def domain_pools(data: Dataset) -> dict[str, list[str]]:
    ids = data.catalog.ids
    return {d: [ids[i - 1] for i in data.catalog.domain_items(d)] for d in data.domains}


def sample_negatives(
    pool: Sequence[str], exclude: set[str], count: int, rng: random.Random
) -> list[str]:
    if len(pool) - len(exclude & set(pool)) < count:
        raise ValueError(f"a domain of {len(pool)} items cannot give {count} negatives")
    picked: list[str] = []
    chosen: set[str] = set()
    while len(picked) < count:
        item = pool[rng.randrange(len(pool))]
        if item not in exclude and item not in chosen:
            picked.append(item)
            chosen.add(item)
    return picked


def build_random(
    data: Dataset, *, max_examples: int, per_user: int, candidates: int, seed: int
) -> list[RerankExample]:
    """LlamaRec's recipe (see the module docstring); seeded, ``max_examples`` at most."""
    rng = random.Random(seed)
    rows = usable_rows(data)
    want_rows = min(len(rows), -(-max_examples // per_user))
    pools = domain_pools(data)
    out: list[RerankExample] = []
    for row in rng.sample(rows, want_rows):
        cuts = rng.sample(range(1, len(row.items)), min(per_user, len(row.items) - 1))
        for cut in sorted(cuts):
            target = row.items[cut]
            domain = data.items[target].domain
            negs = sample_negatives(pools[domain], set(row.items), candidates - 1, rng)
            shown = [*negs, target]
            rng.shuffle(shown)
            out.append(
                RerankExample(
                    id=f"{row.user_id}:{cut}",
                    user_id=row.user_id,
                    recipe="random",
                    history=list(row.items[:cut]),
                    candidates=shown,
                    target=target,
                    domain=domain,
                )
            )
            if len(out) >= max_examples:
                return out
    return out


def holdout_dataset(data: Dataset) -> Dataset:
    """``data`` with the last item of every train row removed (valid and test rows as they
    are): the hard recipe's retriever trains on it and so never sees those targets."""
    users = [
        replace(u, items=u.items[:-1]) if u.split == "train" else u
        for u in data.users
        if u.split != "train" or len(u.items) >= 2
    ]
    return Dataset(name=f"{data.name}-holdout", items=data.items, users=users, report=data.report)


def build_hard(
    data: Dataset,
    retriever: Recommender,
    *,
    max_examples: int,
    candidates: int,
    seed: int,
    negatives: int | None = None,
    shuffle: bool = True,
    batch: int = 128,
) -> tuple[list[RerankExample], int]:
    """The retriever's top ``candidates`` for each sampled row's last item (module docstring),
    and the number of rows skipped because the retriever missed the target (hard-sampled).
    ``retriever`` must have been trained on ``holdout_dataset(data)``. ``negatives``: rank the
    target among that many uniform negatives from outside the row (``hard-sampled``) instead
    of the whole domain (``hard``). ``shuffle=False`` keeps the retriever's order, the order
    the reranker shows candidates in at inference."""
    rng = random.Random(seed)
    rows = usable_rows(data)
    sampled = negatives is not None
    picked = rng.sample(rows, len(rows) if sampled else min(len(rows), max_examples))
    pools = domain_pools(data)
    recipe: Recipe = "hard-sampled" if sampled else "hard"
    out: list[RerankExample] = []
    skipped = 0
    bar = tqdm(total=max_examples, desc=f"{recipe} examples", unit="ex")
    for start in range(0, len(picked), batch):
        if len(out) >= max_examples:
            break
        chunk = picked[start : start + batch]
        histories = [list(r.items[:-1]) for r in chunk]
        lists = []
        for row, history in zip(chunk, histories, strict=True):
            domain = data.items[row.items[-1]].domain
            if negatives is None:
                seen = set(history)
                lists.append([i for i in pools[domain] if i not in seen])
            else:
                count = min(negatives, len(pools[domain]) - len(set(row.items)))
                lists.append(
                    [row.items[-1], *sample_negatives(pools[domain], set(row.items), count, rng)]
                )
        scores = retriever.score(histories, lists)
        for row, history, pool, score in zip(chunk, histories, lists, scores, strict=True):
            target = row.items[-1]
            values = np.asarray(score, dtype=np.float64)
            values = np.where(values > UNKNOWN_ITEM_SCORE, values, -np.inf)
            order = top_n(values, candidates, np.random.default_rng([seed, len(out)]))
            shown = [pool[int(i)] for i in order]
            inserted = target not in shown
            if inserted and sampled:
                skipped += 1
                continue
            if len(out) >= max_examples:
                break
            if inserted:
                shown[rng.randrange(len(shown))] = target
            if shuffle:
                rng.shuffle(shown)
            out.append(
                RerankExample(
                    id=f"{row.user_id}:{len(history)}",
                    user_id=row.user_id,
                    recipe=recipe,
                    history=history,
                    candidates=shown,
                    target=target,
                    domain=data.items[target].domain,
                    inserted=inserted,
                )
            )
            bar.update()
    bar.close()
    return out, skipped


def check_no_leakage(examples: Sequence[RerankExample], data: Dataset) -> None:
    """Every example is its train row cut at a point: the history a prefix of the row and the
    target the item right after it. Raises LeakageError naming the first that is not."""
    train = {u.user_id: u.items for u in data.split("train")}
    held_out = {u.user_id for u in data.users if u.split != "train"}
    for ex in examples:
        row = train.get(ex.user_id)
        if ex.user_id in held_out and row is None:
            raise LeakageError(f"example {ex.id}: user {ex.user_id} is a valid/test user")
        if row is None:
            raise LeakageError(f"example {ex.id}: user {ex.user_id} has no train row")
        cut = len(ex.history)
        if tuple(ex.history) != row[:cut] or cut >= len(row) or row[cut] != ex.target:
            raise LeakageError(f"example {ex.id}: not a cut of the user's train row")
