"""Rerankers on crafted LLM outputs: every parse and fallback path of the listwise answer, the
answer analysis, the sliding-window merge, the verbalizer's ranking from top_logprobs and the
bootstrap's mean rank. A scripted in-process backend stands in for the model where a whole
batch is run (the real model is in tests/integration/test_rerank_llm.py)."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Sequence

import pytest

from agent.config import RerankSettings, Settings, load_settings
from agent.llm.backend import LLMBackend, LLMError
from agent.llm.types import GenerationRequest, GenerationResult
from agent.prompts import load_template
from agent.rerank.analysis import AnswerAnalysis, analyse_answer
from agent.rerank.base import Candidate, HistoryItem, Reranker, RerankRequest, RerankResult
from agent.rerank.bootstrap import BootstrapReranker, mean_ranks, shuffle_request
from agent.rerank.labels import make_labels
from agent.rerank.listwise import INVENTED, AnswerKey, ListwiseReranker, parse_ranking
from agent.rerank.registry import make_reranker
from agent.rerank.verbalizer import VerbalizerReranker, label_logprobs, rank_by_logprobs
from agent.rerank.window import window_spans

TITLES = {
    "c1": "Jasmine Green Tea Bags, 100 count",
    "c2": "Cast Iron Skillet, 12 inch, pre-seasoned",
    "c3": "Organic Dark Chocolate Bar 85% cacao",
    "c4": "Stainless Steel Whisk, 10 inch",
}
HISTORY = (
    HistoryItem("h1", "Loose Leaf Oolong Tea, 8 oz"),
    HistoryItem("h2", "Raw Wildflower Honey, 12 oz jar"),
)
CANDS = tuple(
    Candidate(item_id=i, title=t, domain="food", score=1.0 - n / 10, rank=n)
    for n, (i, t) in enumerate(TITLES.items())
)
IDS = [c.item_id for c in CANDS]


def _key(style: str = "letters") -> AnswerKey:
    labels = make_labels(len(CANDS), style)  # type: ignore[arg-type]
    return AnswerKey.build(CANDS, labels, style, [(h.item_id, h.title) for h in HISTORY])  # type: ignore[arg-type]


def _analyse(
    text: str, style: str = "letters"
) -> tuple[list[str] | None, AnswerAnalysis, list[str]]:
    ids, _ = parse_ranking(text, _key(style))
    analysed = analyse_answer(ids, IDS, [h.item_id for h in HISTORY])
    return ids, analysed.analysis, analysed.ranking


# --- answer analysis ---------------------------------------------------------------------


def test_analysis_counts_each_kind_and_appends_missing_in_given_order() -> None:
    got = analyse_answer(["c3", "c3", "h1", "zz", "c1", "c3"], IDS, ["h1", "h2"])
    assert got.ranking == ["c3", "c1", "c2", "c4"]
    assert got.kept == ["c3", "c1"] and got.usable
    a = got.analysis
    assert (a.answers, a.repeated, a.history_copied, a.not_in_candidates, a.missing) == (
        1,
        2,
        1,
        1,
        2,
    )
    assert a.wrong_format == 0


def test_unreadable_answer_is_wrong_format_in_retrieval_order() -> None:
    got = analyse_answer(None, IDS, ["h1"])
    assert got.ranking == IDS and not got.usable
    assert got.analysis.wrong_format == 1 and got.analysis.missing == 0  # not also "missing"


def test_empty_answer_list_is_all_missing_and_unusable() -> None:
    got = analyse_answer([], IDS)
    assert got.ranking == IDS and not got.usable and got.analysis.missing == 4


def test_analysis_sums_and_round_trips_a_dict() -> None:
    one = AnswerAnalysis(answers=1, repeated=2, missing=1)
    two = AnswerAnalysis(answers=1, wrong_format=1, fallbacks=1)
    total = AnswerAnalysis.total([one, two, one])
    assert (total.answers, total.repeated, total.missing, total.wrong_format) == (3, 4, 2, 1)
    assert AnswerAnalysis.from_dict({**total.to_dict(), "unknown": 5}) == total
    assert set(total.to_dict()) >= {"wrong_format", "repeated", "not_in_candidates", "missing"}


# --- listwise parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"ranking": ["B", "D", "A", "C"]}',
        '```json\n{"ranking": ["B", "D", "A", "C"]}\n```',
        'Sure, here it is: {"ranking": ["B", "D", "A", "C"]} Hope it helps!',
        '{"ranking": ["[B]", "d", " A ", "C."]}',
        '{"ranking": "[B] > [D] > [A] > [C]"}',
        "[B] > [D] > [A] > [C]",
        "The ranking is [B] > [D] > [A] > [C].",
        "B > D > A > C",
        "B, D, A, C",
        "1. B\n2. D\n3. A\n4. C",
        "1. Jasmine Green Tea Bags, 100 count\n2. Stainless Steel Whisk\n3. [A]",
    ],
    ids=[
        "json",
        "fenced",
        "prose-wrapped",
        "loose-entries",
        "json-string-form",
        "arrows",
        "arrows-in-prose",
        "bare-arrows",
        "commas",
        "numbered-lines",
        "bracket-wins",
    ],
)
def test_valid_answer_forms_parse_to_the_permutation(text: str) -> None:
    ids, counts, ranking = _analyse(text)
    if text.startswith("1. Jasmine"):
        # Bracketed labels anywhere take precedence over copied titles: only [A] is read.
        assert ids == ["c1"] and ranking == IDS
        return
    assert ranking == ["c2", "c4", "c1", "c3"]
    assert counts.wrong_format == counts.repeated == counts.missing == 0


def test_copied_titles_are_matched_even_when_cut() -> None:
    text = (
        "1. Stainless Steel Whisk, 10 inch\n"
        "2. Cast Iron Skillet, 12 inch, pre-sea…\n"
        "3. Loose Leaf Oolong Tea, 8 oz\n"  # a history title: copied, not a candidate
        "Hope this helps!"
    )
    ids, counts, ranking = _analyse(text)
    assert ids == ["c4", "c2", "h1"]
    assert ranking == ["c4", "c2", "c1", "c3"]
    assert counts.history_copied == 1 and counts.missing == 2 and counts.not_in_candidates == 0


def test_json_entries_may_be_titles_or_item_ids() -> None:
    text = json.dumps({"ranking": ["Organic Dark Chocolate Bar 85% cacao", "c4", "h2"]})
    ids, counts, ranking = _analyse(text)
    assert ids == ["c3", "c4", "h2"] and ranking == ["c3", "c4", "c1", "c2"]
    assert counts.history_copied == 1


def test_duplicates_and_invented_labels_are_dropped_and_counted() -> None:
    ids, counts, ranking = _analyse('{"ranking": ["C", "C", "Z", "A", "banana", "C"]}')
    assert ids is not None and ids[2] == INVENTED + "Z"
    assert ranking == ["c3", "c1", "c2", "c4"]
    assert (counts.repeated, counts.not_in_candidates, counts.missing) == (2, 2, 2)


def test_invented_bracketed_labels_count_in_text() -> None:
    _, counts, ranking = _analyse("[D] > [Q] > [D] > [B]")
    assert ranking == ["c4", "c2", "c1", "c3"]
    assert (counts.not_in_candidates, counts.repeated, counts.missing) == (1, 1, 2)


def test_answer_cut_at_max_tokens_keeps_what_was_written() -> None:
    ids, counts, ranking = _analyse('{"ranking": ["D", "B", "D", "D", "D", "D", "D')
    assert ranking == ["c4", "c2", "c1", "c3"]
    assert ids is not None and counts.repeated == 5 and counts.missing == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n ",
        "I cannot rank these products without more information.",
        '{"order": ["B", "A"]}',
        '{"ranking": 3}',
        "Sure! The best one is probably the tea.",
    ],
    ids=["empty", "blank", "prose", "wrong-key", "wrong-type", "vague"],
)
def test_unreadable_answers_are_wrong_format(text: str) -> None:
    ids, counts, ranking = _analyse(text)
    assert ids is None and counts.wrong_format == 1 and ranking == IDS


def test_number_labels_parse_as_ints_strings_and_brackets() -> None:
    for text in ('{"ranking": [2, 4, 1, 3]}', '{"ranking": ["2", "04", "1", "3"]}', "[2] > [4]"):
        _, _, ranking = _analyse(text, "numbers")
        assert ranking[:2] == ["c2", "c4"], text
    _, counts, _ = _analyse('{"ranking": [2, 9]}', "numbers")
    assert counts.not_in_candidates == 1


def test_labels_and_their_limits() -> None:
    assert make_labels(3) == ["A", "B", "C"] and make_labels(3, "numbers") == ["1", "2", "3"]
    with pytest.raises(ValueError, match="26"):
        make_labels(27)


def test_ranking_schema_is_a_closed_enum_of_one_window() -> None:
    from agent.rerank.listwise import ranking_schema

    schema = ranking_schema(["A", "B", "C"], with_reason=True)
    ranking = schema["properties"]["ranking"]
    assert ranking["items"]["enum"] == ["A", "B", "C"]
    assert ranking["minItems"] == ranking["maxItems"] == 3
    assert schema["required"] == ["ranking", "reason"] and not schema["additionalProperties"]


# --- sliding windows ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "window", "step", "spans"),
    [
        (0, 20, 10, []),
        (5, 20, 10, [(0, 5)]),
        (20, 20, 10, [(0, 20)]),
        (30, 20, 10, [(10, 30), (0, 20)]),
        (25, 20, 10, [(5, 25), (0, 20)]),  # RankGPT's loop would skip items 0..4
        (100, 20, 10, [(s, s + 20) for s in range(80, -1, -10)]),
        (7, 3, 3, [(4, 7), (1, 4), (0, 3)]),
    ],
)
def test_window_spans_run_back_to_front_and_cover_every_item(
    n: int, window: int, step: int, spans: list[tuple[int, int]]
) -> None:
    got = window_spans(n, window, step)
    assert got == spans
    assert {i for a, b in got for i in range(a, b)} == set(range(n))


def test_window_spans_reject_gaps() -> None:
    with pytest.raises(ValueError, match="skip"):
        window_spans(30, 10, 11)


Answer = Callable[[GenerationRequest, list[tuple[str, str]]], tuple[str, list[dict[str, float]]]]
_LISTWISE_LINE = re.compile(r"^\[(\w+)\] (.+)$", re.MULTILINE)
_VERBALIZER_LINE = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)


class Scripted(LLMBackend):
    """Answers each prompt with ``answer(request, [(label, title), ...])``; titles containing
    ``fail_on`` raise a server error (after no retries)."""

    name = "scripted"

    def __init__(self, answer: Answer, line: re.Pattern[str], fail_on: str = "") -> None:
        super().__init__(retries=0)
        self.answer = answer
        self.line = line
        self.fail_on = fail_on
        self.requests: list[GenerationRequest] = []

    @property
    def model(self) -> str:
        return "scripted"

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        self.requests.append(req)
        shown = self.line.findall(req.messages[-1].content)
        if self.fail_on and any(self.fail_on in title for _, title in shown):
            raise LLMError("server_error", "scripted outage", status=500)
        text, top = self.answer(req, shown)
        return GenerationResult(
            text=text,
            prompt_tokens=100,
            completion_tokens=len(text) // 4 + 1,
            finish_reason="stop",
            top_logprobs=top,
            latency_s=0.01,
            backend=self.name,
            model="scripted",
        )


def _request(user: str, n: int, prefix: str = "item") -> RerankRequest:
    cands = tuple(
        Candidate(item_id=f"{prefix}{i:02d}", title=f"{prefix} title {i:02d}", rank=i)
        for i in range(n)
    )
    return RerankRequest(user_id=user, candidates=cands, history=HISTORY, domain="food")


def _reverse(
    req: GenerationRequest, shown: list[tuple[str, str]]
) -> tuple[str, list[dict[str, float]]]:
    return json.dumps({"ranking": [label for label, _ in reversed(shown)]}), []


def _listwise(backend: LLMBackend, **kw: object) -> ListwiseReranker:
    return ListwiseReranker(backend, load_template("rerank_listwise.j2"), **kw)  # type: ignore[arg-type]


def test_sliding_window_merges_back_to_front() -> None:
    """A model that reverses every window: [10, 30) first, then [0, 20) over the result."""
    backend = Scripted(_reverse, _LISTWISE_LINE)
    result = _listwise(backend, window=20, step=10).rerank(_request("u1", 30))
    expect = [*range(20, 30), *range(9, -1, -1), *range(19, 9, -1)]
    assert result.ranking == [f"item{i:02d}" for i in expect]
    assert result.llm_calls == 2 and not result.fallback and result.analysis.answers == 2
    assert result.prompt_tokens == 200
    # The windows shown: the last 20 in retrieval order, then the front 10 + the winners.
    first = [t for _, t in _LISTWISE_LINE.findall(backend.requests[0].messages[-1].content)]
    assert first == [f"item title {i:02d}" for i in range(10, 30)]
    assert backend.requests[0].json_schema is not None
    # Scores follow the final ranking.
    assert sorted(result.ranking, key=lambda i: -result.scores[i]) == result.ranking


def test_one_users_llm_error_falls_back_for_that_user_only() -> None:
    backend = Scripted(_reverse, _LISTWISE_LINE, fail_on="bad title 03")
    good, bad = _listwise(backend, window=4, step=2).rerank_batch(
        [_request("good", 6), _request("bad", 6, prefix="bad")]
    )
    assert not good.fallback and good.ranking != [c.item_id for c in _request("good", 6).candidates]
    assert bad.fallback and bad.ranking == [f"bad{i:02d}" for i in range(6)]
    assert bad.analysis.llm_errors == 1 and bad.analysis.fallbacks == 1
    assert "server_error" in (bad.error or "")
    assert good.analysis.fallbacks == 0 and good.llm_calls == 2


def test_unparseable_answers_fall_back_to_retrieval_order_counted() -> None:
    backend = Scripted(lambda req, shown: ("I like all of them!", []), _LISTWISE_LINE)
    result = _listwise(backend).rerank(_request("u", 5))
    assert result.fallback and result.ranking == [f"item{i:02d}" for i in range(5)]
    assert result.analysis.wrong_format == 1 and result.analysis.fallbacks == 1
    assert result.error == "no usable answer" and result.llm_calls == 1


def test_partial_answer_keeps_order_and_appends_missing() -> None:
    backend = Scripted(lambda req, shown: ('{"ranking": ["C", "C", "Z"', []), _LISTWISE_LINE)
    result = _listwise(backend, constrained=False).rerank(_request("u", 4))
    assert result.ranking == ["item02", "item00", "item01", "item03"]
    a = result.analysis
    assert (a.repeated, a.not_in_candidates, a.missing, a.fallbacks) == (1, 1, 3, 0)
    assert backend.requests[0].json_schema is None


def test_listwise_prompt_has_history_profile_and_the_example_turn() -> None:
    backend = Scripted(_reverse, _LISTWISE_LINE)
    reranker = _listwise(backend, history_items=1, with_reason=True)
    request = RerankRequest(
        user_id="u", candidates=_request("u", 3).candidates, history=HISTORY, profile="Tea lover."
    )
    messages = reranker.messages(request, request.candidates)
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    last = messages[-1].content
    assert "Tea lover." in last and "Raw Wildflower Honey" in last and "Oolong" not in last
    assert "[C] item title 02" in last and "reason" in last
    assert json.loads(messages[2].content)["ranking"] == ["B", "C", "A"]
    no_profile = _listwise(backend, use_profile=False, one_shot=False)
    plain = no_profile.messages(request, request.candidates)
    assert [m.role for m in plain] == ["system", "user"] and "Tea lover" not in plain[-1].content


# --- verbalizer --------------------------------------------------------------------------


def test_label_logprobs_merge_spaced_variants_and_skip_other_tokens() -> None:
    top = {"A": math.log(0.3), " A": math.log(0.1), "The": -0.5, "C": math.log(0.2), "a": -1.0}
    got = label_logprobs(top, ["A", "B", "C"])
    assert set(got) == {"A", "C"}
    assert got["A"] == pytest.approx(math.log(0.4)) and got["C"] == pytest.approx(math.log(0.2))


def test_rank_by_logprobs_puts_unscored_last_in_given_order() -> None:
    ids = ["x", "y", "z", "w"]
    order, scores, unscored = rank_by_logprobs(ids, ["A", "B", "C", "D"], {"C": -1.0, "B": -2.0})
    assert order == ["z", "y", "x", "w"] and unscored == 2
    assert scores["x"] == scores["w"] == -math.inf and scores["z"] == -1.0


def _letters_prefer_late(
    req: GenerationRequest, shown: list[tuple[str, str]]
) -> tuple[str, list[dict[str, float]]]:
    """Top logprobs favouring later labels; the first label is left out (unscored)."""
    top = {
        "The": -0.1,
        **{label: -1.0 - 0.1 * (len(shown) - i) for i, (label, _) in enumerate(shown)},
    }
    del top[shown[0][0]]
    return shown[-1][0], [top]


def test_verbalizer_ranks_by_label_logprobs_with_unscored_last() -> None:
    backend = Scripted(_letters_prefer_late, _VERBALIZER_LINE)
    reranker = VerbalizerReranker(backend, load_template("rerank_verbalizer.j2"))
    result = reranker.rerank(_request("u", 5))
    assert result.ranking == ["item04", "item03", "item02", "item01", "item00"]
    assert result.analysis.unscored == 1 and result.scores["item00"] == -math.inf
    assert result.analysis.truncated == 0  # max_tokens=1 stops at "length" by design
    req = backend.requests[0]
    assert (req.max_tokens, req.top_logprobs, req.json_schema) == (1, 20, None)
    dumped = RerankResult.model_validate_json(result.model_dump_json())
    assert dumped.scores["item00"] == -math.inf  # -inf survives JSON


def test_verbalizer_without_any_label_in_top_k_falls_back() -> None:
    backend = Scripted(lambda req, shown: ("The", [{"The": -0.1, "I": -2.0}]), _VERBALIZER_LINE)
    reranker = VerbalizerReranker(backend, load_template("rerank_verbalizer.j2"))
    result = reranker.rerank(_request("u", 6))
    assert result.fallback and result.ranking == [f"item{i:02d}" for i in range(6)]
    assert result.analysis.wrong_format == 1 and result.analysis.unscored == 6


def test_verbalizer_caps_its_window_at_the_top_logprobs_limit() -> None:
    backend = Scripted(_letters_prefer_late, _VERBALIZER_LINE)
    reranker = VerbalizerReranker(backend, load_template("rerank_verbalizer.j2"), window=26)
    assert reranker.window == 20
    result = reranker.rerank(_request("u", 25))
    assert sorted(result.ranking) == sorted(c.item_id for c in _request("u", 25).candidates)
    assert result.llm_calls == 2 and len(backend.requests) == 2


# --- bootstrap ---------------------------------------------------------------------------


def test_mean_ranks_ties_keep_retrieval_order() -> None:
    order, mean = mean_ranks(["a", "b", "c"], [["b", "a", "c"], ["a", "c", "b"]])
    assert mean == {"a": 0.5, "b": 1.0, "c": 1.5} and order == ["a", "b", "c"]
    order, _ = mean_ranks(["a", "b", "c"], [["c", "b", "a"], ["b", "c", "a"]])
    assert order == ["b", "c", "a"]  # b and c tie at 0.5: b is first in retrieval order
    with pytest.raises(ValueError, match="permutation"):
        mean_ranks(["a", "b"], [["a", "a"]])


def test_shuffles_are_seeded_permutations() -> None:
    req = _request("u", 10)
    one, again, other = (
        shuffle_request(req, 7, 0),
        shuffle_request(req, 7, 0),
        shuffle_request(req, 7, 1),
    )
    assert one == again and one.candidates != other.candidates
    assert sorted(one.candidate_ids) == req.candidate_ids


class _ByTitle(Reranker):
    """Deterministic inner reranker: sorts by title (descending), whatever order it is shown;
    the requests at positions ``fail_at`` of a batch fall back."""

    name = "by-title"

    def __init__(self, fail_at: Sequence[int] = ()) -> None:
        super().__init__(Scripted(_reverse, _LISTWISE_LINE))
        self.fail_at = set(fail_at)
        self.seen: list[list[str]] = []

    async def arerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        out = []
        for pos, r in enumerate(requests):
            self.seen.append(r.candidate_ids)
            failed = pos in self.fail_at
            ranking = r.candidate_ids if failed else sorted(r.candidate_ids, reverse=True)
            out.append(
                RerankResult(
                    user_id=r.user_id,
                    reranker=self.name,
                    ranking=ranking,
                    scores={},
                    analysis=AnswerAnalysis(answers=1, fallbacks=int(failed)),
                    prompt_tokens=10,
                    llm_calls=1,
                    fallback=failed,
                    error="scripted" if failed else None,
                )
            )
        return out


def test_bootstrap_averages_shuffles_in_one_batch() -> None:
    inner = _ByTitle()
    boot = BootstrapReranker(inner, shuffles=4, seed=3)
    results = boot.rerank_batch([_request("u1", 5), _request("u2", 5)])
    assert len(inner.seen) == 8  # 4 shuffles x 2 users, one call
    assert len({tuple(s) for s in inner.seen[:4]}) > 1  # the orders differ
    for result in results:
        assert result.ranking == [f"item{i:02d}" for i in range(4, -1, -1)]
        assert result.llm_calls == 4 and result.prompt_tokens == 40
        assert result.analysis.answers == 4 and not result.fallback
        assert result.reranker == "by-title+shuffle4"


def test_bootstrap_leaves_fallen_back_shuffles_out() -> None:
    req = _request("u", 4)
    # Every shuffle falls back: retrieval order, flagged; each failed shuffle counted.
    result = BootstrapReranker(_ByTitle(fail_at=[0, 1, 2]), shuffles=3, seed=3).rerank(req)
    assert result.fallback and result.ranking == req.candidate_ids
    assert result.analysis.fallbacks == 3 and "every shuffle" in (result.error or "")
    # Two of three fall back: their shuffled orders must not enter the mean.
    partial = BootstrapReranker(_ByTitle(fail_at=[0, 1]), shuffles=3, seed=3).rerank(req)
    assert not partial.fallback and partial.ranking == ["item03", "item02", "item01", "item00"]
    assert partial.analysis.fallbacks == 2 and partial.llm_calls == 3


# --- settings and registry ---------------------------------------------------------------


def test_settings_and_registry_build_each_reranker() -> None:
    settings = load_settings(set_items=["rerank.window=8", "rerank.step=4", "rerank.adapter=x"])
    assert settings.rerank.window == 8 and RerankSettings().top_n == 20
    backend = Scripted(_reverse, _LISTWISE_LINE)
    listwise = make_reranker("listwise", backend, settings)
    assert isinstance(listwise, ListwiseReranker) and listwise.adapter == "x"
    assert listwise.describe()["template"]["name"] == "rerank_listwise"
    verbalizer = make_reranker("verbalizer", backend, settings.rerank, use_profile=False)
    assert isinstance(verbalizer, VerbalizerReranker) and not verbalizer.use_profile
    boot = make_reranker("verbalizer", backend, Settings(), shuffles=2)
    assert isinstance(boot, BootstrapReranker) and boot.seed == 42
    with pytest.raises(ValueError, match="unknown reranker"):
        make_reranker("pointwise", backend, settings)
    with pytest.raises(ValueError, match="skip"):
        make_reranker("listwise", backend, RerankSettings(window=4, step=5))


def test_request_from_dataset_ids_and_profile_text() -> None:
    from agent.data.schema import Dataset, Item
    from agent.profiles.schema import Profile
    from agent.rerank.base import profile_text

    items = {i: Item(item_id=i, domain="food", title=t) for i, t in TITLES.items()}
    data = Dataset("t", items, [])
    req = RerankRequest.from_ids(data, "u", ["c1", "gone"], ["c3", "c2"], scores=[0.9, 0.5])
    assert req.candidate_ids == ["c3", "c2"] and req.history_ids == ["c1"]
    assert req.candidates[1].rank == 1 and req.candidates[0].score == 0.9 and req.domain == "food"
    with pytest.raises(ValueError, match="duplicate"):
        RerankRequest(user_id="u", candidates=(CANDS[0], CANDS[0]))
    text = profile_text(Profile(summary="Drinks tea", preferences=["oolong"], dislikes=["soda"]))
    assert text == "Drinks tea. Likes: oolong. Dislikes: soda."


def test_sync_wrapper_works_inside_no_running_loop_only() -> None:
    reranker = _listwise(Scripted(_reverse, _LISTWISE_LINE))

    async def inside() -> RerankResult:
        return await reranker.arerank(_request("u", 3))

    assert asyncio.run(inside()).ranking == ["item02", "item01", "item00"]


def test_rerank_templates_load_and_need_their_variables() -> None:
    from agent.prompts import PromptError

    for file in RerankSettings().templates.model_dump().values():
        template = load_template(file)
        assert template.ref.file == file and template.ref.version and len(template.ref.sha256) == 64
        with pytest.raises(PromptError):
            template.render(shot=False, history=[], domain="food")  # no candidates
