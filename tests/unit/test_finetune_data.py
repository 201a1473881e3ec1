"""Reranker training data: the two recipes on the real data slice, no leakage, manifest, IO."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from agent.config import Settings
from agent.data.schema import DataError, Dataset
from agent.models.popularity import PopularityRecommender
from finetune.build import (
    LeakageError,
    build_hard,
    build_random,
    check_no_leakage,
    holdout_dataset,
)
from finetune.examples import (
    Manifest,
    RerankExample,
    read_examples,
    read_manifest,
    write_examples,
)


def test_random_recipe_is_train_only_and_seeded(slice_data: Dataset) -> None:
    examples = build_random(slice_data, max_examples=300, per_user=2, candidates=20, seed=3)
    assert len(examples) == 300
    check_no_leakage(examples, slice_data)
    held_out = {u.user_id for u in slice_data.users if u.split != "train"}
    held_targets = {u.target for u in slice_data.users if u.split != "train"}
    for ex in examples:
        assert ex.user_id not in held_out
        assert len(ex.candidates) == len(set(ex.candidates)) == 20
        assert ex.target in ex.candidates
        row = next(u for u in slice_data.split("train") if u.user_id == ex.user_id)
        # Negatives: the target's domain, never an item of the user's row.
        negatives = [c for c in ex.candidates if c != ex.target]
        assert not set(negatives) & set(row.items)
        assert {slice_data.items[c].domain for c in ex.candidates} == {ex.domain}
    # Held-out targets may appear as someone's train item, but never via a held-out row.
    assert held_targets  # the slice has valid/test rows to leak from
    again = build_random(slice_data, max_examples=300, per_user=2, candidates=20, seed=3)
    assert again == examples
    other = build_random(slice_data, max_examples=300, per_user=2, candidates=20, seed=4)
    assert other != examples


def test_target_positions_spread_over_labels(slice_data: Dataset) -> None:
    examples = build_random(slice_data, max_examples=600, per_user=3, candidates=20, seed=1)
    positions = Counter(ex.target_index for ex in examples)
    assert set(positions) == set(range(20))
    assert max(positions.values()) < 3 * min(positions.values())


def test_leakage_check_rejects_held_out_and_non_prefix(slice_data: Dataset) -> None:
    test_user = slice_data.split("test")[0]
    leaking = RerankExample(
        id="x",
        user_id=test_user.user_id,
        recipe="random",
        history=list(test_user.history),
        candidates=[test_user.target or ""],
        target=test_user.target or "",
        domain="food",
    )
    with pytest.raises(LeakageError, match="valid/test user"):
        check_no_leakage([leaking], slice_data)
    row = next(u for u in slice_data.split("train") if len(u.items) >= 3)
    skipped = RerankExample(
        id="y",
        user_id=row.user_id,
        recipe="random",
        history=[row.items[0]],
        candidates=[row.items[2]],
        target=row.items[2],  # not the item right after the history
        domain=slice_data.items[row.items[2]].domain,
    )
    with pytest.raises(LeakageError, match="not a cut"):
        check_no_leakage([skipped], slice_data)


def test_holdout_drops_each_train_rows_last_item(slice_data: Dataset) -> None:
    holdout = holdout_dataset(slice_data)
    train = {u.user_id: u.items for u in slice_data.split("train")}
    for u in holdout.split("train"):
        assert u.items == train[u.user_id][:-1]
    assert holdout.split("test") == slice_data.split("test")


def test_hard_recipe_uses_retriever_top_and_counts_inserted(
    slice_data: Dataset, settings: Settings
) -> None:
    holdout = holdout_dataset(slice_data)
    retriever = PopularityRecommender(holdout, settings)
    examples, skipped = build_hard(slice_data, retriever, max_examples=80, candidates=20, seed=5)
    assert skipped == 0
    assert len(examples) == 80
    check_no_leakage(examples, slice_data)
    for ex in examples:
        row = next(u for u in slice_data.split("train") if u.user_id == ex.user_id)
        assert ex.target == row.items[-1] and tuple(ex.history) == row.items[:-1]
        assert ex.target in ex.candidates and len(set(ex.candidates)) == 20
        assert not set(ex.candidates) & set(ex.history)
    # Popularity misses most targets: they were inserted, and counted.
    inserted = sum(ex.inserted for ex in examples)
    assert 0 < inserted <= 80
    pool = retriever.score([[]], [[c for c in slice_data.items]])[0]
    assert len(pool) == len(slice_data.items)


def test_examples_round_trip_with_manifest(tmp_path: Path, slice_data: Dataset) -> None:
    examples = build_random(slice_data, max_examples=40, per_user=1, candidates=20, seed=2)
    manifest = Manifest.describe(
        examples,
        recipe="random",
        seed=2,
        source_rows=40,
        candidates=20,
        data_fingerprint="abc",
        templates={"rerank_verbalizer.j2": "0" * 64},
    )
    path = tmp_path / "random.jsonl"
    write_examples(path, examples, manifest)
    assert read_examples(path) == examples
    back = read_manifest(path)
    assert back.examples == 40 and sum(back.target_positions.values()) == 40
    assert sum(back.per_domain.values()) == 40


def test_bad_example_line_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = {
        "id": "u:1",
        "user_id": "u",
        "recipe": "random",
        "history": ["a"],
        "candidates": ["b", "c"],
        "target": "b",
        "domain": "food",
    }
    bad = dict(good, candidates="b")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2, field 'candidates'"):
        read_examples(path)
    missing = dict(good, target="z")
    path.write_text(json.dumps(missing) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1, field 'target'"):
        read_examples(path)


def test_hard_sampled_recipe_keeps_only_retrieved_targets(
    slice_data: Dataset, settings: Settings
) -> None:
    """The test protocol's lists (target + uniform negatives): a target the retriever's top 20
    misses skips the row; every kept example holds its target without insertion."""
    holdout = holdout_dataset(slice_data)
    retriever = PopularityRecommender(holdout, settings)
    examples, skipped = build_hard(
        slice_data, retriever, max_examples=40, candidates=20, seed=5, negatives=99
    )
    assert 0 < len(examples) <= 40 and skipped > 0
    check_no_leakage(examples, slice_data)
    domains = {i: it.domain for i, it in slice_data.items.items()}
    for ex in examples:
        assert ex.recipe == "hard-sampled" and not ex.inserted
        assert ex.target in ex.candidates and len(set(ex.candidates)) == 20
        assert not set(ex.candidates) & set(ex.history)
        assert {domains[c] for c in ex.candidates} == {ex.domain}
    # Seeded: the same call gives the same examples.
    again, _ = build_hard(
        slice_data, retriever, max_examples=40, candidates=20, seed=5, negatives=99
    )
    assert [e.candidates for e in again] == [e.candidates for e in examples]


def test_hard_recipe_can_keep_the_retrievers_order(slice_data: Dataset, settings: Settings) -> None:
    holdout = holdout_dataset(slice_data)
    retriever = PopularityRecommender(holdout, settings)
    examples, _ = build_hard(
        slice_data, retriever, max_examples=20, candidates=20, seed=5, negatives=99, shuffle=False
    )
    for ex in examples:
        scores = retriever.score([ex.history], [ex.candidates])[0]
        assert list(scores) == sorted(scores, reverse=True)


def test_holdout_retriever_trains_once_then_loads_and_refuses_another_loss(
    settings: Settings, slice_data: Dataset
) -> None:
    from agent.models.prepare import ModelNotReady
    from finetune.pipeline import _retriever_summary, holdout_retriever

    train = settings.train.model_copy(update={"epochs": 1, "hidden": 16, "max_len": 10})
    tiny = settings.model_copy(update={"train": train})
    model, out = holdout_retriever(tiny, slice_data)
    summary = _retriever_summary(model, out)
    assert summary["epochs"] == 1 and summary["checkpoint"] == str(out)
    again, out2 = holdout_retriever(tiny, slice_data)  # loaded, not trained again
    assert out2 == out and _retriever_summary(again, out2) == summary
    bce = tiny.model_copy(update={"train": train.model_copy(update={"loss": "bce"})})
    with pytest.raises(ModelNotReady, match=r"trained with train\.loss=sampled-softmax"):
        holdout_retriever(bce, slice_data)
