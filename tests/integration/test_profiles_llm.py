"""Hierarchical profiles with the real small model: through the real vLLM server and the
in-process backend (both schema-constrained, with identical trees), unconstrained (repair/retry/
fallback for real), and through a loopback server that injects faults mid-batch. No mock of the
LLM.

Kept small (short histories, one group per domain, few tokens): the CPU model is slow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import Settings, load_settings
from agent.data.schema import Dataset, UserSequence
from agent.items.embedder import MiniLMEmbedder
from agent.items.text import cut
from agent.llm.backend import LLMBackend
from agent.llm.local_backend import LocalBackend
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.types import GenerationRequest, GenerationResult
from agent.profiles.cache import ProfileCache
from agent.profiles.profiler import HierarchicalProfiler, UserResult
from agent.profiles.schema import Profile, ProfileTree
from agent.profiles.user_store import UserStore
from agent.store.chroma_store import make_client
from tests.integration.llm_fixtures import BASE
from tests.llm_fault_server import FaultServer, Step

pytestmark = pytest.mark.integration

# Recency chunks, one group per domain, short outputs: 5 calls per two-domain user (+ retries).
PROFILE: dict[str, Any] = {
    "profile.mode": "free",  # the LLM4CDSR prompts (grounded: test_profiles_grounded.py)
    "profile.min_items_for_clusters": 1000,
    "profile.max_groups": 1,
    "profile.chunk_size": 4,
    "profile.clusters": 4,
    "profile.group_max_tokens": 24,
    "profile.profile_max_tokens": 64,
    "profile.max_list_items": 2,
    "profile.summary_max_chars": 80,
    "profile.phrase_max_chars": 20,
    "profile.batch_users": 3,
}


class CountingBackend(LLMBackend):
    """Counts the requests that reach the wrapped REAL backend (for the zero-calls check)."""

    def __init__(self, inner: LLMBackend) -> None:
        super().__init__(concurrency=inner.concurrency)
        self.inner = inner
        self.name = inner.name
        self.requests = 0

    @property
    def model(self) -> str:
        return self.inner.model

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        raise NotImplementedError  # agenerate is delegated whole (the inner backend retries)

    async def agenerate(self, req: GenerationRequest) -> GenerationResult:
        self.requests += 1
        return await self.inner.agenerate(req)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture()
def profile_settings(session_settings: Settings, tmp_path: Path) -> Settings:
    return load_settings(
        overrides={
            "data.path": str(session_settings.data.path),
            "work_dir": str(tmp_path / "work"),
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
            **PROFILE,
        }
    )


def _short_users(data: Dataset, n: int) -> list[UserSequence]:
    """Test users with the shortest two-domain histories (cheap prompts)."""
    two_domain = [
        u for u in data.split("test") if len({data.items[i].domain for i in u.history}) == 2
    ]
    return sorted(two_domain, key=lambda u: (len(u.history), u.user_id))[:n]


def _check_tree(tree: ProfileTree, user: UserSequence, data: Dataset) -> None:
    history = set(user.history)  # the held-out target is not part of it
    assert tree.history_len == len(user.history)
    assert isinstance(tree.profile, Profile) and tree.profile.summary
    assert {d.domain for d in tree.domains} == {"food", "kitchen"}
    assert set(tree.profile.evidence_item_ids) <= history  # invented ids were dropped
    for dom in tree.domains:
        assert isinstance(dom.profile, Profile) and dom.profile.summary
        in_domain = {i for i in history if data.items[i].domain == dom.domain}
        assert set(dom.profile.evidence_item_ids) <= in_domain
        assert dom.groups and all(set(g.item_ids) <= in_domain for g in dom.groups)
    # Every fallback is counted with its reason; every non-fallback JSON node parsed.
    for call in tree.calls():
        assert not call.fallback or call.parse_error
    assert tree.fallbacks == sum(c.fallback for c in tree.calls())
    assert set(tree.templates) == {"group", "domain", "cross", "repair"}


def _profiler(
    backend: LLMBackend,
    data: Dataset,
    settings: Settings,
    embeddings: np.ndarray,
    cache: ProfileCache,
    sink: list[UserResult] | None = None,
    store: UserStore | None = None,
) -> HierarchicalProfiler:
    def persist(batch: list[UserResult]) -> None:
        if sink is not None:
            sink.extend(batch)
        if store is not None:
            store.upsert([r.tree for r in batch if r.tree is not None])

    return HierarchicalProfiler(
        backend, data, settings, embeddings=embeddings, cache=cache, on_results=persist
    )


def _ok_trees(results: Sequence[UserResult]) -> list[ProfileTree]:
    assert all(r.tree is not None for r in results), [r.error for r in results]
    return [r.tree for r in results if r.tree is not None]


def test_vllm_profiles_parse_are_stored_and_cached(
    openai_llm: OpenAIBackend,
    profile_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
    minilm: MiniLMEmbedder,
) -> None:
    users = _short_users(slice_data, 3)
    counter = CountingBackend(openai_llm)
    store = UserStore(make_client(profile_settings), profile_settings, minilm)
    with ProfileCache(profile_settings.profile_cache_dir) as cache:
        profiler = _profiler(
            counter, slice_data, profile_settings, slice_embeddings, cache, store=store
        )
        results, stats = profiler.profile_users(users)
        trees = _ok_trees(results)
        for tree, user in zip(trees, users, strict=True):
            _check_tree(tree, user, slice_data)
            assert tree.backend == "openai" and tree.model == BASE
            # vLLM enforced the schema on every JSON node.
            assert all(d.call.schema_enforced for d in tree.domains) and tree.call.schema_enforced
        assert counter.requests == stats.llm_calls >= 5 * len(users)
        assert stats.ok == len(users) and stats.failed == 0
        assert store.count() == len(users)
        stored = store.collection.get(ids=[users[0].user_id], include=["metadatas", "documents"])
        assert stored["metadatas"] and stored["metadatas"][0]["model"] == BASE
        assert stored["documents"] and trees[0].profile.summary in stored["documents"][0]

        # Second run, fresh profiler on the same cache: zero requests reach the server.
        again = CountingBackend(openai_llm)
        results2, stats2 = _profiler(
            again, slice_data, profile_settings, slice_embeddings, cache
        ).profile_users(users)
        assert again.requests == 0 and stats2.cached == len(users)
        assert [r.tree for r in results2] == trees


def test_cli_prints_the_tree_and_profiles_a_split(
    vllm_server: Any, profile_settings: Settings, slice_dir: Path, tmp_path: Path
) -> None:
    sets = [f"{k}={v}" for k, v in PROFILE.items()]
    sets += [
        f"work_dir={profile_settings.work_dir}",
        f"embedding.cache_dir={profile_settings.embedding_cache_dir}",
        f"llm.model={BASE}",
    ]
    base = [arg for item in sets for arg in ("--set", item)]
    common = ["--data", str(slice_dir), "--backend", "openai", "--url", vllm_server.url]
    out = tmp_path / "profiles.jsonl"
    runner = CliRunner()
    many = runner.invoke(app, [*base, "profile", *common, "--users", "2", "--out", str(out)])
    assert many.exit_code == 0, many.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["ok"] for r in rows)
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["users"] == 2 and stats["users_per_min"] > 0 and stats["tokens_per_user"] > 0

    user = rows[0]["user_id"]  # cached now: the single-user view costs no LLM call
    shown = runner.invoke(app, [*base, "profile", *common, "--user", user])
    assert shown.exit_code == 0, shown.output
    assert f"user {user}" in shown.output and "cross-domain profile" in shown.output
    as_json = runner.invoke(app, [*base, "profile", *common, "--user", user, "--json"])
    assert as_json.exit_code == 0, as_json.output
    tree = ProfileTree.model_validate_json(as_json.stdout)
    assert tree.user_id == user and tree == ProfileTree.model_validate(rows[0]["tree"])

    both = runner.invoke(app, [*base, "profile", *common, "--users", "2", "--sample", "2"])
    assert both.exit_code == 2 and "--users and --sample" in both.output


def test_local_and_vllm_profiles_agree(
    openai_llm: OpenAIBackend,
    local_llm: LocalBackend,
    profile_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
) -> None:
    """Same prompts, same grammar (xgrammar in both), greedy: the same tree from either backend."""
    user = _short_users(slice_data, 1)[0]
    trees = []
    for backend in (openai_llm, local_llm):
        with ProfileCache(profile_settings.profile_cache_dir / backend.name) as cache:
            results, stats = _profiler(
                backend, slice_data, profile_settings, slice_embeddings, cache
            ).profile_users([user])
        (tree,) = _ok_trees(results)
        _check_tree(tree, user, slice_data)
        assert all(c.schema_enforced for c in [tree.call, *(d.call for d in tree.domains)])
        assert stats.fallbacks == 0 and stats.retries == 0
        trees.append(tree)
    served, local = trees
    assert local.profile == served.profile
    assert [d.profile for d in local.domains] == [d.profile for d in served.domains]
    assert [g.text for d in local.domains for g in d.groups] == [
        g.text for d in served.domains for g in d.groups
    ]


def test_unconstrained_local_json_is_repaired_retried_or_falls_back_with_counts(
    local_llm: LocalBackend,
    profile_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
) -> None:
    """Without the schema the 135M model's JSON goes through repair/retry and, when still
    unusable, the counted fallback; the tree is complete either way."""
    free = profile_settings.model_copy(
        update={"profile": profile_settings.profile.model_copy(update={"constrained": False})}
    )
    user = _short_users(slice_data, 1)[0]
    with ProfileCache(free.profile_cache_dir) as cache:
        results, stats = _profiler(
            local_llm, slice_data, free, slice_embeddings, cache
        ).profile_users([user])
    (tree,) = _ok_trees(results)
    _check_tree(tree, user, slice_data)
    assert tree.backend == "local"
    assert not any(c.schema_enforced for c in tree.calls())
    json_nodes = [tree.call, *(d.call for d in tree.domains)]
    # Each JSON node either parsed (maybe after repair or retry) or is a counted fallback.
    for call in json_nodes:
        assert call.fallback == (call.parse_error is not None and call.retried and call.calls == 2)
    assert stats.fallbacks == tree.fallbacks
    assert stats.retries == sum(c.retried for c in json_nodes)


@pytest.mark.parametrize(
    "fault",
    [Step(action="status", status=500), Step(action="sleep", seconds=3.0), Step(action="close")],
    ids=["http-500", "slow-past-timeout", "connection-dropped"],
)
def test_server_fault_mid_batch_fails_that_user_only_and_keeps_the_rest(
    fault: Step,
    profile_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
) -> None:
    """A loopback server (real HTTP) answers every prompt but the second user's with an echo
    (not JSON: retried, then a counted fallback) and faults on the second user's prompts."""
    users = _short_users(slice_data, 3)
    settings = profile_settings.model_copy(
        update={"profile": profile_settings.profile.model_copy(update={"batch_users": 1})}
    )
    others = set(users[0].history) | set(users[2].history)
    only_second = [i for i in users[1].history if i not in others]
    poison = cut(slice_data.items[only_second[-1]].title, 80)[:30]
    sink: list[UserResult] = []
    with FaultServer(by_prompt={poison: fault}) as server:
        backend = OpenAIBackend(
            server.url, "fault-model", timeout_s=1.0, retries=1, retry_backoff_s=0.01
        )
        with ProfileCache(settings.profile_cache_dir) as cache:
            results, stats = _profiler(
                backend, slice_data, settings, slice_embeddings, cache, sink
            ).profile_users(users)
            assert [r.ok for r in results] == [True, False, True]
            assert stats.failed == 1 and stats.ok == 2
            assert "LLM" in (results[1].error or "")
            for result in (results[0], results[2]):
                assert result.tree is not None
                # Echoes are not JSON: each JSON node was retried once, then fell back.
                assert result.tree.call.fallback and result.tree.call.retried
                assert all(d.call.fallback for d in result.tree.domains)
            assert stats.fallbacks == 6 and stats.users_with_fallback == 2
            # Finished users were persisted (cache and on_results) batch by batch.
            assert len(cache) == 2 and [r.user_id for r in sink] == [u.user_id for u in users]
            server.by_prompt.clear()
            before = server.requests
            again, stats2 = _profiler(
                backend, slice_data, settings, slice_embeddings, cache
            ).profile_users(users)
        assert all(r.ok for r in again) and stats2.cached == 2
        assert server.requests - before == again[1].tree.llm_calls  # type: ignore[union-attr]
