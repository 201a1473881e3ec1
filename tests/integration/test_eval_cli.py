"""``recbridge eval`` and ``recbridge score`` end to end on the real slice (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _global(work: Path) -> list[str]:
    return ["--set", f"work_dir={work}", "--set", "eval.bootstrap=30"]


def test_eval_popularity(slice_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    args = [*_global(work), "eval", "--data", str(slice_dir), "--models", "popularity"]
    result = runner.invoke(app, [*args, "--protocol", "sampled-100", "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert "popularity" in result.output and "NDCG@10" in result.output
    out = work / "eval" / "cli"
    payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert payload["results"][0]["model"] == "popularity"
    assert payload["results"][0]["n_users"] == 40
    assert payload["extra"]["models"]["popularity"]["source"] == "untrained"
    assert (out / "results.md").is_file() and (out / "results.png").is_file()
    cand_file = work / "candidates" / f"{slice_dir.name}-test-sampled-100-seed42.jsonl"
    assert cand_file.is_file()

    # same settings again: same candidates file, same numbers
    again = runner.invoke(app, [*args, "--protocol", "sampled-100", "--name", "cli2"])
    assert again.exit_code == 0, again.output
    payload2 = json.loads((work / "eval" / "cli2" / "results.json").read_text(encoding="utf-8"))
    assert payload2["results"][0]["metrics"] == payload["results"][0]["metrics"]


def test_eval_user_errors_exit_2(slice_dir: Path, tmp_path: Path) -> None:
    base = [*_global(tmp_path / "w"), "eval", "--data", str(slice_dir)]
    bad_model = runner.invoke(app, [*base, "--models", "nope"])
    assert bad_model.exit_code == 2
    assert "unknown model 'nope'" in _flat(bad_model.output)
    bad_protocol = runner.invoke(app, [*base, "--models", "popularity", "--protocol", "x"])
    assert bad_protocol.exit_code == 2
    assert "eval.protocol" in _flat(bad_protocol.output)
    no_ckpt = runner.invoke(app, [*base, "--models", "sasrec-id", "--no-train-missing"])
    assert no_ckpt.exit_code == 2
    assert "recbridge train --model sasrec-id" in _flat(no_ckpt.output)
    bad_ckpt = runner.invoke(app, [*base, "--models", "popularity", "--checkpoint", "x"])
    assert bad_ckpt.exit_code == 2
    assert "expected NAME=PATH" in _flat(bad_ckpt.output)


def test_score_cli(slice_dir: Path, tmp_path: Path) -> None:
    items = [json.loads(x)["item_id"] for x in (slice_dir / "items.jsonl").open()][:5]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out" / "scores.jsonl"
    src.write_text(
        json.dumps({"user_id": "u", "history": items[:2], "candidates": items[2:]})
        + "\nnot json\n",
        encoding="utf-8",
    )
    base = [*_global(tmp_path / "w"), "score", "--data", str(slice_dir)]
    ok = runner.invoke(
        app, [*base, "--model", "popularity", "--input", str(src), "--output", str(dst)]
    )
    assert ok.exit_code == 0, ok.output  # a bad line is not fatal
    out = [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines()]
    assert len(out[0]["scores"]) == 3 and out[1]["line"] == 2

    missing = runner.invoke(
        app,
        [
            *base,
            "--model",
            "popularity",
            "--input",
            str(tmp_path / "no.jsonl"),
            "--output",
            str(dst),
        ],
    )
    assert missing.exit_code == 2
    assert "input file not found" in _flat(missing.output)
    untrained = runner.invoke(
        app, [*base, "--model", "sasrec-id", "--input", str(src), "--output", str(dst)]
    )
    assert untrained.exit_code == 2
    assert "recbridge train --model sasrec-id" in _flat(untrained.output)
    assert "--train" in untrained.output


@pytest.mark.slow
def test_eval_trains_missing_then_reuses_checkpoint(slice_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    args = [
        *_global(work),
        "--set", "train.epochs=2", "--set", "train.hidden=16", "--set", "train.max_len=20",
        "eval", "--data", str(slice_dir), "--models", "popularity,sasrec-id",
        "--protocol", "sampled-100", "--users", "20",
    ]  # fmt: skip
    first = runner.invoke(app, [*args, "--name", "a"])
    assert first.exit_code == 0, first.output
    models = json.loads((work / "eval" / "a" / "results.json").read_text())["extra"]["models"]
    assert models["sasrec-id"]["source"] == "trained"
    assert models["sasrec-id"]["fit"]["epochs"] == 2
    assert (work / "checkpoints" / "sasrec-id" / "config.json").is_file()
    assert (work / "candidates" / f"{slice_dir.name}-valid-sampled-100-seed42.jsonl").is_file()

    second = runner.invoke(app, [*args, "--no-train-missing", "--name", "b"])
    assert second.exit_code == 0, second.output
    res_b = json.loads((work / "eval" / "b" / "results.json").read_text())
    assert res_b["extra"]["models"]["sasrec-id"]["source"] == "checkpoint"
    res_a = json.loads((work / "eval" / "a" / "results.json").read_text())
    assert res_a["results"][1]["metrics"] == res_b["results"][1]["metrics"]
