"""Rerankers by name, built from settings (one place that knows them all)."""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

from agent.config import RerankSettings, Settings
from agent.data.schema import Dataset
from agent.llm.adapters import adapter_prompt
from agent.llm.backend import LLMBackend
from agent.prompts import load_template
from agent.rerank.base import Reranker
from agent.rerank.bootstrap import BootstrapReranker
from agent.rerank.head import load_head_reranker
from agent.rerank.listwise import ListwiseReranker
from agent.rerank.ranker import load_ranker
from agent.rerank.verbalizer import VerbalizerReranker

log = logging.getLogger(__name__)

# Rerank settings that shape the prompt; an adapter's card records them (finetune/pipeline.py).
_PROMPT_KEYS = ("history_items", "title_chars", "one_shot", "listwise_labels")

# listwise and verbalizer ask the LLM; ranker is the learned second stage (LightGBM over
# retriever, text, co-visitation and, when trained with them, frozen LLM-state features).
RerankerName = Literal["listwise", "verbalizer", "ranker", "head"]
RERANKERS: tuple[str, ...] = get_args(RerankerName)
# Trained second stages that read cached features and never call the LLM.
LEARNED_RERANKERS: tuple[str, ...] = ("ranker", "head")


def with_adapter_prompt(settings: Settings, rerank: RerankSettings) -> RerankSettings:
    """``rerank`` with the prompt settings its adapter was trained on (its card's ``prompt``):
    an adapter trained without the worked example must not be shown one, and so on."""
    learned = adapter_prompt(settings, rerank.adapter)
    changes = {k: v for k, v in learned.items() if k in _PROMPT_KEYS and getattr(rerank, k) != v}
    if not changes:
        return rerank
    log.info("adapter %s: prompt settings from its card: %s", rerank.adapter, changes)
    return rerank.model_copy(update=changes)


def make_reranker(
    name: str,
    backend: LLMBackend | None,
    settings: Settings | RerankSettings,
    *,
    use_profile: bool | None = None,
    shuffles: int | None = None,
    seed: int | None = None,
    data: Dataset | None = None,
) -> Reranker:
    """The reranker ``name`` over ``backend``; keyword arguments override the settings.

    ``ranker`` needs the full ``Settings`` (its folder) and ``data`` (its features).
    ``shuffles > 0`` wraps it in ``BootstrapReranker`` (seeded by ``seed``, default the
    settings' seed, else 42).
    """
    rerank = settings.rerank if isinstance(settings, Settings) else settings
    default_seed = settings.seed if isinstance(settings, Settings) else 42
    if isinstance(settings, Settings) and rerank.adapter:
        rerank = with_adapter_prompt(settings, rerank)
    common: dict[str, Any] = {
        "window": rerank.window,
        "step": rerank.step,
        "history_items": rerank.history_items,
        "use_profile": rerank.use_profile if use_profile is None else use_profile,
        "one_shot": rerank.one_shot,
        "title_chars": rerank.title_chars,
        "adapter": rerank.adapter,
    }
    reranker: Reranker
    if name in LEARNED_RERANKERS:
        if not isinstance(settings, Settings) or data is None:
            raise ValueError(f"the {name} reranker needs the full settings and the dataset")
        if name == "head":
            return load_head_reranker(settings.head_dir, backend, data, settings)
        return load_ranker(settings.ranker_dir, backend, data, settings)
    if backend is None:
        raise ValueError(f"the {name} reranker needs an LLM backend")
    if name == "listwise":
        reranker = ListwiseReranker(
            backend,
            load_template(rerank.templates.listwise),
            labels=rerank.listwise_labels,
            constrained=rerank.constrained,
            with_reason=rerank.reason,
            max_tokens=rerank.max_tokens,
            **common,
        )
    elif name == "verbalizer":
        reranker = VerbalizerReranker(backend, load_template(rerank.templates.verbalizer), **common)
    else:
        raise ValueError(f"unknown reranker {name!r}; known: {', '.join(RERANKERS)}")
    count = rerank.shuffles if shuffles is None else shuffles
    if count > 0:
        return BootstrapReranker(reranker, count, seed=default_seed if seed is None else seed)
    return reranker
