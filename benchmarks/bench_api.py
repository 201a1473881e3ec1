"""Load benchmark of ``recbridge serve`` on loopback: ``/v1/rerank`` with the retriever alone
and with the LLM reranker, at concurrency 1, 8 and 32 (bounded request count and time per
level): p50/p95/p99 latency, requests/s, errors and fallbacks; and the server's overhead
against the same pipeline called in-process (``RecBridgeService.arerank``, same requests, same
concurrency). Writes JSON (``--out``).

    python -m benchmarks.bench_api --data ../shared/data/food-kitchen --out runs/bench/api.json

Both sides stay up and take turns: each level runs in ``--rounds`` blocks, in-process then
server (the order alternating), so a shared machine's changing load hits both alike and the
two never run at once. Client and server share this machine's cores (loopback), as in
production behind a local proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent.config import PROJECT_ROOT, Settings, load_settings
from agent.data.schema import Dataset
from agent.logging_setup import setup_logging
from agent.service import RecBridgeService
from agent.service.queries import Query
from eval.evaluator import make_valid_fn

log = logging.getLogger("bench_api")


@dataclass(frozen=True)
class Job:
    user: str
    documents: list[str]


@dataclass
class Level:
    """One (pipeline, concurrency) run."""

    mode: str  # "server" or "in-process"
    pipeline: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # the server's own share (header)
    error_examples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        out = asdict(self)
        del out["latencies_ms"], out["server_ms"]
        out.update(
            p50_ms=float(np.percentile(lat, 50)),
            p95_ms=float(np.percentile(lat, 95)),
            p99_ms=float(np.percentile(lat, 99)),
            mean_ms=float(lat.mean()),
            req_per_s=(self.requests - self.errors) / self.wall_s if self.wall_s else 0.0,
        )
        if self.server_ms:
            out.update(
                server_side_p50_ms=float(np.percentile(self.server_ms, 50)),
                server_side_p95_ms=float(np.percentile(self.server_ms, 95)),
            )
        return out


@dataclass(frozen=True)
class Outcome:
    ok: bool
    fallback: bool = False
    error: str = ""
    server_ms: float | None = None  # the server's time (its Server-Timing header)


def workload(data: Dataset, n: int, candidates: int, seed: int) -> list[Job]:
    """``n`` test users, each with its target and ``candidates - 1`` seeded negatives of the
    target's domain (never from its history)."""
    rng = np.random.default_rng(seed)
    pools: dict[str, list[str]] = {}
    for iid, item in data.items.items():
        pools.setdefault(item.domain, []).append(iid)
    jobs: list[Job] = []
    for user in data.split("test")[:n]:
        assert user.target is not None
        pool = pools[data.domain_of(user.target)]
        seen = set(user.items)
        negatives: list[str] = []
        while len(negatives) < candidates - 1:
            pick = pool[int(rng.integers(len(pool)))]
            if pick not in seen and pick not in negatives:
                negatives.append(pick)
        docs = [user.target, *negatives]
        rng.shuffle(docs)
        jobs.append(Job(user.user_id, docs))
    return jobs


Call = Callable[[Job], Awaitable[Outcome]]


async def drive(level: Level, call: Call, jobs: list[Job], n: int, time_limit_s: float) -> Level:
    """``n`` more calls, ``level.concurrency`` at a time, none started after the limit; the
    level's counts and wall time accumulate over its blocks."""
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while done < n and time.perf_counter() - started < time_limit_s:
            job = jobs[level.requests % len(jobs)]
            done += 1
            level.requests += 1
            t0 = time.perf_counter()
            try:
                out = await call(job)
            except Exception as exc:  # a benchmark counts failures, it does not stop on them
                out = Outcome(False, error=f"{type(exc).__name__}: {exc}")
            level.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if out.server_ms is not None:
                level.server_ms.append(out.server_ms)
            level.errors += not out.ok
            level.fallbacks += out.fallback
            if out.error and len(level.error_examples) < 3:
                level.error_examples.append(out.error[:200])

    await asyncio.gather(*(worker() for _ in range(level.concurrency)))
    level.wall_s += time.perf_counter() - started
    return level


def _log_level(level: Level) -> None:
    log.info(
        "%s %s c=%d: %d requests, %d errors, %d fallbacks, p50 %.1f ms, %.2f req/s",
        level.mode,
        level.pipeline,
        level.concurrency,
        level.requests,
        level.errors,
        level.fallbacks,
        float(np.percentile(level.latencies_ms, 50)) if level.latencies_ms else 0.0,
        level.summary()["req_per_s"],
    )


@dataclass(frozen=True)
class Plan:
    pipelines: list[str]
    concurrency: list[int]
    requests: dict[str, list[int]]  # pipeline -> most requests, per concurrency level
    time_limit_s: float
    rounds: int = 1  # blocks per level and side, taking turns


def local_call(service: RecBridgeService, pipeline: str) -> Call:
    async def call(job: Job) -> Outcome:
        out = await service.arerank(Query(user=job.user, pipeline=pipeline), job.documents)
        return Outcome(True, out.fallback is not None, out.error or "")

    return call


def http_call(client: httpx.AsyncClient, pipeline: str) -> Call:
    async def call(job: Job) -> Outcome:
        body = {"model": pipeline, "query": job.user, "documents": job.documents}
        resp = await client.post("/v1/rerank", json=body)
        if resp.status_code != 200:
            return Outcome(False, error=f"HTTP {resp.status_code}: {resp.text[:150]}")
        out = resp.json()
        timing = resp.headers.get("server-timing", "")  # "app;dur=12.3"
        server_ms = float(timing.split("dur=")[1]) if "dur=" in timing else None
        return Outcome(True, out["fallback"] is not None, out.get("error") or "", server_ms)

    return call


async def run_plan(service: RecBridgeService, url: str, plan: Plan, jobs: list[Job]) -> list[Level]:
    """Every (pipeline, concurrency) level on both sides, in ``plan.rounds`` alternating blocks
    of at most ``requests / rounds`` requests and ``time_limit_s / rounds`` seconds each."""
    levels: list[Level] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for pipeline in plan.pipelines:
            calls = {
                "in-process": local_call(service, pipeline),
                "server": http_call(client, pipeline),
            }
            for call in calls.values():
                await call(jobs[0])  # warm-up (first LLM batch, lazy imports, connections)
            for conc, most in zip(plan.concurrency, plan.requests[pipeline], strict=True):
                pair = {mode: Level(mode, pipeline, conc) for mode in calls}
                block = -(-most // plan.rounds)
                for r in range(plan.rounds):
                    order = list(calls) if r % 2 == 0 else list(calls)[::-1]
                    for mode in order:
                        n = min(block, most - pair[mode].requests)
                        seconds = plan.time_limit_s / plan.rounds
                        await drive(pair[mode], calls[mode], jobs, n, seconds)
                for level in pair.values():
                    _log_level(level)
                levels += pair.values()
    await service.aclose()  # in the loop its LLM client belongs to
    return levels


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(sets: list[str], pipelines: list[str], log_path: Path) -> tuple[str, Any]:
    port = _free_port()
    argv = [sys.executable, "-m", "agent.cli"]
    for item in sets:
        argv += ["--set", item]
    argv += ["serve", "--port", str(port)]
    for name in pipelines:
        argv += ["--pipeline", name]
    sink = log_path.open("wb")
    proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    proc.kill()
    raise RuntimeError(f"server not ready in 900 s; see {log_path}")


def overhead(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Server p50 / in-process p50 (and req/s ratio) per pipeline and concurrency."""
    by_key = {(lv["mode"], lv["pipeline"], lv["concurrency"]): lv for lv in levels}
    rows = []
    for (mode, pipeline, conc), server in by_key.items():
        if mode != "server" or ("in-process", pipeline, conc) not in by_key:
            continue
        local = by_key[("in-process", pipeline, conc)]
        rows.append(
            {
                "pipeline": pipeline,
                "concurrency": conc,
                "p50_ratio": server["p50_ms"] / max(local["p50_ms"], 1e-9),
                "mean_ratio": server["mean_ms"] / max(local["mean_ms"], 1e-9),
                "p50_added_ms": server["p50_ms"] - local["p50_ms"],
                # the server's own time (Server-Timing), without the client and the loopback
                "server_side_p50_ratio": server["server_side_p50_ms"] / max(local["p50_ms"], 1e-9)
                if "server_side_p50_ms" in server
                else None,
                "throughput_ratio": local["req_per_s"] / max(server["req_per_s"], 1e-9),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_api")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/api.json"))
    parser.add_argument("--retriever", default="sasrec-id")
    parser.add_argument("--reranker", default="listwise")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=320, help="Per level, retriever alone.")
    parser.add_argument(
        "--llm-requests", default="4,8,32", help="With the LLM: most requests per level."
    )
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--level-seconds", type=float, default=60.0, help="No start after this.")
    parser.add_argument("--no-llm", action="store_true", help="The retriever alone only.")
    parser.add_argument(
        "--rounds", type=int, default=4, help="Alternating in-process/server blocks per level."
    )
    parser.add_argument("--set", dest="set_items", action="append", default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging("INFO")
    bench_dir = args.out.parent
    bench_dir.mkdir(parents=True, exist_ok=True)
    # Its own Chroma folders (one per side: both are up at once): never open an embedded
    # store from two processes.
    sets = [
        f"store.path={bench_dir / 'api-chroma'}",
        "llm.threads=1",
        "serve.max_concurrency=64",
        "serve.max_candidates=100",
        *([f"data.path={args.data}"] if args.data else []),
        *args.set_items,
    ]
    settings: Settings = load_settings(
        set_items=[*sets, f"store.path={bench_dir / 'api-chroma-local'}"]
    )
    retriever, two_stage = args.retriever, f"{args.retriever}+{args.reranker}"
    plan = Plan(
        pipelines=[retriever] if args.no_llm else [retriever, two_stage],
        concurrency=[int(c) for c in args.concurrency.split(",")],
        requests={
            retriever: [args.requests] * len(args.concurrency.split(",")),
            two_stage: [int(n) for n in args.llm_requests.split(",")],
        },
        time_limit_s=args.level_seconds,
        rounds=max(1, args.rounds),
    )
    started = time.perf_counter()
    # Built as `recbridge serve` builds it (it may train a retriever that has no checkpoint).
    service = RecBridgeService.from_settings(
        settings, pipelines=plan.pipelines, preload=True, valid_fn_factory=make_valid_fn
    )
    jobs = workload(service.data, 256, args.candidates, settings.seed)
    url, proc = start_server(sets, plan.pipelines, bench_dir / "api-server.log")
    try:
        measured = asyncio.run(run_plan(service, url, plan, jobs))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    levels = [lv.summary() for lv in measured]
    report = {
        "benchmark": "api",
        "endpoint": "/v1/rerank",
        "data": str(settings.data.path),
        "retriever": retriever,
        "llm_pipeline": two_stage,
        "llm_backend": settings.llm.backend,
        "llm_model": settings.llm.model,
        "candidates_per_request": args.candidates,
        "rerank_top_n": settings.rerank.top_n,
        "plan": asdict(plan),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "seconds": time.perf_counter() - started,
        "levels": levels,
        "overhead": overhead(levels),
    }
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    log.info("wrote %s", args.out)
    for row in report["overhead"]:
        log.info(
            "%s c=%d: server/in-process p50 %.2fx (+%.1f ms; server side alone %s), "
            "throughput %.2fx",
            row["pipeline"],
            row["concurrency"],
            row["p50_ratio"],
            row["p50_added_ms"],
            "-" if row["server_side_p50_ratio"] is None else f"{row['server_side_p50_ratio']:.2f}x",
            row["throughput_ratio"],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
