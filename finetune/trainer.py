"""LoRA training of a reranker adapter: resumable, validated, with the best adapter kept.

The loop: examples in a seeded order per epoch, ``batch_size`` per forward pass, left-padded
as the local backend pads at inference (positions from the attention mask, as ``generate``
makes them), ``grad_accum`` passes per optimizer step, AdamW with linear warmup and decay,
gradient clipping, bf16 autocast when asked. Every ``checkpoint_every`` steps the adapter,
optimizer, scheduler and RNG states go to ``<run>/checkpoints/step-N`` (written under a
temporary name, then renamed; ``latest`` names the newest), so a run killed at any point
(kill -9 included) resumes from its last checkpoint with the same data order. Every
``eval_every`` steps (and at step 0, the untouched base: LoRA starts as a no-op) the adapter
is validated through the real reranker (``RerankValidator``); the best one is copied to
``<run>/best``; ``finetune.pipeline.train_adapter`` then serves it with its card.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agent.config import FinetuneSettings
from finetune.losses import IGNORE, answer_lm_loss, verbalizer_loss
from finetune.render import Encoded
from finetune.validation import ValidPoint

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
KEEP_CHECKPOINTS = 2

Validate = Callable[[int, Path | None], ValidPoint]


@dataclass
class TrainState:
    """Everything about a run's progress that is not a tensor (JSON in each checkpoint)."""

    fingerprint: str  # data + settings: a checkpoint of another run is never resumed
    step: int = 0
    examples_seen: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training time so far, summed over resumed sessions
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    curve: list[dict[str, Any]] = field(default_factory=list)  # ValidPoint dicts
    best_step: int | None = None
    best_ndcg10: float = -1.0
    checks_without_gain: int = 0
    resumed_from: list[int] = field(default_factory=list)
    dropped_too_long: int = 0


@dataclass(frozen=True)
class TrainResult:
    state: TrainState
    total_steps: int
    trainable_params: int
    peak_rss_mb: float
    best_dir: Path | None
    last_dir: Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def example_stream(n: int, seed: int, start: int) -> Iterator[int]:
    """Example indices from position ``start`` of the endless stream of seeded epochs."""
    epoch, offset = divmod(start, n)
    while True:
        order = _order(n, seed, epoch)
        yield from order[offset:]
        epoch, offset = epoch + 1, 0


def collate(rows: Sequence[Encoded], pad_id: int, kind: str) -> dict[str, Any]:
    """Left-padded ids, mask and positions; for the verbalizer the prompt alone (the label is
    predicted at the last position), for listwise prompt + answer with shifted labels over
    the last ``max answer + 1`` positions (``logits_to_keep``)."""
    import torch

    seqs = [r.prompt if kind == "verbalizer" else r.prompt + r.answer for r in rows]
    width = max(len(s) for s in seqs)
    ids = [[pad_id] * (width - len(s)) + s for s in seqs]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
    mask_t = torch.tensor(mask)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    batch: dict[str, Any] = {
        "input_ids": torch.tensor(ids),
        "attention_mask": mask_t,
        "position_ids": positions,
        "label_ids": torch.tensor([r.label_ids for r in rows]),
        "target": torch.tensor([r.target for r in rows]),
    }
    if kind == "verbalizer":
        batch["keep"] = 1
    else:
        keep = max(len(r.answer) for r in rows) + 1
        labels = torch.full((len(rows), keep), IGNORE)
        for row, r in enumerate(rows):
            answer = torch.tensor(r.answer)
            # Position p predicts token p + 1: the answer's tokens sit at the row's end.
            labels[row, keep - 1 - len(r.answer) : keep - 1] = answer
        batch["labels"] = labels
        batch["keep"] = keep
    return batch


def lora_layers(model: Any, first_layer: int) -> list[int] | None:
    """Layer indices LoRA adapts: ``first_layer`` .. last (None: all)."""
    count = int(model.config.num_hidden_layers)
    if first_layer <= 0:
        return None
    if first_layer >= count:
        raise ValueError(f"finetune.first_layer={first_layer}: the model has {count} layers")
    return list(range(first_layer, count))


class LoraTrainer:
    """One adapter's training run in ``run_dir`` (see the module docstring)."""

    def __init__(
        self,
        model_dir: Path,
        encoded: Sequence[Encoded],
        run_dir: Path,
        cfg: FinetuneSettings,
        *,
        kind: str,
        seed: int,
        fingerprint: str,
        validate: Validate | None = None,
        pad_id: int,
    ) -> None:
        if not encoded:
            raise ValueError("no training examples (all longer than finetune.max_len?)")
        self.model_dir = model_dir
        self.encoded = list(encoded)
        self.run_dir = run_dir
        self.cfg = cfg
        self.kind = kind
        self.seed = seed
        self.fingerprint = fingerprint
        self.validate = validate
        self.pad_id = pad_id
        per_step = cfg.batch_size * cfg.grad_accum
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(encoded) / per_step))

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest(self) -> Path | None:
        pointer = self.checkpoints / LATEST_FILE
        if not pointer.is_file():
            return None
        path = self.checkpoints / pointer.read_text(encoding="utf-8").strip()
        return path if (path / STATE_FILE).is_file() else None

    def _save(self, model: Any, optim: Any, sched: Any, state: TrainState) -> None:
        import torch

        name = f"step-{state.step:06d}"
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp / "adapter"))
        torch.save(
            {
                "optimizer": optim.state_dict(),
                "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "optim.pt",
        )
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        final = self.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = self.checkpoints / f".{LATEST_FILE}.tmp"
        pointer.write_text(name, encoding="utf-8")
        pointer.replace(self.checkpoints / LATEST_FILE)
        for old in sorted(self.checkpoints.glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self, model: Any, optim: Any, sched: Any) -> TrainState | None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = self.latest()
        if path is None:
            return None
        raw = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        state = TrainState(**raw)
        if state.fingerprint != self.fingerprint:
            raise ValueError(
                f"{self.run_dir}: a checkpoint of another run (data or settings differ); "
                "delete the folder or use another adapter name"
            )
        weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, weights)
        extra = torch.load(path / "optim.pt", weights_only=False)
        optim.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        state.resumed_from.append(state.step)
        log.info("resuming %s from step %d (%s)", self.run_dir, state.step, path.name)
        return state

    # -- the loop ----------------------------------------------------------------------
    def _model(self) -> tuple[Any, int]:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.seed)
        base = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32)
        lora = LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=list(self.cfg.target_modules),
            layers_to_transform=lora_layers(base, self.cfg.first_layer),
            task_type="CAUSAL_LM",
        )
        model: Any = get_peft_model(base, lora)
        model.to(self.cfg.device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model, trainable

    def _loss(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch

        device = self.cfg.device
        with torch.autocast(
            device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=self.cfg.bf16
        ):
            out = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                position_ids=batch["position_ids"].to(device),
                logits_to_keep=batch["keep"],
            )
        if self.kind == "verbalizer":
            return verbalizer_loss(
                out.logits[:, -1, :],
                batch["label_ids"].to(device),
                batch["target"].to(device),
                self.cfg.pairwise_weight,
            )
        return answer_lm_loss(out.logits, batch["labels"].to(device))

    def _check(self, model: Any, state: TrainState) -> None:
        """Validate the current adapter; keep it as ``best`` when it is the best so far."""
        if self.validate is None:
            return
        current = self.run_dir / "current"
        shutil.rmtree(current, ignore_errors=True)
        model.save_pretrained(str(current))
        point = self.validate(state.step, current if state.step > 0 else None)
        state.curve.append(asdict(point))
        if point.ndcg10 > state.best_ndcg10:
            state.best_ndcg10, state.best_step = point.ndcg10, state.step
            state.checks_without_gain = 0
            best = self.run_dir / "best"
            shutil.rmtree(best, ignore_errors=True)
            current.rename(best)
        else:
            state.checks_without_gain += 1

    def train(self) -> TrainResult:
        import torch

        model, trainable = self._model()
        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup, total = self.cfg.warmup_steps, self.total_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
        state = self._resume(model, optim, sched) or TrainState(self.fingerprint)
        if state.step == 0 and not state.curve:
            self._check(model, state)  # the base model with this prompt: the curve's origin
        stream = example_stream(len(self.encoded), self.seed, state.examples_seen)
        per_pass = self.cfg.batch_size
        model.train()
        bar = tqdm(total=total, initial=state.step, desc=f"lora {self.run_dir.name}", unit="step")
        stopped_early = False
        while state.step < total and not stopped_early:
            started = time.perf_counter()
            step_loss = 0.0
            step_tokens = 0
            for _ in range(self.cfg.grad_accum):
                rows = [self.encoded[next(stream)] for _ in range(per_pass)]
                loss = self._loss(model, collate(rows, self.pad_id, self.kind))
                (loss / self.cfg.grad_accum).backward()
                step_loss += float(loss.item()) / self.cfg.grad_accum
                step_tokens += sum(r.length for r in rows)
                state.examples_seen += per_pass
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - started
            state.step += 1
            state.tokens += step_tokens
            state.seconds += elapsed
            state.losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{step_tokens / elapsed:.0f}")
            last = state.step == total
            if state.step % self.cfg.eval_every == 0 or last:
                model.eval()
                self._check(model, state)
                model.train()
                patience = self.cfg.patience
                stopped_early = patience > 0 and state.checks_without_gain >= patience
            if state.step % self.cfg.checkpoint_every == 0 or last or stopped_early:
                self._save(model, optim, sched, state)
        bar.close()
        last_dir = self.run_dir / "last"
        shutil.rmtree(last_dir, ignore_errors=True)
        model.save_pretrained(str(last_dir))
        best = self.run_dir / "best"
        return TrainResult(
            state=state,
            total_steps=total,
            trainable_params=trainable,
            peak_rss_mb=peak_rss_mb(),
            best_dir=best if best.is_dir() else None,
            last_dir=last_dir,
        )
