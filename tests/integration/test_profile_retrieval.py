"""The profile adapter and profile retrieval end to end on the real slice: next-interest data
(CLI), a 2-step LoRA run of the real model (CLI, the reranker adapters' trainer), then the
profile-retrieval measure on 3 test users with all four query sources through the real local
backend, MiniLM and an embedded Chroma store; a second run answers from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import load_settings
from agent.data.loader import load_dataset
from agent.items.embedder import MiniLMEmbedder
from agent.llm.adapters import adapter_card, discover_adapters
from eval.profile_retrieval import (
    NEXT_SOURCES,
    ProfileEvalError,
    ProfileRetrieval,
    markdown,
    write_report,
)
from finetune.profile_data import check_profile_leakage, read_profile_examples
from finetune.profile_train import profile_data_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
runner = CliRunner()


def _sets(slice_dir: Path, model_dir: Path, work: Path, cache: Path) -> list[str]:
    values = {
        "data.path": slice_dir,
        "work_dir": work,
        "llm.model_dir": model_dir,
        "llm.threads": 1,
        "embedding.cache_dir": cache,
        "eval.bootstrap": 50,
        "finetune.max_examples": 8,
        "finetune.r": 8,
        "finetune.alpha": 16,
        "finetune.batch_size": 2,
        "finetune.grad_accum": 1,
        "finetune.lr": 3e-3,
        "finetune.warmup_steps": 0,
        "finetune.checkpoint_every": 1,
        "finetune.threads": 1,
        "profile.next.history_items": 3,
        "profile.next.title_chars": 30,
        "profile.next.max_tokens": 40,
    }
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={value}"]
    return out


def test_profile_adapter_and_profile_retrieval(
    slice_dir: Path,
    llm_model_dir: Path,
    minilm: MiniLMEmbedder,
    embedding_cache: Path,
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    sets = _sets(slice_dir, llm_model_dir, work, embedding_cache)
    settings = load_settings(set_items=[s for s in sets if s != "--set"])
    data = load_dataset(settings.data)

    # Without a trained adapter the lora source is refused with the command that makes one.
    with pytest.raises(ProfileEvalError, match="finetune train --kind profile"):
        ProfileRetrieval(data, settings, users=3, embedder=minilm)
    next_only = ["--sources", ",".join(NEXT_SOURCES)]
    refused = runner.invoke(app, [*sets, "profile-eval", "--users", "3", *next_only])
    assert refused.exit_code == 2
    assert "finetune train --kind profile" in refused.output

    made = runner.invoke(app, [*sets, "finetune", "data", "--recipe", "next-interest"])
    assert made.exit_code == 0, made.output
    examples = read_profile_examples(profile_data_path(settings))
    assert len(examples) == 8
    check_profile_leakage(examples, data)  # train rows only
    trained = runner.invoke(app, [*sets, "finetune", "train", "--kind", "profile", "--steps", "2"])
    assert trained.exit_code == 0, trained.output
    adapter = discover_adapters(settings)["profile-next"]
    card = adapter_card(adapter)
    assert card is not None and card["kind"] == "profile" and card["steps"] == 2
    assert len(card["loss_curve"]) == 2 and card["data"]["examples"] == 8
    assert card["template"]["file"] == "profile_next.j2"

    run = ProfileRetrieval(data, settings, users=3, sources=NEXT_SOURCES, embedder=minilm)
    report = run.run()
    assert report.users == 3
    assert [row.source for row in report.sources] == list(NEXT_SOURCES)
    users = [row["user_id"] for row in report.per_user]
    for row in report.sources:
        for metric in ("hr@10", "hr@50", "ndcg@10"):
            assert 0.0 <= row.metrics[metric]["mean"] <= 1.0
        assert row.metrics["hr@10"]["mean"] <= row.metrics["hr@50"]["mean"]
    for user in report.per_user:
        assert set(user["positions"]) == set(NEXT_SOURCES)
        assert all(text for text in user["queries"].values())
    # The oracle (the rule on the target itself: its brand and kind) finds the target.
    oracle = report.row("target-rule").metrics["hr@50"]["mean"]
    assert oracle >= report.row("titles").metrics["hr@50"]["mean"]
    assert report.row("base").cached == 0 and report.row("lora").cached == 0

    again = ProfileRetrieval(data, settings, users=3, sources=NEXT_SOURCES, embedder=minilm).run()
    assert [u["user_id"] for u in again.per_user] == users  # the same seeded users
    assert again.row("base").cached == 3 and again.row("lora").cached == 3
    assert [u["positions"] for u in again.per_user] == [u["positions"] for u in report.per_user]

    json_path, md_path = write_report(report, tmp_path / "report")
    assert json.loads(json_path.read_text())["users"] == 3
    assert "| lora |" in md_path.read_text() and md_path.read_text() == markdown(report)

    out = ["--out", str(tmp_path / "c")]
    cli = runner.invoke(app, [*sets, "profile-eval", "--users", "3", *next_only, *out])
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "c" / "report.md").is_file()
    cli_report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert {row["source"]: row["cached"] for row in cli_report["sources"]}["lora"] == 3
