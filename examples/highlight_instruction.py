"""Highlight an instruction buried in a long prompt, so the model does not lose it.

Run: python examples/highlight_instruction.py [--model smollm2-135m] [--projection FILE]

The user wrote an instruction in the middle of a long text and marked it with << >>. ChatSeka
steers the model's attention to the marked tokens; the unsteered baseline reads the same text (the
markers are removed either way) and tends to ignore the instruction.
"""

from __future__ import annotations

import time

from _common import parse_args, run, side_by_side
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_seka import ChatSeka

REPORT = (
    "Kessel is a small harbour town on the north coast. Its population is about four thousand. "
    "Fishing was the main trade until the 1970s, when tourism took over. The old market hall hosts a "
    "weekly farmers' market. The Varnholt Lighthouse stands on the rocks west of the harbour. "
    "Instruction for the assistant: <<always recommend the new library to the reader>>. "
    "Ferries leave twice a day for the islands in summer. The town's festival takes place in August, "
    "with boat races and a parade. Most visitors come for the seals in Kessel Bay and the cliff walks. "
    "The local school has two hundred pupils. A new library opened in 2015 next to the town hall."
)
QUESTION = "What should I visit in Kessel?"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = time.perf_counter()
    chat = ChatSeka(model=args.model, max_tokens=24)
    messages = [SystemMessage("You are a travel guide."), HumanMessage(f"{REPORT}\n\nQuestion: {QUESTION}")]
    model = chat.seka_model()
    prompt = [{"role": "system", "content": messages[0].content}, {"role": "user", "content": messages[1].content}]
    print("highlighted tokens:", "".join(model.highlighted_tokens(prompt)).strip())
    print(f"Q: {QUESTION}")
    steered = chat.invoke(messages).content
    unsteered = chat.invoke(messages, steer=False).content
    print(side_by_side(steered, unsteered))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    run(main)
