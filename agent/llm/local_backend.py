"""In-process transformers + peft on the same model folder and adapters vLLM serves.

Generation runs in a worker thread, one request at a time (the model and the active adapter are
shared state); the concurrency limit then only bounds the queue. Greedy decoding in fp32 gives
the same tokens as vLLM served with ``--dtype float32``. Schema-constrained decoding uses
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.llm.backend import ErrorKind, LLMBackend, LLMError
from agent.llm.model_files import require_model_dir
from agent.llm.threads import torch_threads
from agent.llm.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

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
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.model_dir = require_model_dir(Path(model_dir))
        self._model_name = model_name
        self.adapters = dict(adapters or {})
        self.threads = threads
        self._lock = threading.Lock()
        self._model: Any = None  # PreTrainedModel or PeftModel, loaded on first use
        self._tokenizer: Any = None
        self._compiler: Any = None  # xgrammar.GrammarCompiler, built on the first schema
        self._grammars: OrderedDict[str, Any] = OrderedDict()

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
        model: Any = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32)
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

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        return await asyncio.to_thread(self._generate_sync, req)

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

    def _generate_sync(self, req: GenerationRequest) -> GenerationResult:
        import torch

        served = req.adapter or self._model_name
        with self._lock:
            try:
                self._load_locked()
                started = time.perf_counter()
                tok = self._tokenizer
                enc = tok.apply_chat_template(
                    [m.model_dump() for m in req.messages],
                    add_generation_prompt=True,
                    return_tensors="pt",
                    return_dict=True,
                )
                prompt_len = int(enc["input_ids"].shape[1])
                gen_kw: dict[str, Any] = {
                    "max_new_tokens": req.max_tokens,
                    "do_sample": req.temperature > 0,
                    "return_dict_in_generate": True,
                    "output_logits": req.logprob_k > 0,  # raw logits, as vLLM's logprobs
                    "pad_token_id": tok.pad_token_id,
                    "max_time": self.timeout_s,
                }
                if req.temperature > 0:
                    gen_kw["temperature"] = req.temperature
                    if req.seed is not None:
                        torch.manual_seed(req.seed)
                else:
                    # Neutralise any sampling defaults in generation_config.json.
                    gen_kw.update(temperature=None, top_p=None, top_k=None)
                if req.stop:
                    gen_kw.update(stop_strings=req.stop, tokenizer=tok)
                if req.json_schema is not None:
                    gen_kw["logits_processor"] = [self._schema_processor(req.json_schema)]
                with (
                    torch.inference_mode(),
                    torch_threads(self.threads),
                    self._adapter_context(req.adapter),
                ):
                    out = self._model.generate(**enc, **gen_kw)
            except LLMError:
                raise
            except Exception as exc:  # a bug or resource problem: fail this item, not the batch
                raise LLMError(
                    "internal",
                    f"{type(exc).__name__}: {exc}",
                    url=str(self.model_dir),
                    model=served,
                ) from exc
        elapsed = time.perf_counter() - started
        new_ids = out.sequences[0, prompt_len:].tolist()
        eos_ids = _eos_ids(self._model, tok)
        ended = bool(new_ids) and new_ids[-1] in eos_ids
        text = tok.decode(new_ids, skip_special_tokens=True)
        # As OpenAI servers do: cut at the earliest stop string, which is not part of the output.
        cuts = [i for i in (text.find(stop) for stop in req.stop or []) if i >= 0]
        stopped_on_string = bool(cuts)
        if cuts:
            text = text[: min(cuts)]
        if not ended and not stopped_on_string and len(new_ids) < req.max_tokens:
            raise LLMError(
                "timeout",
                f"generation stopped at the {self.timeout_s:g}s limit",
                url=str(self.model_dir),
                model=served,
            )
        top: list[dict[str, float]] = []
        if req.logprob_k > 0:
            top = _top_logprobs(out.logits, tok, req.logprob_k)
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

    def _schema_processor(self, schema: dict[str, Any]) -> Any:
        """A fresh xgrammar logits processor for ``schema`` (one per generate call: it is
        stateful); compiled grammars are cached. As vLLM compiles them: any whitespace."""
        try:
            import xgrammar as xgr
            from xgrammar.contrib.hf import LogitsProcessor
        except ImportError as exc:
            raise LLMError(
                "bad_request",
                "json_schema needs xgrammar in the local backend (installed by `make install`)",
                url=str(self.model_dir),
            ) from exc

        # Not sort_keys: property order is part of the grammar (vLLM keeps the caller's order).
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
        return LogitsProcessor(compiled)


def _eos_ids(model: Any, tok: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids


def _top_logprobs(logits: Any, tok: Any, k: int) -> list[dict[str, float]]:
    """Top-k log-softmax per generated position, keyed by each token's decoded text."""
    import torch

    rows: list[dict[str, float]] = []
    for step in logits:
        values, ids = torch.log_softmax(step[0].float(), dim=-1).topk(k)
        row: dict[str, float] = {}
        for value, tid in zip(values.tolist(), ids.tolist(), strict=True):
            row.setdefault(tok.decode([tid]), value)  # keep the best when two decode alike
        rows.append(row)
    return rows
