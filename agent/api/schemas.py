"""The HTTP API's request and response bodies (pydantic: they are the OpenAPI schema).

The chat endpoint follows OpenAI's chat completions (unknown OpenAI parameters are accepted and
ignored, as clients send many); the REST endpoints are strict (an unknown field is a 422 that
names it). ``/v1/rerank`` follows the Jina/Cohere convention.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from agent.service.queries import ItemHit, RankedItem, Resolved, Usage


def utf8_text(value: str) -> str:
    """Text that UTF-8 can encode: JSON's ``\\ud800`` escape (or a UTF-8-encoded surrogate)
    decodes to a lone surrogate, which the tokenizer, the store and the answer cannot take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid UTF-8 text: {exc.reason} (character {exc.start})") from None
    return value


def utf8_input(value: Any) -> Any:
    """``utf8_text`` before pydantic's own checks, for strings with a length limit: pydantic
    reads those itself, and would refuse a surrogate in its own words."""
    return utf8_text(value) if isinstance(value, str) else value


def utf8_tree(value: Any) -> Any:
    """``utf8_text`` for every string (key or value) in a JSON value; iterative, so a deeply
    nested value cannot overflow the stack."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            utf8_text(node)
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return value


# Every string a request carries: refused as a 422 naming the field when it is not UTF-8.
Text = Annotated[str, AfterValidator(utf8_text)]
# A name (a user, a template): the length limit inside, so that it applies to the string.
Name = Annotated[str, Field(max_length=200), BeforeValidator(utf8_input)]
# RecBridge extensions for side-by-side comparisons: the pipeline's LLM reranker with another
# prompt template or LoRA adapter (``GET /v1/models`` lists both per pipeline).
TemplateName = Annotated[
    Name | None,
    Field(
        description="A rerank prompt template (prompts/) of the pipeline's LLM reranker; "
        "default: the server's."
    ),
]
AdapterName = Annotated[
    Name | None,
    Field(
        description="A LoRA adapter the server knows for the LLM reranker; default: the "
        "server's (rerank.adapter)."
    ),
]


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
    text: Text


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Annotated[dict[str, Any], AfterValidator(utf8_tree)] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's request; ``model`` names a pipeline (``GET /v1/models``)."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=200), BeforeValidator(utf8_input)]
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(default=1, ge=1, le=1)  # one ranked list per request
    # RecBridge extensions (``extra_body`` in the openai client): False = 503 when the LLM is
    # down instead of the retriever's answer; the reranker's template and adapter.
    allow_fallback: bool = True
    template: TemplateName = None
    adapter: AdapterName = None


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

    model: Text | None = Field(default=None, description="A pipeline; default: the server's.")
    user: Name | None = Field(default=None, description="A user of the data.")
    history: list[Text] | None = Field(
        default=None, description="Item ids or titles, oldest first."
    )
    candidates: list[Text] | None = Field(
        default=None, description="Rank only these (ids or titles); default: the catalogue."
    )
    domain: Text | None = None
    top_k: int = Field(default=10, ge=1)
    exclude: list[Text] = Field(default_factory=list)
    allow_fallback: bool = True
    template: TemplateName = None
    adapter: AdapterName = None


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
    # The ``exclude`` references, as given, that removed nothing: not among the items the
    # retriever listed (another domain's item, one far down the list, one of the history).
    exclude_unmatched: list[str] = Field(default_factory=list)
    template: str | None = None  # the LLM reranker's prompt template (None: no LLM reranker)
    adapter: str | None = None  # its LoRA adapter (None: the base model)
    usage: Usage
    seconds: dict[str, float] = Field(default_factory=dict)


class RerankQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Name | None = None
    history: list[Text] | None = None


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text


class ApiRerankRequest(BaseModel):
    """Jina/Cohere rerank: ``query`` is the user (an id or a history; a string is a user id, an
    item id, or a history of ids/titles separated by ``;`` or newlines; one id-like word that
    is neither a user nor an item is a 404), ``documents`` the candidates."""

    model_config = ConfigDict(extra="forbid")

    model: Text | None = None
    query: Text | RerankQuery
    documents: list[Text | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    allow_fallback: bool = True
    template: TemplateName = None
    adapter: AdapterName = None


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
    # How each title in the query's history and the documents became an item (ids as given).
    resolved: list[Resolved] = Field(default_factory=list)
    template: str | None = None
    adapter: str | None = None
    usage: RerankUsage


class ProfileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Name | None = None
    history: list[Text] | None = None


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
    # What ``template`` and ``adapter`` of a request may name with this pipeline (both empty
    # without an LLM reranker).
    templates: list[str] = Field(default_factory=list)
    adapters: list[str] = Field(default_factory=list)


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
