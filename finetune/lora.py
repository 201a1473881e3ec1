"""A small LoRA adapter (peft) for the prepared instruction model.

Enough to make an adapter that really differs from the base (tests, serving checks): a few
optimizer steps teaching a JSON answer format on real item titles. The real LoRA data and
training schedule are a later task; this keeps the mechanics (chat template, loss on the answer
only, saving in the layout vLLM's ``--lora-modules`` loads).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agent.llm.threads import torch_threads
from agent.llm.types import ChatMessage

log = logging.getLogger(__name__)

IGNORE = -100  # label value the loss skips (prompt and padding positions)


class LoraTrainConfig(BaseModel):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    steps: int = 12
    batch_size: int = 4
    lr: float = 2e-3
    max_len: int = 256
    seed: int = 42
    threads: int = 0  # torch threads for this run only; 0 = torch default (see agent.llm.threads)


class TrainExample(BaseModel):
    messages: list[ChatMessage]  # the prompt
    answer: str  # the assistant's reply the loss is taken on


class LoraReport(BaseModel):
    path: Path
    steps: int
    first_loss: float
    last_loss: float
    trainable_params: int
    seconds: float


DOMAIN_SYSTEM = "You label products. Answer with JSON only."


def domain_examples(items: Iterable[tuple[str, str]]) -> list[TrainExample]:
    """(title, domain) pairs -> "which domain?" prompts answered as ``{"domain": ...}``."""
    return [
        TrainExample(
            messages=[
                ChatMessage(role="system", content=DOMAIN_SYSTEM),
                ChatMessage(role="user", content=f"Which domain is this product in? {title}"),
            ],
            answer=json.dumps({"domain": domain}),
        )
        for title, domain in items
    ]


def _encode(tok: Any, ex: TrainExample, max_len: int) -> tuple[list[int], list[int]]:
    prompt = tok.apply_chat_template(
        [m.model_dump() for m in ex.messages], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    # The end-of-turn token is part of the answer: the adapter must learn to stop.
    answer_ids = tok(ex.answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]
    return ids, labels


def _batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [r[0] + [pad_id] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [IGNORE] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def train_lora(
    model_dir: Path,
    examples: Sequence[TrainExample],
    out_dir: Path,
    config: LoraTrainConfig | None = None,
) -> LoraReport:
    """Train a LoRA adapter on ``examples`` for ``config.steps`` steps; save it to ``out_dir``."""
    cfg = config or LoraTrainConfig()
    if not examples:
        raise ValueError("no training examples")
    with torch_threads(cfg.threads):
        return _train(model_dir, examples, out_dir, cfg)


def _train(
    model_dir: Path, examples: Sequence[TrainExample], out_dir: Path, cfg: LoraTrainConfig
) -> LoraReport:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    model: Any = get_peft_model(base, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoded = [_encode(tok, ex, cfg.max_len) for ex in examples]
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        rows = rng.sample(encoded, min(cfg.batch_size, len(encoded)))
        loss = model(**_batch(rows, tok.pad_token_id)).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(float(loss.item()))
        log.debug("lora step %d/%d loss %.4f", step + 1, cfg.steps, losses[-1])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    report = LoraReport(
        path=out_dir,
        steps=cfg.steps,
        first_loss=losses[0] if losses else float("nan"),
        last_loss=losses[-1] if losses else float("nan"),
        trainable_params=trainable,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "LoRA adapter %s: %d steps, loss %.3f -> %.3f, %d trainable params, %.1fs",
        out_dir,
        report.steps,
        report.first_loss,
        report.last_loss,
        trainable,
        report.seconds,
    )
    return report
