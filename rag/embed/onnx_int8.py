"""The embedding model as int8 ONNX, run by ONNX Runtime: exported once from the very weights the
torch backend loads (no other download) into the model cache, then reused.

Export: torch.onnx.export of the transformer (eager attention), onnxruntime's BERT graph fusion
(attention, embedding and skip layer norms, bias GELU), then its quantize_dynamic (int8 weights,
per output channel). sentence-transformers' own ONNX export needs optimum, whose releases pin
transformers 4.x and would downgrade the one installed here. Mean pooling and
normalisation run in numpy, tokenization in `tokenizers`, so a loaded export needs no torch."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rag.errors import BadInputError

# Bump when the export recipe changes: caches made by an older recipe are then exported again.
EXPORT_FORMAT = 2
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RECORD_FILE = "export.json"
# The tokenizer outputs a BERT-like transformer may take; the export keeps those its tokenizer gives.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(model_dir: Path) -> str:
    """Every file of the model folder (weights, config, tokenizer), so a changed model is re-exported."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model_dir)}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()[:16]


def export_dir(model_dir: Path, cache_dir: Path) -> Path:
    return cache_dir / "onnx-int8" / f"{model_dir.name}-{weights_digest(model_dir)}"


def _is_complete(target: Path) -> bool:
    """A finished export of this recipe whose files still match the checksums written with them."""
    try:
        record = json.loads((target / RECORD_FILE).read_text())
        return record["format"] == EXPORT_FORMAT and all(
            _file_digest(target / name) == record["sha256"][name] for name in (MODEL_FILE, TOKENIZER_FILE)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_export(model_dir: Path, cache_dir: Path) -> Path:
    """The cached export of `model_dir`, made first if missing or damaged. It is built in a staging
    folder and renamed into place, so a crash leaves either nothing or a whole export."""
    target = export_dir(model_dir, cache_dir)
    if _is_complete(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = (target.parent / ".lock").open("w")
    except OSError as exc:
        raise BadInputError(f"cannot use embedding cache directory {target.parent}: {exc.strerror or exc}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting the same model
        if _is_complete(target):
            return target
        for leftover in target.parent.glob(".tmp-*"):  # a crashed export's; none runs while we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            _export(model_dir, staging)
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is readable like the GGUF beside it
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _export(model_dir: Path, staging: Path) -> None:
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    modules = [type(module).__name__ for module in model]
    if (
        modules[:2] != ["Transformer", "Pooling"]
        or model[1].pooling_mode != "mean"
        or modules[2:] not in ([], ["Normalize"])
    ):
        raise BadInputError(
            f"embedding backend onnx-int8 needs a mean-pooled transformer model, not {' + '.join(modules)}"
        )
    tokenizer = model.tokenizer
    if not tokenizer.is_fast:
        raise BadInputError(f"embedding backend onnx-int8 needs a fast (tokenizer.json) tokenizer in {model_dir}")
    sample = tokenizer(["an example sentence", "a second, longer example sentence"], padding=True, return_tensors="pt")
    names = [name for name in INPUT_NAMES if name in sample]
    transformer = model[0].auto_model.eval()
    # Eager attention exports as plain ops that the fusion below recognises; SDPA's export does not fuse.
    transformer.set_attn_implementation("eager")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer  # a submodule, so its weights export as weights

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, inputs))).last_hidden_state

    fp32 = staging / "fp32.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    # The tracer warns that shape checks become constants: they are batch-size and padding checks
    # of an encoder, and tests compare the export's vectors with torch's on inputs of many lengths.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: the dynamo one needs onnxscript, one more dependency for nothing.
        torch.onnx.export(
            LastHiddenState(),
            tuple(sample[name] for name in names),
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    fused = staging / "fused.onnx"
    config = transformer.config
    optimize_model(
        str(fp32), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    ).save_model_to_file(str(fused))
    # Measured on long SciFact abstracts against torch fp32: unfused int8 took 0.85x torch's CPU
    # time, fused int8 0.57x. Per-channel scales: one scale per weight matrix cost cosine 0.89 to
    # fp32, per channel 0.99.
    logging.disable(logging.WARNING)  # the quantizer's advice to pre-process, printed on the user's terminal
    try:
        quantize_dynamic(
            fused,
            staging / MODEL_FILE,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops carry no type for the quantizer
        )
    finally:
        logging.disable(logging.NOTSET)
    fused.unlink()
    fp32.unlink()
    tokenizer.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
    record = {
        "format": EXPORT_FORMAT,
        "source": str(model_dir),
        "max_seq_length": model.max_seq_length,
        "dimension": transformer.config.hidden_size,  # mean pooling keeps the hidden size
        "sha256": {name: _file_digest(staging / name) for name in (MODEL_FILE, TOKENIZER_FILE)},
    }
    (staging / RECORD_FILE).write_text(json.dumps(record, indent=2))


class OnnxInt8Encoder:
    """Unit-length vectors from an export: tokenize, run the int8 transformer, mean-pool."""

    def __init__(self, export: Path):
        import onnxruntime
        from tokenizers import Tokenizer

        record = json.loads((export / RECORD_FILE).read_text())
        self.dimension = int(record["dimension"])
        self.tokenizer = Tokenizer.from_file(str(export / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(max_length=record["max_seq_length"])
        self.tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        # Idle worker threads sleep instead of spinning: on a shared 2-core machine spinning threads
        # take turns from the ones doing the work (as with llama.cpp's OpenMP, see LocalLLMSettings).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(export / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Unit vectors of `texts`, tokenized `batch_size` at a time. Each text runs through the
        model alone: dynamic quantization scales the activations of the whole input tensor, so
        in a batch a text's vector would depend on the texts beside it (and on their padding),
        and a vector reused by the index for the same text would differ from a fresh one. Alone
        is also faster on the CPU, with no padding to compute (bench/RESULTS.md)."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for begin in range(0, len(texts), batch_size):
            for offset, encoding in enumerate(self.tokenizer.encode_batch(texts[begin : begin + batch_size])):
                features = {
                    "input_ids": encoding.ids,
                    "attention_mask": encoding.attention_mask,
                    "token_type_ids": encoding.type_ids,
                }
                (hidden,) = self.session.run(
                    None, {name: np.array([features[name]], dtype=np.int64) for name in self.inputs}
                )
                pooled = hidden[0].mean(axis=0)  # every token counts: nothing is padded
                out[begin + offset] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out
