"""``recbridge finetune data --recipe next-interest`` and ``finetune train --kind profile``.

The profile adapter learns to answer the next-interest prompt (``finetune.profile_render``)
with the rule-made profile of the next items (``finetune.profile_data``): the LM loss on the
answer tokens, through the reranker adapters' ``LoraTrainer`` (checkpoints, resume after a
kill, bf16 autocast). No validator: the trainer keeps the last adapter; profile retrieval
(``recbridge profile-eval``) measures it afterwards. Output, as for the reranker adapters:
``<adapters_dir>/<name>/`` with ``adapter_card.json`` (kind ``profile``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agent.config import Settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset
from agent.llm.model_files import require_model_dir
from finetune.examples import data_fingerprint
from finetune.pipeline import (
    AdapterReport,
    FinetuneError,
    base_model_record,
    drop_too_long,
    install_adapter,
    run_fingerprint,
    run_training,
    training_record,
)
from finetune.profile_data import (
    ProfileExample,
    ProfileManifest,
    TitleRule,
    build_next_interest,
    check_profile_leakage,
    read_profile_examples,
    read_profile_manifest,
    write_profile_examples,
)
from finetune.profile_render import NextInterestPrompt
from finetune.render import Encoded

log = logging.getLogger(__name__)

RECIPE = "next-interest"
KIND = "profile"


def profile_data_path(settings: Settings) -> Path:
    return settings.finetune_dir / "data" / f"{RECIPE}.jsonl"


def _template_hash(settings: Settings, data: Dataset) -> dict[str, str]:
    prompt = NextInterestPrompt(data, settings.profile.next)
    return {prompt.template.ref.file: prompt.template.ref.sha256}


def make_profile_data(
    settings: Settings, data: Dataset | None = None
) -> tuple[Path, ProfileManifest]:
    """Build, check and write the next-interest examples (train rows only)."""
    cfg, nxt = settings.finetune, settings.profile.next
    data = data or load_dataset(settings.data)
    examples = build_next_interest(
        data,
        TitleRule.of(data),
        max_examples=cfg.max_examples,
        per_user=cfg.per_user,
        next_items=nxt.next_items,
        max_list_items=nxt.max_list_items,
        seed=settings.seed,
    )
    check_profile_leakage(examples, data)
    train = [(u.user_id, u.items) for u in data.split("train")]
    manifest = ProfileManifest.describe(
        examples,
        seed=settings.seed,
        source_rows=len({ex.user_id for ex in examples}),
        next_items=nxt.next_items,
        data_fingerprint=data_fingerprint(train, len(data.items)),
        templates=_template_hash(settings, data),
        settings={
            "next": nxt.model_dump(mode="json"),
            "max_examples": cfg.max_examples,
            "per_user": cfg.per_user,
        },
    )
    path = profile_data_path(settings)
    write_profile_examples(path, examples, manifest)
    log.info(
        "%s: %d examples from %d train rows -> %s",
        RECIPE,
        manifest.examples,
        manifest.source_rows,
        path,
    )
    return path, manifest


def encode_profile_examples(
    prompt: NextInterestPrompt, tokenizer: Any, examples: list[ProfileExample], max_len: int
) -> tuple[list[Encoded], int]:
    """Every example as ids; those over ``max_len`` tokens are dropped and counted."""
    return drop_too_long(
        (
            prompt.encode(tokenizer, ex.id, ex.history, ex.domain, ex.answer.answer_json())
            for ex in tqdm(examples, desc="tokenising", unit="ex")
        ),
        max_len,
    )


def train_profile_adapter(settings: Settings, *, name: str | None = None) -> AdapterReport:
    """Train the profile adapter on the next-interest data; the last adapter and its card go to
    ``settings.adapters_dir / name`` (default ``profile.next.adapter``). Resumable."""
    from transformers import AutoTokenizer

    cfg = settings.finetune
    name = name or settings.profile.next.adapter
    data_file = profile_data_path(settings)
    if not data_file.is_file():
        raise FinetuneError(
            f"no {RECIPE} training data at {data_file}: run `recbridge finetune data "
            f"--recipe {RECIPE}` first"
        )
    manifest = read_profile_manifest(data_file)
    data = load_dataset(settings.data)
    examples = read_profile_examples(data_file)
    check_profile_leakage(examples, data)
    model_dir = require_model_dir(settings.llm_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = NextInterestPrompt(data, settings.profile.next)
    encoded, dropped = encode_profile_examples(prompt, tokenizer, examples, cfg.max_len)
    prompt_cfg = settings.profile.next.model_dump(mode="json")
    fingerprint = run_fingerprint(
        manifest.model_dump(), cfg.model_dump(mode="json"), prompt_cfg, KIND
    )
    result, wall_s = run_training(
        settings,
        name,
        KIND,
        model_dir,
        encoded,
        fingerprint=fingerprint,
        validator=None,
        pad_id=int(tokenizer.pad_token_id),
        dropped=dropped,
    )
    state = result.state
    card = {
        "name": name,
        "kind": KIND,
        "recipe": RECIPE,
        "base_model": base_model_record(settings),
        "template": prompt.template.ref.model_dump(),
        "prompt": {},  # no rerank prompt settings: this adapter is not a reranker
        "profile_prompt": prompt_cfg,
        "data": manifest.model_dump(),
        "settings": cfg.model_dump(mode="json"),
        "seed": settings.seed,
        "chosen": "last",
        **training_record(settings, result, len(encoded), wall_s),
    }
    out = install_adapter(settings, name, result.last_dir, card)
    first, last = (state.losses[0], state.losses[-1]) if state.losses else (None, None)
    log.info(
        "profile adapter %s -> %s (%d steps, loss %s -> %s)", name, out, state.step, first, last
    )
    return AdapterReport(name, out, card)
