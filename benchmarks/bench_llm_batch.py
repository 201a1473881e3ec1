"""What a batch costs the local LLM: decoding per sequence and step, and prefill, by batch size.

    python -m benchmarks.bench_llm_batch [--batches 8,16,32] [--threads 1] [--dtype float32]
        [--context 300] [--steps 20] [--out runs/bench/llm-batch.json]

The model of ``llm.model`` from its prepared folder (``recbridge llm prepare``), plain
transformers forward passes with the KV cache, as the local backend's ``generate`` runs them:
each batch first fills a ``--context``-token cache, then ``--steps`` single-token steps are
timed (CPU seconds of this process). What ``llm.concurrency`` (the local batch size) buys.
Not a test.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from agent.config import load_settings
from agent.llm.model_files import prepare_model
from agent.logging_setup import setup_logging

log = logging.getLogger("recbridge.bench")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _measure(model: Any, batch: int, context: int, steps: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(100, 1000, (batch, context), generator=gen)
    with torch.inference_mode():
        started = time.process_time()
        out = model(ids, use_cache=True)
        prefill = time.process_time() - started
        cache, token = out.past_key_values, ids[:, -1:]
        started = time.process_time()
        for _ in range(steps):
            out = model(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        step = (time.process_time() - started) / steps
    return {
        "batch": batch,
        "prefill_tokens_per_cpu_s": batch * context / prefill,
        "decode_ms_per_step": 1000 * step,
        "decode_ms_per_sequence_step": 1000 * step / batch,
    }


@app.command()
def main(
    batches: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "8,16,32",
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    context: Annotated[int, typer.Option(min=1, help="Tokens in each cache.")] = 300,
    steps: Annotated[int, typer.Option(min=1, help="Decoding steps timed.")] = 20,
    out: Annotated[Path, typer.Option()] = Path("runs/bench/llm-batch.json"),
    config: Annotated[Path | None, typer.Option()] = None,
    set_items: Annotated[list[str] | None, typer.Option("--set")] = None,
) -> None:
    from transformers import AutoModelForCausalLM

    setup_logging("INFO")
    if dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"--dtype {dtype!r}: expected float32 or bfloat16")
    settings = load_settings(config, set_items=set_items)
    folder = settings.llm.model_dir or settings.work_dir / "models" / settings.llm.model
    path = prepare_model(folder).path
    torch.set_num_threads(threads)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval()
    _measure(model, 2, 16, 2)  # warm-up: first-call allocations
    rows = []
    for batch in (int(b) for b in batches.split(",") if b.strip()):
        row = _measure(model, batch, context, steps)
        log.info(
            "batch %d: decode %.1f ms/step, %.1f ms per sequence-step; prefill %.0f tokens/CPU-s",
            batch,
            row["decode_ms_per_step"],
            row["decode_ms_per_sequence_step"],
            row["prefill_tokens_per_cpu_s"],
        )
        rows.append(row)
    body = {"model": str(path), "threads": threads, "dtype": dtype, "context": context}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**body, "rows": rows}, indent=1), encoding="utf-8")
    log.info("wrote %s", out)


if __name__ == "__main__":
    app()
