"""The embedded default answerer: Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) run in-process by
llama.cpp (xllamacpp), reachable through litellm as `local/qwen2.5-1.5b-instruct`.

A `LocalModel` owns one llama.cpp server for one `LocalLLMSettings`: the server starts on the
first answer and stops with `close()` (or the `with` block). `RagService` makes one and closes it
with itself. The pieces it is made of:
- rag/llm/gguf.py: the bundled GGUF, joined from its 22 part packages and checked.
- rag/llm/server.py: the llama.cpp server, on 127.0.0.1 with a random key.
- rag/llm/provider.py: the litellm provider, registered once per process
  (`register_local_provider()`), which sends each call to the LocalModel it names
  (`litellm.completion(model="local/...", local_model=model, ...)`).

Any other GGUF file can be served instead (`LocalLLMSettings.gguf`).
"""

from __future__ import annotations

import threading
import weakref

from rag.config import LocalLLMSettings
from rag.errors import RagError
from rag.llm.gguf import Progress, resolve_gguf, verify_bundled_gguf
from rag.llm.server import LocalLLMServer


class LocalModel:
    """The embedded model for one `LocalLLMSettings`: one llama.cpp server, started on first use
    (thread-safe), stopped by `close()`. Pass it to litellm as `local_model=` with a `local/...`
    model string. Models with different settings run side by side in one process."""

    def __init__(self, settings: LocalLLMSettings | None = None):
        self.settings = settings or LocalLLMSettings()
        # llama.cpp's own timings of the latest answer (prompt_per_second, predicted_per_second...),
        # for diagnostics and benchmarks; with concurrent requests, whichever finished last.
        self.last_timings: dict | None = None
        self._lock = threading.Lock()
        self._server: LocalLLMServer | None = None
        self._stop_at_exit: weakref.finalize | None = None
        self._closed = False

    def server(self, progress: Progress | None = None) -> LocalLLMServer:
        """The running server, started on the first call (`progress` reports assembling the
        bundled GGUF on its very first use)."""
        with self._lock:
            if self._closed:
                raise RagError("the local model was closed")
            if self._server is None:
                server = self._start(progress)
                # A fallback for a model that is never closed: its server stops when the model is
                # garbage-collected or, at the latest, when the interpreter exits.
                self._stop_at_exit = weakref.finalize(self, server.stop)
                self._server = server
            return self._server

    def _start(self, progress: Progress | None) -> LocalLLMServer:
        server = LocalLLMServer(self.settings, resolve_gguf(self.settings, progress))
        try:
            server.start()
        except RagError:
            # The bundled file may be corrupt behind a valid marker: if so, assemble it again and
            # retry once, rather than fall back to another answerer for good.
            if self.settings.gguf is not None or verify_bundled_gguf(self.settings.cache_dir, progress) is None:
                raise
            server = LocalLLMServer(self.settings, resolve_gguf(self.settings, progress))
            server.start()
        return server

    @property
    def running(self) -> bool:
        """Whether the server is up (it starts on the first answer)."""
        return self._server is not None and self._server.running

    def close(self) -> None:
        """Stop the server and refuse further use; a second call does nothing."""
        with self._lock:
            self._closed = True
            self._server = None
            if self._stop_at_exit is not None:
                self._stop_at_exit()  # runs server.stop() once and forgets it

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
