"""Answer analysis after RecLM-eval: what each LLM ranking answer got wrong, counted.

A reranker first resolves its answer to item ids (labels, copied titles), then
``analyse_answer`` checks them against the candidates and the user's history:

- ``wrong_format``: nothing usable could be read from the answer (not parsed at all);
- ``repeated``: a candidate named again after its first mention (the first one counts);
- ``not_in_candidates``: an id that is neither a candidate nor in the history (invented);
- ``history_copied``: an id of the user's history that is not a candidate (copied from the
  prompt); disjoint from ``not_in_candidates``;
- ``missing``: candidates the answer never named; appended in the given order. Not counted
  for a ``wrong_format`` answer (that is a failure of its own, not n missing items).

The counts sum over windows, shuffles and users (``+``) and serialise to a flat dict.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class AnswerAnalysis:
    answers: int = 0  # LLM answers analysed (windows, shuffles and users add up)
    wrong_format: int = 0
    repeated: int = 0
    not_in_candidates: int = 0
    history_copied: int = 0
    missing: int = 0
    unscored: int = 0  # verbalizer: candidates whose label was not in the returned top-k
    truncated: int = 0  # answers cut at max_tokens (parsed as far as they went)
    schema_enforced: int = 0  # answers decoded under the JSON schema
    llm_errors: int = 0  # requests that failed for good (the user fell back)
    fallbacks: int = 0  # users (or shuffles) left in retrieval order

    def __add__(self, other: AnswerAnalysis) -> AnswerAnalysis:
        return AnswerAnalysis(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @classmethod
    def total(cls, items: Iterable[AnswerAnalysis]) -> AnswerAnalysis:
        out = cls()
        for item in items:
            out = out + item
        return out

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerAnalysis:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in known})


@dataclass(frozen=True)
class AnalysedAnswer:
    ranking: list[str]  # a permutation of the candidates: the answer's order, then the missing
    kept: list[str] = field(default_factory=list)  # the valid, first-mention ids, answer order
    analysis: AnswerAnalysis = field(default_factory=AnswerAnalysis)

    @property
    def usable(self) -> bool:
        """Whether the answer placed at least one candidate (else it is a fallback)."""
        return bool(self.kept)


def analyse_answer(
    answer: Sequence[str] | None,
    candidates: Sequence[str],
    history: Collection[str] = (),
) -> AnalysedAnswer:
    """Check resolved ids against ``candidates``; None means the answer could not be read."""
    counts = AnswerAnalysis(answers=1)
    if answer is None:
        counts.wrong_format = 1
        return AnalysedAnswer(ranking=list(candidates), analysis=counts)
    allowed = set(candidates)
    past = set(history)
    kept: list[str] = []
    seen: set[str] = set()
    for item_id in answer:
        if item_id in allowed:
            if item_id in seen:
                counts.repeated += 1
            else:
                seen.add(item_id)
                kept.append(item_id)
        elif item_id in past:
            counts.history_copied += 1
        else:
            counts.not_in_candidates += 1
    missing = [c for c in candidates if c not in seen]
    counts.missing = len(missing)
    return AnalysedAnswer(ranking=kept + missing, kept=kept, analysis=counts)
