"""benchmarks/bench_methods.py: its help, and a real 1-epoch run of one small model on the slice."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from benchmarks.bench_methods import VARIANTS, app

runner = CliRunner()


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for option in ("--out", "--data", "--models", "--epochs", "--device", "--set"):
        assert option in text
    assert "--worker" not in text  # the child's own options stay hidden


def test_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--models", "nope", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2
    assert "nope" in result.output and not (tmp_path / "b.json").exists()


def test_one_epoch_of_sasrec_id_in_a_subprocess(slice_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench" / "methods.json"
    args = [
        "--data", str(slice_dir), "--models", "sasrec-id", "--epochs", "1", "--out", str(out),
        "--set", f"work_dir={tmp_path / 'work'}", "--set", "train.hidden=16",
        "--set", "train.max_len=10", "--set", "train.threads=1",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text(encoding="utf-8"))
    (row,) = payload["results"]
    assert row["status"] == "ok", row
    assert row["model"] == "sasrec-id" and row["epochs"] == 1
    assert row["s_per_epoch"] > 0 and row["fit_seconds"] >= row["s_per_epoch"]
    assert row["train_users"] == 600 and row["parameters"] > 0
    # The child's own peak: torch alone takes far more than the data.
    assert row["peak_rss_mb"] > row["rss_after_data_mb"] > 0
    assert payload["params"]["models"] == ["sasrec-id"]
    assert payload["settings"]["train"]["hidden"] == 16
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| sasrec-id | 1 |" in table and "peak RSS MB" in table
    assert Path(row["log"]).is_file()
    assert set(VARIANTS) == {
        "sasrec-id",
        "sasrec-text",
        "sasrec-hybrid",
        "gru4rec",
        "sasrec-id-ce",
        "sasrec-id-sampled-softmax",
        "sasrec-id-gbce",
        "llm4cdsr",
        "llm-recg-sasrec",
        "llm-recg-gru4rec",
        "semacdr",
    }


def test_revisions_run_interleaved_on_bounded_epochs(slice_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench" / "speed.json"
    args = [
        "--data", str(slice_dir), "--models", "sasrec-id", "--out", str(out),
        "--revisions", "base=HEAD,now=worktree", "--max-batches", "3",
        "--set", f"work_dir={tmp_path / 'work'}", "--set", "train.hidden=16",
        "--set", "train.max_len=10", "--set", "train.batch_size=32",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text(encoding="utf-8"))
    rows = payload["results"]
    assert [(r["revision"], r["status"]) for r in rows] == [("base", "ok"), ("now", "ok")]
    assert len(rows[0]["commit"]) == 40 and rows[1]["commit"] == "worktree"
    for row in rows:  # 5 warm-up batches, then 3 timed, scaled to the 19-batch epoch
        (epoch,) = row["batch_passes"]
        assert (epoch["warmup_batches"], epoch["batches"], epoch["of"]) == (5, 3, 19)
        assert row["cpu_s_per_epoch"] > 0 and row["s_per_epoch"] > 0
    (summary,) = payload["summary"]
    assert summary["base"]["ok"] == summary["now"]["ok"] == 1
    table = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "CPU speed-up now vs base" in table and "| sasrec-id |" in table
