"""Next-interest training data for the profile adapter, from train rows only, with no LLM teacher.

One example is one train row cut at a point: the history before the cut is the prompt's input,
the target domain is the domain of the item right after the cut, and the answer is a
next-interest profile (``NextInterest``) made by a deterministic rule from the titles (and
categories, when the data has them) of the next ``profile.next.next_items`` items of that
domain after the cut (the item after the cut always among them).

The rule (``TitleRule``), per next item, on its title with HTML entities decoded:

- **brand**: the title's leading words as a catalogue-wide prefix. Start with the first word
  (it must begin with a letter; else there is no brand); a leading "The"/"A"/"An" always takes
  the next word too; then extend by the next word, up to ``MAX_BRAND_WORDS`` words, while at
  least ``EXTEND_SHARE`` (60%) of the catalogue titles that start with the current prefix also
  start with the longer one and at least ``MIN_BRAND_TITLES`` (3) do. So "OXO Good Grips"
  (366 of 435 OXO titles), "Hamilton Beach", "Bob's Red Mill", but "Wilton" (its next words
  vary) and "Fox Run". Prefix counts are over the catalogue's titles only (no interactions).
- **kind**: the head noun phrase. The title's head segment (up to the first ",", "(", "[", "|",
  ":", ";", " - ", " with ", " for ", " by ", " in "), minus the brand, minus words holding a
  digit and size/count words (``UNIT_WORDS``); the last ``KIND_WORDS`` (3) words left,
  lowercased (English noun phrases end in their head noun: "Prosobee Soy Infant Formula
  Powder" -> "infant formula powder"). Empty when nothing is left.
- **category**: the item's most specific ``categories`` entry when the data has categories;
  else the kind's head noun (its last word; a generic last word such as "set" or "kit" gives
  way to the word before it: "cookie cutter set" -> "cutter").

The answer lists each field's values in the order of the next items, without duplicates,
at most ``profile.next.max_list_items`` each. The same rule applied to a test user's held-out
target gives the "target rule" row of the profile-retrieval table (the ceiling of the format).
"""

from __future__ import annotations

import html
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.data.schema import DataError, Dataset, Item
from finetune.build import LeakageError
from finetune.examples import manifest_path, write_examples
from finetune.profile_render import FIELDS, NextInterest

RULE_VERSION = "1"
MAX_BRAND_WORDS = 3
EXTEND_SHARE = 0.6
MIN_BRAND_TITLES = 3
KIND_WORDS = 3
ARTICLES = frozenset({"the", "a", "an"})
_UNITS = "oz ounce ounces fl lb lbs pound pounds g gram grams kg ml l liter liters litre quart \
quarts qt gallon gallons inch inches in cm mm ft foot feet pack packs count ct pc pcs piece pieces \
pk each of x"
UNIT_WORDS = frozenset(_UNITS.split())
_GENERIC = "set sets kit kits pack packs piece pieces pcs combo bundle assortment variety value \
collection box boxes bag bags case"
GENERIC_HEADS = frozenset(_GENERIC.split())
_HEAD_SPLIT = re.compile(
    r",|\(|\[|\||:|;|(?<=\w{4})\.\s| - | – | — |\s+(?:with|for|by|in)\s+", re.IGNORECASE
)
_PUNCT = re.compile(r"^[^\w]+|[^\w+&]+$")


_TAG = re.compile(r"^\s*\[[^\]]*\]\s*")  # a leading "[FFP]"-style packaging tag


def _words(title: str) -> list[str]:
    return _TAG.sub("", html.unescape(title)).split()


class TitleRule:
    """The deterministic title -> (brand, kind, category) rule of the module docstring."""

    def __init__(self, titles: Iterable[str]) -> None:
        self.prefixes: Counter[str] = Counter()
        for title in titles:
            words = [w.casefold() for w in _words(title)]
            for k in range(1, min(MAX_BRAND_WORDS, len(words)) + 1):
                self.prefixes[" ".join(words[:k])] += 1

    @classmethod
    def of(cls, data: Dataset) -> TitleRule:
        return cls(item.title for item in data.items.values())

    def brand(self, title: str) -> str:
        words = _words(title)
        if not words or not words[0][:1].isalpha():
            return ""
        take = 1
        if words[0].casefold() in ARTICLES and len(words) > 1:
            take = 2
        while take < min(MAX_BRAND_WORDS, len(words)):
            current = self.prefixes[" ".join(w.casefold() for w in words[:take])]
            longer = self.prefixes[" ".join(w.casefold() for w in words[: take + 1])]
            if longer < MIN_BRAND_TITLES or longer < EXTEND_SHARE * current:
                break
            take += 1
        return _PUNCT.sub("", " ".join(words[:take]))

    def brand_kind(self, title: str) -> tuple[str, str]:
        """Brand and kind. A brand that leaves no kind in the head segment ("Haribo Gummi
        Candy, Goldbears") is cut back a word at a time ("Haribo Gummi", "candy"); a one-word
        brand that is the whole head segment ("Keurig, The Original Donut Shop") takes the
        kind from the next segment."""
        brand = self.brand(title)
        words = brand.split()
        for size in range(len(words), 1, -1):
            shorter = " ".join(words[:size])
            kind = self.kind(title, shorter, head_only=True)
            if kind:
                return _PUNCT.sub("", shorter), kind
        shortest = " ".join(words[:1])
        return _PUNCT.sub("", shortest), self.kind(title, shortest)

    def kind(self, title: str, brand: str | None = None, *, head_only: bool = False) -> str:
        text = " ".join(_words(title))
        brand = self.brand(title) if brand is None else brand
        brand_words = [w.casefold() for w in brand.split()]
        segments = _HEAD_SPLIT.split(text)
        for number, segment in enumerate(segments[:1] if head_only else segments):
            words = segment.split()
            if number == 0 and [w.casefold() for w in words[: len(brand_words)]] == brand_words:
                words = words[len(brand_words) :]
            kept: list[str] = []
            for word in words:
                clean = _PUNCT.sub("", word).casefold()
                if not clean or any(ch.isdigit() for ch in clean) or clean in UNIT_WORDS:
                    continue
                kept.append(clean)
            if kept:
                return " ".join(kept[-KIND_WORDS:])
        return ""

    @staticmethod
    def category(item: Item, kind: str) -> str:
        if item.categories:
            return " ".join(item.categories[-1].split())
        words = kind.split()
        while len(words) > 1 and words[-1] in GENERIC_HEADS:
            words.pop()
        return words[-1] if words else ""

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
