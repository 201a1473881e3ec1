"""LLM backend throughput: vLLM (CPU) vs the in-process backend, base and LoRA adapter.

    python -m benchmarks.bench_llm --adapter NAME=DIR --out runs/bench/llm.json
        [--requests 4] [--max-tokens 64] [--threads 1,2] [--config FILE] [--set key=value ...]

One prompt of ~220 tokens (real item titles) asking for a free-text summary; ``--max-tokens``
new tokens at most (greedy, so the model may stop earlier: tokens/s uses the real counts).
Cases: vLLM sequential (base, adapter), vLLM concurrent batch (base), local sequential for each
``--threads`` value (base, adapter). Starts its own vLLM server on a free port. Not a test.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.config import load_settings
from agent.llm.backend import LLMBackend, LLMError
from agent.llm.local_backend import LocalBackend
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.types import GenerationRequest, GenerationResult
from agent.llm.vllm_server import VLLMServer
from agent.logging_setup import setup_logging

log = logging.getLogger("recbridge.bench")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _prompt(data_dir: Path, n_titles: int = 14) -> str:
    titles: list[str] = []
    with (data_dir / "items.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % 300 == 0:
                titles.append(json.loads(line)["title"][:70])
            if len(titles) == n_titles:
                break
    listing = "\n".join(f"- {t}" for t in titles)
    return f"A user bought these products:\n{listing}\nSummarise this user's tastes."


def _measure(
    backend: LLMBackend, reqs: list[GenerationRequest], concurrency: int
) -> dict[str, Any]:
    started = time.perf_counter()
    results = backend.generate_batch(reqs, concurrency=concurrency)
    wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, GenerationResult)]
    errors = [str(r) for r in results if isinstance(r, LLMError)]
    new = sum(r.completion_tokens for r in ok)
    return {
        "requests": len(reqs),
        "concurrency": concurrency,
        "errors": errors,
        "prompt_tokens": ok[0].prompt_tokens if ok else 0,
        "new_tokens": new,
        "wall_s": round(wall, 2),
        "s_per_request": round(wall / max(len(reqs), 1), 2),
        "new_tokens_per_s": round(new / wall, 1) if wall else 0.0,
    }


@app.command(help=(__doc__ or "").splitlines()[0])
def main(
    adapter: Annotated[str, typer.Option(help="NAME=DIR of a LoRA adapter")],
    out: Annotated[Path, typer.Option()] = Path("runs/bench/llm.json"),
    requests: Annotated[int, typer.Option()] = 4,
    max_tokens: Annotated[int, typer.Option()] = 64,
    threads: Annotated[str, typer.Option(help="local backend torch threads to try")] = "1,2",
    config: Annotated[Path | None, typer.Option()] = None,
    set_items: Annotated[list[str] | None, typer.Option("--set")] = None,
) -> None:
    setup_logging("INFO")
    name, _, adapter_dir = adapter.partition("=")
    settings = load_settings(
        config,
        overrides={"llm.adapters": {name: str(Path(adapter_dir).resolve())}},
        set_items=list(set_items or []),
    )
    prompt = _prompt(Path(settings.data.path))

    def reqs(lora: str | None, n: int = requests) -> list[GenerationRequest]:
        return [
            GenerationRequest.from_prompt(f"{prompt} ({i})", max_tokens=max_tokens, adapter=lora)
            for i in range(n)
        ]

    report: dict[str, Any] = {"load_avg_start": os.getloadavg(), "cases": {}}
    cases: dict[str, Any] = report["cases"]
    server = VLLMServer.from_settings(settings, port=0)
    with server:
        report["vllm_ready_s"] = round(server.ready_s or 0.0, 1)
        vllm = OpenAIBackend(server.url, settings.llm.model, timeout_s=600)
        vllm.generate(reqs(None, 1)[0])  # warm-up: the first request pays one-off costs
        cases["vllm_base_seq"] = _measure(vllm, reqs(None), 1)
        cases["vllm_adapter_seq"] = _measure(vllm, reqs(name), 1)
        cases["vllm_base_batch"] = _measure(vllm, reqs(None, requests * 2), 8)
    for n_threads in (int(t) for t in threads.split(",")):
        local = LocalBackend(
            settings.llm_model_dir,
            settings.llm.model,
            adapters=settings.llm.adapters,
            threads=n_threads,
            timeout_s=600,
        )
        local.generate(reqs(None, 1)[0])
        cases[f"local_t{n_threads}_base_seq"] = _measure(local, reqs(None), 1)
        cases[f"local_t{n_threads}_adapter_seq"] = _measure(local, reqs(name), 1)
    report["load_avg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    for case, row in cases.items():
        log.info("%-22s %s", case, {k: row[k] for k in ("s_per_request", "new_tokens_per_s")})
    log.info("written %s", out)


if __name__ == "__main__":
    app()
