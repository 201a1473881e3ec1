"""`recbridge index` in-process: server URL flag, idempotent rerun, --rebuild, user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.store.chroma_store import ItemIndex, make_client

pytestmark = pytest.mark.integration


def test_index_against_server_then_rerun_and_rebuild(
    tmp_path: Path,
    slice_dir: Path,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,
    session_settings: Settings,
    chroma_server: str,
) -> None:
    base = [
        "--set", f"work_dir={tmp_path}",
        "--set", f"embedding.cache_dir={session_settings.embedding_cache_dir}",
        "--set", "store.collection=clitest",
        "index", "--data", str(slice_dir), "--store-url", chroma_server,
    ]  # fmt: skip
    n = len(slice_data.catalog)
    for args, upserted in [(base, n), (base, 0), ([*base, "--rebuild"], n)]:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert f"{chroma_server}: {n} items ({upserted} upserted, 0 deleted)" in result.stdout
    settings = load_settings(overrides={"store.url": chroma_server, "store.collection": "clitest"})
    index = ItemIndex(make_client(settings), settings, "sentence-transformers/all-MiniLM-L6-v2")
    assert index.count() == n


def test_bad_inputs_exit_2(tmp_path: Path, slice_dir: Path) -> None:
    missing = CliRunner().invoke(app, ["index", "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    unreachable = CliRunner().invoke(
        app,
        ["--set", f"work_dir={tmp_path}", "index", "--data", str(slice_dir),
         "--store-url", "http://127.0.0.1:9"],
    )  # fmt: skip
    assert unreachable.exit_code == 2
