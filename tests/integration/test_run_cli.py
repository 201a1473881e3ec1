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
            "--models", "popularity,text-knn,sasrec-id,gru4rec",
            "--epochs", "1", "--users", "20", *rerank, "--out", str(work / report),
        ]  # fmt: skip

    result = runner.invoke(
        app, args(["--rerankers", "verbalizer", "--rerank-users", "2"], "report")
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((work / "report" / "results.json").read_text(encoding="utf-8"))
    names = ["popularity", "text-knn", "sasrec-id", "gru4rec"]
    assert [r["model"] for r in payload["results"]] == names
    assert all(r["n_users"] == 20 for r in payload["results"])
    models = payload["extra"]["models"]
    # The two trained models trained side by side, each in a process with its own log.
    for name in ("sasrec-id", "gru4rec"):
        assert models[name]["source"] == "trained"
        assert (work / "checkpoints" / name / "fit_report.json").is_file()
        assert "best valid NDCG@10" in (work / "logs" / f"train-{name}.log").read_text()
    # The two-stage users were profiled in a process of their own while the models trained.
    profiled = (work / "logs" / "run-profiles.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(profiled) == 2
    assert (work / "chroma").is_dir()  # the embedded store was filled
    # The trained model best on VALID users as retriever, alone and reranked, on 2 users.
    best = max(("sasrec-id", "gru4rec"), key=lambda n: models[n]["fit"]["best_valid_ndcg10"])
    two = json.loads((work / "report" / "two-stage" / "results.json").read_text(encoding="utf-8"))
    assert [r["model"] for r in two["results"]] == [best, f"{best}+verbalizer"]
    assert all(r["n_users"] == 2 for r in two["results"])
    assert two["extra"]["two_stage"]["rows"][f"{best}+verbalizer"]["stats"]["users"] == 2
    # The example user end to end: history, profile, retrieved, reranked.
    assert "held-out target" in result.output
    assert "profile (local/" in result.output
    assert f"retrieved by {best}" in result.output
    assert "reranked by verbalizer" in result.output

    # Second run without rerankers: nothing to train, same numbers, the plain example.
    again = runner.invoke(app, args(["--rerankers", ""], "report2"))
    assert again.exit_code == 0, again.output
    payload2 = json.loads((work / "report2" / "results.json").read_text(encoding="utf-8"))
    for i, name in enumerate(names[2:], start=2):
        assert payload2["extra"]["models"][name]["source"] == "checkpoint"
        assert payload2["results"][i]["metrics"] == payload["results"][i]["metrics"]
    assert "text-knn (Chroma)" in again.output
    assert f"{best} (full" in again.output


def test_run_bad_data_path_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--set", f"work_dir={tmp_path}", "run", "--data", str(tmp_path / "missing")]
    )
    assert result.exit_code == 2
    assert "data path not found" in result.stderr
    assert "Traceback" not in result.output
