"""The rerankers with the real small model on real food-kitchen items: through the in-process
backend and through the real vLLM server (tests/integration/llm_fixtures.py). No mock of the
LLM or the server.

Kept small (two users, six candidates, short titles): the CPU model is slow.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from agent.config import RerankSettings
from agent.data.schema import Dataset
from agent.llm.local_backend import LocalBackend
from agent.llm.openai_backend import OpenAIBackend
from agent.rerank.base import RerankRequest, RerankResult
from agent.rerank.bootstrap import BootstrapReranker
from agent.rerank.labels import label_token_ids, make_labels
from agent.rerank.listwise import AnswerKey, parse_ranking
from agent.rerank.registry import make_reranker
from agent.rerank.verbalizer import VerbalizerReranker, label_logprobs

pytestmark = pytest.mark.integration

N_CANDIDATES = 6
SETTINGS = RerankSettings(history_items=5, title_chars=50)
LOGPROB_TOL = 1e-3  # fp32 on both sides; test_llm_vllm.py holds top logprobs to the same


def _requests(data: Dataset, users: int, n: int, seed: int = 5) -> list[RerankRequest]:
    """Test users with the shortest histories; candidates: the target and n-1 other items of
    its domain from the slice, in a seeded order (standing in for a retriever's)."""
    chosen = sorted(data.split("test"), key=lambda u: (len(u.history), u.user_id))[:users]
    out = []
    for pos, user in enumerate(chosen):
        assert user.target is not None
        domain = data.items[user.target].domain
        pool = sorted(
            i for i, item in data.items.items() if item.domain == domain and i not in user.items
        )
        rng = random.Random(seed + pos)
        cands = [*rng.sample(pool, n - 1), user.target]
        rng.shuffle(cands)
        profile = "Buys snacks and kitchen basics; likes value packs." if pos == 0 else None
        out.append(RerankRequest.from_ids(data, user.user_id, user.history, cands, profile=profile))
    return out


def _check(result: RerankResult, request: RerankRequest) -> None:
    """A permutation of all candidates, and counts that add up."""
    assert sorted(result.ranking) == sorted(request.candidate_ids)
    assert len(result.ranking) == len(set(result.ranking))
    assert set(result.scores) == set(request.candidate_ids)
    a = result.analysis
    assert a.answers == result.llm_calls == len(result.raw_answers)
    assert a.llm_errors == 0 and a.fallbacks == int(result.fallback)
    assert a.wrong_format <= a.answers
    assert result.prompt_tokens > 0 and result.completion_tokens >= result.llm_calls
    if result.fallback:
        assert result.ranking == request.candidate_ids and result.error


@pytest.fixture(scope="module")
def requests_(slice_data: Dataset) -> list[RerankRequest]:
    return _requests(slice_data, users=2, n=N_CANDIDATES)


def test_labels_are_single_tokens_where_the_answer_starts(
    llm_model_dir: Path, slice_data: Dataset, openai_llm: OpenAIBackend
) -> None:
    """With the real tokenizer and chat template: each of the 20 letters is one token right
    after ``<|im_start|>assistant\\n``; two-digit numbers are not (why letters)."""
    tok = AutoTokenizer.from_pretrained(str(llm_model_dir))
    request = _requests(slice_data, users=1, n=20)[0]
    reranker = make_reranker("verbalizer", openai_llm, SETTINGS)
    assert isinstance(reranker, VerbalizerReranker)
    messages = [m.model_dump() for m in reranker.messages(request, request.candidates)]
    labels = make_labels(20)
    ids = label_token_ids(tok, messages, labels)
    assert len(set(ids.values())) == 20
    assert [tok.decode([ids[label]]) for label in labels] == labels
    with pytest.raises(ValueError, match="'10'"):
        label_token_ids(tok, messages, ["9", "10"])
    # The server's top_logprobs name the label tokens exactly as the parser reads them.
    result = reranker.rerank(request)
    _check(result, request)
    assert not result.fallback
    assert result.analysis.unscored < 20 // 2  # most labels are among the 20 first tokens


def test_verbalizer_agrees_between_local_and_vllm(
    local_llm: LocalBackend, openai_llm: OpenAIBackend, requests_: list[RerankRequest]
) -> None:
    served = make_reranker("verbalizer", openai_llm, SETTINGS).rerank_batch(requests_)
    local = make_reranker("verbalizer", local_llm, SETTINGS).rerank_batch(requests_)
    for req, s, loc in zip(requests_, served, local, strict=True):
        _check(s, req)
        _check(loc, req)
        assert s.llm_calls == loc.llm_calls == 1 and s.completion_tokens == 1
        assert s.prompt_tokens == loc.prompt_tokens
        assert s.raw_answers == loc.raw_answers  # the same greedy first token
        finite = {i for i, v in loc.scores.items() if math.isfinite(v)}
        assert finite == {i for i, v in s.scores.items() if math.isfinite(v)}
        assert len(finite) >= 2  # the example turn keeps the labels among the top tokens
        for item_id in finite:
            assert s.scores[item_id] == pytest.approx(loc.scores[item_id], abs=LOGPROB_TOL)
        assert s.analysis.unscored == loc.analysis.unscored == N_CANDIDATES - len(finite)
        values = sorted(loc.scores[i] for i in finite)
        if all(b - a > 2 * LOGPROB_TOL for a, b in itertools.pairwise(values)):
            assert s.ranking == loc.ranking  # no near-tie that rounding could flip


def test_verbalizer_scores_are_the_label_logprobs(
    openai_llm: OpenAIBackend, requests_: list[RerankRequest]
) -> None:
    """The ranking follows the first position's label logprobs, unscored labels last."""
    reranker = make_reranker("verbalizer", openai_llm, SETTINGS)
    assert isinstance(reranker, VerbalizerReranker)
    request = requests_[0]
    gen = reranker._generation_for(request, request.candidates)
    top = openai_llm.generate(gen).top_logprobs[0]
    labels = make_labels(N_CANDIDATES)
    logprobs = label_logprobs(top, labels)
    result = reranker.rerank(request)
    by_label = dict(zip(labels, request.candidate_ids, strict=True))
    for label, value in logprobs.items():
        assert result.scores[by_label[label]] == pytest.approx(value, abs=1e-6)
    scored = [i for i in result.ranking if math.isfinite(result.scores[i])]
    assert result.ranking[: len(scored)] == sorted(scored, key=lambda i: -result.scores[i])


def test_bootstrap_over_vllm_averages_shuffles(
    openai_llm: OpenAIBackend, requests_: list[RerankRequest]
) -> None:
    reranker = make_reranker("verbalizer", openai_llm, SETTINGS, shuffles=3, seed=1)
    assert isinstance(reranker, BootstrapReranker)
    for req, result in zip(requests_, reranker.rerank_batch(requests_), strict=True):
        _check(result, req)
        assert result.llm_calls == 3 and not result.fallback
        assert result.reranker == "verbalizer+shuffle3"


def test_listwise_through_vllm_is_schema_constrained_with_sliding_windows(
    openai_llm: OpenAIBackend, requests_: list[RerankRequest]
) -> None:
    """Window 4, step 2 over six candidates: two rounds per user, each a constrained answer."""
    settings = SETTINGS.model_copy(update={"window": 4, "step": 2})
    results = make_reranker("listwise", openai_llm, settings).rerank_batch(requests_)
    for req, result in zip(requests_, results, strict=True):
        _check(result, req)
        a = result.analysis
        assert result.llm_calls == 2 and a.schema_enforced == 2
        assert a.wrong_format == 0 and a.truncated == 0 and a.not_in_candidates == 0
        assert not result.fallback
        # Each constrained answer names exactly one label per window slot.
        assert a.repeated == sum(max(0, 4 - len(set(_labels_in(t)))) for t in result.raw_answers)


def _labels_in(text: str) -> list[str]:
    return list(json.loads(text)["ranking"])


def test_listwise_free_text_agrees_between_local_and_vllm(
    local_llm: LocalBackend, openai_llm: OpenAIBackend, requests_: list[RerankRequest]
) -> None:
    """Unconstrained: the real model's own text goes through the lenient parser; greedy
    answers (and so rankings and counts) are the same on both backends."""
    settings = SETTINGS.model_copy(update={"constrained": False, "max_tokens": 48})
    served = make_reranker("listwise", openai_llm, settings).rerank_batch(requests_)
    local = make_reranker("listwise", local_llm, settings).rerank_batch(requests_)
    for req, s, loc in zip(requests_, served, local, strict=True):
        _check(s, req)
        _check(loc, req)
        assert s.raw_answers == loc.raw_answers and s.ranking == loc.ranking
        assert s.analysis == loc.analysis and s.analysis.schema_enforced == 0
        # The counts are what the parser reads from that real text.
        key = AnswerKey.build(
            req.candidates,
            make_labels(N_CANDIDATES),
            "letters",
            [(h.item_id, h.title) for h in req.history],
        )
        ids, _ = parse_ranking(loc.raw_answers[0], key)
        assert (ids is None) == (loc.analysis.wrong_format == 1)
