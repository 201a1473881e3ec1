"""A rerank study end to end with the real model on the slice: the retriever, the base
verbalizer, a fused row (weight chosen on valid users) and a row with the finetune adapter,
on the same users; a second call reuses every row; the report has the paired deltas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.rerank_study import run_study
from tests.integration.llm_fixtures import RERANK_ADAPTER

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rerank_study_runs_caches_and_reports(
    slice_dir: Path, llm_model_dir: Path, rerank_adapter: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study.toml"
    study.write_text(
        f"""
name = "tiny"
retriever = "popularity"
users = 4
valid_users = 3
top_n = 5
set = ["llm.threads=1", "rerank.history_items=3", "rerank.title_chars=24",
       "rerank.one_shot=false", "rerank.use_profile=false"]

[[rows]]
name = "retriever"

[[rows]]
name = "base"
reranker = "verbalizer"
vs = "retriever"

[[rows]]
name = "base-fused"
reranker = "verbalizer"
fusion = "valid"
vs = "base"

[[rows]]
name = "lora"
reranker = "verbalizer"
adapter = "{RERANK_ADAPTER}={rerank_adapter}"
vs = "retriever"
""",
        encoding="utf-8",
    )
    base_set = [
        f"data.path={slice_dir}",
        f"work_dir={tmp_path / 'work'}",
        f"llm.model_dir={llm_model_dir}",
    ]
    path, rows = run_study(study, base_set=base_set)
    assert [r.name for r in rows] == ["retriever", "base", "base-fused", "lora"]
    assert all(r.user_ids == rows[0].user_ids and len(r.ranks) == 4 for r in rows)
    fused = rows[2]
    assert 0.0 <= fused.fusion["weight"] <= 1.0 and fused.fusion["valid_users"] == 3
    assert len(fused.fusion["valid_curve"]) == 11
    assert rows[3].describe["adapter"] == RERANK_ADAPTER
    assert rows[3].describe["adapter_weights"]
    # base and base-fused share the LLM's answers through the rerank cache.
    assert fused.stats["cached"] == 4
    report = json.loads((path.parent / "study.json").read_text())
    by_row = {r["row"]: r for r in report["rows"]}
    assert by_row["lora"]["vs"] == "retriever" and "delta_ndcg@10" in by_row["lora"]
    assert "| `base-fused` |" in path.read_text()
    # A second call reuses the finished rows (fingerprints match): nothing is rerun.
    _, again = run_study(study, base_set=base_set)
    assert [r.ranks for r in again] == [r.ranks for r in rows]
    assert [r.seconds for r in again] == [r.seconds for r in rows]
