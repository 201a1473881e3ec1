"""Rerank study files and their report, on crafted rows (no LLM: the rows are results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eval.rerank_study import (
    RerankStudyError,
    RowResult,
    load_rerank_study,
    markdown,
    paired_interval,
    summarize_rows,
)
from eval.rerank_study.spec import RerankStudySpec

GOOD = """
name = "s"
users = 4
[[rows]]
name = "retriever"
[[rows]]
name = "v"
reranker = "verbalizer"
adapter = "a=/tmp/a"
fusion = "valid"
vs = "retriever"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_study_file_loads_and_bad_rows_name_the_field(tmp_path: Path) -> None:
    spec = load_rerank_study(_write(tmp_path, GOOD))
    assert spec.rows[1].adapter_name == "a" and spec.rows[1].fusion == "valid"
    bad = GOOD.replace('reranker = "verbalizer"', 'reranker = "pointwise"')
    with pytest.raises(RerankStudyError, match=r"rows\.1.*unknown reranker 'pointwise'"):
        load_rerank_study(_write(tmp_path, bad))
    late = GOOD.replace('vs = "retriever"', 'vs = "later"')
    with pytest.raises(RerankStudyError, match="vs 'later' is not an earlier row"):
        load_rerank_study(_write(tmp_path, late))
    orphan = GOOD.replace('name = "retriever"', 'name = "retriever"\nfusion = 0.5')
    with pytest.raises(RerankStudyError, match="need a reranker"):
        load_rerank_study(_write(tmp_path, orphan))
    with pytest.raises(RerankStudyError, match="not found"):
        load_rerank_study(tmp_path / "missing.toml")


def test_paired_interval_brackets_the_mean() -> None:
    diff = np.array([0.1, 0.0, 0.2, -0.1, 0.3, 0.0])
    mean, lo, hi = paired_interval(diff, 2000, 1)
    assert mean == pytest.approx(diff.mean())
    assert lo < mean < hi
    same = paired_interval(np.zeros(5), 100, 1)
    assert same == (0.0, 0.0, 0.0)


def _row(name: str, ranks: list[int], stats: dict[str, float] | None = None) -> RowResult:
    return RowResult(
        name=name,
        fingerprint="f",
        user_ids=["a", "b", "c", "d"],
        domains=["food", "food", "kitchen", "kitchen"],
        ranks=ranks,
        stats=dict(stats or {}),
    )


def test_summary_per_domain_paired_delta_and_top_n_subset(tmp_path: Path) -> None:
    spec = RerankStudySpec.model_validate(
        {
            "name": "s",
            "top_n": 20,
            "rows": [
                {"name": "retriever"},
                {"name": "v", "reranker": "verbalizer", "vs": "retriever"},
            ],
        }
    )
    base = _row("retriever", [1, 30, 0, 5])
    better = _row("v", [0, 30, 0, 2], {"rerank_s_per_user": 1.5, "fallback_rate": 0.0})
    summary = summarize_rows(spec, [base, better])
    ndcg = lambda r: 1 / np.log2(r + 2) if r < 10 else 0.0  # noqa: E731
    assert summary[0]["domains"]["food"]["ndcg@10"] == pytest.approx((ndcg(1) + 0) / 2)
    assert summary[1]["domains"]["kitchen"]["hr@10"] == 1.0
    delta = summary[1]["delta_ndcg@10"]
    expected = np.mean([ndcg(0) - ndcg(1), 0, 0, ndcg(2) - ndcg(5)])
    assert delta["mean"] == pytest.approx(expected)
    assert summary[1]["top_n_users"] == 3  # user b's target is outside the top 20
    assert summary[1]["top_n_delta_ndcg@10"]["mean"] == pytest.approx(expected * 4 / 3)
    assert summary[1]["moved"] == {"up": 2, "down": 0}
    table = markdown(spec, summary)
    assert "| `v` |" in table and "(retriever)" in table
    other_users = RowResult(**{**better.__dict__, "user_ids": ["x", "b", "c", "d"]})
    with pytest.raises(ValueError, match="other users"):
        summarize_rows(spec, [base, other_users])


def test_the_shipped_rerank_study_loads_with_valid_row_settings() -> None:
    from eval.rerank_study import row_settings

    path = Path(__file__).resolve().parents[2] / "eval" / "studies" / "rerank.toml"
    spec = load_rerank_study(path)
    assert spec.users >= 500 and spec.rows[0].reranker is None
    for row in spec.rows:
        settings = row_settings(spec, row, None, [])
        assert settings.rerank.adapter == row.adapter_name
