"""Protocols (eval/transfer.py): in-domain, and zero-shot SOURCE->TARGET on the real slice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import Settings, load_settings
from agent.data.schema import Dataset, Item, Split, UserSequence
from agent.models.prepare import default_checkpoint
from eval.candidates import (
    NEGATIVES,
    CandidatesError,
    DomainPools,
    data_fingerprint,
    default_path,
    full_candidates,
    get_candidates,
    sample_candidates,
)
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


# --- Candidates under the zero-shot protocol, on a hand-built dataset -------------------------

FOOD = tuple(f"f{i}" for i in range(6))
KITCHEN = tuple(f"k{i}" for i in range(5))  # a tiny target pool: every sampled set takes all of it
PROTOCOLS = ("sampled-100", "sampled-999", "full")


def _tiny() -> Dataset:
    items = {i: Item(i, "food" if i[0] == "f" else "kitchen", f"item {i}") for i in FOOD + KITCHEN}
    users = [
        UserSequence("t1", "train", ("f0", "f1", "k0")),
        UserSequence("t2", "train", ("f2", "f3")),
        UserSequence("a", "test", ("f0", "k1", "f1", "k2", "k1", "k3")),  # kitchen k1, k2 before
        UserSequence("b", "test", ("k0", "f4", "k4")),
        UserSequence("c", "test", ("f2", "f5", "k2")),  # no kitchen item before its target
        UserSequence("d", "test", ("k2", "k0")),  # no food history: dropped with source histories
        UserSequence("v", "valid", ("f1", "k3", "f3", "k0")),
        UserSequence("w", "valid", ("k2", "f0", "f2")),  # a food target: model selection only
    ]
    return Dataset("tiny", items, users)


def _tiny_settings(tmp_path: Path) -> Settings:
    return load_settings(overrides={"work_dir": str(tmp_path / "work")})


def _old_fingerprint(data: Dataset, split: Split) -> str:
    """``data_fingerprint`` as it was before candidate exclusions existed."""
    h = hashlib.sha256()
    for item_id in sorted(data.items):
        h.update(f"{item_id}\t{data.items[item_id].domain}\n".encode())
    h.update(f"--{split}--\n".encode())
    for user in sorted(data.iter_split(split), key=lambda u: u.user_id):
        h.update(f"{user.user_id}\t{' '.join(user.items)}\n".encode())
    return h.hexdigest()[:20]


def test_source_histories_never_draw_earlier_target_items_as_negatives(tmp_path: Path) -> None:
    data, settings = _tiny(), _tiny_settings(tmp_path)
    original = {(u.split, u.user_id): u for u in data.users}
    out, _ = apply_transfer(data, Transfer.parse("food:kitchen", "source"))
    # The models see the SOURCE history only; the TARGET items removed from it are recorded.
    assert {(u.split, u.user_id): u.history for u in out.users if u.split != "train"} == {
        ("test", "a"): ("f0", "f1"),
        ("test", "b"): ("f4",),
        ("test", "c"): ("f2", "f5"),
        ("valid", "v"): ("f1", "f3"),
    }
    assert out.candidate_exclusions == {
        ("test", "a"): ("k1", "k2"),
        ("test", "b"): ("k0",),
        ("valid", "v"): ("k3",),
    }
    pools = DomainPools(out)
    for split in ("valid", "test"):
        for protocol in PROTOCOLS:
            cands = get_candidates(out, settings, split, protocol)
            for user in out.split(split):
                cset = cands.get(user)
                assert (
                    cset.target == user.target and cset.candidates[cset.target_index] == cset.target
                )
                seen = set(original[(split, user.user_id)].history)
                # Every kitchen item the user never touched, and only those, besides the target.
                assert set(cset.candidates) - {cset.target} == set(KITCHEN) - seen - {cset.target}
                assert len(set(cset.candidates)) == len(cset.candidates) == cands.count(user)
    # Without the exclusions (the old behaviour), the earlier TARGET items would be drawn.
    user_a = next(u for u in out.split("test") if u.user_id == "a")
    plain, _ = sample_candidates(user_a, pools, 100, settings.seed)
    assert {"k1", "k2"} <= set(plain.candidates)
    assert {"k1", "k2"} <= set(full_candidates(user_a, pools).candidates)
    excl, _ = sample_candidates(user_a, pools, 100, settings.seed, out.candidate_exclusions)
    assert set(excl.candidates) == {"k0", "k3", "k4"}
    assert set(full_candidates(user_a, pools, out.candidate_exclusions).candidates) == {
        "k0",
        "k3",
        "k4",
    }


def test_source_candidates_sampled_without_exclusions_are_never_reused(tmp_path: Path) -> None:
    data, settings = _tiny(), _tiny_settings(tmp_path)
    out, _ = apply_transfer(data, Transfer.parse("food:kitchen", "source"))
    # What the code before candidate exclusions wrote for this data: same name, same rows.
    stale = get_candidates(Dataset(out.name, out.items, out.users), settings, "test", "sampled-100")
    assert stale.path is not None and stale.path.name.endswith("-seed42.jsonl")
    fresh = get_candidates(out, settings, "test", "sampled-100")
    assert fresh.path == default_path(settings, out, "test", "sampled-100") != stale.path
    assert fresh.path is not None and fresh.path.name.endswith("-seed42-excl.jsonl")
    header = json.loads(fresh.path.read_text(encoding="utf-8").splitlines()[0])
    assert header["exclusions"] == 2 and header["fingerprint"] == data_fingerprint(out, "test")
    assert header["fingerprint"] != _old_fingerprint(out, "test")
    with pytest.raises(CandidatesError, match="made for other data"):
        get_candidates(out, settings, "test", "sampled-100", path=stale.path)
    again = get_candidates(out, settings, "test", "sampled-100")  # the new file is reused
    assert {c.user_id: c for c in again} == {c.user_id: c for c in fresh}


@pytest.mark.parametrize("protocol", [None, "target"])
def test_in_domain_and_target_histories_keep_their_candidates(
    tmp_path: Path, protocol: str | None
) -> None:
    data, settings = _tiny(), _tiny_settings(tmp_path)
    spec = Transfer.parse(None if protocol is None else "food:kitchen", protocol or "target")
    out, _ = apply_transfer(data, spec)
    assert out.candidate_exclusions == {}
    assert selection_data(data, spec).candidate_exclusions == {}
    pools = DomainPools(out)
    for split in ("valid", "test"):
        assert data_fingerprint(out, split) == _old_fingerprint(out, split)
        for protocol_name in PROTOCOLS:
            cands = get_candidates(out, settings, split, protocol_name)
            for user in out.split(split):
                # The direct call path, with no exclusions: what the candidates always were.
                if protocol_name == "full":
                    expected = full_candidates(user, pools)
                else:
                    n_neg = NEGATIVES[protocol_name]
                    expected = sample_candidates(user, pools, n_neg, settings.seed)[0]
                assert cands.get(user) == expected
                assert cands.count(user) == len(expected.candidates)
            if cands.path is not None:
                assert cands.path.name == f"{out.name}-{split}-{protocol_name}-seed42.jsonl"
                header = json.loads(cands.path.read_text(encoding="utf-8").splitlines()[0])
                assert list(header) == [
                    "recbridge_candidates",
                    "protocol",
                    "split",
                    "seed",
                    "data",
                    "fingerprint",
                    "n_users",
                ]
