"""Evidence recall: is the gold answer sentence among the evidence sentences a model is shown?

The figure that caps every reader. Measured for evidence-selection settings (rag/evidence.py:
pool depth, sentence count, word budget, passage prior) on ClapNQ dev answerable questions,
where the settings are chosen, and on the seed question set, which only measures. No model
is called: retrieval and sentence ranking only. A question counts when an evidence sentence
covers at least half of a gold quote that holds an answer string (any gold quote if none
does), the rule of `rag.evaluation.quote_in_evidence`."""

from __future__ import annotations

import argparse
import os
import time

from bench_clapnq import CLAPNQ_DIR, INDEX_DIR, QUESTIONS, write_questions
from run_all import BENCH_DIR, markdown_table, write_section

from rag.beir import beir_settings, build_beir_index, load_beir
from rag.config import EvidenceSettings, Settings
from rag.evaluation import EvalQuestion, Quote, _covers, contains_answer, load_questions
from rag.evidence import SentenceVectors, rank_evidence, select_evidence
from rag.service import RagService

SEED_QUESTIONS = BENCH_DIR / "questions" / "seeds_qa.jsonl"
SEED_INDEX = BENCH_DIR / ".cache" / "seeds-index"
DEFAULT = EvidenceSettings()
VARIANTS = {
    "previous prompt: 4 passages, 7 sentences, no passage prior": DEFAULT.model_copy(
        update={"passages": 4, "sentences": 7, "max_words": 10_000, "passage_prior": 0.0}),
    "12 passages, 6 sentences, no prior": DEFAULT.model_copy(update={"passage_prior": 0.0, "max_words": 10_000}),
    "12 passages, 6 sentences, prior 0.2": DEFAULT.model_copy(update={"max_words": 10_000}),
    "12 passages, 9 sentences, prior 0.2": DEFAULT.model_copy(update={"sentences": 9, "max_words": 10_000}),
    "20 passages, 9 sentences, prior 0.2": DEFAULT.model_copy(update={"passages": 20, "sentences": 9, "max_words": 10_000}),
    "default (12 passages, 6 sentences, prior 0.2, 220 words)": DEFAULT,
}


def answer_quotes(q: EvalQuestion) -> list[Quote]:
    holding = [quote for quote in q.quotes if contains_answer(quote.quote, q.answers)]
    return holding or q.quotes


def recall(service: RagService, questions: list[EvalQuestion]) -> dict[str, str]:
    vectors = SentenceVectors(service.embedder, 200_000)
    documents = service.index.documents
    depth = max(v.passages for v in VARIANTS.values())
    found = dict.fromkeys(VARIANTS, 0)
    words = dict.fromkeys(VARIANTS, 0)
    for q in questions:
        pool = service.retriever.search(q.question, k=depth).results
        for name, settings in VARIANTS.items():
            evidence = select_evidence(rank_evidence(q.question, pool[: settings.passages], vectors, settings),
                                       settings.sentences, settings.max_words)
            spans = [(pool[s.passage].doc_id, s.span.start, s.span.end) for s in evidence]
            found[name] += _covers(spans, answer_quotes(q), documents)
            words[name] += sum(len(s.text.split()) for s in evidence)
    return {name: f"{found[name]}/{len(questions)} ({found[name] / len(questions):.3f}); {words[name] / len(questions):.0f} words"
            for name in VARIANTS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    clock, load_before = time.perf_counter(), os.getloadavg()[0]
    write_questions()
    clapnq = RagService(beir_settings(Settings(), INDEX_DIR))
    build_beir_index(clapnq, load_beir(CLAPNQ_DIR, "dev"))
    clapnq_figures = recall(clapnq, [q for q in load_questions(QUESTIONS) if q.answerable])
    seeds = RagService(Settings(corpus_dir=BENCH_DIR.parent / "seeds", index={"dir": SEED_INDEX}))
    seeds.update(paths=[seeds.settings.corpus_dir])
    seed_figures = recall(seeds, [q for q in load_questions(SEED_QUESTIONS) if q.answerable])
    rows = [[name, clapnq_figures[name], seed_figures[name]] for name in VARIANTS]
    body = (
        f"`bench/bench_evidence.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {time.perf_counter() - clock:.0f} s, load {load_before:.2f} -> {os.getloadavg()[0]:.2f}. Gold answer sentence"
        " among the evidence sentences (and mean evidence words per question), answerable questions. Settings are"
        " chosen on ClapNQ; the seed set only measures.\n\n"
        + markdown_table(["evidence selection", "ClapNQ dev (300)", "seed set (53)"], rows) + "\n"
    )
    print(body)
    write_section("bench_evidence", "Evidence recall (what the model is shown)", body)


if __name__ == "__main__":
    main()
