"""Request and result types shared by every LLM backend (pydantic: they cross the HTTP boundary)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class GenerationRequest(BaseModel):
    """One chat completion. ``temperature=0`` is greedy, the only mode compared across backends."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage]
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    seed: int | None = None
    # A JSON schema for constrained decoding; backends that cannot constrain say so in the result.
    json_schema: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    adapter: str | None = None  # a LoRA adapter name; None = the base model
    stop: list[str] | None = None

    @property
    def logprob_k(self) -> int:
        """How many alternatives per position to return: ``top_logprobs``, or 1 for bare
        ``logprobs=True`` (the chosen token's own logprob under greedy decoding)."""
        return self.top_logprobs or (1 if self.logprobs else 0)

    @classmethod
    def from_prompt(cls, prompt: str, *, system: str | None = None, **kw: Any) -> GenerationRequest:
        messages = [ChatMessage(role="system", content=system)] if system else []
        messages.append(ChatMessage(role="user", content=prompt))
        return cls(messages=messages, **kw)


class GenerationResult(BaseModel):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length" (cut off at max_tokens)
    # Per generated position (first ones only, when asked): token text -> logprob, best first.
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    # Whether ``json_schema`` was enforced while decoding; False = callers must validate/repair.
    schema_enforced: bool = False
    latency_s: float
    backend: str
    model: str  # the served name (base or adapter) that produced the text
    attempts: int = 1  # requests sent for it: >1 after retried 5xx/429/timeouts/connections
