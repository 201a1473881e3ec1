"""One local Ray cluster for the whole test run (a start costs seconds): the compute tests'
jobs connect to it instead of starting their own (``agent.compute.runtime.ray_session``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["ray_cluster"]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """The ``ray`` module, connected to a 2-CPU local cluster started once per test run."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(
        num_cpus=2,
        object_store_memory=256 << 20,
        include_dashboard=False,
        runtime_env={
            "env_vars": {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "ANONYMIZED_TELEMETRY": "False",
            }
        },
    )
    try:
        yield ray
    finally:
        ray.shutdown()
