"""The page's speed on loopback against a real ``recbridge serve`` on the full data: page load
in the system's headless Chromium (navigation timing, and until the menus are filled from the
API), and the chat's first streamed item (``/v1/chat/completions`` with ``stream: true``) with
the retriever alone and with the LLM reranker: time to the first byte, to the first item chunk
and to the last chunk, from a plain HTTP client and from the page. Writes JSON (``--out``).

    python -m benchmarks.bench_page --out runs/bench/page.json

The list is ranked before the first chunk (agent/api/chat.py), so the first item arrives with
the whole ranking's latency; streaming paces delivery, it does not hide the ranking.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from agent.config import load_settings
from agent.logging_setup import setup_logging
from benchmarks.bench_api import start_server
from benchmarks.browser import missing_browser, open_chromium

log = logging.getLogger("bench_page")


def stream_timing(url: str, pipeline: str, user: str) -> dict[str, float]:
    """Milliseconds to the first byte, the first item chunk and the end of one streamed chat."""
    body = {
        "model": pipeline,
        "messages": [{"role": "user", "content": f"user: {user}"}],
        "stream": True,
    }
    started = time.perf_counter()
    out: dict[str, float] = {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            now = (time.perf_counter() - started) * 1000
            out.setdefault("first_byte_ms", now)
            if line.startswith("data: {") and '"type": "item"' in line:
                out.setdefault("first_item_ms", now)
    out["done_ms"] = (time.perf_counter() - started) * 1000
    return out


def page_load(driver: Any, url: str, rounds: int) -> list[dict[str, float]]:
    """Fresh navigations to the page (cache off): navigation timing and menus filled."""
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    out = []
    for _ in range(rounds):
        driver.get("about:blank")
        driver.get(url + "/")
        deadline = time.monotonic() + 60
        loaded = None
        while loaded is None and time.monotonic() < deadline:
            loaded = driver.execute_script("return document.body.dataset.loadedMs || null")
            time.sleep(0.02)
        nav = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return {ttfb: n.responseStart, dom: n.domContentLoadedEventEnd, load: n.loadEventEnd,"
            " bytes: performance.getEntriesByType('resource').reduce((s, r) => s + r.transferSize,"
            " n.transferSize)};"
        )
        out.append(
            {
                "ttfb_ms": nav["ttfb"],
                "dom_content_loaded_ms": nav["dom"],
                "load_ms": nav["load"],
                "menus_filled_ms": float(loaded) if loaded else float("nan"),
                "bytes": nav["bytes"],
            }
        )
    return out


def page_first_item(driver: Any, pipeline: str, user: str) -> float:
    """The page's own time from sending a chat to its first streamed item on screen."""
    script = """
    const [pipeline, user, done] = arguments;
    document.querySelector('[data-testid=tab-chat]').click();
    document.querySelector('#chat-pipeline').value = pipeline;
    const box = document.querySelector('#tab-chat .who-user');
    box.value = user; box.dispatchEvent(new Event('input'));
    document.querySelector('[data-testid=chat-send]').click();
    const wait = () => {
      const a = document.querySelector('[data-testid=turn-assistant].done');
      if (a) done(Number(a.dataset.firstItemMs)); else setTimeout(wait, 20);
    };
    wait();
    """
    driver.set_script_timeout(600)
    return float(driver.execute_async_script(script, pipeline, user))


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_page")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/page.json"))
    parser.add_argument("--retriever", default="sasrec-id")
    parser.add_argument("--reranker", default="listwise")
    parser.add_argument("--users", type=int, default=8, help="Test users streamed per pipeline.")
    parser.add_argument("--loads", type=int, default=10, help="Page loads.")
    parser.add_argument("--set", dest="set_items", action="append", default=[])
    args = parser.parse_args(argv)
    setup_logging()
    missing = missing_browser()
    if missing:
        parser.error(f"the browser is missing: {', '.join(missing)} (make browser)")
    settings = load_settings(overrides=dict(s.split("=", 1) for s in args.set_items))
    users = [f"t{i}" for i in range(1, args.users + 1)]
    pipelines = [args.retriever, f"{args.retriever}+{args.reranker}"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    url, proc = start_server(args.set_items, pipelines, args.out.with_suffix(".server.log"))
    driver = open_chromium()
    try:
        loads = page_load(driver, url, args.loads)
        streams: dict[str, list[dict[str, float]]] = {}
        in_page: dict[str, list[float]] = {}
        for pipeline in pipelines:
            stream_timing(url, pipeline, users[-1])  # warm: first calls load and compile
            streams[pipeline] = [stream_timing(url, pipeline, u) for u in users]
            in_page[pipeline] = [page_first_item(driver, pipeline, u) for u in users[:3]]
            log.info("%s: %s", pipeline, streams[pipeline])
    finally:
        driver.quit()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    result = {
        "data": str(settings.data.path),
        "page_load": {k: summary([r[k] for r in loads]) for k in loads[0]},
        "stream": {
            p: {k: summary([r[k] for r in rows]) for k in rows[0]} for p, rows in streams.items()
        },
        "page_first_item_ms": {p: summary(v) for p, v in in_page.items()},
    }
    args.out.write_text(json.dumps(result, indent=2))
    log.info("wrote %s:\n%s", args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
