"""LoRA fine-tuning with the real model on the real data slice: prompt identity with
inference, a short run that lowers the loss and writes a loadable adapter with its card,
resume after kill -9, and the trained adapter served by the real vLLM ranking as the local
backend does. Prompts are kept short (tests/integration/finetune_helpers.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent.config import load_settings
from agent.data.loader import load_dataset
from agent.llm.adapters import adapter_card, discover_adapters
from agent.llm.local_backend import LocalBackend, chat_prompt_ids
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.types import GenerationRequest
from agent.llm.vllm_server import VLLMServer
from agent.models.popularity import PopularityRecommender
from agent.pipeline.retrieve import retrieve
from agent.rerank.base import RerankRequest
from agent.rerank.registry import make_reranker
from finetune.examples import read_examples
from finetune.losses import verbalizer_loss
from finetune.pipeline import data_path, make_data, train_adapter
from finetune.render import PromptRenderer
from finetune.trainer import collate
from tests.integration.finetune_helpers import small_settings
from tests.integration.llm_fixtures import BASE, RERANK_ADAPTER

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_training_prompt_is_the_inference_prompt(
    slice_dir: Path, llm_model_dir: Path, rerank_adapter: Path, tmp_path: Path
) -> None:
    """Same history and candidates: the ids a training example is encoded to are the ids the
    local backend sends to the model for the reranker using that adapter (prompt settings
    taken from the adapter's card), token for token."""
    settings = small_settings(slice_dir, llm_model_dir, tmp_path / "work")
    make_data(settings, "random")
    data = load_dataset(settings.data)
    tok = AutoTokenizer.from_pretrained(str(llm_model_dir))
    renderer = PromptRenderer(settings, data, tok, "verbalizer")
    # Inference side: default rerank settings, the adapter named; its card sets the prompt.
    served = load_settings(
        overrides={
            "data.path": str(slice_dir),
            "work_dir": str(tmp_path / "serve"),
            "llm.model_dir": str(llm_model_dir),
            "llm.adapters": {RERANK_ADAPTER: str(rerank_adapter)},
            "rerank.adapter": RERANK_ADAPTER,
            "rerank.use_profile": False,
        }
    )
    backend = LocalBackend(llm_model_dir, BASE, adapters={RERANK_ADAPTER: rerank_adapter})
    reranker = make_reranker("verbalizer", backend, served)
    for ex in read_examples(data_path(settings, "random"))[:4]:
        encoded = renderer.encode(ex)
        # Inference gets the whole history; the reranker cuts it to what the adapter learned.
        request = RerankRequest.from_ids(data, ex.user_id, ex.history, ex.candidates)
        generation = reranker._generation_for(request, request.candidates)
        assert chat_prompt_ids(tok, generation.messages) == encoded.prompt
        assert generation.adapter == RERANK_ADAPTER
    result = backend.generate(generation)
    assert result.prompt_tokens == len(encoded.prompt)


def _answer_loss(
    model_dir: Path, adapter: Path | None, settings_dir: Path, slice_dir: Path
) -> float:
    settings = small_settings(slice_dir, model_dir, settings_dir)
    data = load_dataset(settings.data)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    renderer = PromptRenderer(settings, data, tok, "verbalizer")
    rows = [renderer.encode(ex) for ex in read_examples(data_path(settings, "random"))]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    batch = collate(rows, int(tok.pad_token_id), "verbalizer")
    with torch.inference_mode():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=1,
        )
        return float(verbalizer_loss(out.logits[:, -1], batch["label_ids"], batch["target"]))


def test_short_training_lowers_the_loss_and_writes_a_loadable_adapter(
    slice_dir: Path, llm_model_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    settings = small_settings(
        slice_dir,
        llm_model_dir,
        work,
        **{"finetune.max_steps": 6, "finetune.eval_every": 3, "finetune.valid_users": 4},
    )
    make_data(settings, "random")
    before = _answer_loss(llm_model_dir, None, work, slice_dir)
    report = train_adapter(settings, name="short", recipe="random", validate=True)
    card = report.card
    assert (report.adapter_dir / "adapter_model.safetensors").is_file()
    assert card["steps"] == 6 and len(card["loss_curve"]) == 6
    # Valid NDCG@10 through the real reranker: at step 0 (the base model), 3 and 6.
    assert [p["step"] for p in card["valid_curve"]] == [0, 3, 6]
    assert all(0.0 <= p["ndcg10"] <= 1.0 and p["users"] == 4 for p in card["valid_curve"])
    assert card["prompt"]["title_chars"] == 24 and card["prompt"]["one_shot"] is False
    assert len(card["base_model"]["sha256"]) == 64
    assert card["data"]["recipe"] == "random" and card["tokens"] > 0
    assert card["peak_rss_mb"] > 0 and card["train_seconds"] > 0
    # The kept adapter is the last one here when it beat step 0, else "best" is step 0's.
    after = _answer_loss(
        llm_model_dir, work / "finetune" / "runs" / "short" / "last", work, slice_dir
    )
    assert after < before, (before, after)
    # Discovered and served by name; the local backend loads and runs it.
    assert discover_adapters(settings)["short"] == report.adapter_dir
    backend = LocalBackend(llm_model_dir, BASE, adapters={"short": report.adapter_dir})
    out = backend.generate(
        GenerationRequest.from_prompt("Say A.", max_tokens=2, adapter="short", top_logprobs=5)
    )
    assert out.model == "short" and out.top_logprobs


def test_training_resumes_after_kill_9(
    slice_dir: Path, llm_model_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    items = [
        f"data.path={slice_dir}",
        f"work_dir={work}",
        f"llm.model_dir={llm_model_dir}",
        "rerank.history_items=3",
        "finetune.candidates=5",
        "finetune.title_chars=24",
        "finetune.max_examples=12",
        "finetune.r=8",
        "finetune.batch_size=2",
        "finetune.grad_accum=1",
        "finetune.checkpoint_every=1",
        "finetune.threads=1",
    ]
    cli = [sys.executable, "-m", "agent.cli.main"]
    sets = [arg for item in items for arg in ("--set", item)]
    subprocess.run([*cli, *sets, "finetune", "data", "--recipe", "random"], check=True)
    train = [*cli, *sets, "finetune", "train", "--steps", "8", "--no-validate", "--name", "k"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(train, env=env, start_new_session=True)
    pointer = work / "finetune" / "runs" / "k" / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.is_file() and pointer.read_text().strip() >= "step-000002":
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(pointer.read_text().strip().split("-")[1])
    assert 2 <= killed_at < 8
    done = subprocess.run(train, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    card = adapter_card(work / "adapters" / "k")
    assert card is not None
    assert card["steps"] == 8 and len(card["loss_curve"]) == 8
    assert card["resumed_from"] and card["resumed_from"][0] >= killed_at
    assert card["examples_seen"] == 8 * 2  # no example skipped or repeated by the resume


def test_trained_adapter_on_vllm_ranks_like_the_local_backend(
    slice_dir: Path,
    llm_model_dir: Path,
    rerank_adapter: Path,
    vllm_server: VLLMServer,
    tmp_path: Path,
) -> None:
    """Real users of the slice, a retriever's top 5, the finetune adapter: the verbalizer's
    ranking is the same from vLLM (``llm serve``'s server) and from transformers + peft."""
    settings = load_settings(
        overrides={
            "data.path": str(slice_dir),
            "work_dir": str(tmp_path / "work"),
            "llm.model_dir": str(llm_model_dir),
            "llm.adapters": {RERANK_ADAPTER: str(rerank_adapter)},
            "rerank.adapter": RERANK_ADAPTER,
            "rerank.use_profile": False,
        }
    )
    data = load_dataset(settings.data)
    retriever = PopularityRecommender(data, settings)
    requests = []
    for user in data.split("test")[:4]:
        assert user.target is not None
        hits = retrieve(retriever, data, user.history, data.items[user.target].domain, 5)
        requests.append(
            RerankRequest.from_ids(
                data,
                user.user_id,
                user.history,
                [h.item_id for h in hits],
                scores=[h.score for h in hits],
            )
        )
    local = LocalBackend(llm_model_dir, BASE, adapters={RERANK_ADAPTER: rerank_adapter}, threads=1)
    remote = OpenAIBackend(vllm_server.url, BASE, timeout_s=120.0, retries=1)
    by_local = make_reranker("verbalizer", local, settings).rerank_batch(requests)
    by_vllm = make_reranker("verbalizer", remote, settings).rerank_batch(requests)
    for a, b in zip(by_local, by_vllm, strict=True):
        assert not a.fallback and not b.fallback
        assert a.ranking == b.ranking
        for iid, score in a.scores.items():
            assert abs(score - b.scores[iid]) < 1e-3 or score == b.scores[iid]
    # The adapter changes the answer distribution (it is really applied on both sides).
    base = make_reranker(
        "verbalizer", remote, settings.rerank.model_copy(update={"adapter": None})
    ).rerank_batch(requests)
    assert any(x.scores != y.scores for x, y in zip(base, by_vllm, strict=True))
    card = json.loads((rerank_adapter / "adapter_card.json").read_text())
    assert card["kind"] == "verbalizer"


def test_listwise_adapter_trains_on_the_permutation(
    slice_dir: Path, llm_model_dir: Path, tmp_path: Path
) -> None:
    """kind=listwise: the answer is the JSON permutation (target first), LM loss on it."""
    work = tmp_path / "work"
    settings = small_settings(slice_dir, llm_model_dir, work, **{"finetune.max_steps": 2})
    make_data(settings, "random")
    data = load_dataset(settings.data)
    tok = AutoTokenizer.from_pretrained(str(llm_model_dir))
    renderer = PromptRenderer(settings, data, tok, "listwise")
    ex = read_examples(data_path(settings, "random"))[0]
    answer = json.loads(renderer.answer_text(ex))
    labels = renderer.labels(len(ex.candidates))
    assert answer["ranking"][0] == labels[ex.target_index]
    assert sorted(answer["ranking"]) == sorted(labels)
    encoded = renderer.encode(ex)
    assert tok.decode(encoded.answer).endswith(tok.eos_token)
    report = train_adapter(settings, name="lw", recipe="random", kind="listwise", validate=False)
    assert report.card["kind"] == "listwise" and report.card["steps"] == 2
    assert all(0.0 < loss < 20.0 for loss in report.card["loss_curve"])
