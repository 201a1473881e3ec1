"""The batch jobs' parts on disk, without Ray: reading them back after a kill, and one row per
id when a retried batch wrote some rows twice."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.compute.batch import BatchJob, _first_ok, read_parts, run_batches
from agent.config import load_settings


def test_read_parts_skips_and_deletes_a_part_cut_short(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": ["a", "b"], "error": ["", ""]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"key": ["c"], "error": [""]}), tmp_path / "p2.parquet")
    whole = (tmp_path / "p2.parquet").read_bytes()
    (tmp_path / "p3.parquet").write_bytes(whole[: len(whole) // 2])  # killed mid-write
    table, broken = read_parts(tmp_path)
    assert table is not None
    assert sorted(table.column("key").to_pylist()) == ["a", "b", "c"]
    assert broken == 1
    assert not (tmp_path / "p3.parquet").exists()


def test_read_parts_of_an_empty_folder(tmp_path: Path) -> None:
    assert read_parts(tmp_path) == (None, 0)


def test_one_row_per_id_preferring_a_success() -> None:
    table = pa.table(
        {
            "key": ["a", "b", "a", "c", "b"],
            "value": [1, 2, 3, 4, 5],
            "error": ["timeout", "", "", "", ""],
        }
    )
    kept, dropped = _first_ok(table, "key")
    assert dropped == 2
    rows = dict(zip(kept.column("key").to_pylist(), kept.column("value").to_pylist(), strict=True))
    # a's failed first try gives way to its success; b keeps its first success
    assert rows == {"a": 3, "b": 2, "c": 4}


def test_no_rows_is_an_empty_result_without_starting_ray(tmp_path: Path) -> None:
    settings = load_settings(overrides={"work_dir": str(tmp_path)})
    job = BatchJob("check", "empty", "key", object)
    table, report = run_batches(job, pa.table({"key": pa.array([], pa.string())}), settings)
    assert table.num_rows == 0
    assert (report.rows, report.computed, report.failed) == (0, 0, {})


def test_repeated_ids_are_refused(tmp_path: Path) -> None:
    settings = load_settings(overrides={"work_dir": str(tmp_path)})
    job = BatchJob("check", "repeated", "key", object)
    with pytest.raises(ValueError, match="repeated values"):
        run_batches(job, pa.table({"key": ["a", "b", "a"]}), settings)
