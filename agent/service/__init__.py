"""The long-lived RecBridge service: data, item index, retrievers, LLM backend and caches built
once from Settings, serving recommendations, reranking, profiles and item search (used by the
HTTP API, the CLI commands and the LangChain integration alike)."""

from agent.service.core import RecBridgeService
from agent.service.errors import (
    SERVICE_ERRORS,
    BadRequest,
    NotFound,
    ServiceError,
    TooLarge,
    Unavailable,
)
from agent.service.pipelines import PipelineSpec
from agent.service.queries import Query, RankedItem, RecommendOutcome, RerankOutcome

__all__ = [
    "SERVICE_ERRORS",
    "BadRequest",
    "NotFound",
    "PipelineSpec",
    "Query",
    "RankedItem",
    "RecBridgeService",
    "RecommendOutcome",
    "RerankOutcome",
    "ServiceError",
    "TooLarge",
    "Unavailable",
]
