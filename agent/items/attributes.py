"""Attributes of an item read from its title: brand, kind and category (``TitleRule``).

They are the vocabulary of grounded profiles (``agent.profiles.facts``), of the next-interest
training targets (``finetune.profile_data``) and of the profile checker. Deterministic, from
the catalogue's titles alone (no interactions).

The rule, per item, on its title (HTML entities are decoded when the data is read):

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
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

from agent.data.schema import Dataset, Item

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
HEAD_SPLIT = re.compile(
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
    def of(cls, data: Dataset) -> Self:
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
        segments = HEAD_SPLIT.split(text)
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


@dataclass(frozen=True, slots=True)
class Attributes:
    """What the rule reads from one item's title ("" where it finds nothing)."""

    brand: str
    kind: str
    category: str


class ItemAttributes:
    """``TitleRule`` applied to the items of a dataset, each item once (memoised)."""

    def __init__(self, data: Dataset, rule: TitleRule | None = None) -> None:
        self.data = data
        self.rule = rule or TitleRule.of(data)
        self._memo: dict[str, Attributes] = {}

    def __call__(self, item_id: str) -> Attributes:
        found = self._memo.get(item_id)
        if found is None:
            item = self.data.items[item_id]
            brand, kind = self.rule.brand_kind(item.title)
            found = Attributes(brand, kind, self.rule.category(item, kind))
            self._memo[item_id] = found
        return found
