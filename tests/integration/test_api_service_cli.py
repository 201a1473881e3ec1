"""The CLI commands over the service: the LLM is prepared on first use (no "run `recbridge llm
prepare` first" traceback in a fresh work folder) and library errors reach the user as one
line; ``recommend`` and ``score`` go through ``RecBridgeService``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.data.schema import Dataset
from agent.llm.model_files import MARKER

pytestmark = pytest.mark.integration

runner = CliRunner()


def _sets(work: Path, embedding_cache: Path, **extra: object) -> list[str]:
    sets = {
        "work_dir": work,
        "embedding.cache_dir": embedding_cache,
        "train.epochs": 1,
        "train.hidden": 32,
        "train.max_len": 20,
        "train.threads": 1,
        "llm.threads": 1,
        "eval.valid_protocol": "sampled-100",
        **extra,
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def _input(data: Dataset, path: Path) -> Path:
    rows = []
    for user in data.split("test")[:2]:
        assert user.target is not None
        pool = [i for i in data.items if data.domain_of(i) == data.domain_of(user.target)]
        rows.append({"user_id": user.user_id, "history": list(user.history),
                     "candidates": [user.target, *pool[:5]]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_semacdr_train_in_a_fresh_folder_prepares_the_llm(
    slice_dir: Path,
    slice_data: Dataset,
    embedding_cache: Path,
    slice_embeddings: object,  # the slice embedded once, into the shared cache
    tmp_path: Path,
) -> None:
    work = tmp_path / "fresh"
    args = _sets(work, embedding_cache, **{"methods.semantics.max_items": 2,
                                           "methods.semantics.max_tokens": 12})  # fmt: skip
    out = tmp_path / "scores.jsonl"
    result = runner.invoke(
        app,
        [*args, "score", "--model", "semacdr", "--train", "--data", str(slice_dir),
         "--input", str(_input(slice_data, tmp_path / "in.jsonl")), "--output", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (work / "models" / "smollm2-135m-instruct" / MARKER).is_file()  # prepared on first use
    assert (work / "checkpoints" / "semacdr" / "fit_report.json").is_file()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [len(line["scores"]) for line in lines] == [6, 6]


def test_library_errors_are_one_line(
    slice_dir: Path, slice_data: Dataset, embedding_cache: Path, tmp_path: Path
) -> None:
    args = _sets(tmp_path / "w", embedding_cache)
    result = runner.invoke(
        app,
        [*args, "score", "--model", "sasrec-id", "--data", str(slice_dir),
         "--input", str(_input(slice_data, tmp_path / "in.jsonl")),
         "--output", str(tmp_path / "o.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: sasrec-id is a trained model")
    assert errors[0].endswith("or pass --train to train it now")
    result = runner.invoke(
        app,
        [*args, "recommend", "--data", str(slice_dir), "--history", "B0NOTANITEM1",
         "--retriever", "popularity", "--reranker", "none", "--no-profile"],
    )  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not in the catalogue: B0NOTANITEM1" in result.stderr


def test_recommend_cli_through_the_service(
    slice_dir: Path, slice_data: Dataset, embedding_cache: Path, tmp_path: Path
) -> None:
    user = slice_data.split("test")[0]
    args = _sets(tmp_path / "w", embedding_cache)
    result = runner.invoke(
        app,
        [*args, "recommend", "--data", str(slice_dir), "--user", user.user_id,
         "--retriever", "popularity", "--reranker", "none", "--no-profile", "--top-k", "3",
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["user_id"] == user.user_id and len(rec["items"]) == 3
    assert rec["history"] == list(user.history)
