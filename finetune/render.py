"""Examples -> chat prompts -> token ids, through the rerankers' own code.

The prompt of a training example is rendered by the very reranker object inference uses
(``make_reranker`` -> ``WindowedReranker.messages``) and tokenised by the local backend's
``chat_prompt_ids``: a training prompt and the inference prompt for the same history and
candidates are the same token ids (tested). The answer:

- verbalizer: the target's label, one token at the first answer position;
- listwise: ``{"ranking": [...]}`` with the target's label first and the others in display
  order (only the target is known), then the end-of-turn token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.config import Settings
from agent.data.schema import Dataset
from agent.llm.local_backend import LocalBackend, chat_prompt_ids
from agent.llm.types import ChatMessage
from agent.rerank.base import RerankRequest
from agent.rerank.labels import label_token_ids
from agent.rerank.registry import make_reranker
from agent.rerank.window import WindowedReranker
from finetune.examples import RerankExample


def prompt_settings(settings: Settings) -> Settings:
    """The settings whose rerank prompt the adapter learns: ``settings.rerank`` with the
    finetune section's prompt choices (worked example, profile) and no adapter."""
    rerank = settings.rerank.model_copy(
        update={
            "one_shot": settings.finetune.one_shot,
            "use_profile": settings.finetune.use_profile,
            "title_chars": settings.finetune.title_chars,
            "adapter": None,
            "shuffles": 0,
        }
    )
    return settings.model_copy(update={"rerank": rerank})


def prompt_record(settings: Settings) -> dict[str, Any]:
    """What an adapter card says about the prompt it learned (applied again at inference)."""
    rerank = prompt_settings(settings).rerank
    return {
        "history_items": rerank.history_items,
        "title_chars": rerank.title_chars,
        "one_shot": rerank.one_shot,
        "listwise_labels": rerank.listwise_labels,
        "use_profile": rerank.use_profile,
    }


@dataclass(frozen=True)
class Encoded:
    """One example as ids: ``prompt`` up to the assistant's turn, then ``answer``."""

    example_id: str
    prompt: list[int]
    answer: list[int]
    label_ids: list[int]  # each candidate label's token id, in display order
    target: int  # index of the target among the labels

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.answer)


class PromptRenderer:
    """Renders and tokenises examples of one reranker kind exactly as inference does."""

    def __init__(self, settings: Settings, data: Dataset, tokenizer: Any, kind: str) -> None:
        self.settings = prompt_settings(settings)
        self.data = data
        self.tokenizer = tokenizer
        self.kind = kind
        # The backend is never called: the reranker is built for its prompt code alone. It
        # points at the real model folder (checked to exist), so nothing here is a stand-in.
        backend = LocalBackend(self.settings.llm_model_dir, self.settings.llm.model)
        reranker = make_reranker(kind, backend, self.settings)
        if not isinstance(reranker, WindowedReranker):
            raise TypeError(f"{kind}: not a windowed reranker")
        self.reranker = reranker
        self._label_ids: dict[int, list[int]] = {}

    def request(self, ex: RerankExample) -> RerankRequest:
        """The inference request for this example (candidates in display order)."""
        history = self.settings.rerank.history_items
        return RerankRequest.from_ids(
            self.data,
            ex.user_id,
            ex.history[-history:] if history else [],
            ex.candidates,
            domain=ex.domain,
        )

    def messages(self, ex: RerankExample) -> list[ChatMessage]:
        request = self.request(ex)
        return self.reranker.messages(request, request.candidates)

    def labels(self, n: int) -> list[str]:
        return self.reranker._labels(n)

    def answer_text(self, ex: RerankExample) -> str:
        labels = self.labels(len(ex.candidates))
        target = labels[ex.target_index]
        if self.kind == "verbalizer":
            return target
        rest = [lab for lab in labels if lab != target]
        return json.dumps({"ranking": [target, *rest]})

    def encode(self, ex: RerankExample) -> Encoded:
        messages = self.messages(ex)
        prompt = chat_prompt_ids(self.tokenizer, messages)
        n = len(ex.candidates)
        if n not in self._label_ids:
            ids = label_token_ids(
                self.tokenizer, [m.model_dump() for m in messages], self.labels(n)
            )
            self._label_ids[n] = [ids[label] for label in self.labels(n)]
        label_ids = self._label_ids[n]
        if self.kind == "verbalizer":
            answer = [label_ids[ex.target_index]]
        else:
            text = self.answer_text(ex) + self.tokenizer.eos_token
            answer = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Encoded(ex.id, prompt, answer, label_ids, ex.target_index)
