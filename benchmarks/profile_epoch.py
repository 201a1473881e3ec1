"""Where a training epoch of a sequential recommender goes: a bounded number of batches of the
trainer's own loop, timed by phase, plus torch.profiler's top operators.

    python -m benchmarks.profile_epoch --model sasrec-id [--set train.loss=sampled-softmax]
        [--batches 100] [--data DIR] [--out runs/bench/profile/NAME.json]

Phases per batch (wall seconds, summed): ``batch`` (the sampler and the indexing of the
batch, the trimming of its padding), ``negatives`` (sampling), ``encode`` (item vectors),
``backbone`` (the sequence network), ``loss`` (logits and the loss), ``backward``,
``optimizer`` (zero_grad + step); then one ``valid`` call (the early-stopping evaluation, as
``fit_loop`` runs it between epochs). The phases re-implement ``next_item_loss`` step by step
so that each can be timed apart; the batches, negatives and loss are the trainer's. Not a test.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from torch.profiler import ProfilerActivity, profile, record_function

from agent.config import load_settings
from agent.logging_setup import setup_logging

log = logging.getLogger("benchmarks.profile_epoch")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    model: Annotated[str, typer.Option(help="Registry name (a SequentialRecommender).")],
    batches: Annotated[int, typer.Option(min=1, help="Batches to time.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Batches run before timing.")] = 10,
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON file to write.")] = None,
    valid: Annotated[bool, typer.Option(help="Time one early-stopping evaluation.")] = True,
    top: Annotated[int, typer.Option(help="Operators to list.")] = 25,
    set_items: Annotated[
        list[str] | None, typer.Option("--set", help="section.key=value (repeatable).")
    ] = None,
) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from agent.data.loader import load_dataset
    from agent.models.neural import SequenceNet
    from agent.models.registry import build_recommender
    from agent.models.training import (
        LengthPoolBatchSampler,
        keep_freed_memory,
        make_ranking_loss,
        seed_everything,
        training_sequences,
    )
    from eval.evaluator import make_valid_fn

    setup_logging("INFO")
    settings = load_settings(
        None, overrides={"data.path": str(data) if data else None}, set_items=set_items or []
    )
    dataset = load_dataset(settings.data)
    rec: Any = build_recommender(model, dataset, settings)
    net = rec.net
    assert isinstance(net, SequenceNet)
    inputs, targets = training_sequences(dataset, net.max_len)
    loss = make_ranking_loss(rec, inputs, targets)
    seed_everything(settings.seed)
    torch.set_flush_denormal(True)
    keep_freed_memory()  # as fit_loop does
    cfg = settings.train
    loader = DataLoader(
        TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets)),
        sampler=LengthPoolBatchSampler(
            (inputs > 0).sum(1), cfg.batch_size, torch.Generator().manual_seed(settings.seed)
        ),
        batch_size=None,
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, fused=True)
    seconds: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(name: str, on: bool) -> Iterator[None]:
        # process CPU time beside wall time: the machine is shared, and a descheduled
        # process's wall time says more about the other jobs than about this code
        t0, c0 = time.perf_counter(), time.process_time()
        with record_function(f"## {name}"):
            yield
        if on:
            seconds[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0

    def run(n: int, on: bool) -> None:
        net.train()
        it = iter(loader)
        for _ in range(n):
            with phase("batch", on):
                x, y = next(it)
                first = int(torch.nonzero((x > 0).any(dim=0))[0])
                x, y = x[:, first:], y[:, first:]
                real = y > 0
                pos_ids = y[real]
            with phase("negatives", on):
                if loss.shared:
                    neg = loss.shared_negatives()
                elif not loss.full:
                    neg = loss.negatives(y)[real]
            with phase("encode", on):
                if loss.full:
                    vectors = net.items.all_items()
                    x_vec = vectors[x]
                else:
                    vectors = net.items(torch.cat([x.flatten(), pos_ids, neg.flatten()]))
                    n_in, n_pos = x.numel(), len(pos_ids)
                    x_vec = vectors[:n_in].view(*x.shape, -1)
            with phase("backbone", on):
                h = net(x, x_vec)[real]
            with phase("loss", on):
                if loss.full:
                    value = loss.from_table(h, pos_ids, vectors)
                elif loss.shared:
                    value = loss.from_shared(
                        h, pos_ids, vectors[n_in : n_in + n_pos], neg, vectors[n_in + n_pos :]
                    )
                else:
                    pv = vectors[n_in : n_in + n_pos]
                    nv = vectors[n_in + n_pos :].view(*neg.shape, -1)
                    value = loss.from_logits(
                        (h * pv).sum(-1), (nv @ h.unsqueeze(-1))[..., 0], pos_ids, neg
                    )
            with phase("backward", on):
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(value)
            with phase("optimizer", on):
                optimizer.step()

    run(warmup, False)
    t0, c0 = time.perf_counter(), time.process_time()
    run(batches, True)
    wall, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run(min(batches, 30), False)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    valid_s = None
    if valid:
        valid_fn = make_valid_fn(dataset, settings)
        net.eval()
        valid_fn(rec)  # candidates built on the first call (once per training run)
        c1 = time.process_time()
        valid_fn(rec)
        valid_s = time.process_time() - c1
    per_epoch = len(loader) / batches
    result = {
        "model": model,
        "set": set_items or [],
        "threads": torch.get_num_threads(),
        "batches": batches,
        "batches_per_epoch": len(loader),
        "wall_s": wall,
        "epoch_s_estimate": wall * per_epoch,
        "epoch_cpu_s_estimate": cpu_total * per_epoch,
        "phases_s_per_epoch": {k: v * per_epoch for k, v in seconds.items()},
        "phases_cpu_s_per_epoch": {k: v * per_epoch for k, v in cpu.items()},
        "phase_cpu_share": {k: v / cpu_total for k, v in cpu.items()},
        "valid_cpu_s": valid_s,
        "top_ops": table,
    }
    typer.echo(table)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "top_ops"}, indent=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    app()
