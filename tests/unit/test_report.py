"""Report files: JSON keys, Markdown table, a valid PNG, per-user ranks; git is optional."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import eval.runinfo as runinfo
from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.popularity import PopularityRecommender
from eval.evaluator import RankingEvaluator
from eval.report import markdown_table, print_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_files(slice_data: Dataset, settings: Settings) -> None:
    ev = RankingEvaluator(slice_data, settings, protocol="sampled-100")
    model = PopularityRecommender(slice_data, settings)
    results = [ev(model), ev(model, name="popularity-again")]
    paths = write_report(results, settings, name="unit", extra={"note": "test"})
    assert paths.directory == settings.work_dir / "eval" / "unit"

    payload = json.loads(paths.json.read_text(encoding="utf-8"))
    for key in ("created", "seed", "git", "host", "timings", "results", "settings", "extra"):
        assert key in payload
    assert payload["settings"]["eval"]["bootstrap"] == settings.eval.bootstrap
    assert {"commit", "dirty"} <= set(payload["git"])
    res = payload["results"][0]
    assert res["model"] == "popularity" and res["protocol"] == "sampled-100"
    assert set(res["metrics"]) == {"overall", *slice_data.domains}
    ndcg = res["metrics"]["overall"]["ndcg@10"]
    assert ndcg["lo"] <= ndcg["mean"] <= ndcg["hi"]

    md = paths.markdown.read_text(encoding="utf-8").splitlines()
    header = next(line for line in md if line.startswith("| Model"))
    for col in ("overall HR@1", "overall HR@10", "overall NDCG@5", "overall NDCG@10", "MRR"):
        assert col in header
    for dom in slice_data.domains:
        assert f"{dom} NDCG@10" in header
    rows = [line for line in md if line.startswith("| popularity")]
    assert len(rows) == 2 and "±" in rows[0]
    assert rows[0].count("|") == header.count("|")

    assert paths.png.read_bytes()[:8] == PNG_MAGIC
    assert paths.png.stat().st_size > 1000
    ranks = paths.ranks.read_text(encoding="utf-8").splitlines()
    assert len(ranks) == 2 * 40
    assert set(json.loads(ranks[0])) == {"model", "user_id", "domain", "rank", "n_candidates"}


def test_without_bootstrap_the_table_has_no_intervals(
    slice_data: Dataset, settings: Settings, tmp_path: Path
) -> None:
    ev = RankingEvaluator(slice_data, settings, protocol="sampled-100", bootstrap=0)
    res = ev(PopularityRecommender(slice_data, settings))
    assert "±" not in markdown_table([res], [1, 5, 10]).splitlines()[-1]
    paths = write_report([res], settings, out_dir=tmp_path / "rep")
    payload = json.loads(paths.json.read_text(encoding="utf-8"))  # NaN became null
    assert payload["results"][0]["metrics"]["overall"]["hr@10"]["lo"] is None
    print_table([res], [1, 5, 10])


def test_git_info_tolerates_no_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runinfo.git_info(tmp_path) == {"commit": None, "dirty": None}  # not a repository

    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert runinfo.run_info()["git"] == {"commit": None, "dirty": None}
