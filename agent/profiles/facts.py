"""Profile facts: what a user's history says, computed from the history alone.

Per domain: the top brands, kinds and categories (``agent.items.attributes``) with their
counts and recency weights, the most recent items, and repeat purchases; across domains: the
links between them (a word such as "tea" in the kinds or categories of several domains, or a
brand bought in several). Every fact keeps the ids of the history items it rests on, so a
profile written from the facts can cite its evidence, and a checker can tell a fact from a
fiction. Deterministic (ties broken by value), memoised per history.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from agent.data.schema import Dataset
from agent.items.attributes import GENERIC_HEADS, HEAD_SPLIT, UNIT_WORDS, ItemAttributes

FACTS_VERSION = "1"
HALF_LIFE = 10  # items: the weight of an item halves every HALF_LIFE purchases back
TOP = 5  # values kept per attribute and domain
RECENT = 5  # most recent items kept per domain
LINKS = 5  # cross-domain links kept
_MEMO = 4096  # histories memoised

_WORD = re.compile(r"[a-z0-9][a-z0-9'&+-]*")
# Words that name no taste: articles, fillers, and the words any profile of a shop uses.
_STOP = """a an and are as at be but by for from has have in into is it its of on or our so
that the their them they this to too was were will with you your he she his her who which
food foods kitchen kitchens product products item items brand brands buy buys bought buyer
purchase purchases purchased user users shopper customer quality variety style type types kind
kinds great good best new also like likes love loves enjoy enjoys prefer prefers interest
interests favorite favourite various different other more most many much some all one two
use used uses using home everyday daily high low range way made make only focus unique flavor
flavour taste tastes net wt size sizes color colors inch oz original classic premium"""
STOPWORDS = frozenset(_STOP.split()) | ENGLISH_STOP_WORDS | UNIT_WORDS | GENERIC_HEADS


def stem(word: str) -> str:
    """A crude singular: enough to match "teas" to "tea" and "Campbell's" to "campbell"."""
    word = word.removesuffix("'s").rstrip("'")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """The stemmed words of ``text`` that can name a taste (no stopwords, no numbers)."""
    out = []
    for raw in _WORD.findall(text.casefold()):
        word = stem(raw.strip("'&+-"))
        if len(word) > 2 and word not in STOPWORDS and not any(ch.isdigit() for ch in word):
            out.append(word)
    return out


class Fact(BaseModel):
    """One attribute value of a history, with its support."""

    value: str
    count: int  # history items with this value
    weight: float  # sum over those items of 0.5 ** (purchases since / HALF_LIFE)
    item_ids: list[str]  # the evidence, newest first


class DomainFacts(BaseModel):
    domain: str
    items: int  # history items of this domain
    brands: list[Fact] = Field(default_factory=list)
    kinds: list[Fact] = Field(default_factory=list)
    categories: list[Fact] = Field(default_factory=list)
    keywords: list[Fact] = Field(default_factory=list)  # title words of 2+ items
    recent: list[str] = Field(default_factory=list)  # item ids, newest first
    repeats: list[Fact] = Field(default_factory=list)  # items bought more than once

    def values(self) -> list[str]:
        """Every attribute value, strongest first within brands, kinds, categories."""
        facts = [*self.brands, *self.keywords, *self.kinds, *self.categories]
        return list(dict.fromkeys(f.value for f in facts))

    def evidence(self) -> list[str]:
        """The ids the facts rest on: recent items first, then the attributes' evidence."""
        facts = [*self.repeats, *self.brands, *self.keywords, *self.kinds, *self.categories]
        return list(dict.fromkeys([*self.recent, *(i for f in facts for i in f.item_ids)]))


class CrossLink(BaseModel):
    """A word (or brand) found in the history of several domains."""

    term: str
    via: str  # "kind" (kinds or categories) or "brand"
    item_ids: dict[str, list[str]]  # domain -> evidence ids, newest first

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.item_ids.values())


class ProfileFacts(BaseModel):
    """The facts of one history (module docstring)."""

    version: str = FACTS_VERSION
    history_len: int
    domains: list[DomainFacts]
    links: list[CrossLink] = Field(default_factory=list)

    def domain(self, name: str) -> DomainFacts | None:
        return next((d for d in self.domains if d.domain == name), None)

    def values(self) -> list[str]:
        return list(dict.fromkeys(v for d in self.domains for v in d.values()))

    def evidence(self) -> list[str]:
        return list(dict.fromkeys(i for d in self.domains for i in d.evidence()))

    def themes(self) -> list[str]:
        return [link.term for link in self.links]


@dataclass
class _Tally:
    count: int = 0
    weight: float = 0.0
    ids: list[str] = field(default_factory=list)
    label: str = ""  # the first-seen spelling (newest item's)

    def add(self, item_id: str, weight: float, label: str) -> None:
        self.count += 1
        self.weight += weight
        if item_id not in self.ids:
            self.ids.append(item_id)
        self.label = self.label or label


def _top(tallies: dict[str, _Tally], limit: int) -> list[Fact]:
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1].weight, -kv[1].count, kv[0]))
    return [
        Fact(value=t.label, count=t.count, weight=round(t.weight, 4), item_ids=t.ids)
        for _, t in ranked[:limit]
    ]


class FactsBuilder:
    """``ProfileFacts`` of histories of one dataset (memoised per history)."""

    def __init__(self, data: Dataset, attributes: ItemAttributes | None = None) -> None:
        self.data = data
        self.attributes = attributes or ItemAttributes(data)
        self._memo: OrderedDict[tuple[str, ...], ProfileFacts] = OrderedDict()

    def __call__(self, history: Sequence[str]) -> ProfileFacts:
        key = tuple(history)
        found = self._memo.get(key)
        if found is None:
            found = self._build(key)
            self._memo[key] = found
            if len(self._memo) > _MEMO:
                self._memo.popitem(last=False)
        return found

    def _build(self, history: tuple[str, ...]) -> ProfileFacts:
        known = [i for i in history if i in self.data.items]
        per_domain: dict[str, dict[str, dict[str, _Tally]]] = {}
        recent: dict[str, list[str]] = {}
        seen: dict[str, int] = {}
        words: dict[str, dict[str, _Tally]] = {}  # term -> domain -> tally
        for age, item_id in enumerate(reversed(known)):  # newest first
            item = self.data.items[item_id]
            weight = 0.5 ** (age / HALF_LIFE)
            attrs = self.attributes(item_id)
            tallies = per_domain.setdefault(
                item.domain,
                {"brands": {}, "kinds": {}, "categories": {}, "keywords": {}, "repeats": {}},
            )
            seen[item_id] = seen.get(item_id, 0) + 1
            tallies["repeats"].setdefault(item_id, _Tally()).add(item_id, weight, item_id)
            for name, value in (
                ("brands", attrs.brand),
                ("kinds", _phrase(attrs.kind)),
                ("categories", _phrase(attrs.category)),
            ):
                if value:
                    tallies[name].setdefault(value.casefold(), _Tally()).add(item_id, weight, value)
            brand_words = set(content_words(attrs.brand))
            for word in dict.fromkeys(content_words(head_segment(item.title))):
                if word not in brand_words:
                    tallies["keywords"].setdefault(word, _Tally()).add(item_id, weight, word)
            ids = recent.setdefault(item.domain, [])
            if item_id not in ids:
                ids.append(item_id)
            terms = {*content_words(attrs.kind), *content_words(attrs.category)}
            terms |= set(content_words(head_segment(item.title)))
            for term in sorted(terms - brand_words):
                words.setdefault(term, {}).setdefault(item.domain, _Tally()).add(
                    item_id, weight, term
                )
            if attrs.brand:
                term = "brand:" + attrs.brand.casefold()
                words.setdefault(term, {}).setdefault(item.domain, _Tally()).add(
                    item_id, weight, attrs.brand
                )
        domains = []
        for name in sorted(per_domain):
            t = per_domain[name]
            repeats = {k: v for k, v in t["repeats"].items() if seen[k] > 1}
            keywords = {k: v for k, v in t["keywords"].items() if v.count > 1}
            for item_id, tally in repeats.items():
                tally.label = self.data.items[item_id].display_title
            domains.append(
                DomainFacts(
                    domain=name,
                    items=sum(v.count for v in t["repeats"].values()),
                    brands=_top(t["brands"], TOP),
                    kinds=_top(t["kinds"], TOP),
                    categories=_top(t["categories"], TOP),
                    keywords=_top(keywords, TOP),
                    recent=recent[name][:RECENT],
                    repeats=_top(repeats, TOP),
                )
            )
        return ProfileFacts(history_len=len(history), domains=domains, links=_links(words))


def _phrase(value: str) -> str:
    """An attribute value without stopwords at its ends ("and seasoning blend" -> "seasoning
    blend"); "" when no content word is left ("net wt")."""
    words = value.split()
    while words and not content_words(words[0]):
        words.pop(0)
    while words and not content_words(words[-1]):
        words.pop()
    return " ".join(words)


def head_segment(title: str) -> str:
    """The title up to its first separator (the part that names the product)."""
    return HEAD_SPLIT.split(title, maxsplit=1)[0]


def _links(words: dict[str, dict[str, _Tally]]) -> list[CrossLink]:
    shared = [(term, by) for term, by in words.items() if len(by) > 1]
    ranked = sorted(
        shared,
        key=lambda kv: (-sum(t.weight for t in kv[1].values()), kv[0]),
    )
    return [
        CrossLink(
            term=next(iter(by.values())).label if term.startswith("brand:") else term,
            via="brand" if term.startswith("brand:") else "kind",
            item_ids={d: t.ids for d, t in sorted(by.items())},
        )
        for term, by in ranked[:LINKS]
    ]


def support_words(data: Dataset, attributes: ItemAttributes, history: Iterable[str]) -> set[str]:
    """The words a history supports: those of its items' titles and attributes (stemmed)."""
    out: set[str] = set()
    for item_id in history:
        item = data.items.get(item_id)
        if item is None:
            continue
        attrs = attributes(item_id)
        for text in (item.title, attrs.brand, attrs.kind, attrs.category, *item.categories):
            out.update(content_words(text))
    return out
