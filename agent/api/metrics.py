"""Prometheus metrics of one app (its own registry: two apps in a process never collide)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent.service.queries import Usage


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "recbridge_http_requests",
            "HTTP requests served",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "recbridge_http_request_seconds",
            "HTTP request latency (until the last byte)",
            ["route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.in_flight = Gauge(
            "recbridge_http_requests_in_flight", "Requests being served", registry=r
        )
        self.rejected = Counter(
            "recbridge_http_rejected",
            "Requests refused before the service saw them",
            ["reason"],
            registry=r,
        )
        self.llm_calls = Counter(
            "recbridge_llm_calls", "LLM requests made for API requests", ["pipeline"], registry=r
        )
        self.llm_tokens = Counter(
            "recbridge_llm_tokens",
            "LLM tokens for API requests",
            ["pipeline", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "recbridge_fallbacks",
            "Answers that fell back to the retriever's order, by cause",
            ["pipeline", "kind"],
            registry=r,
        )

    def record(self, pipeline: str, usage: Usage, fallback: str | None) -> None:
        """What one request cost the LLM, and whether it fell back."""
        if usage.llm_calls:
            self.llm_calls.labels(pipeline).inc(usage.llm_calls)
            self.llm_tokens.labels(pipeline, "prompt").inc(usage.prompt_tokens)
            self.llm_tokens.labels(pipeline, "completion").inc(usage.completion_tokens)
        if fallback:
            self.fallbacks.labels(pipeline, fallback).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
