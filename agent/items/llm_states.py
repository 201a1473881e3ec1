"""Frozen LLM states of the items: one pooled top-layer vector per item, cached on disk.

An item's text (``prompts/item_state.j2``: "title | category | brand") goes through the LLM's
transformer once, forward only; its last layer's states are mean-pooled over the tokens. The
cache is a folder per backbone under ``<work_dir>/llm-states/``: ``meta.json`` (model folder,
template hash, pooling, token cap, the catalogue's ids hash) and ``part-NNNNN.npy`` files of
``CHUNK`` items in catalogue order, each written atomically when done. A killed run resumes at
the first missing part; a changed model, template or catalogue starts the cache anew.

These states feed the learned ranker (cosines between an item and the user's recent items) and
the correction head; the LLM is never asked to generate here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.text import ItemTextRenderer
from agent.llm.model_files import ensure_llm_model, require_model_dir
from agent.llm.threads import torch_threads

log = logging.getLogger(__name__)

CHUNK = 512  # items per part file: the unit of work a kill can lose
# Tokens read per item: the median "title | category | brand" of food-kitchen is 25 tokens
# with SmolLM2's tokenizer; one forward pass costs ~0.1 s an item on one core.
MAX_TOKENS = 24
TEMPLATE = "item_state.j2"
POOLING = "mean-last-layer"
VERSION = 1
# Backbones by name: the packaged instruction model (``recbridge llm prepare``'s folder).
BACKBONES = ("smollm2",)
# Not an LLM: the item text embedder's own vectors in the LLM states' place, so a model over
# states can be trained without any LLM (the ablation that measures what the LLM adds).
NO_LLM = "minilm"


class StatesError(ValueError):
    """A state cache that is missing, incomplete or made for other items or another model."""


def backbone_dir(settings: Settings, name: str) -> Path:
    if name not in BACKBONES:
        raise StatesError(f"unknown LLM state backbone {name!r}; known: {', '.join(BACKBONES)}")
    ensure_llm_model(settings, "local")
    return require_model_dir(settings.llm_model_dir)


def states_dir(settings: Settings, name: str) -> Path:
    return settings.work_dir / "llm-states" / name


def _catalog_hash(data: Dataset) -> str:
    return hashlib.sha256("\n".join(data.catalog.ids).encode()).hexdigest()[:16]


def _meta(
    data: Dataset, model_dir: Path, renderer: ItemTextRenderer, max_tokens: int, chunk: int
) -> dict[str, Any]:
    config = (
        (model_dir / "config.json").read_bytes() if (model_dir / "config.json").is_file() else b""
    )
    return {
        "version": VERSION,
        "model_dir": str(model_dir),
        "model_config_sha": hashlib.sha256(config).hexdigest()[:16],
        "template_sha": renderer.template_hash[:16],
        "pooling": POOLING,
        "max_tokens": max_tokens,
        "chunk": chunk,
        "catalog": _catalog_hash(data),
        "items": len(data.catalog),
    }


def item_state_texts(data: Dataset) -> list[str]:
    renderer = ItemTextRenderer(TEMPLATE)
    return [renderer.item_text(data.items[iid]) for iid in data.catalog.ids]


def _encode(model: Any, tokenizer: Any, texts: list[str], max_tokens: int) -> np.ndarray:
    import torch

    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (b, t, d)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    out: np.ndarray = pooled.float().numpy()
    return out


def compute_item_states(
    data: Dataset,
    settings: Settings,
    name: str = "smollm2",
    *,
    max_tokens: int = MAX_TOKENS,
    batch: int = 32,
    threads: int = 0,
    progress: bool = True,
    limit_parts: int | None = None,
    chunk: int = CHUNK,
) -> Path:
    """Fill the cache for ``name`` (module docstring); -> its folder. ``limit_parts`` stops
    after that many new parts (tests, and long runs split into steps)."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = backbone_dir(settings, name)
    folder = states_dir(settings, name)
    renderer = ItemTextRenderer(TEMPLATE)
    meta = _meta(data, model_dir, renderer, max_tokens, chunk)
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")) != meta:
        log.warning("%s: made for another model, template or catalogue; starting anew", folder)
        for part in folder.glob("part-*.npy"):
            part.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    texts = item_state_texts(data)
    parts = range(0, len(texts), chunk)
    todo = [p for p in parts if not _part(folder, p).is_file()]
    log.info(
        "LLM item states (%s): %d items, %d of %d parts to do",
        name,
        len(texts),
        len(todo),
        len(parts),
    )
    if not todo:
        return folder
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(str(model_dir))
    model.eval()
    started = time.perf_counter()
    done_items = 0
    with (
        torch_threads(threads),
        tqdm(
            total=sum(min(chunk, len(texts) - p) for p in todo),
            desc=f"LLM states {name}",
            unit="item",
            disable=not progress,
        ) as bar,
    ):
        for count, start in enumerate(todo):
            if limit_parts is not None and count >= limit_parts:
                break
            block = texts[start : start + chunk]
            # Similar lengths together: less padding; the rows go back to catalogue order.
            order = sorted(range(len(block)), key=lambda i: len(block[i]))
            out = np.zeros((len(block), model.config.hidden_size), dtype=np.float32)
            for lo in range(0, len(order), batch):
                idx = order[lo : lo + batch]
                out[idx] = _encode(model, tokenizer, [block[i] for i in idx], max_tokens)
                bar.update(len(idx))
            tmp = folder / f"part-{start:07d}.tmp.npy"
            np.save(tmp, out)
            tmp.replace(_part(folder, start))
            done_items += len(block)
    seconds = time.perf_counter() - started
    log.info(
        "LLM item states: %d items in %.0fs (%.1f items/s)",
        done_items,
        seconds,
        done_items / max(seconds, 1e-9),
    )
    return folder


def _part(folder: Path, start: int) -> Path:
    return folder / f"part-{start:07d}.npy"


def load_item_states(data: Dataset, settings: Settings, name: str) -> np.ndarray:
    """(len(catalog) + 1, d) float32, row 0 zeros; raises StatesError when incomplete.
    ``NO_LLM``: the item embeddings (``agent.items.embeddings``) instead."""
    if name == NO_LLM:
        from agent.items.embeddings import item_embeddings

        return item_embeddings(data, settings, progress=False)
    folder = states_dir(settings, name)
    meta_path = folder / "meta.json"
    hint = f"run `recbridge llm states --backbone {name}` first"
    if not meta_path.is_file():
        raise StatesError(f"no LLM item states in {folder}: {hint}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("catalog") != _catalog_hash(data):
        raise StatesError(f"{folder}: LLM item states of another catalogue: {hint}")
    rows: list[np.ndarray] = []
    for start in range(0, len(data.catalog), int(meta.get("chunk", CHUNK))):
        path = _part(folder, start)
        if not path.is_file():
            raise StatesError(f"{folder}: part {path.name} missing (a stopped run?): {hint}")
        rows.append(np.load(path))
    body = np.concatenate(rows)
    out = np.zeros((body.shape[0] + 1, body.shape[1]), dtype=np.float32)
    out[1:] = body
    return out
