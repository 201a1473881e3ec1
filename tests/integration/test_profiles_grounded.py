"""Grounded profiles with the real small model (vLLM server and in-process), the checker in the
loop, the counted fallback to the facts, and `recbridge profile-eval` on the slice. No mock of
the LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import Settings, load_settings
from agent.data.schema import Dataset, UserSequence
from agent.llm.backend import LLMBackend
from agent.llm.local_backend import LocalBackend
from agent.llm.openai_backend import OpenAIBackend
from agent.profiles.cache import ProfileCache
from agent.profiles.check import ProfileChecker
from agent.profiles.profiler import HierarchicalProfiler
from agent.profiles.schema import ProfileTree
from eval.profile_faithfulness import check_tree

pytestmark = pytest.mark.integration

GROUNDED: dict[str, Any] = {
    "profile.mode": "grounded",
    "profile.min_items_for_clusters": 1000,
    "profile.max_groups": 1,
    "profile.chunk_size": 4,
    "profile.clusters": 4,
    "profile.max_list_items": 2,
    "profile.grounded_max_tokens": 80,
    "profile.batch_users": 3,
}


@pytest.fixture()
def grounded_settings(session_settings: Settings, tmp_path: Path) -> Settings:
    return load_settings(
        overrides={
            "data.path": str(session_settings.data.path),
            "work_dir": str(tmp_path / "work"),
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
            **GROUNDED,
        }
    )


@pytest.fixture(scope="module")
def checker(slice_data: Dataset) -> ProfileChecker:
    return ProfileChecker(slice_data)


def _users(data: Dataset, n: int) -> list[UserSequence]:
    two_domain = [
        u for u in data.split("test") if len({data.items[i].domain for i in u.history}) == 2
    ]
    return sorted(two_domain, key=lambda u: (len(u.history), u.user_id))[:n]


def _profiler(
    backend: LLMBackend,
    data: Dataset,
    settings: Settings,
    embeddings: np.ndarray,
    cache: ProfileCache,
    checker: ProfileChecker,
) -> HierarchicalProfiler:
    return HierarchicalProfiler(
        backend, data, settings, embeddings=embeddings, cache=cache, checker=checker
    )


def _assert_grounded(
    tree: ProfileTree, user: UserSequence, data: Dataset, checker: ProfileChecker
) -> None:
    history = set(user.history)
    assert tree.mode == "grounded" and tree.facts is not None
    assert set(tree.facts.evidence()) <= history  # the target never reaches the facts
    values = {v.casefold() for v in tree.facts.values()}
    for dom in tree.domains:
        node = dom.profile
        in_domain = {i for i in history if data.items[i].domain == dom.domain}
        assert set(node.evidence_item_ids) <= in_domain and not node.dislikes
        assert {p.casefold() for p in node.preferences} <= values
        # Group summaries are the facts' text: no LLM call below the domain level.
        assert all(g.call.calls == 0 for g in dom.groups)
    # Every node in the answer passes the checks, whether the LLM wrote it or the facts did.
    found = check_tree(tree, user.history, checker)
    assert found.check.ok, found.check.problems()
    assert found.check.valid_ids == found.check.cited_ids
    for call in [tree.call, *(d.call for d in tree.domains)]:
        assert not call.fallback or call.parse_error  # a fallback says why


def test_grounded_profiles_through_vllm_and_local_agree_and_pass_the_checks(
    openai_llm: OpenAIBackend,
    local_llm: LocalBackend,
    grounded_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
    checker: ProfileChecker,
) -> None:
    users = _users(slice_data, 2)
    trees: list[list[ProfileTree]] = []
    for backend in (openai_llm, local_llm):
        with ProfileCache(grounded_settings.profile_cache_dir / backend.name) as cache:
            profiler = _profiler(
                backend, slice_data, grounded_settings, slice_embeddings, cache, checker
            )
            results, stats = profiler.profile_users(users)
        got = [r.tree for r in results if r.tree is not None]
        assert len(got) == len(users)
        for tree, user in zip(got, users, strict=True):
            _assert_grounded(tree, user, slice_data, checker)
            assert tree.llm_calls in (3, 4, 5, 6)  # two domains + cross, retries at most once
        # The stats count what the trees hold.
        assert stats.fallbacks == sum(t.fallbacks for t in got)
        assert stats.check_failed == sum(bool(c.check_problems) for t in got for c in t.calls())
        trees.append(got)
    served, local = trees
    assert [t.profile for t in served] == [t.profile for t in local]


def test_a_summary_that_cannot_pass_falls_back_to_the_facts_counted(
    local_llm: LocalBackend,
    grounded_settings: Settings,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
    checker: ProfileChecker,
) -> None:
    """A 2-character summary can name no fact: every answer fails the checks, is retried once
    with the repair prompt, then replaced by the facts' profile; all of it counted."""
    tight = grounded_settings.profile.model_copy(update={"grounded_summary_chars": 2})
    settings = grounded_settings.model_copy(update={"profile": tight})
    user = _users(slice_data, 1)[0]
    with ProfileCache(settings.profile_cache_dir) as cache:
        profiler = _profiler(local_llm, slice_data, settings, slice_embeddings, cache, checker)
        (result,), stats = profiler.profile_users([user])
    tree = result.tree
    assert tree is not None
    json_calls = [tree.call, *(d.call for d in tree.domains)]
    assert all(c.fallback and c.retried and c.calls == 2 for c in json_calls)
    # Why, per node: the checks (or, when the model loops in whitespace, unparseable JSON).
    assert all(c.parse_error for c in json_calls)
    assert any("names none of the facts" in (c.parse_error or "") for c in json_calls)
    assert stats.fallbacks == 3 and stats.users_with_fallback == 1 and stats.retries == 3
    assert stats.llm_calls == 6
    assert tree.facts is not None
    assert tree.profile == profiler.facts_profile(tree.facts)
    _assert_grounded(tree, user, slice_data, checker)


def test_profile_eval_reports_faithfulness_of_each_mode(
    vllm_server: Any,
    grounded_settings: Settings,
    slice_dir: Path,
    slice_embeddings: np.ndarray,
    tmp_path: Path,
) -> None:
    sets = {
        **GROUNDED,
        "work_dir": grounded_settings.work_dir,
        "embedding.cache_dir": grounded_settings.embedding_cache_dir,
        "data.path": slice_dir,
        "llm.url": vllm_server.url,
        "llm.backend": "openai",
        "profile.group_max_tokens": 24,
        "profile.profile_max_tokens": 64,
    }
    argv = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            *argv,
            "profile-eval",
            "--users",
            "3",
            "--sources",
            "titles,free,grounded,facts",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {row["source"]: row for row in report["sources"]}
    assert set(rows) == {"titles", "free", "grounded", "facts"}
    assert rows["titles"]["faithfulness"] is None
    for mode in ("grounded", "facts"):
        faith = rows[mode]["faithfulness"]
        assert faith["profiles"] == 3
        assert faith["evidence_valid"] == 1.0 and faith["contradictions"] == 0
        assert faith["attributes_supported"] in (None, 1.0)
    assert rows["facts"]["faithfulness"]["llm_calls_per_profile"] == 0
    assert rows["free"]["faithfulness"]["llm_calls_per_profile"] > 0
    assert "Faithfulness of the profile trees" in (out / "report.md").read_text()
