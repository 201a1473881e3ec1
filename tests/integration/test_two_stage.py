"""The two-stage system with the real small model: retriever top-N reranked by the LLM, served
through the ``Recommender`` contract, cached for resume, and falling back (counted) when the
LLM server fails. Plus the CLI faces: ``eval --rerankers``, ``score --reranker``, ``recommend``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import Settings
from agent.data.schema import Dataset, UserSequence
from agent.llm.backend import LLMBackend
from agent.llm.local_backend import LocalBackend
from agent.llm.openai_backend import OpenAIBackend
from agent.models.popularity import PopularityRecommender
from agent.pipeline.rerank_cache import RerankCache
from agent.pipeline.two_stage import TwoStageRecommender
from agent.rerank.registry import make_reranker
from tests.integration.test_profiles_llm import PROFILE, CountingBackend
from tests.llm_fault_server import FaultServer, Step

pytestmark = pytest.mark.integration

runner = CliRunner()
TOP_N = 6
N_CANDIDATES = 15


def _users_and_candidates(data: Dataset, n: int) -> tuple[list[UserSequence], list[list[str]]]:
    """n test users; each gets its target plus the first same-domain items not in its history."""
    users = data.split("test")[:n]
    lists = []
    for user in users:
        assert user.target is not None
        domain = data.domain_of(user.target)
        seen = set(user.items)
        pool = [data.catalog.ids[i - 1] for i in data.catalog.domain_items(domain)]
        others = [i for i in pool if i not in seen][: N_CANDIDATES - 1]
        lists.append([user.target, *others])
    return users, lists


def _system(
    backend: LLMBackend, settings: Settings, data: Dataset, name: str, cache: RerankCache | None
) -> TwoStageRecommender:
    retriever = PopularityRecommender(data, settings)
    retriever.fit()
    reranker = make_reranker(name, backend, settings, use_profile=False)
    return TwoStageRecommender(retriever, reranker, top_n=TOP_N, cache=cache, history_items=5)


@pytest.mark.parametrize("name", ["verbalizer", "listwise"])
def test_reranked_head_comes_first_and_the_rest_keeps_retrieval_order(
    name: str, local_llm: LocalBackend, settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    users, lists = _users_and_candidates(slice_data, 3)
    histories = [u.history for u in users]
    with RerankCache(tmp_path / "rerank") as cache:
        system = _system(local_llm, settings, slice_data, name, cache)
        scores = system.score(histories, lists)
        base = system.retriever.score(histories, lists)
    assert len(system.results) == len(users)
    for cands, final, retrieved, result in zip(lists, scores, base, system.results, strict=True):
        order = [cands[int(i)] for i in np.argsort(-final, kind="stable")]
        head = order[:TOP_N]
        assert head == result.ranking  # the LLM's order, above everything else
        assert sorted(head) == sorted(result.ranking) and len(set(head)) == TOP_N
        # The head is the retriever's top N (as a set); below it, the retriever's own scores.
        by_retriever = sorted(range(len(cands)), key=lambda i: -retrieved[i])
        assert set(head) == {cands[i] for i in by_retriever[:TOP_N]} or np.isclose(
            retrieved[by_retriever[TOP_N - 1]], retrieved[by_retriever[TOP_N]]
        )
        rest = [i for i in range(len(cands)) if cands[i] not in head]
        assert np.array_equal(final[rest], retrieved[rest])
    stats = system.stats.as_dict()
    assert stats["users"] == 3 and stats["llm_calls_per_user"] >= 1
    assert stats["analysis"]["answers"] >= 3


def test_rerank_cache_resumes_with_zero_llm_calls(
    local_llm: LocalBackend, settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    users, lists = _users_and_candidates(slice_data, 2)
    histories = [u.history for u in users]
    with RerankCache(tmp_path / "rerank") as cache:
        first = _system(local_llm, settings, slice_data, "verbalizer", cache).score(
            histories, lists
        )
        counter = CountingBackend(local_llm)
        again = _system(counter, settings, slice_data, "verbalizer", cache)
        second = again.score(histories, lists)
    assert counter.requests == 0 and again.stats.cached == 2
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "fault", [Step(action="status", status=500), Step(action="close")], ids=["500", "dropped"]
)
def test_llm_failure_falls_back_to_retrieval_order_and_is_counted(
    fault: Step, settings: Settings, slice_data: Dataset
) -> None:
    users, lists = _users_and_candidates(slice_data, 2)
    histories = [u.history for u in users]
    with FaultServer(default=fault) as server:
        backend = OpenAIBackend(
            server.url, "fault-model", timeout_s=2.0, retries=1, retry_backoff_s=0.01
        )
        system = _system(backend, settings, slice_data, "listwise", None)
        scores = system.score(histories, lists)
        assert server.requests >= 2
    base = system.retriever.score(histories, lists)
    assert system.stats.fallbacks == 2 and all(r.fallback for r in system.results)
    for cands, final, retrieved, result in zip(lists, scores, base, system.results, strict=True):
        # Fallback = retrieval order: the final ranking agrees with the retriever's top N.
        head = [cands[int(i)] for i in np.argsort(-final, kind="stable")[:TOP_N]]
        assert head == result.ranking
        assert [retrieved[cands.index(i)] for i in head] == sorted(
            (retrieved[cands.index(i)] for i in head), reverse=True
        )


def _cli_base(settings: Settings, llm_model_dir: Path) -> list[str]:
    sets = {
        "work_dir": settings.work_dir,
        "embedding.cache_dir": settings.embedding_cache_dir,
        "llm.model_dir": llm_model_dir,
        "llm.threads": 1,
        # A batched local generate on a loaded 2-core box can pass the 120 s default; a
        # timed-out profile would (correctly) change the prompt of a rerun.
        "llm.timeout_s": 900,
        "eval.bootstrap": 20,
        **PROFILE,
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def test_eval_cli_adds_two_stage_rows_with_costs(
    local_llm: LocalBackend, settings: Settings, llm_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = [
        *_cli_base(settings, llm_model_dir),
        "eval", "--data", str(settings.data.path), "--models", "popularity",
        "--rerankers", "verbalizer", "--profile-ablation", "--users", "3", "--top-n", "5",
        "--backend", "local", "--out", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [r["model"] for r in payload["results"]]
    assert rows == ["popularity", "popularity+verbalizer", "popularity+verbalizer-noprofile"]
    assert all(r["n_users"] == 3 for r in payload["results"])
    two = payload["extra"]["two_stage"]
    assert two["llm"]["backend"] == "local" and two["llm"]["model"]
    with_profile = two["rows"]["popularity+verbalizer"]["stats"]
    assert with_profile["users"] == 3 and with_profile["profiled_now"] == 3
    assert two["rows"]["popularity+verbalizer-noprofile"]["stats"]["profiled_now"] == 0
    assert "fallback rate" in (out / "results.md").read_text(encoding="utf-8")
    assert "LLM reranking" in result.output

    # Interrupted or not, a rerun finds every profile and reranked list cached.
    again = runner.invoke(app, [*args[:-1], str(tmp_path / "report2")])
    assert again.exit_code == 0, again.output
    payload2 = json.loads((tmp_path / "report2" / "results.json").read_text(encoding="utf-8"))
    stats2 = payload2["extra"]["two_stage"]["rows"]["popularity+verbalizer"]["stats"]
    assert stats2["cached"] == 3 and stats2["profiled_now"] == 0
    assert payload2["results"][1]["metrics"] == payload["results"][1]["metrics"]


def test_score_cli_with_a_reranker(
    local_llm: LocalBackend,
    settings: Settings,
    llm_model_dir: Path,
    slice_data: Dataset,
    tmp_path: Path,
) -> None:
    users, lists = _users_and_candidates(slice_data, 2)
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(
            json.dumps({"user_id": u.user_id, "history": list(u.history), "candidates": c}) + "\n"
            for u, c in zip(users, lists, strict=True)
        ),
        encoding="utf-8",
    )
    args = [
        *_cli_base(settings, llm_model_dir),
        "score", "--data", str(settings.data.path), "--model", "popularity",
        "--input", str(src), "--output", str(dst), "--reranker", "verbalizer",
        "--top-n", "4", "--no-profile", "--backend", "local",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [r["user_id"] for r in rows] == [u.user_id for u in users]
    base = PopularityRecommender(slice_data, settings)
    base.fit()
    for row, cands, retrieved in zip(
        rows, lists, base.score([u.history for u in users], lists), strict=True
    ):
        scores = np.array(row["scores"])
        assert len(scores) == len(cands)
        head = set(np.argsort(-scores, kind="stable")[:4].tolist())
        assert min(scores[list(head)]) > max(np.delete(scores, list(head)))
        rest = [i for i in range(len(cands)) if i not in head]
        assert np.allclose(scores[rest], retrieved[rest])


def test_recommend_cli_for_a_raw_history(
    local_llm: LocalBackend, settings: Settings, llm_model_dir: Path, slice_data: Dataset
) -> None:
    user = slice_data.split("test")[0]
    history = list(user.history)[-4:]
    args = [
        *_cli_base(settings, llm_model_dir),
        "recommend", "--data", str(settings.data.path), "--history", ",".join(history),
        "--retriever", "popularity", "--reranker", "verbalizer", "--no-profile",
        "--top-n", "8", "--top-k", "5", "--backend", "local", "--json",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    domain = slice_data.domain_of(history[-1])
    assert rec["domain"] == domain and rec["reranker"] == "verbalizer"
    assert len(rec["retrieved"]) == 8 and len(rec["items"]) == 5
    retrieved = {x["item_id"] for x in rec["retrieved"]}
    assert {x["item_id"] for x in rec["items"]} <= retrieved
    assert not retrieved & set(history)
    assert all(slice_data.domain_of(i) == domain for i in retrieved)

    readable = runner.invoke(app, [*args[:-1]])
    assert readable.exit_code == 0, readable.output
    assert "retrieved by popularity" in readable.output
    assert "reranked by verbalizer" in readable.output


def test_recommend_cli_rejects_unknown_history_items(
    settings: Settings, llm_model_dir: Path
) -> None:
    args = [
        *_cli_base(settings, llm_model_dir),
        "recommend", "--data", str(settings.data.path), "--history", "NOT-AN-ITEM",
        "--reranker", "none", "--no-profile",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "not in the catalogue: NOT-AN-ITEM" in result.stderr
    assert "Traceback" not in result.output
