"""Protocols (eval/transfer.py): in-domain, and zero-shot SOURCE->TARGET on the real slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import Settings
from agent.data.schema import Dataset, UserSequence
from eval.candidates import default_path, get_candidates
from eval.modelprep import default_checkpoint
from eval.transfer import (
    Transfer,
    TransferError,
    apply_transfer,
    check_no_leak,
    checkpoint_path,
    selection_data,
    transfer_settings,
)

runner = CliRunner()
FOOD_KITCHEN = Transfer.parse("food:kitchen")


def _domains(data: Dataset, items: tuple[str, ...]) -> set[str]:
    return {data.domain_of(i) for i in items}


def _is_subsequence(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    it = iter(long)
    return all(x in it for x in short)


@pytest.mark.parametrize("history_from", ["target", "source"])
def test_zero_shot_food_to_kitchen(slice_data: Dataset, history_from: str) -> None:
    spec = Transfer.parse("food:kitchen", history_from)
    out, report = apply_transfer(slice_data, spec)
    original = {(u.split, u.user_id): u for u in slice_data.users}
    hist_domain = "kitchen" if history_from == "target" else "food"

    # No target item in any train sequence; every train row still has 2 items to learn from.
    train = out.split("train")
    assert train and all(_domains(out, u.items) == {"food"} for u in train)
    assert all(len(u.items) >= 2 for u in train)
    check_no_leak(out, spec)
    for split in ("valid", "test"):
        users = out.split(split)
        assert users
        for u in users:
            assert u.target is not None and out.domain_of(u.target) == "kitchen"
            assert u.history and _domains(out, u.history) == {hist_domain}
            before = original[(split, u.user_id)]
            assert u.target == before.target
            assert _is_subsequence(u.history, before.history)  # order kept, items only removed

    # Counts: kept + dropped = before, per split; removed interactions add up.
    for split in ("train", "valid", "test"):
        dropped = sum(n for k, n in report.dropped.items() if k.startswith(f"{split}:"))
        assert report.users_kept[split] + dropped == report.users_in[split]
        assert report.users_kept[split] == len(out.split(split))
        removed = sum(
            len(original[(split, u.user_id)].items) - len(u.items) for u in out.split(split)
        )
        assert report.interactions_removed[split] == removed
    kitchen_targets = {
        s: sum(1 for u in slice_data.split(s) if slice_data.domain_of(u.target or "") == "kitchen")
        for s in ("valid", "test")
    }
    assert report.dropped["valid: target not a kitchen item"] == 40 - kitchen_targets["valid"]
    assert report.dropped["test: target not a kitchen item"] == 40 - kitchen_targets["test"]

    # The catalogue stays whole (same dense ids); the name carries the protocol.
    assert out.items is slice_data.items and out.catalog.ids == slice_data.catalog.ids
    assert out.name == f"{slice_data.name}@zeroshot-food-kitchen-hist-{history_from}"
    assert report.to_dict()["history_from"] == history_from
    assert any("zero-shot food->kitchen" in note for note in out.report.notes)


def test_in_domain_is_the_data_unchanged(slice_data: Dataset) -> None:
    spec = Transfer.parse(None)
    out, report = apply_transfer(slice_data, spec)
    assert out is slice_data and not spec.zero_shot
    assert report.users_kept == report.users_in == {"train": 600, "valid": 40, "test": 40}
    assert report.to_dict()["protocol"] == "in-domain" and not report.dropped
    assert selection_data(slice_data, spec) is slice_data


def test_kitchen_to_food_drops_food_only_train_users(slice_data: Dataset) -> None:
    # The slice's first 600 train users hold food items only: nothing is left to train on.
    out, report = apply_transfer(slice_data, Transfer.parse("kitchen:food", "source"))
    assert report.users_kept["train"] == 0
    assert report.dropped["train: fewer than 2 kitchen items"] == 600
    assert all(_domains(out, u.history) == {"kitchen"} for u in out.users)
    assert all(out.domain_of(u.target or "") == "food" for u in out.users)


def test_selection_data_has_no_target_interaction(slice_data: Dataset) -> None:
    sel = selection_data(slice_data, FOOD_KITCHEN)
    assert sel.name != apply_transfer(slice_data, FOOD_KITCHEN)[0].name
    assert not sel.split("test")
    valid = sel.split("valid")
    assert valid and all(_domains(sel, u.items) == {"food"} for u in valid)
    assert all(_domains(sel, u.items) == {"food"} for u in sel.users)


def test_leak_check_and_bad_specs(slice_data: Dataset) -> None:
    kitchen = next(i for i, it in slice_data.items.items() if it.domain == "kitchen")
    food = next(i for i, it in slice_data.items.items() if it.domain == "food")
    leaky = Dataset("x", slice_data.items, [UserSequence("u", "train", (food, kitchen))])
    with pytest.raises(TransferError, match="leak"):
        check_no_leak(leaky, FOOD_KITCHEN)
    for bad, message in [
        ("food", "expected SOURCE:TARGET"),
        ("food:", "expected SOURCE:TARGET"),
        ("a:b:c", "expected SOURCE:TARGET"),
        ("food:food", "must differ"),
    ]:
        with pytest.raises(TransferError, match=message):
            Transfer.parse(bad)
    with pytest.raises(TransferError, match="--history-from 'x'"):
        Transfer.parse("food:kitchen", "x")
    with pytest.raises(TransferError, match="unknown target domain 'garden'"):
        apply_transfer(slice_data, Transfer.parse("food:garden"))


def test_settings_checkpoints_and_candidates_are_keyed_by_protocol(
    slice_data: Dataset, settings: Settings
) -> None:
    zs = transfer_settings(settings, FOOD_KITCHEN)
    assert zs.methods.llm_recg.source_domains == ["food"]
    assert settings.methods.llm_recg.source_domains == []  # the caller's settings untouched
    assert transfer_settings(settings, Transfer()) is settings
    ckpt = checkpoint_path(settings, "sasrec-id", FOOD_KITCHEN)
    assert ckpt != default_checkpoint(settings, "sasrec-id")
    assert ckpt.name == "sasrec-id@zeroshot-food-kitchen"
    assert checkpoint_path(settings, "sasrec-id", Transfer()) == default_checkpoint(
        settings, "sasrec-id"
    )

    out, _ = apply_transfer(slice_data, FOOD_KITCHEN)
    cands = get_candidates(out, settings, "test", "sampled-100")
    in_domain = get_candidates(slice_data, settings, "test", "sampled-100")
    assert cands.path != in_domain.path
    assert cands.path == default_path(settings, out, "test", "sampled-100")
    assert cands.path is not None and cands.path.is_file()
    assert {c.domain for c in cands} == {"kitchen"} and len(list(cands)) == len(out.split("test"))
    assert len(list(in_domain)) == 40


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_bad_transfer_options_exit_2_with_one_line(slice_dir: Path, tmp_path: Path) -> None:
    base = ["--set", f"work_dir={tmp_path / 'w'}"]
    cases = [
        (["eval", "--models", "popularity", "--transfer", "food"], "expected SOURCE:TARGET"),
        (
            ["eval", "--models", "popularity", "--transfer", "food:garden"],
            "unknown target domain 'garden' (the data has food, kitchen)",
        ),
        (["eval", "--models", "popularity", "--history-from", "both"], "--history-from 'both'"),
        (
            ["train", "--model", "sasrec-id", "--transfer", "garden:kitchen"],
            "unknown source domain 'garden'",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*base, *args, "--data", str(slice_dir)])
        assert result.exit_code == 2, result.output
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert message in _flat(result.output)


@pytest.mark.slow
@pytest.mark.integration  # text-knn loads the packaged MiniLM (slice embedded once a session)
def test_zero_shot_eval_cli_records_the_protocol(
    slice_dir: Path, tmp_path: Path, embedding_cache: Path
) -> None:
    """A tiny real zero-shot run: text-knn from MiniLM vectors, sasrec-id trained on food only."""
    work = tmp_path / "work"
    args = [
        "--set", f"work_dir={work}", "--set", f"embedding.cache_dir={embedding_cache}",
        "--set", "eval.bootstrap=20", "--set", "train.epochs=1", "--set", "train.hidden=16",
        "--set", "train.max_len=10",
        "eval", "--data", str(slice_dir), "--models", "popularity,text-knn,sasrec-id",
        "--transfer", "food:kitchen", "--users", "10", "--protocol", "sampled-100",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (report_dir,) = (work / "eval").iterdir()
    assert report_dir.name.endswith("-zeroshot-food-kitchen-hist-target")
    payload = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    transfer = payload["extra"]["transfer"]
    assert transfer["protocol"] == "zero-shot"
    assert (transfer["source"], transfer["target"], transfer["history_from"]) == (
        "food",
        "kitchen",
        "target",
    )
    assert transfer["users_kept"]["test"] == 26 and transfer["dropped"]
    assert payload["settings"]["methods"]["llm_recg"]["source_domains"] == ["food"]
    assert [r["model"] for r in payload["results"]] == ["popularity", "text-knn", "sasrec-id"]
    assert all(r["n_users"] == 10 for r in payload["results"])
    assert all(set(r["n_users_by_group"]) == {"overall", "kitchen"} for r in payload["results"])
    # Trained on food only, into its own checkpoint: the in-domain one is never written.
    assert transfer["trained"]["sasrec-id"]["epochs"] == 1
    assert (work / "checkpoints" / "sasrec-id@zeroshot-food-kitchen" / "config.json").is_file()
    assert not (work / "checkpoints" / "sasrec-id").exists()
    md = (report_dir / "results.md").read_text(encoding="utf-8")
    assert md.startswith("Protocol: zero-shot food->kitchen (histories: kitchen items).")
    cand_file = f"{slice_dir.name}@zeroshot-food-kitchen-hist-target-test-sampled-100-seed42.jsonl"
    assert (work / "candidates" / cand_file).is_file()
