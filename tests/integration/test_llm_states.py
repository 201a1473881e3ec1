"""The frozen LLM item-state cache with the real SmolLM2: ``recbridge llm states`` killed after
its first part resumes without redoing it, and ends equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import PROJECT_ROOT, Settings, load_settings
from agent.data.loader import load_dataset
from agent.items.llm_states import StatesError, compute_item_states, load_item_states, states_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = 40
CHUNK = 8


@pytest.fixture(scope="module")
def tiny_dir(slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ITEMS items of the slice and a few rows over them."""
    dest = tmp_path_factory.mktemp("tiny-states")
    lines = (slice_dir / "items.jsonl").read_text(encoding="utf-8").splitlines()[:ITEMS]
    (dest / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = [json.loads(line)["item_id"] for line in lines]
    rows = [
        {"user_id": "a", "split": "train", "items": ids[0:5]},
        {"user_id": "v", "split": "valid", "items": ids[5:9]},
        {"user_id": "t", "split": "test", "items": ids[9:13]},
    ]
    (dest / "sequences.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    return dest


def _settings(data: Path, work: Path, model_dir: Path) -> Settings:
    return load_settings(
        set_items=[f"data.path={data}", f"work_dir={work}", f"llm.model_dir={model_dir}"]
    )


def test_states_resume_after_a_kill(tiny_dir: Path, llm_model_dir: Path, tmp_path: Path) -> None:
    killed = _settings(tiny_dir, tmp_path / "killed", llm_model_dir)
    folder = states_dir(killed, "smollm2")
    argv = [sys.executable, "-m", "agent.cli"]
    for key in ("data.path", "work_dir", "llm.model_dir"):
        value = {"data.path": tiny_dir, "work_dir": killed.work_dir, "llm.model_dir": llm_model_dir}
        argv += ["--set", f"{key}={value[key]}"]
    argv += ["llm", "states", "--chunk", str(CHUNK), "--batch", "4", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(folder.glob("part-*.npy")):
        assert proc.poll() is None, "the states command ended before writing a part"
        assert time.monotonic() < deadline, "no part written in 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in folder.glob("part-*.npy"))
    assert 1 <= len(done) < ITEMS // CHUNK  # killed midway
    assert not list(folder.glob("*.tmp.npy"))  # no half-written part is left as done
    first = {name: (folder / name).stat().st_mtime_ns for name in done}
    data = load_dataset(killed.data)
    with pytest.raises(StatesError, match="missing"):
        load_item_states(data, killed, "smollm2")

    compute_item_states(data, killed, "smollm2", batch=4, threads=1, chunk=CHUNK, progress=False)
    # the parts written before the kill were not redone
    assert {n: (folder / n).stat().st_mtime_ns for n in done} == first
    resumed = load_item_states(data, killed, "smollm2")

    fresh = _settings(tiny_dir, tmp_path / "fresh", llm_model_dir)
    compute_item_states(data, fresh, "smollm2", batch=4, threads=1, chunk=CHUNK, progress=False)
    whole = load_item_states(data, fresh, "smollm2")
    assert resumed.shape == (ITEMS + 1, 576) and not resumed[0].any()
    np.testing.assert_allclose(resumed, whole, atol=1e-5)
    # distinct items, distinct states
    assert np.linalg.norm(resumed[1] - resumed[2]) > 1e-3
