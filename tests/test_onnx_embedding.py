"""The onnx-int8 embedding backend: close to torch, exported once into the cache, re-exported
when damaged, and an index built by the other backend refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SEEDS, make_service, make_settings

from rag.config import Settings
from rag.embed import onnx_int8 as onnx_embedding
from rag.embed.encoder import Embedder, resolve_model
from rag.embed.onnx_int8 import MODEL_FILE, RECORD_FILE, ensure_export, export_dir
from rag.errors import IncompatibleIndexError
from rag.stores.faiss_bm25.store import Manifest, read_index

pytestmark = pytest.mark.slow
# onnx-int8 is the default backend; these tests compare it with fp32 torch.
TORCH = Settings().replace(embedding={"backend": "torch"})

SENTENCES = [
    "Military Region 2 established 529 commune-level military party cells.",
    "The border guard patrolled the river crossing at night.",
    "Vitamin D deficiency is associated with a higher risk of fractures in older adults.",
    # Longer than the model's 256-token window: truncation must match the torch tokenizer's.
    " ".join(["The lighthouse keeper reported that the new solar panels now supply the station's power."] * 30),
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def int8_embedder(cache_dir: Path) -> Embedder:
    """Exported once per test session into a temporary cache."""
    return Embedder(Settings().embedding.model_copy(update={"backend": "onnx-int8", "cache_dir": cache_dir}))


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    return Embedder(TORCH.embedding)


@pytest.fixture
def model_dir() -> Path:
    return Path(resolve_model(Settings().embedding.model))


def test_int8_vectors_are_close_to_torch_vectors(torch_embedder, int8_embedder) -> None:
    fp32, int8 = torch_embedder.encode(SENTENCES), int8_embedder.encode(SENTENCES)
    assert int8.shape == fp32.shape and int8.dtype == np.float32
    assert np.allclose(np.linalg.norm(int8, axis=1), 1, atol=1e-5)
    assert (fp32 * int8).sum(axis=1).min() > 0.98
    assert not np.allclose(fp32, int8, atol=1e-4)  # really another model, not torch again
    assert int8_embedder.fingerprint == f"{torch_embedder.fingerprint}+onnx-int8"


def test_the_export_is_reused_from_the_cache(int8_embedder, cache_dir, model_dir, monkeypatch) -> None:
    target = export_dir(model_dir, cache_dir)
    mtime = (target / MODEL_FILE).stat().st_mtime_ns

    def no_export(*_: object) -> None:
        raise AssertionError("exported again although the cache holds a complete export")

    monkeypatch.setattr(onnx_embedding, "_export", no_export)
    assert ensure_export(model_dir, cache_dir) == target
    Embedder(int8_embedder.settings)  # a second load
    assert (target / MODEL_FILE).stat().st_mtime_ns == mtime


def _truncate_model(target: Path) -> None:
    model = target / MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def _drop_record(target: Path) -> None:
    (target / RECORD_FILE).unlink()


def _garble_record(target: Path) -> None:
    (target / RECORD_FILE).write_text("{not json")


@pytest.mark.parametrize("damage", [_truncate_model, _drop_record, _garble_record])
def test_a_damaged_or_partial_export_is_exported_again(
    int8_embedder, cache_dir, model_dir, tmp_path, monkeypatch, damage
) -> None:
    good = export_dir(model_dir, cache_dir)
    own_cache = tmp_path / "cache"
    target = export_dir(model_dir, own_cache)
    shutil.copytree(good, target)
    damage(target)
    crashed = target.parent / ".tmp-crashed"  # what an export killed midway leaves
    crashed.mkdir()
    (crashed / MODEL_FILE).write_bytes(b"\x08\x07half a model")
    exports = []

    def copy_good_export(source: Path, staging: Path) -> None:  # the real export, without its seconds
        exports.append(source)
        for file in good.iterdir():
            shutil.copy2(file, staging / file.name)

    monkeypatch.setattr(onnx_embedding, "_export", copy_good_export)
    assert ensure_export(model_dir, own_cache) == target
    assert exports == [model_dir]
    assert (target / MODEL_FILE).read_bytes() == (good / MODEL_FILE).read_bytes()
    assert json.loads((target / RECORD_FILE).read_text()) == json.loads((good / RECORD_FILE).read_text())
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".tmp-")] == []


def test_an_index_from_the_other_backend_is_refused_and_rebuilt(tmp_path, torch_embedder, int8_embedder) -> None:
    make_service(make_settings(tmp_path / "index", embedding={"backend": "torch"}), torch_embedder).update(paths=[SEEDS])
    settings = make_settings(tmp_path / "index", embedding={"backend": "onnx-int8"})
    service = make_service(settings, int8_embedder)
    with pytest.raises(IncompatibleIndexError, match=r"embedding backend \(torch -> onnx-int8\).*run `rag index`"):
        service.search("border guard")
    report = service.update(paths=[SEEDS])
    assert report.written and report.rebuilt_because == ["embedding backend (torch -> onnx-int8)"]
    assert report.reused_vectors == 0  # fp32 vectors are never mixed into an int8 index
    manifest = read_index(tmp_path / "index").manifest
    assert manifest.embedding_backend == "onnx-int8" and manifest.embedding_fingerprint == int8_embedder.fingerprint
    assert service.search("border guard").results


def test_a_manifest_from_before_backends_reads_as_torch(tmp_path, torch_embedder) -> None:
    make_service(make_settings(tmp_path / "index", embedding={"backend": "torch"}), torch_embedder).update(
        paths=[SEEDS]
    )
    record = read_index(tmp_path / "index").manifest.model_dump(mode="json")
    del record["embedding_backend"]
    assert Manifest.model_validate(record).embedding_backend == "torch"
