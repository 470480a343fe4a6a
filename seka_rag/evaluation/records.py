"""Reading the evaluation's data files: a JSON list of records, or JSON lines (``.gz`` too).

Every problem with a file is one :class:`ValueError` that names the file and, for JSON lines, the
line: the command line prints it as one error line.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any


def read_records(path: str | os.PathLike, *, json_list: bool = True) -> list[dict[str, Any]]:
    """The records (JSON objects) of ``path``: one JSON object per line, or — with ``json_list`` — a JSON
    list of objects. ``.gz`` files are decompressed; a UTF-8 byte-order mark is accepted."""
    path = Path(path).expanduser()
    compressed = path.suffix == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        kind = "gzip-compressed UTF-8 text" if compressed else "UTF-8 text"
        raise ValueError(f"{path}: cannot be read as {kind} ({exc})") from None
    stripped = text.lstrip()
    # lines end at "\n" only: JSON strings may hold U+2028 and other characters str.splitlines() splits on
    lines = [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    expected = "a JSON list of records or one JSON object per line" if json_list else "one JSON object per line"
    data = None
    if stripped.startswith("[") or (stripped.startswith("{") and len(lines) > 1):
        try:  # a list, or one object over several lines (pretty-printed); else JSON lines
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if stripped.startswith("["):
                raise ValueError(f"{path}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from None
    if data is not None:
        if isinstance(data, dict):
            lists = [k for k, v in data.items() if isinstance(v, list)]
            hint = f" (its {lists[0]!r} key holds a list: save that list as the file)" if lists else ""
            raise ValueError(f"{path}: one JSON object; expected {expected}{hint}")
        if not json_list:
            raise ValueError(f"{path}: a JSON list; expected {expected}")
    else:
        data = []
        for number, line in lines:
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg}, column {exc.colno}); "
                                 f"expected {expected}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected {expected}")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            where = f"line {lines[index][0]}" if not stripped.startswith("[") else f"record {index}"
            raise ValueError(f"{path}: {where} is {_json_kind(record)}, not a JSON object; expected {expected}")
    return data


def _json_kind(value: Any) -> str:
    """``value`` as JSON names it: ``null``, ``a number (3)``, ``a JSON array ([1, 2])``..."""
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
            else "a string" if isinstance(value, str) else "a JSON array")
    return f"{kind} ({text})"
