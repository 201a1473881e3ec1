"""One Ray session per job: connect to ``compute.address`` or start a local cluster.

Settings travel to the workers as plain data with every path made absolute, since a worker's
working directory is not the driver's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.config import Settings

log = logging.getLogger(__name__)


class ComputeError(RuntimeError):
    """The Ray engine could not run a job; the message names the cause."""


def require_ray() -> Any:
    """The ``ray`` module, or a ComputeError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ComputeError(
            "compute.engine=ray needs Ray: pip install -e '.[ray]' (ray[data,train]==2.60.0)"
        ) from exc
    return ray


def _absolute(value: Any) -> Any:
    if isinstance(value, Path):
        return value.resolve()
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    return value


def portable_settings(settings: Settings) -> dict[str, Any]:
    """``settings`` as a dict a worker rebuilds with ``Settings.model_validate``; relative paths
    (the data folder above all) resolved against the driver's working directory."""
    body = _absolute(settings.model_dump())
    body["data"]["path"] = str(Path(settings.data.path).resolve())
    return body  # type: ignore[no-any-return]


def worker_settings(settings: Settings) -> dict[str, Any]:
    """``portable_settings`` for an actor of a job: on the local engine, since an actor reads
    what the driver prepared (embeddings in the cache) instead of starting jobs of its own."""
    body = portable_settings(settings)
    body["compute"]["engine"] = "local"
    return body


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[Any]:
    """The ``ray`` module with a connected session for the block.

    An already connected session (a test's cluster, a notebook) is used as is and left open;
    otherwise connect to ``compute.address`` or start a local cluster, and shut it down after.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    cfg = settings.compute
    # Workers inherit the driver's environment: no hub access, no telemetry.
    env = {
        key: os.environ.get(key, "1")
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
    }
    env["TOKENIZERS_PARALLELISM"] = "false"
    started = time.perf_counter()
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "runtime_env": {"env_vars": env},
    }
    if cfg.address:
        kwargs["address"] = cfg.address
    else:
        kwargs.update(
            num_cpus=cfg.cpus or os.cpu_count() or 1,
            object_store_memory=cfg.object_store_mb << 20,
        )
    try:
        ray.init(**kwargs)
    except Exception as exc:  # Ray raises bare Exceptions too (a node that timed out starting)
        where = cfg.address or "a local cluster"
        raise ComputeError(f"cannot start Ray on {where}: {exc}") from exc
    log.info(
        "Ray %s up in %.1fs: %s",
        ray.__version__,
        time.perf_counter() - started,
        ray.cluster_resources(),
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def job_dir(settings: Settings, job: str, key: str) -> Path:
    """``<compute_dir>/<job>/<key>``: one job's parquet parts, kept until it has finished."""
    path = settings.compute_dir / job / key
    path.mkdir(parents=True, exist_ok=True)
    return path
