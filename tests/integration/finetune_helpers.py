"""Small real finetune runs for the tests: the slice's train rows, the real model, short
prompts (3 history items, 5 candidates, short titles) so a step takes seconds on the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agent.config import Settings, load_settings
from finetune.pipeline import make_data, train_adapter
from tests.conftest import SLICE_TEST, SLICE_TRAIN, SLICE_VALID

# Bump when the small adapter's recipe changes: the cached one is then retrained.
SMALL_ADAPTER_VERSION = f"v1-{SLICE_TRAIN}-{SLICE_VALID}-{SLICE_TEST}"


def small_settings(slice_dir: Path, model_dir: Path, work_dir: Path, **extra: Any) -> Settings:
    overrides: dict[str, Any] = {
        "data.path": str(slice_dir),
        "work_dir": str(work_dir),
        "llm.model_dir": str(model_dir),
        "llm.threads": 1,
        "rerank.history_items": 3,
        "rerank.top_n": 5,
        "train.epochs": 2,
        "train.hidden": 32,
        "train.max_len": 20,
        "finetune.candidates": 5,
        "finetune.title_chars": 24,
        "finetune.max_examples": 12,
        "finetune.r": 8,
        "finetune.alpha": 16,
        "finetune.batch_size": 2,
        "finetune.grad_accum": 1,
        "finetune.lr": 3e-3,
        "finetune.warmup_steps": 0,
        "finetune.max_steps": 4,
        "finetune.threads": 1,
    }
    overrides.update(extra)
    return load_settings(overrides=overrides)


def train_small_adapter(slice_dir: Path, model_dir: Path, out: Path) -> Path:
    """A verbalizer adapter (r=8) trained 4 steps on 12 random examples; copied to ``out``."""
    work = out.with_name(out.name + "-work")
    shutil.rmtree(work, ignore_errors=True)
    settings = small_settings(slice_dir, model_dir, work)
    make_data(settings, "random")
    report = train_adapter(settings, name="small", recipe="random", validate=False)
    shutil.copytree(report.adapter_dir, out)
    shutil.rmtree(work, ignore_errors=True)
    return out
