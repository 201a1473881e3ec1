"""``recbridge finetune``'s library side: build the data, train an adapter, write its card.

Folders (``<work_dir>/finetune`` unless ``finetune.out_dir``):

    data/<recipe>.jsonl + data/<recipe>.manifest.json      training examples (finetune data)
    retriever-holdout/<retriever>/                         the hard recipe's retriever
    runs/<adapter>/                                        checkpoints, current, best, last
    ../adapters/<adapter>/ (``settings.adapters_dir``)     the best adapter + adapter_card.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agent.config import Settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset
from agent.llm.adapters import CARD_FILE
from agent.llm.model_files import require_model_dir
from agent.llm.threads import torch_threads
from agent.models.base import Recommender
from agent.models.prepare import (
    check_checkpoint_loss,
    is_checkpoint,
    prepare_model,
    read_fit_report,
    write_fit_report,
)
from agent.models.registry import build_recommender
from agent.prompts import load_template
from eval.evaluator import make_valid_fn
from eval.runinfo import run_info
from finetune.build import build_hard, build_random, check_no_leakage, holdout_dataset
from finetune.examples import (
    Manifest,
    Recipe,
    data_fingerprint,
    read_examples,
    read_manifest,
    write_examples,
)
from finetune.render import Encoded, PromptRenderer, prompt_record
from finetune.trainer import LoraTrainer, TrainResult, Validate
from finetune.validation import RerankValidator

log = logging.getLogger(__name__)


class FinetuneError(ValueError):
    """A finetune step that cannot run; the message says what to do."""


def data_path(settings: Settings, recipe: str) -> Path:
    return settings.finetune_dir / "data" / f"{recipe}.jsonl"


def adapter_name(kind: str, recipe: str) -> str:
    return f"{kind}-{recipe}"


def template_hashes(settings: Settings) -> dict[str, str]:
    files = [settings.rerank.templates.verbalizer, settings.rerank.templates.listwise]
    return {f: load_template(f).ref.sha256 for f in files}


def model_sha256(settings: Settings) -> str:
    """sha256 of the base model's weights (the card names exactly what the adapter fits)."""
    folder = require_model_dir(settings.llm_model_dir)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _retriever_summary(model: Recommender, checkpoint: Path) -> dict[str, Any]:
    fit = read_fit_report(checkpoint)
    keys = ("epochs", "best_epoch", "best_valid_ndcg10", "seconds")
    return {"model": model.name, "checkpoint": str(checkpoint)} | {
        k: getattr(fit, k) if fit is not None else None for k in keys
    }


def holdout_retriever(settings: Settings, data: Dataset) -> tuple[Recommender, Path]:
    """The hard recipe's retriever: trained on the train rows without their last items (or
    loaded, when its checkpoint exists); early stopping on valid users as usual."""
    name = settings.finetune.retriever
    out = settings.finetune_dir / "retriever-holdout" / name
    holdout = holdout_dataset(data)
    model = build_recommender(name, holdout, settings)
    if is_checkpoint(out):
        check_checkpoint_loss(model, out, settings)
        model.load(out)
        log.info("hard recipe: holdout retriever loaded from %s", out)
        return model, out
    log.info("hard recipe: training %s with each train row's last item held out -> %s", name, out)
    report = model.fit(valid_fn=make_valid_fn(data, settings), out=out)
    write_fit_report(out, report, name, settings)
    return model, out


def make_data(
    settings: Settings, recipe: Recipe, data: Dataset | None = None
) -> tuple[Path, Manifest]:
    """Build, check and write one recipe's examples (train rows only)."""
    cfg = settings.finetune
    data = data or load_dataset(settings.data)
    retriever_info: dict[str, Any] = {}
    if recipe == "random":
        examples = build_random(
            data,
            max_examples=cfg.max_examples,
            per_user=cfg.per_user,
            candidates=cfg.candidates,
            seed=settings.seed,
        )
    else:
        retriever, checkpoint = holdout_retriever(settings, data)
        examples, skipped = build_hard(
            data,
            retriever,
            max_examples=cfg.max_examples,
            candidates=cfg.candidates,
            seed=settings.seed,
            negatives=cfg.hard_negatives if recipe == "hard-sampled" else None,
            shuffle=cfg.shuffle_candidates,
        )
        retriever_info = _retriever_summary(retriever, checkpoint) | {"rows_skipped": skipped}
        if skipped:  # hard-sampled: rows whose target the retriever's top list missed
            log.info("%s: %d rows skipped (target not retrieved)", recipe, skipped)
    check_no_leakage(examples, data)
    train = [(u.user_id, u.items) for u in data.split("train")]
    manifest = Manifest.describe(
        examples,
        recipe=recipe,
        seed=settings.seed,
        source_rows=len({ex.user_id for ex in examples}),
        candidates=cfg.candidates,
        data_fingerprint=data_fingerprint(train, len(data.items)),
        templates=template_hashes(settings),
        retriever=retriever_info,
        settings=cfg.model_dump(mode="json"),
    )
    path = data_path(settings, recipe)
    write_examples(path, examples, manifest)
    log.info(
        "%s: %d examples from %d train rows (%d targets inserted) -> %s",
        recipe,
        manifest.examples,
        manifest.source_rows,
        manifest.inserted,
        path,
    )
    return path, manifest


@dataclass(frozen=True)
class AdapterReport:
    name: str
    adapter_dir: Path
    card: dict[str, Any]


def run_fingerprint(*parts: Any) -> str:
    """What a training run's checkpoints must match to be resumed (data, settings, prompt)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def encode_all(
    renderer: PromptRenderer, data_file: Path, max_len: int
) -> tuple[list[Encoded], int]:
    """Every example of ``data_file`` as ids; those over ``max_len`` tokens are dropped and
    counted (never cut: a cut prompt would lose the candidates or the question)."""
    examples = tqdm(read_examples(data_file), desc="tokenising", unit="ex")
    return drop_too_long((renderer.encode(ex) for ex in examples), max_len)


def drop_too_long(encoded: Iterable[Encoded], max_len: int) -> tuple[list[Encoded], int]:
    """The examples of at most ``max_len`` tokens, and how many longer ones were dropped."""
    kept: list[Encoded] = []
    dropped = 0
    for enc in encoded:
        if enc.length > max_len:
            dropped += 1
            continue
        kept.append(enc)
    if dropped:
        log.warning("%d examples longer than finetune.max_len=%d tokens dropped", dropped, max_len)
    return kept, dropped


def train_adapter(
    settings: Settings,
    *,
    name: str | None = None,
    recipe: Recipe | None = None,
    kind: str | None = None,
    validate: bool = True,
) -> AdapterReport:
    """Train one adapter on ``recipe``'s data; the best one (valid NDCG@10) and its card go to
    ``settings.adapters_dir / name``. Resumes a killed run of the same name and settings."""
    from transformers import AutoTokenizer

    cfg = settings.finetune
    recipe = recipe or cfg.recipe
    kind = kind or cfg.kind
    name = name or adapter_name(kind, recipe)
    data_file = data_path(settings, recipe)
    if not data_file.is_file():
        raise FinetuneError(
            f"no {recipe} training data at {data_file}: run `recbridge finetune data "
            f"--recipe {recipe}` first"
        )
    manifest = read_manifest(data_file)
    data = load_dataset(settings.data)
    check_no_leakage(read_examples(data_file), data)
    model_dir = require_model_dir(settings.llm_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    renderer = PromptRenderer(settings, data, tokenizer, kind)
    encoded, dropped = encode_all(renderer, data_file, cfg.max_len)
    prompt = prompt_record(settings)
    fingerprint = run_fingerprint(manifest.model_dump(), cfg.model_dump(mode="json"), prompt, kind)
    validator = None
    if validate:
        retriever = prepare_model(
            cfg.retriever, data, settings, train=True, valid_fn_factory=make_valid_fn
        ).model
        validator = RerankValidator(data, settings, retriever, kind)
    result, wall_s = run_training(
        settings,
        name,
        kind,
        model_dir,
        encoded,
        fingerprint=fingerprint,
        validator=validator,
        pad_id=int(tokenizer.pad_token_id),
        dropped=dropped,
    )
    chosen = result.best_dir or result.last_dir
    card = adapter_card(
        settings,
        name=name,
        kind=kind,
        recipe=recipe,
        manifest=manifest,
        prompt=prompt,
        result=result,
        examples=len(encoded),
        wall_s=wall_s,
        chosen=chosen,
        renderer=renderer,
    )
    out = install_adapter(settings, name, chosen, card)
    log.info(
        "adapter %s -> %s (best valid NDCG@10 %.4f at step %s of %d)",
        name,
        out,
        result.state.best_ndcg10,
        result.state.best_step,
        result.total_steps,
    )
    return AdapterReport(name, out, card)


def run_training(
    settings: Settings,
    name: str,
    kind: str,
    model_dir: Path,
    encoded: list[Encoded],
    *,
    fingerprint: str,
    validator: Validate | None,
    pad_id: int,
    dropped: int,
) -> tuple[TrainResult, float]:
    """Train (or resume) the run ``<finetune_dir>/runs/<name>`` on ``encoded``; the result
    and this call's wall seconds."""
    cfg = settings.finetune
    trainer = LoraTrainer(
        model_dir,
        encoded,
        settings.finetune_dir / "runs" / name,
        cfg,
        kind=kind,
        seed=settings.seed,
        fingerprint=fingerprint,
        validate=validator,
        pad_id=pad_id,
    )
    started = time.perf_counter()
    with torch_threads(cfg.threads):
        result = trainer.train()
    result.state.dropped_too_long = dropped
    return result, time.perf_counter() - started


def adapter_card(
    settings: Settings,
    *,
    name: str,
    kind: str,
    recipe: str,
    manifest: Manifest,
    prompt: dict[str, Any],
    result: TrainResult,
    examples: int,
    wall_s: float,
    chosen: Path,
    renderer: PromptRenderer,
) -> dict[str, Any]:
    state = result.state
    return {
        "name": name,
        "kind": kind,
        "recipe": recipe,
        "base_model": base_model_record(settings),
        "template": renderer.reranker.template.ref.model_dump(),
        "templates": template_hashes(settings),
        "prompt": prompt,
        "data": manifest.model_dump(),
        "settings": settings.finetune.model_dump(mode="json"),
        "seed": settings.seed,
        "chosen": "best" if chosen.name == "best" else "last",
        "chosen_valid_ndcg10": state.best_ndcg10 if chosen.name == "best" else None,
        "best_step": state.best_step,
        "best_valid_ndcg10": state.best_ndcg10,
        "valid_curve": state.curve,
        **training_record(settings, result, examples, wall_s),
    }


def base_model_record(settings: Settings) -> dict[str, Any]:
    """An adapter card's base model: name, folder and weights' sha256."""
    return {
        "name": settings.llm.model,
        "dir": str(settings.llm_model_dir),
        "sha256": model_sha256(settings),
    }


def training_record(
    settings: Settings, result: TrainResult, examples: int, wall_s: float
) -> dict[str, Any]:
    """An adapter card's training figures: loss curve, steps, tokens, speed, memory, run."""
    state = result.state
    steps = max(1, state.step)
    return {
        "loss_curve": state.losses,
        "steps": state.step,
        "total_steps": result.total_steps,
        "examples": examples,
        "examples_seen": state.examples_seen,
        "dropped_too_long": state.dropped_too_long,
        "tokens": state.tokens,
        "train_seconds": state.seconds,
        "seconds_per_step": state.seconds / steps,
        "tokens_per_s": state.tokens / state.seconds if state.seconds else None,
        "wall_seconds_this_call": wall_s,
        "resumed_from": state.resumed_from,
        "trainable_params": result.trainable_params,
        "peak_rss_mb": result.peak_rss_mb,
        "device": settings.finetune.device,
        "run": run_info(),
    }


def export_adapter(
    settings: Settings, run: str, *, which: str = "last", name: str | None = None
) -> Path:
    """Serve another adapter of a finished run under its own name: ``last`` (the final
    weights) or ``best`` (valid-chosen), with the run's card marked accordingly. Lets a study
    compare what training ended with against what validation chose."""
    if which not in ("best", "last"):
        raise FinetuneError(f"--which {which!r}: expected best or last")
    source = settings.finetune_dir / "runs" / run / which
    card_src = settings.adapters_dir / run / CARD_FILE
    if not source.is_dir() or not card_src.is_file():
        raise FinetuneError(f"no finished run {run!r} with a {which} adapter (train it first)")
    name = name or f"{run}-{which}"
    card = json.loads(card_src.read_text(encoding="utf-8"))
    card.update(name=name, chosen=which, exported_from=run)
    if which == "last":
        curve = card.get("valid_curve") or []
        card["chosen_step"] = card.get("steps")
        last = curve[-1] if curve and curve[-1]["step"] == card.get("steps") else None
        card["chosen_valid_ndcg10"] = last["ndcg10"] if last else None
    return install_adapter(settings, name, source, card)


def install_adapter(settings: Settings, name: str, source: Path, card: dict[str, Any]) -> Path:
    """Copy the adapter in ``source`` to ``<adapters_dir>/<name>`` with ``card``: written
    beside, then renamed, so a served folder is never half-written."""
    out = settings.adapters_dir / name
    tmp = out.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    (tmp / CARD_FILE).write_text(json.dumps(card, indent=1), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
