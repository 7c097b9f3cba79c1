"""Words of a text as the checks see them: BM25 tokens (Snowball stems, English stop words
removed), numbers, capitalised names, and whether a sentence makes a claim at all."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

import bm25s
import Stemmer

NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NAME = re.compile(r"\b[^\W\d_][\w\-]*")
NUMBER_WORDS = dict(
    zip("one two three four five six seven eight nine ten eleven twelve".split(), map(str, range(1, 13)))
)


@cache
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=_stemmer())
    return tokenizer.tokenize(texts, return_as="string", show_progress=False)


def fold(text: str) -> str:
    """Lower case without accents (Điện Biên -> dien bien), for name and number matching."""
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def numbers_in(text: str, spelled: bool = False) -> set[str]:
    # "22,700" and "22700" are the same number; a trailing sentence period is not a decimal.
    found = {n.replace(",", "").rstrip(".") for n in NUMBER.findall(text)}
    if spelled:  # passages may spell out what an answer writes in digits ("nine groups")
        found |= {NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in NUMBER_WORDS}
    return found


def names_in(claim: str) -> set[str]:
    words = NAME.findall(claim)
    return {fold(w) for w in words[1:] if w[:1].isupper() and len(w) > 2}


def names_not_in(question: str, documents: list[str]) -> list[str]:
    """The words of the question's multi-word names (runs of two or more capitalised words after
    its first word, such as "Gia Lai" or "Điện Biên") that none of `documents` contains, compared
    without accents, one string per name. An answer whose sources never name what the question
    is about is about something else. Single capitalised words and acronyms are left out:
    questions use them for paraphrases and abbreviations ("Tết", "MR2") spelled otherwise."""
    runs: list[list[re.Match[str]]] = [[]]
    for word in list(NAME.finditer(question))[1:]:
        capitalised = word.group()[:1].isupper() and not word.group().isupper()
        if capitalised and runs[-1] and question[runs[-1][-1].end() : word.start()].isspace():
            runs[-1].append(word)
        else:
            runs.append([word] if capitalised else [])
    folded = [fold(document) for document in documents]

    def named(word: str) -> bool:
        # A capitalised plural ("Military Regions") names what the documents write in the singular.
        forms = {fold(word), *singulars(fold(word))}
        return any(re.search(rf"\b{re.escape(form)}\b", document) for document in folded for form in forms)

    unnamed = [" ".join(w.group() for w in run if not named(w.group())) for run in runs if len(run) >= 2]
    return [name for name in unnamed if name]


def singulars(word: str) -> set[str]:
    """The singular forms an English plural may have ("regions" -> "region", "cities" -> "city")."""
    if len(word) <= 3 or not word.endswith("s") or word.endswith("ss"):
        return set()
    forms = {word[:-1]}
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    elif word.endswith("es"):
        forms.add(word[:-2])
    return forms


def content_tokens(text: str) -> set[str]:
    return {t for t in tokenize([text])[0] if t}


# A sentence adding fewer content words than this to the question is connective text
# ("Here is what the documents say."), not a claim that needs a source.
CLAIM_MIN_NEW_WORDS = 3


def makes_claim(sentence: str, question_tokens: frozenset[str] | set[str] = frozenset()) -> bool:
    return len(content_tokens(sentence) - question_tokens) >= CLAIM_MIN_NEW_WORDS


def is_unicode_text(text: str) -> bool:
    """False for a string holding a lone surrogate: a JSON escape such as \\ud800, or bytes
    that were not UTF-8 in a command-line argument. Such text cannot be stored or shown."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Where a word is split over a line break: a soft hyphen, or a hyphen ending a line between letters.
_LINE_HYPHEN = re.compile(r"\u00ad\n?|(?<=[^\W\d_])-\n(?=[^\W\d_])")


def search_text(text: str) -> str:
    """`text` with words hyphenated across line breaks joined ("glaci-/ology" -> "glaciology"),
    for embedding and BM25 only: stored text and offsets stay as extracted."""
    return _LINE_HYPHEN.sub("", text)
