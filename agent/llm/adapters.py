"""Trained LoRA adapters on disk: where they are, what they are, which prompt they learned.

An adapter is a peft folder (``adapter_config.json`` + weights, the layout vLLM's
``--lora-modules`` loads). Those that ``recbridge finetune train`` writes live in
``<work_dir>/adapters/<name>/`` with an ``adapter_card.json`` (base model, data, prompt
settings, valid curve); every such folder is served without being listed in ``llm.adapters``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from agent.config import Settings

log = logging.getLogger(__name__)

CARD_FILE = "adapter_card.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def is_adapter(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def discover_adapters(settings: Settings) -> dict[str, Path]:
    """``llm.adapters`` plus every trained adapter under ``settings.adapters_dir`` (a name in
    ``llm.adapters`` wins over a folder of the same name)."""
    found: dict[str, Path] = {}
    root = settings.adapters_dir
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and is_adapter(path) and (path / CARD_FILE).is_file():
                found[path.name] = path
    found.update({name: Path(p) for name, p in settings.llm.adapters.items()})
    return found


def adapter_card(path: Path) -> dict[str, Any] | None:
    card = path / CARD_FILE
    if not card.is_file():
        return None
    body: dict[str, Any] = json.loads(card.read_text(encoding="utf-8"))
    return body


def adapter_rank(path: Path) -> int:
    config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    return int(config.get("r", 8))


def adapter_fingerprint(path: Path) -> str:
    """sha256 (first 16 hex digits) of the weights: a retrained adapter under the same name
    must not hit the rerank cache of the old one."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        return ""
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]


def served_lora_rank(settings: Settings, adapters: dict[str, Path]) -> int:
    """vLLM's ``--max-lora-rank``: the setting, raised to the largest adapter's rank."""
    ranks = [adapter_rank(p) for p in adapters.values() if is_adapter(p)]
    return max([settings.llm.max_lora_rank, *ranks])


def adapter_prompt(settings: Settings, name: str | None) -> dict[str, Any]:
    """The rerank prompt settings adapter ``name`` was trained with (from its card); {} when
    it has no card. Rerankers apply them so the adapter sees the prompt it learned."""
    if not name:
        return {}
    path = discover_adapters(settings).get(name)
    if path is None:
        return {}
    card = adapter_card(path)
    prompt: dict[str, Any] = (card or {}).get("prompt", {})
    return prompt


def best_rerank_adapter(settings: Settings, kind: str = "verbalizer") -> str | None:
    """The trained ``kind`` reranker adapter with the best valid NDCG@10 on its card (what
    ``recbridge run`` uses when one exists); None when none was trained."""
    best: tuple[float, str] | None = None
    for name, path in discover_adapters(settings).items():
        card = adapter_card(path) or {}
        if card.get("kind") != kind:
            continue
        # What validation said of the weights in this folder (an exported "last" adapter is
        # not its run's best).
        chosen = card.get("chosen_valid_ndcg10", card.get("best_valid_ndcg10"))
        score = float(chosen if chosen is not None else -1.0)
        if best is None or score > best[0]:
            best = (score, name)
    return best[1] if best else None
