"""Build the configured backend from settings (one place that knows both kinds)."""

from __future__ import annotations

from typing import Literal

from agent.config import Settings
from agent.llm.adapters import discover_adapters
from agent.llm.backend import LLMBackend


def make_backend(
    settings: Settings, backend: Literal["local", "openai"] | None = None
) -> LLMBackend:
    llm = settings.llm
    common = {
        "timeout_s": llm.timeout_s,
        "retries": llm.retries,
        "retry_backoff_s": llm.retry_backoff_s,
        "concurrency": llm.concurrency,
    }
    if (backend or llm.backend) == "openai":
        from agent.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(settings.llm_url, llm.model, api_key=llm.api_key, **common)
    from agent.llm.local_backend import LocalBackend
    from agent.llm.model_files import ensure_llm_model

    # Every command that needs the local LLM prepares it on first use (once, ~20-60 s).
    ensure_llm_model(settings, "local")

    return LocalBackend(
        settings.llm_model_dir,
        llm.model,
        adapters=discover_adapters(settings),
        threads=llm.threads,
        dtype=llm.local_dtype,
        **common,
    )
