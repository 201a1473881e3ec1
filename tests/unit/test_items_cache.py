"""The SQLite embedding cache: keys, atomic batches under SIGKILL, readers during writes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from agent.items.cache import CACHE_FILE, EmbeddingCache, text_key

DIM = 384
BATCH = 200


def _vector(key: str) -> np.ndarray:
    """A deterministic vector per key, so a reader can check any stored row."""
    seed = int(key[:8], 16)
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def test_roundtrip_is_exact_and_model_scoped(tmp_path: Path) -> None:
    keys = [text_key(f"text {i}") for i in range(5)]
    vectors = np.stack([_vector(k) for k in keys])
    with EmbeddingCache(tmp_path) as cache:
        cache.put_many("model-a", keys[:3], vectors[:3])
        got = cache.get_many("model-a", keys)
        assert set(got) == set(keys[:3])  # missing keys are absent, not errors
        for k, v in zip(keys[:3], vectors[:3], strict=True):
            assert got[k].dtype == np.float32 and np.array_equal(got[k], v)
        assert cache.get_many("model-b", keys) == {}  # another model never sees these
        assert cache.count("model-a") == 3 and cache.count() == 3
        cache.put_many("model-a", keys[:1], vectors[4:5])  # replace, no duplicate
        assert cache.count("model-a") == 3
        assert np.array_equal(cache.get_many("model-a", keys[:1])[keys[0]], vectors[4])


def test_key_is_sha256_of_the_exact_text() -> None:
    assert text_key("Sea Salt") == text_key("Sea Salt")
    assert text_key("Sea Salt") != text_key("Sea Salt ")
    assert len(text_key("x")) == 64


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from agent.items.cache import EmbeddingCache, text_key
    from tests.unit.test_items_cache import BATCH, _vector
    cache = EmbeddingCache(__import__("pathlib").Path(sys.argv[1]))
    for b in range(100000):
        keys = [text_key(f"{b}-{i}") for i in range(BATCH)]
        cache.put_many("m", keys, np.stack([_vector(k) for k in keys]))
    """
)


def test_kill_mid_write_keeps_whole_batches_and_readers_never_block(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        reads = 0
        deadline = time.monotonic() + 60
        with EmbeddingCache(tmp_path, timeout_s=1.0) as reader:
            # Concurrent reader: counts and lookups while the writer commits batches.
            while reader.count("m") < 5 * BATCH:
                assert writer.poll() is None, "writer died"
                assert time.monotonic() < deadline, "writer too slow"
                reader.get_many("m", [text_key("0-0"), text_key("0-1")])
                reads += 1
                time.sleep(0.01)
        os.kill(writer.pid, signal.SIGKILL)  # likely inside a transaction
    finally:
        writer.kill()
        writer.wait()
    assert reads > 0
    conn = sqlite3.connect(tmp_path / CACHE_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with EmbeddingCache(tmp_path) as cache:
        total = cache.count("m")
        assert total >= 5 * BATCH and total % BATCH == 0  # only whole batches survive
        batches = total // BATCH
        keys = [text_key(f"{b}-{i}") for b in range(batches) for i in range(BATCH)]
        got = cache.get_many("m", keys)
        assert len(got) == total
        for k in keys[:: BATCH // 4]:
            assert np.array_equal(got[k], _vector(k))
