"""NQ-open RAG benchmark: does the LangChain pipeline's highlight raise the gold answer's log-probability?

Run from the repository root (about 10-25 minutes on 2 CPU cores with the default model):

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python integrations/benchmarks/nq_open_rag.py \\
        --data ../shared/data/nq-open-oracle.jsonl.gz --out docs/integrations/nq-open-rag.json

(``make bench-integrations`` runs it with the defaults.) The data file is the shared "Lost in the
Middle" NQ-open oracle set (see ``../shared/data/README.md``); it is read at run time, never copied
into the project, and nothing in the packages depends on it.

For each of the first ``--questions`` records: ``--passages`` passages (default 10) — its gold
passage at ``--gold-position`` (0-based, default 4: the middle) and gold passages of other questions
as distractors, drawn with a seeded RNG (``--seed``) from the whole file, skipping any that contain
one of the question's answers. Then the real LangChain pipeline:

    InMemoryVectorStore(SentenceTransformerEmbeddings())  # offline all-MiniLM-L6-v2
    -> similarity_search_with_score(question, k=passages) # every passage, with its score
    -> SekaHighlight(policy="top_k", k=3, order_by="position")
    -> ChatPromptTemplate -> messages as ChatSeka sends them to the engine

``order_by="position"`` keeps the passages in their original order (gold in the middle): the
retriever only decides which three are highlighted. The gold answer (the first of ``answers``) is
scored as the assistant's reply, with the highlights (steered) and with ``steer=False``
(unsteered: the same prompt and tokens, no key edit), by ``SekaModel.score`` on ChatSeka's model.
The answer is scored without a leading space: in a chat template the assistant turn starts on a new
line after the role header, so its first token carries no space.

Prints a table and writes JSON (configuration, summary, one row per question) to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "nq-open-oracle.jsonl.gz"
DEFAULT_OUT = REPO / "docs" / "integrations" / "nq-open-rag.json"

#: One passage is written as ``Document [i] (Title: ...) text`` (the Lost-in-the-Middle layout).
DOCUMENT_TEMPLATE = "Document [{index}] {content}"
SYSTEM = "You answer questions using the documents you are given."
HUMAN = (
    "Answer the question using the documents below. Reply with the answer only, in a few words.\n\n"
    "{context}\n\nQuestion: {question}"
)


# ------------------------------------------------------------------------------------------ contexts
@dataclass(frozen=True)
class Passage:
    title: str
    text: str
    is_gold: bool
    source: int  # index of the record whose gold passage this is

    @property
    def content(self) -> str:
        """The document text: title and passage, as embedded, shown and highlighted."""
        return f"(Title: {self.title}) {self.text}"


@dataclass
class Item:
    index: int
    question: str
    answers: list[str]
    passages: list[Passage]
    gold_position: int


def gold_passage(record: dict) -> tuple[str, str]:
    """(title, text) of a record's gold passage (the ``ctxs`` entry marked ``isgold``, else the first)."""
    ctxs = record.get("ctxs") or []
    if not ctxs:
        raise ValueError(f"record {record.get('question')!r} has no passage")
    gold = next((c for c in ctxs if c.get("isgold")), ctxs[0])
    return str(gold.get("title") or "").strip(), " ".join(str(gold["text"]).split())


def build_items(
    records: Sequence[dict],
    questions: int,
    *,
    passages: int = 10,
    gold_position: int = 4,
    seed: int = 0,
    first: int = 0,
) -> list[Item]:
    """The first ``questions`` records, each with ``passages`` passages and its gold one at ``gold_position``.

    Distractors are gold passages of *other* records (anywhere in ``records``), drawn without
    replacement by ``random.Random(seed * 1_000_003 + index)`` — so an item does not depend on how
    many questions are built — skipping passages equal to the gold one or containing one of the
    question's answers (case-insensitive), so exactly one passage answers the question.
    """
    if not 0 <= gold_position < passages:
        raise ValueError(f"gold_position must be in [0, {passages}), got {gold_position}")
    if first < 0 or first + questions > len(records):
        raise ValueError(f"asked for records {first}..{first + questions - 1}, the data has {len(records)} records")
    golds = [gold_passage(r) for r in records]
    items = []
    for index in range(first, first + questions):
        record = records[index]
        answers = [str(a) for a in record["answers"]]
        lowered = [a.lower() for a in answers if a.strip()]
        title, text = golds[index]
        rng = random.Random(seed * 1_000_003 + index)
        order = [j for j in range(len(records)) if j != index]
        rng.shuffle(order)
        distractors: list[Passage] = []
        seen = {(title, text)}
        for j in order:
            if len(distractors) == passages - 1:
                break
            d_title, d_text = golds[j]
            if (d_title, d_text) in seen:
                continue
            haystack = f"{d_title} {d_text}".lower()
            if any(a in haystack for a in lowered):
                continue
            seen.add((d_title, d_text))
            distractors.append(Passage(d_title, d_text, False, j))
        if len(distractors) < passages - 1:
            raise ValueError(f"question {index}: only {len(distractors)} usable distractors in the data")
        gold = Passage(title, text, True, index)
        items.append(Item(index, str(record["question"]), answers,
                          distractors[:gold_position] + [gold] + distractors[gold_position:], gold_position))
    return items


def read_records(path: str | Path) -> list[dict]:
    """Every record of a ``.jsonl`` or ``.jsonl.gz`` file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def source_state() -> dict[str, Any]:
    """The commit measured, and any uncommitted changes to the code that ran (engine and integrations)."""
    import subprocess

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "seka_rag", "integrations")
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted": dirty.splitlines()}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ pipeline
def documents_of(item: Item) -> list:
    from langchain_core.documents import Document

    return [
        Document(page_content=p.content, metadata={"position": i, "is_gold": p.is_gold, "source": p.source})
        for i, p in enumerate(item.passages)
    ]


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
    """``"shipped,scale:0.5,ada-attention"`` → {name: SekaModel.score keyword arguments}."""
    out: dict[str, dict[str, Any]] = {}
    for name in [v.strip() for v in text.split(",") if v.strip()]:
        if name == "shipped":
            out[name] = {}
        elif name.startswith("scale:"):
            out[name] = {"gain_scale": float(name.split(":", 1)[1])}
        elif name in ("ada-attention", "ada-embedding"):
            out[name] = {"router": name.split("-", 1)[1]}
        else:
            raise SystemExit(f"unknown variant {name!r}: use shipped, scale:X, ada-attention, ada-embedding")
    if not out:
        raise SystemExit("--variants is empty")
    return out


def resolve_variants(variants: dict[str, dict[str, Any]], model) -> dict[str, dict[str, Any]]:
    """Turn ``gain_scale`` into the model's gains times X; single-projection variants skip the experts."""
    out = {}
    meta = model.projection.meta if model.projection is not None else None
    for name, kw in variants.items():
        kw = dict(kw)
        if "gain_scale" in kw:
            x = kw.pop("gain_scale")
            kw.update(gain_pos=meta.gain_pos * x, gain_neg=meta.gain_neg * x)
        if "router" not in kw and model.experts is not None:
            kw["router"] = "projection"
        out[name] = kw
    return out


def summarize(deltas: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Share of positive deltas (with a bootstrap 95 % interval), mean and median delta."""
    from seka_rag.evaluation.stats import bootstrap_ci

    deltas = list(deltas)
    if not deltas:
        return {"n": 0, "rises": 0, "share_rises": None, "share_rises_ci95": None,
                "mean_delta": None, "median_delta": None}
    rises = [1.0 if d > 0 else 0.0 for d in deltas]
    lo, hi = bootstrap_ci(rises, n_boot=n_boot, seed=seed)
    return {
        "n": len(deltas),
        "rises": int(sum(rises)),
        "share_rises": sum(rises) / len(rises),
        "share_rises_ci95": [lo, hi],
        "mean_delta": statistics.fmean(deltas),
        "median_delta": statistics.median(deltas),
    }


def _fmt_row(label: str, s: dict) -> str:
    if not s["n"]:
        return f"{label:<28} {0:>4}       -        -                     -          -"
    lo, hi = s["share_rises_ci95"]
    return (f"{label:<28} {s['n']:>4} {s['rises']:>7} {s['share_rises']:>8.1%}  [{lo:.1%}, {hi:.1%}]"
            f" {s['mean_delta']:>+10.3f} {s['median_delta']:>+10.3f}")


def table(result: dict) -> str:
    cfg, summ = result["config"], result["summary"]
    lines = [
        f"NQ-open RAG, LangChain pipeline: {cfg['model']}, {cfg['questions']} questions x "
        f"{cfg['passages']} passages, gold at position {cfg['gold_position'] + 1}, top-{cfg['k']} by "
        f"retriever score highlighted",
        f"gold passage in the retriever's top {cfg['k']}: {summ['gold_in_top_k']['n']} of {cfg['questions']}",
        "log p(gold answer), steered - unsteered (nats):",
        f"{'questions':<28} {'n':>4} {'rises':>7} {'share':>8}  {'95% CI':<16} {'mean':>9} {'median':>10}",
        _fmt_row(f"gold in top {cfg['k']}", summ["gold_in_top_k"]),
        _fmt_row(f"gold not in top {cfg['k']}", summ["gold_not_in_top_k"]),
        _fmt_row("all", summ["all"]),
    ]
    share = summ["gold_in_top_k"]["share_rises"]
    if share is not None:
        verdict = "met" if share >= 0.8 else "NOT met"
        lines.append(f"target (rises for >= 80% where gold in top {cfg['k']}): {verdict} ({share:.1%})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    import torch
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.vectorstores import InMemoryVectorStore
    from tqdm.auto import tqdm

    from langchain_seka import ChatSeka, SekaHighlight, SentenceTransformerEmbeddings
    from langchain_seka._messages import to_engine_messages

    started = time.perf_counter()
    state = source_state()
    records = read_records(args.data)
    items = build_items(records, args.questions, passages=args.passages, gold_position=args.gold_position,
                        seed=args.seed, first=args.first)
    variants = parse_variants(args.variants)
    adaptive = any(v.get("router") in ("attention", "embedding") for v in variants.values())
    chat = ChatSeka(model=args.model, adaptive=adaptive)
    model = chat.seka_model()  # the shared model ChatSeka runs (loaded here, once)
    variants = resolve_variants(variants, model)
    embeddings = SentenceTransformerEmbeddings()
    highlight = SekaHighlight(policy="top_k", k=args.k, order_by="position", document_template=DOCUMENT_TEMPLATE)
    prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", HUMAN)])
    load_s = time.perf_counter() - started

    rows = []
    for item in tqdm(items, desc="questions", unit="q", file=sys.stderr):
        store = InMemoryVectorStore(embeddings)
        store.add_documents(documents_of(item))
        retrieved = store.similarity_search_with_score(item.question, k=args.passages)
        ranking = [doc.metadata["position"] for doc, _ in retrieved]
        gold_rank = ranking.index(item.gold_position)
        out = highlight.invoke({"question": item.question, "documents": retrieved})
        assert [d.metadata["position"] for d in out["documents"]] == list(range(args.passages))
        assert out["highlighted_documents"] == sorted(ranking[: args.k])
        messages = to_engine_messages(prompt.invoke(out).to_messages())
        answer = item.answers[0]
        unsteered = model.score(messages, [answer], steer=False)[0]
        by_variant = {name: model.score(messages, [answer], **kw)[0] - unsteered for name, kw in variants.items()}
        steered = unsteered + next(iter(by_variant.values()))
        enc = model.encode(messages)
        rows.append({
            "index": item.index,
            "question": item.question,
            "answer": answer,
            "gold_rank": gold_rank,
            "gold_in_top_k": gold_rank < args.k,
            "highlighted_positions": out["highlighted_documents"],
            "retriever_scores": [round(float(s), 6) for _, s in retrieved],
            "prompt_tokens": len(enc.input_ids),
            "highlighted_tokens": int(sum(enc.highlight)),
            "logp_unsteered": unsteered,
            "logp_steered": steered,
            "delta": steered - unsteered,
            "variant_deltas": by_variant,
        })

    top = [r["delta"] for r in rows if r["gold_in_top_k"]]
    rest = [r["delta"] for r in rows if not r["gold_in_top_k"]]
    proj = model.projection.meta if model.projection is not None else None
    return {
        "benchmark": "nq-open-rag",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {
            "model": model.model_id,
            "model_name": chat.model_name,
            "projection_layers": (proj.default_layers if proj and proj.default_layers is not None
                                  else (proj.layers if proj else None)),
            "gain_pos": proj.gain_pos if proj else None,
            "gain_neg": proj.gain_neg if proj else None,
            "device": str(model.device),
            "dtype": str(next(model.model.parameters()).dtype),
            "torch_threads": torch.get_num_threads(),
            "data": os.path.relpath(Path(args.data).resolve(), REPO),
            "data_sha256": file_sha256(args.data),
            "questions": args.questions,
            "first_record": args.first,
            "variants": args.variants,
            "passages": args.passages,
            "gold_position": args.gold_position,
            "k": args.k,
            "seed": args.seed,
            "retriever": "InMemoryVectorStore(SentenceTransformerEmbeddings()).similarity_search_with_score",
            "highlight": f"SekaHighlight(policy='top_k', k={args.k}, order_by='position')",
            "document_template": DOCUMENT_TEMPLATE,
            "system": SYSTEM,
            "human": HUMAN,
            "answer_scoring": "first of answers, as the assistant's reply, no leading space; log p summed over its tokens",
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "variants": {name: {"steering": kw,
                             "gold_in_top_k": summarize([r["variant_deltas"][name] for r in rows if r["gold_in_top_k"]]),
                             "all": summarize([r["variant_deltas"][name] for r in rows])}
                     for name, kw in variants.items()},
        "summary": {
            "gold_in_top_k": summarize(top),
            "gold_not_in_top_k": summarize(rest),
            "all": summarize(top + rest),
            "target_share": 0.8,
        },
        "source": {**state, "seka_rag": str(Path(sys.modules["seka_rag"].__file__).parent)},
        "note": args.note,
        "timing_s": {"load": round(load_s, 1), "total": round(time.perf_counter() - started, 1)},
        "rows": rows,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="NQ-open oracle JSONL(.gz) (default: ../shared/data/nq-open-oracle.jsonl.gz from the repo root)")
    p.add_argument("--model", default=None,
                   help="shared model name for ChatSeka (default: the default embedded model, qwen2.5-coder-0.5b)")
    p.add_argument("--questions", type=int, default=100, help="N records from --first (default 100)")
    p.add_argument("--first", type=int, default=0,
                   help="index of the first record (default 0: the test questions; e.g. 100 for dev questions)")
    p.add_argument("--variants", default="shipped",
                   help="steering variants scored side by side, comma-separated: shipped (the model's defaults), "
                        "scale:X (both gains times X), ada-attention, ada-embedding; the first is the headline")
    p.add_argument("--passages", type=int, default=10, help="passages per question (default 10)")
    p.add_argument("--gold-position", type=int, default=4, help="0-based position of the gold passage (default 4)")
    p.add_argument("--k", type=int, default=3, help="highlight the top k passages by retriever score (default 3)")
    p.add_argument("--seed", type=int, default=0, help="distractor sampling seed (default 0)")
    p.add_argument("--note", default=None, help="free text stored in the JSON (the conditions of the run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (default docs/integrations/nq-open-rag.json)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"no data file at {args.data}: pass --data (see ../shared/data/README.md)")
    result = run(args)
    print(table(result))
    print(f"({result['timing_s']['total']:.0f} s; model load {result['timing_s']['load']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
