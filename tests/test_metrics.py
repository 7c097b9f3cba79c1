"""GET /metrics: Prometheus text that prometheus-client's own parser reads, counting requests by
route template and status, answers by stage, outcome, abstention reason and citation verdict,
LLM throughput, and the index; per app, and behind the admin key when keys are set."""

from __future__ import annotations

import httpx
import pytest
from conftest import ADMIN_KEY, READ_KEY, make_service, make_settings
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from rag.serve.api import create_api

pytestmark = pytest.mark.slow

QUESTION = "How many commune-level military party cells were established?"
OFF_TOPIC = "What is the boiling point of liquid nitrogen on Mars?"
DOC = "000_c1a45aa062b469e9.txt"
ABSTENTIONS = {"no_evidence", "declined", "unsure", "repeats_question", "unsupported", "unnamed"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a scrape, read by prometheus-client's parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def app_over(seed_service, embedder, **server: object):
    return create_api(make_service(make_settings(seed_service.settings.index.dir, server=server), embedder))


@pytest.fixture(scope="module")
def client(seed_service, embedder):
    with TestClient(app_over(seed_service, embedder)) as client:
        yield client


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_requests_are_counted_by_route_template_method_and_status(client) -> None:
    before = scrape(client)
    assert client.get(f"/documents/{DOC}").status_code == 200
    assert client.get("/documents/no/such.txt").status_code == 404
    assert client.post("/search", json={"query": "cells", "k": 0}).status_code == 422
    after = scrape(client)
    route = "/documents/{doc_id:path}"
    for status in ("200", "404"):
        key = {"route": route, "method": "GET", "status": status}
        assert value(after, "rag_http_requests_total", **key) == value(before, "rag_http_requests_total", **key) + 1
    assert value(after, "rag_http_requests_total", route="/search", method="POST", status="422") >= 1
    assert value(after, "rag_http_request_duration_seconds_count", route=route, method="GET") >= 2
    assert not any("such.txt" in str(labels) or DOC in str(labels) for _, labels in after), "raw paths as labels"


def test_answers_count_stages_outcomes_abstentions_and_citations(client) -> None:
    before = scrape(client)
    answered = client.post("/ask", json={"question": QUESTION, "model": "extractive"}).json()
    withheld = client.post("/ask", json={"question": OFF_TOPIC, "model": "extractive"}).json()
    after = scrape(client)

    assert not answered["abstained"] and answered["abstention"] is None
    assert withheld["abstained"] and withheld["abstention"] in ABSTENTIONS

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("rag_answers_total", outcome="answered") == 1 and delta("rag_answers_total", outcome="abstained") == 1
    assert delta("rag_abstentions_total", reason=withheld["abstention"]) == 1
    supported = sum(c["supported"] for c in answered["citations"])
    assert supported >= 1 and delta("rag_citations_total", verdict="supported", origin="model") == supported
    assert delta("rag_answer_duration_seconds_count") == 2
    assert delta("rag_answer_stage_seconds_count", stage="retrieve") == 2  # a withheld answer is retrieved too
    assert delta("rag_answer_stage_seconds_count", stage="verify") == 1 + (withheld["abstention"] != "no_evidence")
    total = answered["timings_ms"]["total"] / 1000
    assert delta("rag_answer_duration_seconds_sum") >= total


def test_the_index_is_counted(client) -> None:
    health = client.get("/health").json()
    now = scrape(client)
    assert value(now, "rag_index_documents") == health["documents"] == 5
    assert value(now, "rag_index_chunks") == health["passages"]


def test_two_apps_in_one_process_keep_their_own_counts(client, seed_service, embedder) -> None:
    with TestClient(app_over(seed_service, embedder)) as other:
        assert other.get(f"/documents/{DOC}").status_code == 200
        ours_before = value(
            scrape(client), "rag_http_requests_total", route="/documents/{doc_id:path}", method="GET", status="200"
        )
        other.get(f"/documents/{DOC}")
        theirs = value(
            scrape(other), "rag_http_requests_total", route="/documents/{doc_id:path}", method="GET", status="200"
        )
        ours = value(
            scrape(client), "rag_http_requests_total", route="/documents/{doc_id:path}", method="GET", status="200"
        )
    assert theirs == 2 and ours == ours_before


def test_with_keys_the_metrics_need_an_admin_key(seed_service, embedder) -> None:
    with TestClient(app_over(seed_service, embedder, api_keys=[READ_KEY], admin_keys=[ADMIN_KEY])) as keyed:
        assert keyed.get("/metrics").status_code == 401
        refused = keyed.get("/metrics", headers={"Authorization": f"Bearer {READ_KEY}"})
        assert refused.status_code == 403 and "admin key" in refused.json()["detail"]
        assert keyed.get("/documents", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
        allowed = keyed.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert allowed.status_code == 200
        counted = samples(allowed.text)
        assert value(counted, "rag_http_requests_total", route="/metrics", method="GET", status="401") == 1
        assert value(counted, "rag_http_requests_total", route="/metrics", method="GET", status="403") == 1


def test_a_prometheus_scrape_of_rag_serve(live_server) -> None:
    """The served process, after an answer from the embedded model: every family is there, and
    the model's throughput is measured."""
    with httpx.Client(base_url=live_server.url, timeout=300) as http:
        answer = http.post("/ask", json={"question": QUESTION}).json()
        response = http.get("/metrics")
    assert response.status_code == 200 and "version=" in response.headers["content-type"]
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {
        "rag_http_requests",
        "rag_http_request_duration_seconds",
        "rag_answer_duration_seconds",
        "rag_answer_stage_seconds",
        "rag_answers",
        "rag_abstentions",
        "rag_citations",
        "rag_llm_tokens",
        "rag_llm_seconds",
        "rag_llm_tokens_per_second",
        "rag_index_documents",
        "rag_index_chunks",
    } <= set(families)
    scraped = samples(response.text)
    assert answer["model"] == "local/qwen2.5-1.5b-instruct"
    assert value(scraped, "rag_llm_tokens_total", phase="prompt") > 0
    assert value(scraped, "rag_llm_tokens_per_second", phase="prompt") > 0
    assert value(scraped, "rag_http_requests_total", route="/ask", method="POST", status="200") >= 1
    assert value(scraped, "rag_index_documents") >= 5
