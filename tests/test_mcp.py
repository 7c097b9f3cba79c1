"""The MCP tools through the official SDK's own client: over stdio, spawning `rag mcp` as an MCP
client would, and over streamable HTTP at /mcp of a real `rag serve` (its keys and model policy)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import httpx2
import pytest
from conftest import READ_KEY
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from rag.requests import AskRequest, CheckRequest, SearchRequest

pytestmark = pytest.mark.slow

QUESTION = "How many commune-level military party cells were established?"
DOC = "000_c1a45aa062b469e9.txt"
TOOLS = {"search": SearchRequest, "ask": AskRequest, "check": CheckRequest}

Use = Callable[[ClientSession], Awaitable[Any]]


def over_stdio(index_dir, use: Use, cwd) -> Any:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "rag.cli", "mcp", "--index-dir", str(index_dir)],
        cwd=str(cwd),
        env={"HF_HUB_OFFLINE": "1"},
    )

    async def run() -> Any:
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await use(session)

    return asyncio.run(asyncio.wait_for(run(), timeout=600))


def over_http(url: str, use: Use, headers: dict[str, str] | None = None) -> Any:
    async def run() -> Any:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=300) as http,
            streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await use(session)

    return asyncio.run(asyncio.wait_for(run(), timeout=600))


async def tour(session: ClientSession) -> dict[str, Any]:
    """Every tool once, and a few bad calls."""
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    calls = {
        "search": ("search", {"query": QUESTION, "k": 3}),
        "ask": ("ask", {"question": QUESTION, "model": "extractive"}),
        "check": ("check", {"claim": "529 commune-level military party cells were established.", "doc_id": DOC}),
        "list_documents": ("list_documents", {}),
        "empty_question": ("ask", {"question": "  ", "model": "extractive"}),
        "k_zero": ("search", {"query": QUESTION, "k": 0}),
        "unknown_doc": ("check", {"claim": "529 cells.", "doc_id": "nope.txt"}),
        "other_model": ("ask", {"question": QUESTION, "model": "nosuchprovider/model"}),
    }
    return {"tools": tools} | {
        key: await session.call_tool(name, arguments) for key, (name, arguments) in calls.items()
    }


def error_text(result) -> str:
    assert result.is_error, result
    return result.content[0].text


@pytest.fixture(scope="module")
def stdio_tour(seed_service, tmp_path_factory):
    return over_stdio(seed_service.settings.index.dir, tour, tmp_path_factory.mktemp("mcp"))


def test_the_tools_and_their_schemas_are_the_api_request_models(stdio_tour) -> None:
    tools = stdio_tour["tools"]
    assert set(tools) == {"search", "ask", "check", "list_documents"}
    for name, model in TOOLS.items():
        schema = model.model_json_schema()
        assert tools[name].input_schema["properties"] == schema["properties"], name
        assert set(tools[name].input_schema.get("required", [])) == set(schema.get("required", [])), name
    assert all(tool.annotations.read_only_hint for tool in tools.values())
    assert tools["ask"].output_schema["properties"]["citations"]["type"] == "array"


def test_stdio_tools_search_ask_check_and_list(stdio_tour, seed_service) -> None:
    results = stdio_tour["search"].structured_content["results"]
    assert len(results) == 3 and "529 commune-level military party cells" in results[0]["text"]
    answer = stdio_tour["ask"].structured_content
    assert not answer["abstained"] and "529" in answer["answer"] and answer["citations"]
    for citation in answer["citations"]:
        assert citation["supported"]
        assert seed_service.document(citation["doc_id"]).text[citation["start"] : citation["end"]] == citation["text"]
    check = stdio_tour["check"].structured_content
    assert check["sentences"][0]["citations"][0]["supported"] is True
    documents = stdio_tour["list_documents"].structured_content["documents"]
    assert len(documents) == 5 and DOC in {d["doc_id"] for d in documents}


def test_stdio_errors_are_tool_errors_with_the_api_message(stdio_tour) -> None:
    assert "empty" in error_text(stdio_tour["empty_question"])
    assert "greater than or equal to 1" in error_text(stdio_tour["k_zero"])
    assert "nope.txt" in error_text(stdio_tour["unknown_doc"])
    # The stdio server runs as its user, like the CLI: any model string, judged by litellm alone.
    assert "unknown model" in error_text(stdio_tour["other_model"])


def test_rag_mcp_without_an_index_is_a_one_line_error(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rag.cli", "mcp", "--index-dir", str(tmp_path / "none")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and done.stdout == ""  # as `rag search` without an index
    assert done.stderr.strip().startswith("error: no index in") and len(done.stderr.strip().splitlines()) == 1


def test_streamable_http_on_rag_serve_applies_the_server_model_policy(live_server) -> None:
    result = over_http(live_server.url, tour)
    assert set(result["tools"]) == {"search", "ask", "check", "list_documents"}
    assert "529" in result["ask"].structured_content["answer"]
    assert len(result["list_documents"].structured_content["documents"]) >= 5
    assert "not offered by this server" in error_text(result["other_model"])


def test_streamable_http_needs_a_key_when_keys_are_set(keyed_server) -> None:
    async def ask(session: ClientSession):
        return await session.call_tool("ask", {"question": QUESTION, "model": "extractive"})

    answer = over_http(keyed_server.url, ask, headers={"Authorization": f"Bearer {READ_KEY}"})
    assert "529" in answer.structured_content["answer"]
    with pytest.raises(ExceptionGroup) as refused:
        over_http(keyed_server.url, ask, headers={"Authorization": "Bearer not-a-key-0000000000000"})
    assert refused.group_contains(MCPError, match="error response", depth=2)
    # What the SDK client was told: the API's own 401, before the MCP server saw the request.
    raw = httpx.post(f"{keyed_server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=60)
    assert raw.status_code == 401 and "API key" in raw.json()["detail"]
