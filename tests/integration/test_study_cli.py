"""``recbridge study`` end to end on the real slice: seeded training runs as subprocesses, one
that fails, evaluation on shared candidates, a resumed second call that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import load_settings
from agent.data.loader import load_dataset
from agent.models.llm_recg import LLMRecGRecommender
from eval.transfer import Transfer, apply_transfer

runner = CliRunner()

STUDY = """
name = "slice"
protocols = ["in-domain", "food:kitchen"]
seeds = [1, 2]
set = ["train.epochs=1", "train.hidden=16", "train.max_len=10", "train.threads=1",
       "methods.llm_recg.fusion_epochs=1", "methods.llm_recg.clusters=2"]
[[rows]]
name = "pop"
model = "popularity"
[[rows]]
name = "recg"
model = "llm-recg"
vs = "pop"
[[rows]]
name = "recg-noSeq"
model = "llm-recg"
checkpoint_of = "recg"
score_set = ["methods.llm_recg.sequence_level=false"]
vs = "recg"
[[rows]]
name = "broken"
model = "sasrec-id"
set = ["train.device=cuda"]  # valid settings, a run that fails: this machine has no GPU
"""


def test_study_trains_each_seed_reports_failures_and_resumes(
    slice_dir: Path, tmp_path: Path, embedding_cache: Path
) -> None:
    work = tmp_path / "work"
    study = tmp_path / "slice.toml"
    study.write_text(STUDY, encoding="utf-8")
    base = [
        "--set", f"work_dir={work}", "--set", f"embedding.cache_dir={embedding_cache}",
        "--set", "eval.bootstrap=0",
    ]  # fmt: skip
    args = [*base, "study", str(study), "--data", str(slice_dir), "--jobs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # the broken row's runs failed
    root = work / "studies" / "slice"
    for tag in ("in-domain", "zeroshot-food-kitchen"):
        for seed in (1, 2):
            assert (root / "checkpoints" / tag / "recg" / f"seed{seed}" / "model.pt").is_file()
            assert not (root / "checkpoints" / tag / "broken" / f"seed{seed}").exists()
            assert not (root / "checkpoints" / tag / "recg-noSeq").exists()
            assert "CUDA" in (root / "logs" / f"{tag}-broken-seed{seed}.log").read_text()
    report = (root / "study.md").read_text(encoding="utf-8")
    assert "## in-domain" in report and "## zeroshot-food-kitchen-hist-target" in report
    assert "| `pop` | det. |" in report and "| `recg` | 2 |" in report
    assert "| `recg-noSeq` | 2 |" in report and "(recg) |" in report and "(pop) |" in report
    assert "in-domain/broken/seed1" in report  # the failure is listed
    assert (root / "study.png").stat().st_size > 1000
    body = json.loads((root / "study.json").read_text(encoding="utf-8"))
    rows = {(r["tag"], r["row"]): r for r in body["rows"]}
    assert ("in-domain", "broken") not in rows
    recg = rows[("in-domain", "recg")]
    assert recg["n_seeds"] == 2 and recg["seconds_per_epoch"]["mean"] > 0
    assert recg["n_users"]["overall"] == 40 and recg["delta_ndcg10"]["n"] == 2
    # zero-shot: only kitchen targets are tested
    assert set(rows[("zeroshot-food-kitchen-hist-target", "recg")]["n_users"]) <= {
        "overall",
        "kitchen",
    }

    # the -seq row scores the same checkpoint with the phase-2 fusion switched off
    settings = load_settings(
        overrides={"data.path": str(slice_dir), "work_dir": str(work)},
        set_items=["train.hidden=16", "train.max_len=10", "methods.llm_recg.clusters=2",
                   f"embedding.cache_dir={embedding_cache}"],
    )  # fmt: skip
    data, _ = apply_transfer(load_dataset(settings.data), Transfer())
    ckpt = root / "checkpoints" / "in-domain" / "recg" / "seed1"
    full = LLMRecGRecommender(data, settings)
    full.load(ckpt)
    off_settings = settings.model_copy(deep=True)
    off_settings.methods.llm_recg.sequence_level = False
    off = LLMRecGRecommender(data, off_settings)
    off.load(ckpt)
    assert not bool(off.net.get_buffer("fused"))
    if bool(full.net.get_buffer("fused")):  # fusion kept: the two score differently
        ids = torch.tensor([[0, 0, 1, 2]])
        assert not torch.allclose(full.net.user_vectors(ids), off.net.user_vectors(ids))

    # again: nothing left to train but the broken row, results read from the cache
    stamps = {p: p.stat().st_mtime for p in root.glob("checkpoints/*/*/*/model.pt")}
    cached = {p: p.stat().st_mtime for p in root.glob("results/*/*.json")}
    again = runner.invoke(app, [*args[:-2], "--no-train"])
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime for p in root.glob("checkpoints/*/*/*/model.pt")} == stamps
    assert {p: p.stat().st_mtime for p in root.glob("results/*/*.json")} == cached
    assert json.loads((root / "study.json").read_text(encoding="utf-8"))["rows"] == body["rows"]


def test_bad_row_settings_stop_the_study_before_any_training(
    slice_dir: Path, tmp_path: Path
) -> None:
    study = tmp_path / "bad.toml"
    study.write_text(
        'name = "bad"\n[[rows]]\nname = "a"\nmodel = "sasrec-id"\nset = ["train.hidden=abc"]\n',
        encoding="utf-8",
    )
    work = tmp_path / "work"
    args = ["--set", f"work_dir={work}", "study", str(study), "--data", str(slice_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert str(study) in text and "row 'a'" in text and "train.hidden" in text
    assert not (work / "studies").exists()
