"""Cost of a LoRA training step on this machine: s/step, tokens/s, peak RSS per configuration.

Real examples of the training data (``recbridge finetune data`` first), rendered and tokenised
by the trainer's own code, the trainer's own loss and collate; each configuration runs in its
own process (peak RSS is per process) for ``--steps`` optimizer steps after one warm-up step.

    python -m benchmarks.bench_finetune --steps 3 --out runs/bench/finetune.json
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from pathlib import Path
from typing import Annotated, Any

import typer

log = logging.getLogger("bench_finetune")

# (label, settings overrides): fp32 vs bf16 autocast, all layers vs the top third, threads.
CONFIGS: list[tuple[str, list[str]]] = [
    ("fp32, all layers, 1 thread", ["finetune.threads=1"]),
    ("bf16, all layers, 1 thread", ["finetune.threads=1", "finetune.bf16=true"]),
    ("fp32, layers 20-29, 1 thread", ["finetune.threads=1", "finetune.first_layer=20"]),
    (
        "bf16, layers 20-29, 1 thread",
        ["finetune.threads=1", "finetune.bf16=true", "finetune.first_layer=20"],
    ),
    ("fp32, all layers, 2 threads", ["finetune.threads=2"]),
]


def _one(overrides: list[str], recipe: str, steps: int, queue: Any) -> None:
    import torch
    from transformers import AutoTokenizer

    from agent.config import load_settings
    from agent.data.loader import load_dataset
    from agent.llm.threads import torch_threads
    from finetune.examples import read_examples
    from finetune.pipeline import data_path
    from finetune.render import PromptRenderer
    from finetune.trainer import LoraTrainer, collate, peak_rss_mb

    settings = load_settings(set_items=overrides)
    cfg = settings.finetune
    data = load_dataset(settings.data)
    tok = AutoTokenizer.from_pretrained(str(settings.llm_model_dir))
    renderer = PromptRenderer(settings, data, tok, cfg.kind)
    need = (steps + 1) * cfg.batch_size * cfg.grad_accum
    encoded = [renderer.encode(ex) for ex in read_examples(data_path(settings, recipe))[:need]]
    trainer = LoraTrainer(
        settings.llm_model_dir,
        encoded,
        Path("/nonexistent"),
        cfg,
        kind=cfg.kind,
        seed=settings.seed,
        fingerprint="bench",
        pad_id=int(tok.pad_token_id),
    )
    with torch_threads(cfg.threads):
        model, trainable = trainer._model()
        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=cfg.lr)
        model.train()
        times: list[float] = []
        tokens: list[int] = []
        pos = 0
        for _ in range(steps + 1):
            started = time.perf_counter()
            count = 0
            for _ in range(cfg.grad_accum):
                rows = encoded[pos : pos + cfg.batch_size]
                pos += cfg.batch_size
                trainer._loss(model, collate(rows, trainer.pad_id, cfg.kind)).backward()
                count += sum(r.length for r in rows)
            optim.step()
            optim.zero_grad()
            times.append(time.perf_counter() - started)
            tokens.append(count)
    measured = times[1:]  # the first step warms up allocators and kernels
    queue.put(
        {
            "overrides": overrides,
            "examples_per_step": cfg.batch_size * cfg.grad_accum,
            "s_per_step": sum(measured) / len(measured),
            "tokens_per_s": sum(tokens[1:]) / sum(measured),
            "s_per_example": sum(measured) / len(measured) / (cfg.batch_size * cfg.grad_accum),
            "trainable_params": trainable,
            "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
        }
    )


def main(
    steps: Annotated[int, typer.Option(help="Measured optimizer steps per configuration.")] = 2,
    recipe: Annotated[str, typer.Option(help="Training data to read.")] = "random",
    only: Annotated[str, typer.Option(help="Comma-separated config indices (default all).")] = "",
    batch: Annotated[int, typer.Option(help="Examples per forward pass.")] = 4,
    accum: Annotated[int, typer.Option(help="Forward passes per step.")] = 1,
    out: Annotated[Path, typer.Option(help="JSON results.")] = Path("runs/bench/finetune.json"),
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    picked = [CONFIGS[int(i)] for i in only.split(",")] if only else CONFIGS
    results: dict[str, Any] = {}
    ctx = mp.get_context("spawn")
    for label, overrides in picked:
        queue = ctx.Queue()
        sizes = [f"finetune.batch_size={batch}", f"finetune.grad_accum={accum}"]
        proc = ctx.Process(target=_one, args=([*overrides, *sizes], recipe, steps, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            log.error("%s: failed (exit %s)", label, proc.exitcode)
            results[label] = {"error": f"exit {proc.exitcode}"}
            continue
        results[label] = queue.get()
        r = results[label]
        log.info(
            "%s: %.1f s/step (%d examples), %.0f tokens/s, %.0f MB peak",
            label,
            r["s_per_step"],
            r["examples_per_step"],
            r["tokens_per_s"],
            r["peak_rss_mb"],
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    log.info("-> %s", out)


if __name__ == "__main__":
    typer.run(main)
