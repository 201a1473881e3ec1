"""What the service refuses, and why, in one line that names the field (the API maps each kind
to its HTTP status; the CLI prints the line)."""

from __future__ import annotations

from agent.compute.runtime import ComputeError
from agent.config import ConfigError
from agent.data.schema import DataError
from agent.items.embedder import EmbeddingError
from agent.items.llm_states import StatesError
from agent.llm.backend import LLMError
from agent.llm.model_files import ModelFilesError
from agent.models.prepare import ModelNotReady
from agent.models.registry import UnknownModelError
from agent.pipeline.recommend import RecommendError
from agent.prompts import PromptError
from agent.rerank.head import HeadError
from agent.rerank.ranker import RankerError
from agent.store.chroma_store import StoreError


class ServiceError(Exception):
    """A request the service cannot serve; ``param`` names the offending field, if any."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(ServiceError):
    status = 422
    code = "invalid_value"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Unavailable(ServiceError):
    """A dependency (the LLM, the store) is down and the request does not allow a fallback."""

    status = 503
    code = "unavailable"


# Library errors that are the user's to fix (or a service's to start): one line, never a
# traceback, wherever they surface (CLI commands, HTTP routes).
SERVICE_ERRORS: tuple[type[Exception], ...] = (
    ServiceError,
    ComputeError,  # the Ray engine: not installed, or no cluster
    ConfigError,
    DataError,
    EmbeddingError,
    LLMError,
    ModelFilesError,
    ModelNotReady,
    PromptError,
    RecommendError,
    StoreError,
    UnknownModelError,
    RankerError,  # a learned second stage not trained (or its files unreadable)
    HeadError,
    StatesError,
    FileNotFoundError,
)
