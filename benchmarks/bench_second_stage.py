"""What each part of the learned second stage costs to train: wall time and peak RSS.

    python -m benchmarks.bench_second_stage [--rows 5000] [--items 512]
        [--out runs/bench/second-stage.json]

Each part runs as the real command in a process of its own (its peak RSS from ``wait4``), on
this machine's trained retrievers and caches (``make second-stage`` first):

- ``llm-states``: ``recbridge llm states`` over ``--items`` items of the catalogue into a
  scratch folder; the full catalogue's time is extrapolated linearly (one forward pass an item);
- ``ranker``: ``recbridge ranker train`` with ``ranker.train_rows=--rows`` (a fresh group
  cache entry, so the groups are built, not read) into a scratch folder; the wall time of the
  groups over all train rows is extrapolated from the card's group seconds;
- ``ranker-llm``: the same with the LLM-state features (groups cached by the run above);
- ``head``: ``recbridge ranker head`` on the cached groups (its real, full cost).

The retrievers' own training (``recbridge train``) is measured in the README's retriever
study. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.config import PROJECT_ROOT, load_settings
from agent.data.loader import load_dataset
from agent.logging_setup import setup_logging

log = logging.getLogger("recbridge.bench")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _run(argv: list[str], log_path: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one command in a process of its own."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {code}:\n{tail}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


@app.command()
def main(
    rows: Annotated[int, typer.Option(min=100, help="Train rows the ranker's groups use.")] = 5000,
    items: Annotated[int, typer.Option(min=32, help="Items the LLM-state part encodes.")] = 512,
    states: Annotated[str, typer.Option(help="LLM item states backbone.")] = "smollm2",
    out: Annotated[Path, typer.Option(help="JSON report.")] = Path("runs/bench/second-stage.json"),
) -> None:
    setup_logging("INFO")
    settings = load_settings()
    data = load_dataset(settings.data)
    cli = [sys.executable, "-m", "agent.cli"]
    report: dict[str, Any] = {"rows": rows, "items": items}
    with tempfile.TemporaryDirectory(prefix="bench-second-stage-") as scratch:
        root = Path(scratch)
        # LLM states of the first ``items`` items: a scratch data folder of those items only
        sample = root / "data"
        sample.mkdir()
        source = settings.data.path
        lines = (source / "items.jsonl").read_text(encoding="utf-8").splitlines()[:items]
        (sample / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        ids = [json.loads(line)["item_id"] for line in lines]
        (sample / "sequences.jsonl").write_text(
            "".join(
                json.dumps({"user_id": f"u{s}", "split": s, "items": ids[i * 4 : i * 4 + 4]}) + "\n"
                for i, s in enumerate(("train", "valid", "test"))
            ),
            encoding="utf-8",
        )
        part = _run(
            [
                *cli,
                "--set",
                f"data.path={sample}",
                "--set",
                f"work_dir={root / 'work'}",
                "--set",
                f"llm.model_dir={settings.llm_model_dir}",
                "llm",
                "states",
                "--backbone",
                states,
                "--threads",
                "1",
            ],
            root / "states.log",
        )
        part["items_per_s"] = items / part["wall_s"]
        part["catalogue_minutes_1_core"] = len(data.catalog) / part["items_per_s"] / 60
        report["llm-states"] = part
        log.info("llm-states: %s", part)

        base = [*cli, "--set", "ranker.threads=1", "--set", f"ranker.train_rows={rows}"]
        part = _run([*base, "ranker", "train", "--out", str(root / "ranker")], root / "ranker.log")
        card = json.loads((root / "ranker" / "card.json").read_text(encoding="utf-8"))
        train = card["train"]
        part["group_seconds"] = train["seconds"]
        part["fit_seconds"] = train["fit_seconds"]
        part["all_rows_group_minutes"] = train["seconds"] * len(data.split("train")) / rows / 60
        report["ranker"] = part
        log.info("ranker: %s", part)

        part = _run(
            [*base, "ranker", "train", "--llm-states", states, "--out", str(root / "ranker-llm")],
            root / "ranker-llm.log",
        )
        report["ranker-llm"] = part
        log.info("ranker-llm: %s", part)

        part = _run(
            [
                *cli,
                "--set",
                f"ranker.train_rows={rows}",
                "ranker",
                "head",
                "--llm-states",
                states,
                "--out",
                str(root / "head"),
            ],
            root / "head.log",
        )
        head = json.loads((root / "head" / "card.json").read_text(encoding="utf-8"))
        part["seconds_per_epoch"] = head["train"]["seconds_per_epoch"]
        part["epochs"] = head["train"]["epochs"]
        report["head"] = part
        log.info("head: %s", part)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    log.info("wrote %s", out)


if __name__ == "__main__":
    app()
