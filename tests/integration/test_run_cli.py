"""``recbridge run``, the main job, end to end on the real slice with the real MiniLM + Chroma."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent.cli.main import app

runner = CliRunner()


def test_run_indexes_trains_evaluates_and_shows_an_example(
    slice_dir: Path, tmp_path: Path, embedding_cache: Path
) -> None:
    work = tmp_path / "work"
    args = [
        "--set", f"work_dir={work}",
        "--set", f"embedding.cache_dir={embedding_cache}",
        "--set", "eval.bootstrap=20",
        "--set", "train.hidden=16",
        "--set", "train.max_len=10",
        "run", "--data", str(slice_dir),
        "--models", "popularity,text-knn,sasrec-id",
        "--epochs", "1", "--users", "20", "--out", str(work / "report"),
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((work / "report" / "results.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in payload["results"]] == ["popularity", "text-knn", "sasrec-id"]
    assert all(r["n_users"] == 20 for r in payload["results"])
    assert payload["extra"]["models"]["sasrec-id"]["source"] == "trained"
    assert (work / "checkpoints" / "sasrec-id").is_dir()
    assert (work / "chroma").is_dir()  # the embedded store was filled
    # the example user: history, target, a Chroma list and the trained model's list
    assert "held-out target" in result.output
    assert "text-knn (Chroma)" in result.output
    assert "sasrec-id (full" in result.output

    # Second run: nothing to train, checkpoint reused, same numbers.
    again = runner.invoke(app, [*args[:-2], "--out", str(work / "report2")])
    assert again.exit_code == 0, again.output
    payload2 = json.loads((work / "report2" / "results.json").read_text(encoding="utf-8"))
    assert payload2["extra"]["models"]["sasrec-id"]["source"] == "checkpoint"
    assert payload2["results"][2]["metrics"] == payload["results"][2]["metrics"]


def test_run_bad_data_path_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--set", f"work_dir={tmp_path}", "run", "--data", str(tmp_path / "missing")]
    )
    assert result.exit_code == 2
    assert "data path not found" in result.stderr
    assert "Traceback" not in result.output
