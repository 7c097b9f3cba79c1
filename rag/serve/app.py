"""The server: one FastAPI app with the HTTP API, a whole-document page, and the Gradio
interface mounted at `/`."""

from __future__ import annotations

from typing import Annotated

import gradio as gr
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, Response

from rag.errors import BadInputError, UnknownDocumentError
from rag.ingest.formats import UnreadableDocumentError
from rag.ingest.pdf import SourceUnavailableError, render_page, source_pdf, span_boxes
from rag.serve.api import create_api
from rag.service import RagService
from ui.app import ASSETS, build_interface, theme
from ui.render import PAGE_WIDTH_PX, document_page

MAX_PAGE_WIDTH_PX = 2000


def create_app(service: RagService) -> FastAPI:
    app = create_api(service)

    @app.get("/view/{doc_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def view_document(doc_id: str, start: int | None = None, end: int | None = None) -> str:
        doc = service.document(doc_id)
        pages, notice = [], None
        if doc.pages and start is not None and end is not None:
            try:
                pages = span_boxes(source_pdf(doc, [service.settings.index.corpus_dir]), doc, start, end)
            except (SourceUnavailableError, UnreadableDocumentError) as exc:
                notice = f"{exc}. The text is shown below."
        return document_page(doc, start, end, pages, notice)

    @app.get("/page-image/{doc_id:path}", include_in_schema=False)
    def page_image(
        doc_id: str,
        page: Annotated[int, Query(ge=1)],
        width: Annotated[int, Query(ge=100, le=MAX_PAGE_WIDTH_PX)] = PAGE_WIDTH_PX,
    ) -> Response:
        """One page of a PDF document as a PNG (the document page draws the span's boxes over it)."""
        doc = service.document(doc_id)
        if not doc.pages:
            raise BadInputError(f"{doc_id} is not a PDF: it has no pages to show")
        if page > len(doc.pages):
            raise UnknownDocumentError(f"{doc_id} has {len(doc.pages)} page(s), not {page}")
        png = render_page(source_pdf(doc, [service.settings.index.corpus_dir]), page, width)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    return gr.mount_gradio_app(
        app,
        build_interface(service, app.state.keys, app.state.answer_queue),
        path="/",
        theme=theme(),
        css_paths=[ASSETS / "style.css"],
        head=(ASSETS / "head.html").read_text(encoding="utf-8"),
        max_file_size=service.settings.server.max_upload_bytes,
        footer_links=["api"],
    )
