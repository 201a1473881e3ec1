"""A second dataset from the first: new valid and test users drawn from its train users.

The shared data's held-out users are the only ones every model is chosen and measured on. To
check that a recipe is not tuned to them, ``reslice`` draws other users (train rows that span
every domain and are long enough to split) as new valid and test users, with the last item of
their row as the target; every other train row stays for training, and the original held-out
users are left out. No model trained on the original data may be used on the result: it saw
these rows whole. ``write_shared`` writes it in the shared format (``items.jsonl``,
``sequences.jsonl``), so every command reads it with ``--data``.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from agent.data.schema import Dataset

MIN_LENGTH = 5  # history of at least 4, as the original held-out users have


def reslice(data: Dataset, *, valid: int, test: int, seed: int) -> Dataset:
    """New held-out users from ``data``'s train rows (module docstring)."""
    domains = set(data.domains)
    pool = [
        u
        for u in data.split("train")
        if len(u.items) >= MIN_LENGTH and {data.items[i].domain for i in u.items} == domains
    ]
    if len(pool) < valid + test:
        raise ValueError(
            f"{data.name}: {len(pool)} train rows span every domain with {MIN_LENGTH}+ items, "
            f"fewer than the {valid + test} held-out users asked for"
        )
    rng = random.Random(seed)
    picked = rng.sample(pool, valid + test)
    held = {u.user_id for u in picked}
    users = [u for u in data.split("train") if u.user_id not in held]
    users += [replace(u, split="valid") for u in picked[:valid]]
    users += [replace(u, split="test") for u in picked[valid:]]
    return Dataset(f"{data.name}-reslice{seed}", data.items, users)


def write_shared(data: Dataset, folder: Path) -> Path:
    """``data`` as ``items.jsonl`` and ``sequences.jsonl`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.jsonl").open("w", encoding="utf-8") as out:
        for item in data.items.values():
            row: dict[str, object] = {
                "item_id": item.item_id,
                "domain": item.domain,
                "title": item.source_title or item.title,  # read back, it is the same item
            }
            for key in ("brand", "description", "price"):
                if getattr(item, key):
                    row[key] = getattr(item, key)
            if item.categories:
                row["categories"] = list(item.categories)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (folder / "sequences.jsonl").open("w", encoding="utf-8") as out:
        for user in data.users:
            out.write(
                json.dumps(
                    {"user_id": user.user_id, "split": user.split, "items": list(user.items)}
                )
                + "\n"
            )
    return folder
