"""Candidate sets: correct, seeded, subset-consistent, saved, reused, and tied to their data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval.candidates as cands_mod
from agent.config import Settings
from agent.data.schema import Dataset, UserSequence
from eval.candidates import (
    CandidatesError,
    DomainPools,
    default_path,
    get_candidates,
    sample_candidates,
)
from eval.evaluator import RankingEvaluator


def _check_set(data: Dataset, user: UserSequence, cands: tuple[str, ...], target: str) -> None:
    assert user.target == target
    assert cands.count(target) == 1, "target exactly once"
    assert len(set(cands)) == len(cands), "no duplicates"
    negatives = set(cands) - {target}
    assert not negatives & set(user.history), "no history item among negatives"
    domain = data.items[target].domain
    assert all(data.items[c].domain == domain for c in cands), "all from the target's domain"


@pytest.mark.parametrize("protocol", ["sampled-100", "sampled-999"])
def test_sampled_sets_are_valid(slice_data: Dataset, settings: Settings, protocol: str) -> None:
    cands = get_candidates(slice_data, settings, "test", protocol)
    pools = DomainPools(slice_data)
    n_neg = cands_mod.NEGATIVES[protocol]
    positions = set()
    for user in slice_data.split("test"):
        cset = cands.get(user)
        _check_set(slice_data, user, cset.candidates, cset.target)
        assert cset.candidates[cset.target_index] == cset.target
        positions.add(cset.target_index)
        eligible = len(pools.ids[cset.domain]) - len(
            pools.excluded(cset.domain, [*user.history, cset.target])
        )
        assert len(cset.candidates) == 1 + min(n_neg, eligible)
        assert cands.count(user) == len(cset.candidates)
    assert len(positions) > 5, "target at random positions"


def test_sampled_100_has_101_candidates(slice_data: Dataset, settings: Settings) -> None:
    cands = get_candidates(slice_data, settings, "test", "sampled-100")
    assert {len(c.candidates) for c in cands} == {101}  # slice domains have > 100 items


def test_full_protocol_is_domain_minus_history_and_writes_nothing(
    slice_data: Dataset, settings: Settings
) -> None:
    cands = get_candidates(slice_data, settings, "test", "full")
    for user in slice_data.split("test"):
        cset = cands.get(user)
        _check_set(slice_data, user, cset.candidates, cset.target)
        domain_items = {i for i, it in slice_data.items.items() if it.domain == cset.domain}
        assert set(cset.candidates) == (domain_items - set(user.history)) | {cset.target}
        assert cands.count(user) == len(cset.candidates)
        assert cands.domain(user) == cset.domain
        assert cset.candidates[cset.target_index] == cset.target
    assert not (settings.work_dir / "candidates").exists()


def test_reproducible_from_seed(slice_data: Dataset, settings: Settings, tmp_path: Path) -> None:
    first = get_candidates(slice_data, settings, "test", "sampled-100")
    other_dir = settings.model_copy(update={"work_dir": tmp_path / "other"})
    again = get_candidates(slice_data, other_dir, "test", "sampled-100")
    assert first.sets == again.sets
    reseeded = settings.model_copy(update={"seed": 7, "work_dir": tmp_path / "seed7"})
    different = get_candidates(slice_data, reseeded, "test", "sampled-100")
    assert first.sets != different.sets


def test_subset_gets_the_same_candidates(slice_data: Dataset, settings: Settings) -> None:
    full = get_candidates(slice_data, settings, "test", "sampled-100")
    pools = DomainPools(slice_data)
    for user in slice_data.split("test")[5:15]:  # one user alone = same as in the full run
        alone, _ = sample_candidates(user, pools, 100, settings.seed)
        assert alone == full.get(user)
    sub = RankingEvaluator(slice_data, settings, protocol="sampled-100", users=7, bootstrap=0)
    for user in sub.users:
        assert sub.candidates.get(user) == full.get(user)


def test_file_is_written_and_reused(
    slice_data: Dataset, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = get_candidates(slice_data, settings, "valid", "sampled-100")
    path = default_path(settings, slice_data, "valid", "sampled-100")
    assert made.path == path and path.is_file()
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["protocol"] == "sampled-100" and header["seed"] == settings.seed
    assert header["split"] == "valid" and header["fingerprint"]
    row = json.loads(lines[1])
    assert set(row) == {"user_id", "split", "domain", "target", "candidates"}
    assert len(lines) == 1 + len(slice_data.split("valid"))

    def no_sampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("should reuse the file, not sample again")

    monkeypatch.setattr(cands_mod, "build_sampled", no_sampling)
    reused = get_candidates(slice_data, settings, "valid", "sampled-100")
    assert reused.sets == made.sets


def test_file_for_other_data_is_an_error(slice_data: Dataset, settings: Settings) -> None:
    get_candidates(slice_data, settings, "test", "sampled-100")
    users = list(slice_data.users)
    i = next(k for k, u in enumerate(users) if u.split == "test")
    users[i] = UserSequence(users[i].user_id, "test", users[i].items[1:] or users[i].items)
    users = [u for k, u in enumerate(users) if k != i + 1 or u.split != "test"]  # drop one more
    other = Dataset(name=slice_data.name, items=slice_data.items, users=users)
    with pytest.raises(CandidatesError, match="other data"):
        get_candidates(other, settings, "test", "sampled-100")


def test_explicit_file_with_other_protocol_is_an_error(
    slice_data: Dataset, settings: Settings
) -> None:
    made = get_candidates(slice_data, settings, "test", "sampled-100")
    assert made.path is not None
    with pytest.raises(CandidatesError, match="protocol"):
        get_candidates(slice_data, settings, "test", "sampled-999", path=made.path)


def test_corrupt_file_is_an_error(slice_data: Dataset, settings: Settings) -> None:
    path = default_path(settings, slice_data, "test", "sampled-100")
    path.parent.mkdir(parents=True)
    path.write_text("garbage\n", encoding="utf-8")
    with pytest.raises(CandidatesError):
        get_candidates(slice_data, settings, "test", "sampled-100")
