"""The LLM backend for a long-lived service: the model folder prepared on first use, the
client kept open for the service's life."""

from __future__ import annotations

import logging
from typing import Literal

from agent.config import Settings
from agent.llm.backend import LLMBackend
from agent.llm.factory import make_backend
from agent.llm.model_files import ensure_llm_model

log = logging.getLogger(__name__)

BackendKind = Literal["local", "openai"]
__all__ = ["BackendKind", "ensure_llm_model", "open_backend"]


def open_backend(
    settings: Settings, kind: BackendKind | None = None, *, timeout_s: float | None = None
) -> LLMBackend:
    """The configured backend, its model prepared; ``timeout_s`` overrides ``llm.timeout_s``."""
    ensure_llm_model(settings, kind)
    if timeout_s is not None:
        llm = settings.llm.model_copy(update={"timeout_s": timeout_s})
        settings = settings.model_copy(update={"llm": llm})
    return make_backend(settings, kind)
