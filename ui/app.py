"""The Gradio web interface: a thin caller of RagService, the same object the API and the CLI
use. `rag.serve.app` mounts it beside the HTTP API."""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline service

import gradio as gr

from rag.config import EXTRACTIVE
from rag.errors import RagError
from rag.ingest.loading import SUPPORTED_LIST, SUPPORTED_SUFFIXES
from rag.requests import AskRequest, SearchRequest, Turn
from rag.schema import AnswerResponse
from rag.serve.access import LOGOUT_PATH, Keys, Role, check_client_model
from rag.serve.api import AnswerQueue
from rag.service import RagService
from ui.render import (
    answer_markdown,
    markdown_text,
    reading_html,
    search_html,
    sources_html,
)

ASSETS = Path(__file__).parent / "assets"
ADMIN_ONLY = "⚠️ Adding and removing documents needs an admin key; log in with one."
MODES = [("Hybrid (meaning + keywords)", "hybrid"), ("Meaning only (dense)", "dense"), ("Keywords only (BM25)", "bm25")]


def theme() -> gr.themes.Base:
    # System fonts only: the service runs offline, so nothing may be fetched from a font CDN.
    return gr.themes.Soft(
        primary_hue="indigo",
        neutral_hue="slate",
        font=["Inter", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )


def build_interface(service: RagService, keys: Keys, queue: AnswerQueue) -> gr.Blocks:
    """The interface; its answers take their place in the API's `queue` of answers."""
    settings = service.settings
    default_model = settings.answer.model

    def may_change_documents(request: gr.Request) -> bool:
        """Gradio's API reaches every event, so each write checks the key of its own request."""
        return not keys.enabled or keys.role(request.headers) == Role.ADMIN

    with gr.Blocks(title="Cited answers", fill_width=True) as interface:
        logout = f'<a class="logout" href="{LOGOUT_PATH}">Log out</a>' if keys.enabled else ""
        gr.HTML(
            f'<div class="app-header">{logout}<h1>Cited answers</h1>'
            "<p>Ask your documents. Every claim cites its passage, and every citation is checked against it.</p></div>"
        )
        with gr.Tabs():
            with gr.Tab("Ask", id="ask"):
                with gr.Row(equal_height=False, elem_classes="ask-row"):
                    with gr.Column(scale=3, min_width=340):
                        chat = gr.Chatbot(
                            show_label=False,
                            elem_id="chat",
                            height="62vh",
                            layout="panel",
                            placeholder="Ask a question about your documents. Answers stream in with numbered citations; click one to see its source.",
                            buttons=["copy"],
                            feedback_options=None,
                        )
                        with gr.Row(elem_classes="ask-bar"):
                            question = gr.Textbox(
                                show_label=False,
                                placeholder="Ask a question…",
                                elem_id="question",
                                scale=6,
                                max_lines=4,
                                autofocus=True,
                                submit_btn=False,
                            )
                            ask = gr.Button("Ask", variant="primary", elem_id="ask-button", scale=1, min_width=80)
                        new_chat = gr.Button("New conversation", size="sm", variant="secondary")
                        with gr.Accordion("Settings", open=False, elem_id="settings"):
                            k = gr.Slider(
                                1,
                                30,
                                value=settings.evidence.passages,
                                step=1,
                                label="Passages searched for evidence",
                                elem_id="k",
                            )
                            mode = gr.Radio(MODES, value=settings.retrieval.mode, label="Search mode", elem_id="mode")
                            doc_filter = gr.Dropdown(
                                choices=_doc_ids(service),
                                multiselect=True,
                                value=[],
                                label="Only these documents",
                                elem_id="doc-filter",
                                info="Empty: all documents.",
                            )
                            model = gr.Dropdown(
                                choices=[
                                    m
                                    for m in dict.fromkeys(
                                        [default_model, EXTRACTIVE, *settings.server.allow_client_models]
                                    )
                                    if m != "*"
                                ],
                                value=default_model,
                                allow_custom_value=True,
                                label="Model",
                                elem_id="model",
                                info="The embedded model needs no key; `extractive` quotes the passages without an LLM; other litellm model strings (e.g. openai/gpt-4o-mini) where the server allows them (server.allow_client_models).",
                            )
                    with gr.Column(scale=2, min_width=320):
                        gr.Markdown("### Sources")
                        sources = gr.HTML(sources_html([]), elem_id="sources")
                answers = gr.State([])  # AnswerResponse per turn, for follow-ups and the sources panel

            with gr.Tab("Search", id="search"):
                with gr.Row(elem_classes="ask-bar"):
                    search_query = gr.Textbox(
                        show_label=False, placeholder="Search the passages…", elem_id="search-query", scale=6
                    )
                    search_button = gr.Button(
                        "Search", variant="primary", elem_id="search-button", scale=1, min_width=80
                    )
                with gr.Row():
                    search_k = gr.Slider(1, 50, value=settings.retrieval.k, step=1, label="Passages")
                    search_mode = gr.Radio(MODES, value=settings.retrieval.mode, label="Search mode", elem_id="mode")
                search_results = gr.HTML(elem_id="search-results")

            with gr.Tab("Documents", id="documents"):
                documents = gr.Dataframe(
                    value=_documents_table(service),
                    headers=["Document", "Title", "Passages", "Duplicate passages", "Characters"],
                    interactive=False,
                    wrap=True,
                    elem_id="documents-table",
                )
                with gr.Row(equal_height=False):
                    with gr.Column():
                        upload = gr.File(
                            label=f"Add documents ({SUPPORTED_LIST})",
                            file_count="multiple",
                            file_types=sorted(s for s in SUPPORTED_SUFFIXES if s),
                            elem_id="upload",
                        )
                        add = gr.Button("Add to index", variant="primary", elem_id="add-button")
                    with gr.Column():
                        to_remove = gr.Dropdown(
                            choices=_doc_ids(service), value=None, label="Remove a document", elem_id="remove-choice"
                        )
                        remove = gr.Button("Remove from index", variant="stop", elem_id="remove-button")
                documents_status = gr.Markdown(elem_id="documents-status")

        def answer(
            text: str,
            messages: list[dict],
            turns: list[AnswerResponse],
            k_value: float,
            mode_value: str,
            doc_ids: list[str],
            model_value: str,
        ) -> Iterator[tuple[Any, ...]]:
            text = (text or "").strip()
            if not text:
                yield messages, turns, gr.skip(), gr.skip()
                return
            messages = [*messages, {"role": "user", "content": text}, {"role": "assistant", "content": "…"}]
            yield messages, turns, gr.skip(), ""
            request = AskRequest(
                question=text,
                k=int(k_value),
                mode=mode_value,
                doc_ids=doc_ids or None,
                model=(model_value or "").strip() or None,
                history=[Turn(question=t.question, answer=t.answer) for t in turns if not t.abstained],
            )
            written = ""
            try:
                check_client_model(settings.server, default_model, request.model, None)
                for event in queue.held(request.model, service.ask_stream(request)):
                    if event.kind == "passages":
                        yield messages, turns, reading_html(event.passages or []), gr.skip()
                    elif event.kind == "token":
                        written += event.text
                        messages[-1] = {"role": "assistant", "content": markdown_text(written)}
                        yield messages, turns, gr.skip(), gr.skip()
                    elif event.response is not None:
                        turns = [*turns, event.response]
                        messages[-1] = {"role": "assistant", "content": answer_markdown(event.response, len(turns))}
                        yield messages, turns, sources_html(turns), gr.skip()
            except RagError as exc:
                messages[-1] = {"role": "assistant", "content": f"⚠️ {markdown_text(str(exc))}"}
                yield messages, turns, sources_html(turns), gr.skip()

        answer_inputs = [question, chat, answers, k, mode, doc_filter, model]
        answer_outputs = [chat, answers, sources, question]
        for trigger in (ask.click, question.submit):
            trigger(
                answer,
                answer_inputs,
                answer_outputs,
                concurrency_limit=settings.server.ui_answer_concurrency,
                concurrency_id="answer",
            )
        new_chat.click(lambda: ([], [], sources_html([])), None, [chat, answers, sources], queue=False)

        def search(text: str, k_value: float, mode_value: str) -> str:
            try:
                return search_html(service.search(SearchRequest(query=text, k=int(k_value), mode=mode_value)).results)
            except RagError as exc:
                return f'<div class="error">⚠️ {html.escape(str(exc))}</div>'

        for trigger in (search_button.click, search_query.submit):
            trigger(
                search,
                [search_query, search_k, search_mode],
                search_results,
                concurrency_limit=8,
                concurrency_id="search",
            )

        def document_views(message: str) -> tuple[Any, ...]:
            ids = _doc_ids(service)
            return (
                _documents_table(service),
                gr.update(choices=ids, value=None),
                gr.update(choices=ids),
                message,
                None,
            )

        def add_files(files: list[str] | None, request: gr.Request) -> tuple[Any, ...]:
            if not may_change_documents(request):
                return document_views(ADMIN_ONLY)
            if not files:
                return document_views("Choose one or more files first.")
            lines = []
            for file in files:
                name = Path(file).name
                try:
                    report = service.add_document(name, Path(file).read_bytes())
                    state = "added" if report.added else "updated" if report.updated else "unchanged"
                    lines.append(
                        f"✓ **{markdown_text(name)}** {state} ({report.documents} documents, {report.chunks} passages in the index)"
                    )
                except RagError as exc:
                    lines.append(f"⚠️ **{markdown_text(name)}**: {markdown_text(str(exc))}")
            return document_views("\n\n".join(lines))

        def remove_document(doc_id: str | None, request: gr.Request) -> tuple[Any, ...]:
            if not may_change_documents(request):
                return document_views(ADMIN_ONLY)
            if not doc_id:
                return document_views("Choose a document to remove.")
            try:
                service.delete_documents([doc_id])
                return document_views(f"✓ Removed **{markdown_text(doc_id)}** from the index and the corpus folder.")
            except RagError as exc:
                return document_views(f"⚠️ {markdown_text(str(exc))}")

        views = [documents, to_remove, doc_filter, documents_status, upload]
        add.click(add_files, upload, views, concurrency_id="index", concurrency_limit=1)
        # Removing deletes the file from the corpus folder: ask first, in the browser.
        remove.click(
            remove_document,
            to_remove,
            views,
            concurrency_id="index",
            concurrency_limit=1,
            js="(doc) => doc && confirm(`Remove ${doc} from the index and delete its file from the corpus folder?`) ? doc : null",
        )
    return interface


def _doc_ids(service: RagService) -> list[str]:
    return [info.doc_id for info in service.documents()]


def _documents_table(service: RagService) -> list[list[Any]]:
    return [[d.doc_id, d.title, d.chunks, d.duplicate_chunks, d.chars] for d in service.documents()]
