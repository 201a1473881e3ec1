"""Data-parallel helpers (agent/models/distributed.py) and the trainer under a real gloo process
group: two processes on loopback (torch.multiprocessing.spawn), no Ray."""

from __future__ import annotations

import hashlib
import json
import math
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import spawn

from agent.models.distributed import DataParallel, negative_seed

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(fn: Any, *args: Any) -> None:
    """``fn(rank, port, *args)`` in WORLD processes that share a gloo group on loopback."""
    spawn(fn, args=(_free_port(), *args), nprocs=WORLD, join=True)  # type: ignore[no-untyped-call]


def _join(rank: int, port: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )


def _helpers_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        dp = DataParallel.current()
        both = nn.Parameter(torch.zeros(2, 3))  # a gradient on both ranks
        one = nn.Parameter(torch.zeros(4))  # a gradient on rank 1 only
        none = nn.Parameter(torch.zeros(2))  # no gradient anywhere
        both.grad = torch.full((2, 3), float(rank + 1))
        if rank == 1:
            one.grad = torch.full((4,), 2.0)
        dp.all_reduce_grads([both, one, none])
        x = torch.arange(5).unsqueeze(1)
        rows = [t.flatten().tolist() for t in dp.shard(x, x * 10, torch.arange(5))]
        tiny = [t.tolist() for t in dp.shard(torch.tensor([7]), torch.tensor([8]))]
        result = {
            "world": dp.world,
            "rank": dp.rank,
            "active": dp.active,
            "both": both.grad.tolist(),
            "one": None if one.grad is None else one.grad.tolist(),
            "none": None if none.grad is None else none.grad.tolist(),
            "rows": rows,
            "tiny": tiny,
            "broadcast": dp.broadcast_float(0.25 if rank == 0 else math.nan),
            "mean": dp.mean_float(float(rank)),
            "negative_seed": negative_seed(7),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_helpers_average_shard_and_broadcast(tmp_path: Path) -> None:
    _run(_helpers_worker, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    for rank, res in enumerate((r0, r1)):
        assert (res["world"], res["rank"], res["active"]) == (WORLD, rank, True)
        assert res["both"] == [[1.5] * 3] * 2  # (1 + 2) / 2
        assert res["one"] == [1.0] * 4  # (0 + 2) / 2: rank 0 takes the mean it had no part in
        assert res["none"] is None  # no rank had one: stays None, so Adam skips it
        assert res["broadcast"] == 0.25  # rank 0's value everywhere
        assert res["mean"] == 0.5
        assert res["tiny"] == [[7], [8]]  # fewer rows than ranks: every rank gets a row
    # rows rank::world, aligned across the tensors, together the whole batch exactly once
    assert r0["rows"] == [[0, 2, 4], [0, 20, 40], [0, 2, 4]]
    assert r1["rows"] == [[1, 3], [10, 30], [1, 3]]
    # the ranks draw different negatives; rank 0 keeps the single-process seed
    assert (r0["negative_seed"], r1["negative_seed"]) == (8, 9)


def test_without_a_process_group_everything_is_a_no_op() -> None:
    dp = DataParallel.current()
    assert (dp.world, dp.rank, dp.active, dp.main) == (1, 0, False, True)
    x = torch.arange(6).view(3, 2)
    assert dp.shard(x)[0] is x
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    dp.all_reduce_grads([p])
    assert p.grad.tolist() == [3.0, 3.0]
    assert dp.broadcast_float(0.5) == 0.5 and dp.mean_float(2.0) == 2.0
    assert negative_seed(7) == 8


def _fit_worker(rank: int, port: int, data_dir: str, root: str) -> None:
    torch.set_num_threads(1)
    _join(rank, port)
    try:
        from agent.config import load_settings
        from agent.data.loader import load_dataset
        from agent.models.sasrec_id import SASRecIDRecommender
        from eval.evaluator import make_valid_fn

        settings = load_settings(
            overrides={
                "data.path": data_dir,
                "work_dir": str(Path(root, f"work{rank}")),
                "train.epochs": 2,
                "train.hidden": 16,
                "train.max_len": 20,
                "train.batch_size": 64,
            }
        )
        data = load_dataset(settings.data)
        scored = make_valid_fn(data, settings)
        calls: list[float] = []

        def valid_fn(model: Any) -> float:
            calls.append(scored(model))
            return calls[-1]

        rec = SASRecIDRecommender(data, settings)
        report = rec.fit(valid_fn=valid_fn, out=Path(root, f"ckpt{rank}"))
        digest = hashlib.sha256()
        for value in rec.net.state_dict().values():
            digest.update(value.detach().numpy().tobytes())
        result = {
            "weights": digest.hexdigest(),
            "valid_calls": len(calls),
            "history": [e.get("valid_ndcg10") for e in report.history],
            "losses": [e["loss"] for e in report.history],
            "best_epoch": report.best_epoch,
        }
        Path(root, f"fit{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fit_loop_keeps_the_ranks_in_step(slice_dir: Path, tmp_path: Path) -> None:
    """Two ranks train sasrec-id on their halves of each batch: equal weights at the end, one
    validation per epoch on rank 0 whose score both ranks record, only rank 0 writes."""
    _run(_fit_worker, str(slice_dir), str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"fit{r}.json").read_text()) for r in range(WORLD))
    assert r0["weights"] == r1["weights"]
    assert (r0["valid_calls"], r1["valid_calls"]) == (2, 0)
    assert r0["history"] == r1["history"] and all(v > 0 for v in r0["history"])
    assert r0["losses"] == r1["losses"]  # the epoch loss is the mean over the ranks
    assert r0["best_epoch"] == r1["best_epoch"]
    assert (tmp_path / "ckpt0" / "model.pt").is_file()
    assert not (tmp_path / "ckpt1").exists()
