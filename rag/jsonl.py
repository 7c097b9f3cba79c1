"""The one reader of JSON Lines files people give us: question sets, BEIR corpora."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.errors import BadInputError


def read_json_lines(path: Path, plain_text: bool = False, missing: str | None = None) -> Iterator[tuple[int, str, Any]]:
    """(line number, line, parsed value) for each non-blank line of a UTF-8 JSON Lines file.
    With `plain_text`, a line that does not start with `{` is a value of its own (a string).
    Problems are one-line BadInputErrors naming the file and line; `missing` is the message
    for a file that does not exist."""
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.rstrip(b"\r\n").decode("utf-8")
                except UnicodeDecodeError:
                    raise BadInputError(f"{path}:{number}: not UTF-8 text") from None
                if not line.strip():
                    continue
                if plain_text and not line.lstrip().startswith("{"):
                    yield number, line, line
                    continue
                try:
                    yield number, line, json.loads(line)
                except ValueError:
                    raise BadInputError(f"{path}:{number}: not valid JSON") from None
    except FileNotFoundError:
        raise BadInputError(missing or f"no such file: {path}") from None
    except IsADirectoryError:
        raise BadInputError(f"{path} is a folder, not a JSON Lines file") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from None
