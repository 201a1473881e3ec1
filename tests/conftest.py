"""Shared fixtures: a small slice of the real food-kitchen data and settings in a temp dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.config import DEFAULT_DATA_DIR, Settings, load_settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("RECBRIDGE_TEST_DATA", str(DEFAULT_DATA_DIR)))
SLICE_TRAIN, SLICE_VALID, SLICE_TEST = 600, 40, 40


def _write_slice(dest: Path) -> None:
    """The first users of each split of the real data and every item they touch."""
    wanted = {"train": SLICE_TRAIN, "valid": SLICE_VALID, "test": SLICE_TEST}
    rows: list[dict[str, object]] = []
    with (SHARED_DATA / "sequences.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if wanted[row["split"]] > 0:
                wanted[row["split"]] -= 1
                rows.append(row)
            if not any(wanted.values()):
                break
    needed = {i for r in rows for i in r["items"]}  # type: ignore[attr-defined]
    dest.mkdir(parents=True, exist_ok=True)
    with (
        (SHARED_DATA / "items.jsonl").open(encoding="utf-8") as fh,
        (dest / "items.jsonl").open("w", encoding="utf-8") as out,
    ):
        for line in fh:
            if json.loads(line)["item_id"] in needed:
                out.write(line)
    with (dest / "sequences.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


@pytest.fixture(scope="session")
def slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHARED_DATA / "sequences.jsonl").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    dest = tmp_path_factory.mktemp("food-kitchen-slice")
    _write_slice(dest)
    return dest


@pytest.fixture(scope="session")
def slice_data(slice_dir: Path) -> Dataset:
    return load_dataset(load_settings(overrides={"data.path": str(slice_dir)}).data)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the whole session, so the slice is embedded once."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture()
def settings(slice_dir: Path, tmp_path: Path, embedding_cache: Path) -> Settings:
    """Settings on the slice with a fresh work dir; small, fast training."""
    return load_settings(
        overrides={
            "data.path": str(slice_dir),
            "work_dir": str(tmp_path / "work"),
            "embedding.cache_dir": str(embedding_cache),
            "train.epochs": 3,
            "train.hidden": 32,
            "train.max_len": 20,
            "eval.bootstrap": 50,
        }
    )
