"""In-process transformers + peft on the same model folder and adapters vLLM serves.

Concurrent requests are batched, as a server would: requests that can share a ``generate`` call
(same adapter, sampling, stop strings, logprobs, schema or not) run together, left-padded, in
one worker thread (the model and the active adapter are shared state). On a CPU decoding is
memory-bound, so a batch of B costs little more than one request. The backend's concurrency
limit is the batch size. Greedy decoding in fp32 gives the same tokens as vLLM served with
``--dtype float32``. Schema-constrained decoding uses
xgrammar, the grammar engine vLLM's structured outputs use, as a logits processor: same schema,
same token masks, so constrained greedy outputs agree too (``schema_enforced=True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.llm.backend import ErrorKind, LLMBackend, LLMError
from agent.llm.model_files import require_model_dir
from agent.llm.threads import torch_threads
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

_ENQUEUE_TICKS = 4  # event-loop turns the batcher waits for concurrent requests to arrive
_GRAMMAR_CACHE = 64  # compiled schemas kept (profiles send one per user: evidence id enums)


class LocalBackend(LLMBackend):
    name = "local"
    # A local failure (unknown adapter, out of memory, time limit) would repeat on retry.
    retry_kinds: frozenset[ErrorKind] = frozenset()

    def __init__(
        self,
        model_dir: Path,
        model_name: str,
        adapters: Mapping[str, Path] | None = None,
        threads: int = 0,
        dtype: str = "float32",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.dtype = dtype
        self.model_dir = require_model_dir(Path(model_dir))
        self._model_name = model_name
        self.adapters = dict(adapters or {})
        self.threads = threads
        self._lock = threading.Lock()
        self._model: Any = None  # PreTrainedModel or PeftModel, loaded on first use
        self._tokenizer: Any = None
        self._compiler: Any = None  # xgrammar.GrammarCompiler, built on the first schema
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        # Requests waiting for the batcher, with the future each one awaits.
        self._pending: list[tuple[GenerationRequest, asyncio.Future[GenerationResult]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def model(self) -> str:
        return self._model_name

    def load(self) -> None:
        """Load the model and every adapter (idempotent; first generate does it too)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), dtype=getattr(torch, self.dtype)
        )
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            model = PeftModel.from_pretrained(
                model, str(self.adapters[names[0]]), adapter_name=names[0]
            )
            for name in names[1:]:
                model.load_adapter(str(self.adapters[name]), adapter_name=name)
        model.eval()
        self._model, self._tokenizer = model, tokenizer
        log.info(
            "local LLM %s loaded in %.1fs (adapters: %s)",
            self.model_dir,
            time.perf_counter() - started,
            ", ".join(self.adapters) or "none",
        )

    def unload(self) -> None:
        """Drop the model and tokenizer (a later call loads them again): for short-lived
        backends, e.g. a validation pass inside a training run, which must not keep a copy."""
        with self._lock:
            self._model = None
            self._tokenizer = None
            self._compiler = None
            self._grammars.clear()

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GenerationResult] = loop.create_future()
        # Sync calls run one event loop each: anything left from an earlier loop is dead.
        self._pending = [p for p in self._pending if not p[1].done()]
        self._pending.append((req, future))
        draining = self._draining
        if draining is None or draining.done() or draining.get_loop() is not loop:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run the pending requests, a compatible batch at a time, until none is left."""
        while self._pending:
            # Let the other requests of a gather() enqueue first (finished ones free their
            # semaphore slot a tick or two after their result is set).
            for _ in range(_ENQUEUE_TICKS):
                await asyncio.sleep(0)
            key = _batch_key(self._pending[0][0])
            batch = [p for p in self._pending if _batch_key(p[0]) == key][: self.concurrency]
            for item in batch:
                self._pending.remove(item)
            reqs = [req for req, _ in batch]
            results: list[GenerationResult | BaseException]
            try:
                results = list(await asyncio.to_thread(self._generate_batch_sync, reqs))
            except Exception as exc:  # a bug here must fail these requests, not hang them
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # its caller gave up (cancelled)
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _adapter_context(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        model = self._model
        if adapter is None:
            # The base model: a PeftModel must switch its LoRA layers off for this call.
            return model.disable_adapter() if self.adapters else contextlib.nullcontext()
        if adapter not in self.adapters:
            raise LLMError(
                "bad_request",
                f"unknown adapter {adapter!r}; known: {sorted(self.adapters)}",
                url=str(self.model_dir),
                model=adapter,
            )
        model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _generate_batch_sync(
        self, reqs: list[GenerationRequest]
    ) -> list[GenerationResult | LLMError]:
        """One ``generate`` over compatible requests (see ``_batch_key``); per-row results.
        A row whose schema does not compile fails alone; the others still run."""
        served = reqs[0].adapter or self._model_name
        with self._lock:
            try:
                self._load_locked()
                grammars: dict[int, Any] = {}
                failed: dict[int, LLMError] = {}
                for row, req in enumerate(reqs):
                    if req.json_schema is not None:
                        try:
                            grammars[row] = self._compiled(req.json_schema)
                        except LLMError as exc:
                            failed[row] = exc
                live = [row for row in range(len(reqs)) if row not in failed]
                done = self._generate_rows([reqs[r] for r in live], [grammars.get(r) for r in live])
            except LLMError as exc:
                return [exc] * len(reqs)
            except Exception as exc:  # a bug or resource problem: fail this batch, not the run
                error = LLMError(
                    "internal",
                    f"{type(exc).__name__}: {exc}",
                    url=str(self.model_dir),
                    model=served,
                )
                return [error] * len(reqs)
        by_row: dict[int, GenerationResult | LLMError] = {
            **failed,
            **dict(zip(live, done, strict=True)),
        }
        return [by_row[row] for row in range(len(reqs))]

    def _generate_rows(
        self, reqs: list[GenerationRequest], grammars: list[Any]
    ) -> list[GenerationResult | LLMError]:
        """The ``generate`` call itself (lock held, model loaded)."""
        import torch

        if not reqs:
            return []
        first = reqs[0]
        served = first.adapter or self._model_name
        started = time.perf_counter()
        tok = self._tokenizer
        prompts = [chat_prompt_ids(tok, r.messages) for r in reqs]
        width = max(len(p) for p in prompts)
        # Left padding: every row's next token is at the same (last) position.
        ids = [[tok.pad_token_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        gen_kw: dict[str, Any] = {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "max_new_tokens": max(r.max_tokens for r in reqs),
            "do_sample": first.temperature > 0,
            "return_dict_in_generate": True,
            "output_logits": first.logprob_k > 0,  # raw logits, as vLLM's logprobs
            "pad_token_id": tok.pad_token_id,
            # The per-request limit, for the whole batch: as long as running them one by one.
            "max_time": self.timeout_s * len(reqs),
        }
        if first.temperature > 0:
            gen_kw["temperature"] = first.temperature
            if first.seed is not None:
                torch.manual_seed(first.seed)
        else:
            # Neutralise any sampling defaults in generation_config.json.
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        if first.stop:
            gen_kw.update(stop_strings=first.stop, tokenizer=tok)
        if first.json_schema is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            # Stateful: a fresh one per generate call, one grammar per row.
            gen_kw["logits_processor"] = [LogitsProcessor(grammars)]
        with (
            torch.inference_mode(),
            torch_threads(self.threads),
            self._adapter_context(first.adapter),
        ):
            out = self._model.generate(**gen_kw)
        elapsed = time.perf_counter() - started
        eos_ids = _eos_ids(self._model, tok)
        return [
            self._row_result(req, row, out, width, len(prompt), eos_ids, elapsed, served)
            for row, (req, prompt) in enumerate(zip(reqs, prompts, strict=True))
        ]

    def _row_result(
        self,
        req: GenerationRequest,
        row: int,
        out: Any,
        width: int,
        prompt_len: int,
        eos_ids: set[int],
        elapsed: float,
        served: str,
    ) -> GenerationResult | LLMError:
        tok = self._tokenizer
        new_ids = out.sequences[row, width:].tolist()
        # A row that ended early is padded to the batch's length: cut at its first end token.
        end = next((i for i, t in enumerate(new_ids) if t in eos_ids), None)
        new_ids = new_ids[: end + 1] if end is not None else new_ids
        new_ids = new_ids[: req.max_tokens]
        ended = bool(new_ids) and new_ids[-1] in eos_ids
        text = tok.decode(new_ids, skip_special_tokens=True)
        # As OpenAI servers do: cut at the earliest stop string, which is not part of the output.
        cuts = [i for i in (text.find(stop) for stop in req.stop or []) if i >= 0]
        stopped_on_string = bool(cuts)
        if cuts:
            text = text[: min(cuts)]
        if not ended and not stopped_on_string and len(new_ids) < req.max_tokens:
            return LLMError(
                "timeout",
                f"generation stopped at the time limit ({self.timeout_s:g}s per request)",
                url=str(self.model_dir),
                model=served,
            )
        top: list[dict[str, float]] = []
        if req.logprob_k > 0:
            top = _top_logprobs(
                [step[row] for step in out.logits[: len(new_ids)]], tok, req.logprob_k
            )
        return GenerationResult(
            text=text,
            prompt_tokens=prompt_len,
            completion_tokens=len(new_ids),
            finish_reason="stop" if ended or stopped_on_string else "length",
            top_logprobs=top,
            schema_enforced=req.json_schema is not None,
            latency_s=elapsed,
            backend=self.name,
            model=served,
        )

    def _compiled(self, schema: dict[str, Any]) -> Any:
        """The schema's xgrammar grammar, compiled once (cached). As vLLM compiles them: any
        whitespace, properties in the caller's order (not sort_keys: order is part of it)."""
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise LLMError(
                "bad_request",
                "json_schema needs xgrammar in the local backend (installed by `make install`)",
                url=str(self.model_dir),
            ) from exc
        key = json.dumps(schema)
        compiled = self._grammars.get(key)
        if compiled is None:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=int(self._model.config.vocab_size)
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            try:
                compiled = self._compiler.compile_json_schema(key, any_whitespace=True)
            except Exception as exc:  # xgrammar raises RuntimeError on schemas it cannot compile
                raise LLMError(
                    "bad_request", f"json_schema not supported: {exc}", url=str(self.model_dir)
                ) from exc
            self._grammars[key] = compiled
            while len(self._grammars) > _GRAMMAR_CACHE:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(key)
        return compiled


def chat_prompt_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """The token ids of a chat prompt up to the assistant's turn: the one tokenisation of
    inference and of LoRA training (finetune/render.py), so both see the same ids."""
    ids: list[int] = tokenizer.apply_chat_template(
        [m.model_dump() for m in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    return ids


def _eos_ids(model: Any, tok: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def _batch_key(req: GenerationRequest) -> tuple[Any, ...]:
    """Requests with equal keys can share one ``generate`` call (max_tokens may differ: rows
    are cut to their own; schemas may differ: one grammar per row)."""
    return (
        req.adapter,
        req.temperature,
        req.seed if req.temperature > 0 else None,
        tuple(req.stop or ()),
        req.logprob_k,
        req.json_schema is not None,
    )


def _top_logprobs(logits: Any, tok: Any, k: int) -> list[dict[str, float]]:
    """Top-k log-softmax per generated position (one row's logits), keyed by token text."""
    import torch

    rows: list[dict[str, float]] = []
    for step in logits:
        values, ids = torch.log_softmax(step.float(), dim=-1).topk(k)
        row: dict[str, float] = {}
        for value, tid in zip(values.tolist(), ids.tolist(), strict=True):
            row.setdefault(tok.decode([tid]), value)  # keep the best when two decode alike
        rows.append(row)
    return rows
