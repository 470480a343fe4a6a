"""Shared command line, error handling and printing for the examples (not part of the library)."""

from __future__ import annotations

import argparse
import os
import textwrap
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2-135m",
                        help="embedded model: smollm2-135m (default, fastest) or qwen2.5-coder-0.5b")
    parser.add_argument("--projection", help="projection file (default: the one shipped for the model)")
    args = parser.parse_args()
    if args.projection:
        # load once with this projection and share it under the model's name
        from langchain_seka import register_model

        from seka_rag import SekaModel

        register_model(args.model, SekaModel.default(args.model, projection=args.projection))
    return args


def side_by_side(steered: str, unsteered: str, width: int = 38) -> str:
    left = textwrap.wrap(" ".join(steered.split()), width) or [""]
    right = textwrap.wrap(" ".join(unsteered.split()), width) or [""]
    rows = [f"  {'steered':<{width}} | unsteered", f"  {'-' * width}-+-{'-' * width}"]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        rows.append(f"  {a:<{width}} | {b}")
    return "\n".join(rows)


def run(main: Callable[[], None]) -> None:
    """Run an example's ``main``; a seka-rag error (a misspelt model name, a projection built for another
    model) ends it with that one line instead of a traceback."""
    from seka_rag import SekaError

    try:
        main()
    except SekaError as exc:
        raise SystemExit(f"error: {exc}") from None
