"""The server: one FastAPI app with the HTTP API, a whole-document page, and the Gradio
interface mounted at `/`."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from rag.serve.api import create_api
from rag.service import RagService
from ui.app import ASSETS, build_interface, theme
from ui.render import document_page


def create_app(service: RagService) -> FastAPI:
    app = create_api(service)

    @app.get("/view/{doc_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def view_document(doc_id: str, start: int | None = None, end: int | None = None) -> str:
        return document_page(service.document(doc_id), start, end)

    return gr.mount_gradio_app(
        app, build_interface(service, app.state.keys, app.state.answer_queue), path="/",
        theme=theme(), css_paths=[ASSETS / "style.css"], head=(ASSETS / "head.html").read_text(encoding="utf-8"),
        max_file_size=service.settings.server.max_upload_bytes, footer_links=["api"],
    )
