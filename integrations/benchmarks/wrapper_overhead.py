"""Wrapper overhead: LangChain ``ChatSeka`` and LlamaIndex ``Seka`` vs calling ``SekaModel.generate`` directly.

Run from the repository root (a few minutes on 2 CPU cores with the default model):

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python integrations/benchmarks/wrapper_overhead.py \\
        --out docs/integrations/wrapper-overhead.json

One process, one shared model, one RAG prompt (a system message and a user message holding six
made-up documents, one highlighted, and a question; a few hundred tokens), greedy decoding of
``--max-new-tokens`` tokens everywhere. Six arms, each a complete call returning the answer text:

* ``engine messages``       ``model.generate(messages, highlights=[evidence], max_new_tokens=n)``
* ``engine messages (A/A)`` the same call again: the control, its ratio shows the noise level
* ``ChatSeka.invoke``       ``ChatSeka(...).invoke(LangChain messages, highlights=[evidence])``
* ``Seka.chat``             LlamaIndex ``Seka(...).chat(ChatMessages with the evidence in << >>)``
* ``engine text``           ``model.generate(text with the evidence in << >>, max_new_tokens=n)``
* ``Seka.complete``         LlamaIndex ``Seka(...).complete(the same text)``

The wrappers are compared with the engine call that sees the same prompt and highlight (the two
chat wrappers with ``engine messages``, ``Seka.complete`` with ``engine text``). After
``--warmup`` rounds, ``--runs`` rounds each run every arm once, in an order rotated every round
(A, B, C, ... then B, C, ..., A), so drifting machine load hits every arm alike. Reported per arm:
the median wall time, the ratio of medians to the reference engine arm, the median of the per-round
paired ratios, and the wrapper's own time (the call's wall time minus the time spent inside
``SekaModel.generate``, measured in the same call), which does not depend on the noise of the model
run. Every arm's output text must equal its reference's in every run (checked; a mismatch is an
error). Prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "docs" / "integrations" / "wrapper-overhead.json"

DOCUMENTS = [
    "The Varnholt Lighthouse stands on the northern tip of Kessel Island. It was built of local granite "
    "and its lamp can be seen from twenty nautical miles away on a clear night.",
    "Harbour records show that the Varnholt Lighthouse was completed in 1902, after two winters of "
    "delays caused by storms that washed away the builders' scaffolding.",
    "A tourist leaflet claims that the lighthouse was built in 1887, but the leaflet also places the "
    "island in the wrong bay and gives the ferry times of another harbour.",
    "The Varnholt ferry runs twice a day in summer and once a day in winter. Tickets can be bought on "
    "board, and bicycles travel free of charge outside the holiday weeks.",
    "Kessel Bay is known for its seals and its cold water. Fishing boats from three villages share the "
    "bay, and a small museum on the quay tells the story of the herring trade.",
    "The keeper's cottage next to the lighthouse was restored in 1998 and now holds a café that opens "
    "from May to September, with a view over the rocks where the seals rest.",
]
EVIDENCE_INDEX = 1
QUESTION = "In which year was the Varnholt Lighthouse completed? Answer with the year and one sentence."
SYSTEM = "You answer questions using the documents you are given."

ARMS = ("engine messages", "engine messages (A/A)", "ChatSeka.invoke", "Seka.chat", "engine text", "Seka.complete")
REFERENCE = {
    "engine messages (A/A)": "engine messages",
    "ChatSeka.invoke": "engine messages",
    "Seka.chat": "engine messages",
    "Seka.complete": "engine text",
}


def user_content(marked: bool) -> str:
    """The user message: the documents (the evidence wrapped in << >> when ``marked``) and the question."""
    docs = []
    for i, text in enumerate(DOCUMENTS):
        body = f"<<{text}>>" if marked and i == EVIDENCE_INDEX else text
        docs.append(f"Document {i + 1}: {body}")
    return "\n".join(docs) + f"\n\nQuestion: {QUESTION}"


class GenerateTimer:
    """Wraps a model's ``generate`` (as an instance attribute) and adds up the time spent inside it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inner = 0.0
        self._original = model.generate

    def __enter__(self) -> "GenerateTimer":
        original = self._original

        def generate(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.inner += time.perf_counter() - t0

        self.model.generate = generate
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model.generate  # back to the class method


def make_arms(model_name: str | None, max_new_tokens: int) -> tuple[Any, dict[str, Callable[[], str]]]:
    from langchain_core.messages import HumanMessage, SystemMessage
    from llama_index.core.llms import ChatMessage

    from langchain_seka import ChatSeka
    from llama_index.llms.seka import Seka

    chat = ChatSeka(model=model_name, max_tokens=max_new_tokens)
    llm = Seka(model=model_name, max_new_tokens=max_new_tokens)
    model = chat.seka_model()
    assert llm.seka_model() is model, "ChatSeka and Seka must share one model"

    evidence = DOCUMENTS[EVIDENCE_INDEX]
    clean, marked = user_content(False), user_content(True)
    engine_messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": clean}]
    lc_messages = [SystemMessage(SYSTEM), HumanMessage(clean)]
    li_messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=marked)]
    arms: dict[str, Callable[[], str]] = {
        "engine messages": lambda: model.generate(engine_messages, [evidence], max_new_tokens=max_new_tokens),
        "engine messages (A/A)": lambda: model.generate(engine_messages, [evidence], max_new_tokens=max_new_tokens),
        "ChatSeka.invoke": lambda: chat.invoke(lc_messages, highlights=[evidence]).content,
        "Seka.chat": lambda: llm.chat(li_messages).message.content,
        "engine text": lambda: model.generate(marked, max_new_tokens=max_new_tokens),
        "Seka.complete": lambda: llm.complete(marked).text,
    }
    # the marked text and the substring highlight cover the same tokens
    by_substring = model.encode(engine_messages, [evidence])
    by_markers = model.encode([engine_messages[0], {"role": "user", "content": marked}])
    assert (by_substring.input_ids, by_substring.highlight) == (by_markers.input_ids, by_markers.highlight)
    return model, arms


def measure(arms: dict[str, Callable[[], str]], model: Any, runs: int, warmup: int,
            progress: bool = True) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, set[str]]]:
    """Wall and inner (``generate``) seconds per arm per timed round, and the texts each arm produced."""
    from tqdm.auto import tqdm

    names = list(arms)
    wall: dict[str, list[float]] = {n: [] for n in names}
    inner: dict[str, list[float]] = {n: [] for n in names}
    texts: dict[str, set[str]] = {n: set() for n in names}
    for r in tqdm(range(warmup + runs), desc="rounds", unit="round", file=sys.stderr, disable=not progress):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            with GenerateTimer(model) as timer:
                t0 = time.perf_counter()
                text = arms[name]()
                elapsed = time.perf_counter() - t0
            texts[name].add(text)
            if r >= warmup:
                wall[name].append(elapsed)
                inner[name].append(timer.inner)
    return wall, inner, texts


def summarize(wall: dict[str, list[float]], inner: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, times in wall.items():
        own = [w - i for w, i in zip(times, inner[name])]
        row: dict[str, Any] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "own_median_ms": 1000 * statistics.median(own),
            "inner_median_s": statistics.median(inner[name]),
        }
        ref = REFERENCE.get(name)
        if ref is not None:
            ref_times = wall[ref]
            row["reference"] = ref
            row["ratio_of_medians"] = row["median_s"] / statistics.median(ref_times)
            row["median_paired_ratio"] = statistics.median(a / b for a, b in zip(times, ref_times))
            row["own_share_of_reference"] = statistics.median(own) / statistics.median(ref_times)
        out[name] = row
    return out


def table(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Wrapper overhead: {cfg['model']}, {cfg['prompt_tokens']}-token prompt ({cfg['highlighted_tokens']} "
        f"highlighted), greedy, {cfg['max_new_tokens']} new tokens, {cfg['runs']} interleaved runs after "
        f"{cfg['warmup']} warm-up, {cfg['torch_threads']} torch thread(s)",
        f"{'arm':<24} {'median s':>9} {'vs':<17} {'ratio':>7} {'paired':>7} {'own ms':>8} {'own %':>7}",
    ]
    for name, row in result["arms"].items():
        if "reference" in row:
            lines.append(
                f"{name:<24} {row['median_s']:>9.3f} {row['reference']:<17} {row['ratio_of_medians']:>7.3f} "
                f"{row['median_paired_ratio']:>7.3f} {row['own_median_ms']:>8.1f} {100 * row['own_share_of_reference']:>6.2f}%"
            )
        else:
            lines.append(f"{name:<24} {row['median_s']:>9.3f} {'':<17} {'':>7} {'':>7} {row['own_median_ms']:>8.1f}")
    lines.append(f"every wrapper's output identical to its engine reference in every run: {result['outputs_identical']}")
    for name in ("engine messages", "engine text"):
        lines.append(f"  {name}: {result['outputs'][name]!r}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    import torch

    started = time.perf_counter()
    load_before = os.getloadavg()
    model, arms = make_arms(args.model, args.max_new_tokens)
    wall, inner, texts = measure(arms, model, args.runs, args.warmup)
    load_after = os.getloadavg()
    outputs = {name: sorted(t) for name, t in texts.items()}
    identical = all(len(t) == 1 for t in outputs.values()) and all(
        outputs[name] == outputs[ref] for name, ref in REFERENCE.items()
    )
    enc = model.encode([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_content(True)}])
    result = {
        "benchmark": "wrapper-overhead",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "model": model.model_id,
            "device": str(model.device),
            "dtype": str(next(model.model.parameters()).dtype),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "prompt_tokens": len(enc.input_ids),
            "highlighted_tokens": int(sum(enc.highlight)),
            "max_new_tokens": args.max_new_tokens,
            "runs": args.runs,
            "warmup": args.warmup,
            "order": "rotated by one arm every round",
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "conditions": {
            "note": args.note,
            "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
            "loadavg_1_5_15_after": [round(x, 2) for x in load_after],
        },
        "outputs_identical": identical,
        "outputs": {name: t[0] if len(t) == 1 else t for name, t in outputs.items()},
        "arms": summarize(wall, inner),
        "raw_wall_s": wall,
        "raw_inner_s": inner,
        "timing_s": {"total": round(time.perf_counter() - started, 1)},
    }
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="shared model name (default: the default embedded model)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--runs", type=int, default=12, help="timed rounds (default 12: two full rotations of 6 arms)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--note", default=None, help="free text stored in the JSON (the conditions of the run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.runs < 7:
        p.error("--runs must be at least 7")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    print(f"({result['timing_s']['total']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if not result["outputs_identical"]:
        raise SystemExit("a wrapper's output differs from the engine's (see 'outputs' in the JSON)")
    return result


if __name__ == "__main__":
    main()
