"""Prometheus metrics of one server app, served at GET /metrics in the text format.

Every metric lives in the app's own CollectorRegistry (not prometheus-client's global one), so
two apps in one process (tests) never clash. What is measured, and where it comes from:

- HTTP requests and their latency per route template (`/documents/{doc_id:path}`, never the raw
  path) and status: ASGI middleware around the whole app, so refusals (401, 403, 413) count too;
- answers: the stage timings every AnswerResponse already carries (`timings_ms`: rewrite,
  retrieve, generate, verify, total), withheld answers by their `abstention` code, and
  citations by verdict and origin, from RagService.answer_observers (API, interface, OpenAI
  endpoint and MCP tools alike);
- LLM throughput from rag.generation.usage_observers;
- index documents and passages, read from the service's store at scrape time.

With API keys set, /metrics needs an admin key (rag/serve/access.py: needs_admin)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi.routing import iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.errors import RagError
from rag.llm import generation
from rag.schema import AnswerResponse
from rag.service import RagService

# The timings_ms keys that are stages of an answer ("first_token" is a moment, not a stage).
STAGES = ("rewrite", "retrieve", "generate", "verify")
# Seconds: from a fast search to an answer near the model's 90 s timeout.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNMATCHED = "<unmatched>"


class IndexCollector(Collector):
    """Documents and passages of the index the service has loaded, read at scrape time; no
    sample while there is no usable index (the scrape still succeeds)."""

    def __init__(self, service: RagService) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        documents = GaugeMetricFamily("rag_index_documents", "Documents in the index")
        chunks = GaugeMetricFamily("rag_index_chunks", "Passages (chunks) in the index")
        try:
            store = self.service.store
        except RagError:
            return [documents, chunks]
        documents.add_metric([], len(store.documents))
        chunks.add_metric([], store.chunk_total)
        return [documents, chunks]

    def describe(self) -> Iterable[Metric]:
        # Without this, registering would call collect() and load the index at app creation.
        return [GaugeMetricFamily("rag_index_documents", ""), GaugeMetricFamily("rag_index_chunks", "")]


class ServerMetrics:
    """The metrics of one app and the observers that feed them."""

    def __init__(self, service: RagService) -> None:
        self.service = service
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "rag_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "rag_http_request_duration_seconds",
            "HTTP request latency (until the last byte) by route template and method",
            ["route", "method"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.answer_latency = Histogram(
            "rag_answer_duration_seconds", "Answer latency, all stages", buckets=BUCKETS, registry=registry
        )
        self.stage_latency = Histogram(
            "rag_answer_stage_seconds",
            "Answer latency by stage (rewrite, retrieve, generate, verify)",
            ["stage"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.answers = Counter(
            "rag_answers", "Answers by outcome (answered, abstained)", ["outcome"], registry=registry
        )
        self.abstentions = Counter(
            "rag_abstentions", "Withheld answers by reason (AnswerResponse.abstention)", ["reason"], registry=registry
        )
        self.citations = Counter(
            "rag_citations",
            "Delivered citations by verdict (supported, not_supported) and origin (model, corrected, added)",
            ["verdict", "origin"],
            registry=registry,
        )
        self.llm_tokens = Counter(
            "rag_llm_tokens", "LLM tokens by phase (prompt, generate)", ["phase"], registry=registry
        )
        self.llm_seconds = Counter(
            "rag_llm_seconds", "LLM time spent on those tokens, by phase", ["phase"], registry=registry
        )
        self.llm_rate = Gauge(
            "rag_llm_tokens_per_second",
            "LLM tokens per second of the latest call, by phase",
            ["phase"],
            registry=registry,
        )
        registry.register(IndexCollector(service))

    def observe_answer(self, response: AnswerResponse) -> None:
        timings = response.timings_ms
        if "total" in timings:
            self.answer_latency.observe(timings["total"] / 1000)
        for stage in STAGES:
            if stage in timings:
                self.stage_latency.labels(stage).observe(timings[stage] / 1000)
        self.answers.labels("abstained" if response.abstained else "answered").inc()
        if response.abstained:
            self.abstentions.labels(response.abstention or "other").inc()
        for citation in response.citations:
            self.citations.labels("supported" if citation.supported else "not_supported", citation.origin).inc()

    def observe_llm(self, usage: generation.LLMUsage) -> None:
        self.llm_tokens.labels(usage.phase).inc(usage.tokens)
        self.llm_seconds.labels(usage.phase).inc(usage.seconds)
        self.llm_rate.labels(usage.phase).set(usage.tokens / usage.seconds)

    @asynccontextmanager
    async def observing(self) -> AsyncIterator[None]:
        """Listen to the service's answers and the LLM calls while the app runs."""
        self.service.answer_observers.append(self.observe_answer)
        generation.usage_observers.append(self.observe_llm)
        try:
            yield
        finally:
            self.service.answer_observers.remove(self.observe_answer)
            generation.usage_observers.remove(self.observe_llm)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def route_template(router: Router, scope: Scope) -> str:
    """The path template of the route a request goes to (a mounted app: its prefix and
    `{path}`), so that labels stay few whatever paths clients send. FastAPI's route contexts
    also reach into included routers."""
    probe = dict(scope)  # matching may leave notes in the scope it is given
    for route in iter_route_contexts(router.routes):
        match, _ = route.matches(probe)
        if match is not Match.NONE:
            return f"{route.path}/{{path}}" if isinstance(route.original_route, Mount) else route.path
    return UNMATCHED


class MetricsMiddleware:
    """Counts and times every HTTP request, from the first byte in to the last byte out."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, router: Router) -> None:
        self.app, self.metrics, self.router = app, metrics, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, method = route_template(self.router, scope), scope["method"]
        status = 500  # an app that fails before it answers
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, method, str(status)).inc()
