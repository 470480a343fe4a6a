"""Steered vs unsteered answers with the embedded offline model.

Run: python examples/demo.py [model-name]    (default: qwen2.5-coder-0.5b; also smollm2-135m)

Each prompt holds two documents that disagree. The one between << and >> is highlighted: SEKA edits
its key vectors so the model attends to it, and the answer follows it, even against what the model
believes (the Australia cases).
"""

import argparse

from _common import run

from seka_rag import SekaModel

PROMPTS = [
    "Document 1: The Halvorsen Bridge was completed in 1931.\n"
    "Document 2: <<The Halvorsen Bridge was completed in 1958.>>\n\n"
    "Question: In which year was the Halvorsen Bridge completed? Answer with the year only.",
    "Document 1: <<The Halvorsen Bridge was completed in 1931.>>\n"
    "Document 2: The Halvorsen Bridge was completed in 1958.\n\n"
    "Question: In which year was the Halvorsen Bridge completed? Answer with the year only.",
    "Document 1: <<The capital of Australia is Sydney.>>\n"
    "Document 2: The capital of Australia is Canberra.\n\n"
    "Question: What is the capital of Australia? Answer with one word.",
    "Document 1: The capital of Australia is Sydney.\n"
    "Document 2: <<The capital of Australia is Canberra.>>\n\n"
    "Question: What is the capital of Australia? Answer with one word.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description="Steered vs unsteered answers with an embedded offline model.")
    parser.add_argument("model", nargs="?", default="qwen2.5-coder-0.5b",
                        help="embedded model: qwen2.5-coder-0.5b (default) or smollm2-135m")
    model = SekaModel.default(parser.parse_args().model)
    print(f"{model}\n")
    for prompt in PROMPTS:
        highlighted = "".join(model.highlighted_tokens(prompt)).strip()
        unsteered = model.generate(prompt, steer=False, max_new_tokens=10).strip()
        steered = model.generate(prompt, max_new_tokens=10).strip()
        print(f"highlighted: {highlighted}")
        print(f"  unsteered: {unsteered}")
        print(f"  steered:   {steered}\n")


if __name__ == "__main__":
    run(main)  # a misspelt model name: one line, not a traceback
