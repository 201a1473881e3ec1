"""Next-interest training data for the profile adapter, from train rows only, with no LLM teacher.

One example is one train row cut at a point: the history before the cut is the prompt's input,
the target domain is the domain of the item right after the cut, and the answer is a
next-interest profile (``NextInterest``) made by a deterministic rule from the titles (and
categories, when the data has them) of the next ``profile.next.next_items`` items of that
domain after the cut (the item after the cut always among them).

The rule (``TitleRule``, documented in ``agent.items.attributes``), per next item:

brand (a catalogue-wide title prefix), kind (the head noun phrase) and category.

The answer lists each field's values in the order of the next items, without duplicates,
at most ``profile.next.max_list_items`` each. The same rule applied to a test user's held-out
target gives the "target rule" row of the profile-retrieval table (the ceiling of the format).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.data.schema import DataError, Dataset, Item
from agent.items import attributes
from finetune.build import LeakageError
from finetune.examples import manifest_path, write_examples
from finetune.profile_render import FIELDS, NextInterest

RULE_VERSION = "1"


class TitleRule(attributes.TitleRule):
    """The attribute rule (``agent.items.attributes``) plus the next-interest answer."""

    def profile(self, items: Sequence[Item], max_items: int) -> NextInterest:
        """The answer for these next items (module docstring)."""
        fields: dict[str, list[str]] = {name: [] for name in FIELDS}
        for item in items:
            brand, kind = self.brand_kind(item.title)
            values = {"brands": brand, "kinds": kind, "categories": self.category(item, kind)}
            for name, value in values.items():
                seen = {v.casefold() for v in fields[name]}
                if value and value.casefold() not in seen and len(fields[name]) < max_items:
                    fields[name].append(value)
        return NextInterest(**fields)


class ProfileExample(BaseModel):
    """One cut of a train row: ids only, plus the answer the rule made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str  # <user_id>:<history length>
    user_id: str
    history: list[str]  # item ids before the cut, oldest first
    domain: str  # the target domain: that of the item right after the cut
    next_items: list[str]  # the next items of ``domain`` after the cut (the first one first)
    answer: NextInterest


class ProfileManifest(BaseModel):
    """What a next-interest data file holds and how it was made."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = "next-interest"
    rule_version: str = RULE_VERSION
    examples: int
    seed: int
    source_rows: int
    next_items: int
    data_fingerprint: str  # of the dataset's train rows and items (finetune.examples)
    templates: dict[str, str]  # template file -> sha256
    per_domain: dict[str, int]
    # answers with an empty list, per field (the rule found no brand, kind, category)
    empty: dict[str, int]
    mean_history: float
    settings: dict[str, Any]

    @classmethod
    def describe(cls, examples: Sequence[ProfileExample], **fields: Any) -> ProfileManifest:
        n = max(1, len(examples))
        return cls(
            examples=len(examples),
            per_domain=dict(Counter(ex.domain for ex in examples)),
            empty={f: sum(not getattr(ex.answer, f) for ex in examples) for f in FIELDS},
            mean_history=sum(len(ex.history) for ex in examples) / n,
            **fields,
        )


def build_next_interest(
    data: Dataset,
    rule: TitleRule,
    *,
    max_examples: int,
    per_user: int,
    next_items: int,
    max_list_items: int,
    seed: int,
) -> list[ProfileExample]:
    """A seeded sample of train rows, ``per_user`` cut points each (module docstring)."""
    rng = random.Random(seed)
    rows = [u for u in data.split("train") if len(u.items) >= 2]
    want = min(len(rows), -(-max_examples // per_user))
    out: list[ProfileExample] = []
    for row in rng.sample(rows, want):
        cuts = rng.sample(range(1, len(row.items)), min(per_user, len(row.items) - 1))
        for cut in sorted(cuts):
            domain = data.items[row.items[cut]].domain
            upcoming = [i for i in row.items[cut:] if data.items[i].domain == domain]
            upcoming = upcoming[:next_items]
            answer = rule.profile([data.items[i] for i in upcoming], max_list_items)
            out.append(
                ProfileExample(
                    id=f"{row.user_id}:{cut}",
                    user_id=row.user_id,
                    history=list(row.items[:cut]),
                    domain=domain,
                    next_items=upcoming,
                    answer=answer,
                )
            )
            if len(out) >= max_examples:
                return out
    return out


def check_profile_leakage(examples: Sequence[ProfileExample], data: Dataset) -> None:
    """Every example is its user's train row cut at a point: the history a prefix of the row,
    the next items drawn from the rest of that row. Raises LeakageError naming the first that
    is not (a valid/test user, or an item that is not in the row after the cut)."""
    train = {u.user_id: u.items for u in data.split("train")}
    held_out = {u.user_id for u in data.users if u.split != "train"}
    for ex in examples:
        row = train.get(ex.user_id)
        if row is None:
            where = "a valid/test user" if ex.user_id in held_out else "a user with no train row"
            raise LeakageError(f"example {ex.id}: user {ex.user_id} is {where}")
        cut = len(ex.history)
        rest = row[cut:]
        if (
            tuple(ex.history) != row[:cut]
            or not ex.next_items
            or not rest
            or ex.next_items[0] != rest[0]
            or any(i not in rest for i in ex.next_items)
        ):
            raise LeakageError(f"example {ex.id}: not a cut of the user's train row")


def write_profile_examples(
    path: Path, examples: Iterable[ProfileExample], manifest: ProfileManifest
) -> None:
    """The JSONL and its manifest, each written to a temporary name and renamed."""
    write_examples(path, examples, manifest)


def read_profile_examples(path: Path) -> list[ProfileExample]:
    """Every example of a JSONL file; a bad line is a DataError naming file, line and field."""
    if not path.is_file():
        raise DataError(
            "next-interest data not found: run `recbridge finetune data --recipe "
            "next-interest` first",
            path=path,
        )
    out: list[ProfileExample] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                out.append(ProfileExample.model_validate_json(line))
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or None
                raise DataError(err["msg"], path=path, line=number, field_name=field) from None
    return out


def read_profile_manifest(path: Path) -> ProfileManifest:
    man = manifest_path(path)
    if not man.is_file():
        raise DataError(
            "manifest not found (rebuild with `recbridge finetune data --recipe next-interest`)",
            path=man,
        )
    return ProfileManifest.model_validate_json(man.read_text(encoding="utf-8"))
