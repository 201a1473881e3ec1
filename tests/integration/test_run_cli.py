"""``recbridge run``, the main job, end to end on the real slice with the real MiniLM + Chroma."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent.cli.main import app
from tests.integration.test_profiles_llm import PROFILE

runner = CliRunner()


def test_run_indexes_trains_evaluates_reranks_and_shows_an_example(
    slice_dir: Path, tmp_path: Path, embedding_cache: Path, llm_model_dir: Path
) -> None:
    work = tmp_path / "work"
    small_llm = [
        arg
        for key, value in {
            "llm.model_dir": llm_model_dir,
            "llm.threads": 1,
            "llm.timeout_s": 900,
            **PROFILE,
        }.items()
        for arg in ("--set", f"{key}={value}")
    ]

    def args(rerank: list[str], report: str) -> list[str]:
        return [
            "--set", f"work_dir={work}",
            "--set", f"embedding.cache_dir={embedding_cache}",
            "--set", "eval.bootstrap=20",
            "--set", "train.hidden=16",
            "--set", "train.max_len=10",
            "--set", "rerank.top_n=5",
            *small_llm,
            "run", "--data", str(slice_dir),
            "--models", "popularity,text-knn,sasrec-id",
            "--epochs", "1", "--users", "20", *rerank, "--out", str(work / report),
        ]  # fmt: skip

    result = runner.invoke(
        app, args(["--rerankers", "verbalizer", "--rerank-users", "2"], "report")
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((work / "report" / "results.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in payload["results"]] == ["popularity", "text-knn", "sasrec-id"]
    assert all(r["n_users"] == 20 for r in payload["results"])
    assert payload["extra"]["models"]["sasrec-id"]["source"] == "trained"
    assert (work / "checkpoints" / "sasrec-id").is_dir()
    assert (work / "chroma").is_dir()  # the embedded store was filled
    # The best trained model as retriever, alone and reranked, on a 2-user sample.
    two = json.loads((work / "report" / "two-stage" / "results.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in two["results"]] == ["sasrec-id", "sasrec-id+verbalizer"]
    assert all(r["n_users"] == 2 for r in two["results"])
    assert two["extra"]["two_stage"]["rows"]["sasrec-id+verbalizer"]["stats"]["users"] == 2
    # The example user end to end: history, profile, retrieved, reranked.
    assert "held-out target" in result.output
    assert "profile (local/" in result.output
    assert "retrieved by sasrec-id" in result.output
    assert "reranked by verbalizer" in result.output

    # Second run without rerankers: nothing to train, same numbers, the plain example.
    again = runner.invoke(app, args(["--rerankers", ""], "report2"))
    assert again.exit_code == 0, again.output
    payload2 = json.loads((work / "report2" / "results.json").read_text(encoding="utf-8"))
    assert payload2["extra"]["models"]["sasrec-id"]["source"] == "checkpoint"
    assert payload2["results"][2]["metrics"] == payload["results"][2]["metrics"]
    assert "text-knn (Chroma)" in again.output
    assert "sasrec-id (full" in again.output


def test_run_bad_data_path_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--set", f"work_dir={tmp_path}", "run", "--data", str(tmp_path / "missing")]
    )
    assert result.exit_code == 2
    assert "data path not found" in result.stderr
    assert "Traceback" not in result.output
