"""One llama.cpp server (xllamacpp) inside this process: it loads a GGUF file, serves the
OpenAI-compatible chat endpoint on 127.0.0.1 at a port the OS picks, and accepts only requests
carrying its own random API key. The binding runs the server on its own threads; freeing the
`xllamacpp.Server` object stops them. Several servers may run in one process, each with its own
model copy in memory (mapped from the same file), context and threads."""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from rag.config import LocalLLMSettings
from rag.errors import RagError

LOOPBACK_HOST = "127.0.0.1"


class LocalLLMServer:
    """One llama.cpp server inside this process, reachable only on 127.0.0.1."""

    def __init__(self, settings: LocalLLMSettings, gguf: Path):
        self.settings = settings
        self.gguf = gguf
        self.api_key = secrets.token_urlsafe(24)
        self.base_url = ""
        self.host = LOOPBACK_HOST
        self.port = 0
        self._server: Any = None
        # One place per llama.cpp slot. The synchronous calls the service makes wait here rather
        # than in the server's own queue, so a caller's timeout counts its generation, not the
        # time spent behind other answers (async callers still queue inside llama.cpp).
        self.slots = threading.BoundedSemaphore(settings.max_concurrent)

    def start(self) -> None:
        """Load the model and listen; returns once the server answers its health check."""
        if self.settings.omp_passive:
            # Set here, not at import: libgomp reads it once, when the first xllamacpp import in
            # this process loads it, so it must be in the environment before that import. Later
            # servers in the same process share that first choice.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import xllamacpp
        except ImportError:
            raise RagError("the local model needs the package 'xllamacpp': pip install xllamacpp") from None
        s = self.settings
        params = xllamacpp.CommonParams()
        params.model.path = str(self.gguf)
        params.hostnames = [LOOPBACK_HOST]
        params.port = 0  # the OS picks a free port; read back from listening_address
        params.api_keys = [self.api_key]
        params.n_parallel = s.max_concurrent
        # Slots share the context: give each request the configured n_ctx.
        params.n_ctx = s.n_ctx * s.max_concurrent
        params.cache_prompt = s.cache_prompt
        params.ui = False
        params.endpoint_slots = False
        params.endpoint_props = False
        params.endpoint_metrics = False
        params.fit_params = False  # nothing to fit on a CPU; do not probe memory at start
        params.verbosity = 0
        poll = 50 if s.poll else 0
        params.cpuparams.n_threads = s.n_threads
        params.cpuparams.poll = poll
        params.cpuparams_batch.n_threads = s.n_threads_batch or s.n_threads
        params.cpuparams_batch.poll = poll
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:  # the binding raises plain RuntimeError/ValueError
            reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RagError(f"cannot load local model {self.gguf}: {reason}") from None
        address = str(self._server.listening_address).rstrip("/")
        self.base_url = address if "://" in address else f"http://{address}"
        host_port = self.base_url.split("://", 1)[1]
        self.host, _, port = host_port.rpartition(":")
        self.port = int(port)
        if self.host not in (LOOPBACK_HOST, "localhost"):
            self.stop()
            raise RagError(f"local model server bound to {self.host}, not {LOOPBACK_HOST}; refusing to use it")
        self._wait_ready()

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            try:
                response = httpx.get(f"{self.base_url}/health", timeout=5.0, trust_env=False)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RagError(f"local model server did not become ready within {self.settings.start_timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Shut the server down; a second call does nothing."""
        # The binding has no stop(); freeing the Server object shuts the HTTP listener and loop.
        server, self._server = self._server, None
        del server

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def headers(self) -> dict[str, str]:
        """The request headers that carry this server's key."""
        return {"Authorization": f"Bearer {self.api_key}"}
