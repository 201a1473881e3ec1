"""Where and from what code a result came: git commit (+ dirty flag) and host facts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.config import PROJECT_ROOT


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, not a repository, or too slow: the report still gets written
    return done.stdout.strip()


def git_info(cwd: Path = PROJECT_ROOT) -> dict[str, Any]:
    commit = _git(["rev-parse", "HEAD"], cwd)
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd) if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    # Versions of what is already imported only: importing torch just to report it is slow.
    for mod in ("numpy", "torch", "sentence_transformers", "chromadb"):
        if mod in sys.modules:
            info[f"{mod}_version"] = getattr(sys.modules[mod], "__version__", None)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    return info


def run_info() -> dict[str, Any]:
    return {"git": git_info(), "host": host_info()}
