"""The HTTP API's request and response bodies (pydantic: they are the OpenAPI schema).

The chat endpoint follows OpenAI's chat completions (unknown OpenAI parameters are accepted and
ignored, as clients send many); the REST endpoints are strict (an unknown field is a 422 that
names it). ``/v1/rerank`` follows the Jina/Cohere convention.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.service.queries import ItemHit, RankedItem, Resolved, Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, so the official clients raise their typed errors."""

    error: ErrorDetail


# ---------------------------------------------------------------- chat completions
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; ``model`` names a pipeline (``GET /v1/models``)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(default=1, ge=1, le=1)  # one ranked list per request
    # RecBridge extension (``extra_body`` in the openai client): False = 503 when the LLM is
    # down instead of the retriever's answer.
    allow_fallback: bool = True


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop"] = "stop"


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> ChatUsage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
    fallback: str | None = None  # "llm_unavailable": the retriever's answer, the LLM was down
    recommendation: RecommendationResponse


# ---------------------------------------------------------------- REST
class RecommendationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="A pipeline; default: the server's.")
    user: str | None = Field(default=None, max_length=200, description="A user of the data.")
    history: list[str] | None = Field(default=None, description="Item ids or titles, oldest first.")
    candidates: list[str] | None = Field(
        default=None, description="Rank only these (ids or titles); default: the catalogue."
    )
    domain: str | None = None
    top_k: int = Field(default=10, ge=1)
    exclude: list[str] = Field(default_factory=list)
    allow_fallback: bool = True


class RecommendationResponse(BaseModel):
    id: str  # the request id
    model: str  # the pipeline
    user_id: str
    domain: str
    history: list[str]
    items: list[RankedItem]
    reason: str | None = None
    fallback: str | None = None
    error: str | None = None
    resolved: list[Resolved] = Field(default_factory=list)
    usage: Usage
    seconds: dict[str, float] = Field(default_factory=dict)


class RerankQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, max_length=200)
    history: list[str] | None = None


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


class ApiRerankRequest(BaseModel):
    """Jina/Cohere rerank: ``query`` is the user (an id or a history; a string is a user id, or
    a history of ids/titles separated by ``;`` or newlines), ``documents`` the candidates."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    query: str | RerankQuery
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    allow_fallback: bool = True


class ApiRerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None
    item_id: str


class RerankUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    llm_calls: int


class ApiRerankResponse(BaseModel):
    id: str
    model: str
    results: list[ApiRerankResult]
    fallback: str | None = None
    error: str | None = None
    usage: RerankUsage


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, max_length=200)
    history: list[str] | None = None


class SearchResponse(BaseModel):
    query: str
    domain: str | None
    results: list[ItemHit]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "recbridge"
    retriever: str
    reranker: str | None
    profile: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    ok: bool
    store: dict[str, Any]
    llm: dict[str, Any]
    pipelines: list[str]
    unavailable: dict[str, str]


ChatCompletion.model_rebuild()
