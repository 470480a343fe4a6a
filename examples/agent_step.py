"""An agent step with SEKA: highlight the tool result that the next step must use.

Run: python examples/agent_step.py [--model smollm2-135m] [--projection FILE]

A small tool flow in plain Python (no LangGraph): the customer asks for a price, a planner picks the
price tool, the tool answers — and then the customer's follow-up repeats an outdated price. The next
step must answer from the tool result, not from the customer's memory. The chain component
``highlight_tool_results`` marks the content of the tool's message, so

    highlight_tool_results | ChatSeka(...)

steers the model's attention to it. Without steering the model does not answer from the tool
result: it repeats the customer's outdated figure, or (as the default model does here, having seen
its own earlier call in the history as a ``<tool_call>`` block) starts another tool call.
"""

from __future__ import annotations

import time

from _common import parse_args, run, side_by_side
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from langchain_seka import ChatSeka
from seka_rag import mark_highlight

PRICES = {"desk lamp": 12, "office chair": 85}


@tool
def price_lookup(item: str) -> str:
    """Current price of an item in the shop."""
    return f"The {item} costs {PRICES[item]} euros (current price list)."


TOOLS = {"price_lookup": price_lookup}


def plan(question: str) -> dict | None:
    """Step 1 — a tiny rule-based planner: a price question → a price_lookup call."""
    for item in PRICES:
        if item in question.lower() and ("price" in question.lower() or "cost" in question.lower()):
            return {"name": "price_lookup", "args": {"item": item}, "id": "call_1", "type": "tool_call"}
    return None


def highlight_tool_results(messages: list[BaseMessage], tools: tuple[str, ...] = ("price_lookup",)) -> list[BaseMessage]:
    """Chain component: wrap the content of the named tools' messages in highlight markers."""
    out = []
    for message in messages:
        if isinstance(message, ToolMessage) and message.name in tools and message.content.strip():
            # the whole result is highlighted; marker strings inside it are escaped
            message = message.model_copy(update={"content": mark_highlight(message.content)})
        out.append(message)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = time.perf_counter()
    chat = ChatSeka(model=args.model, max_tokens=24)
    answer_step = RunnableLambda(highlight_tool_results) | chat
    baseline_step = RunnableLambda(highlight_tool_results) | chat.bind(steer=False)

    question = "What is the price of the desk lamp?"
    messages: list[BaseMessage] = [
        SystemMessage("You are a shop assistant. Always quote the current price."),
        HumanMessage(question),
    ]
    call = plan(question)                                       # step 1: plan
    messages.append(AIMessage("Let me check the price list.", tool_calls=[call]))
    messages.append(TOOLS[call["name"]].invoke(call))          # step 2: act (a ToolMessage)
    messages.append(HumanMessage(                               # the conversation goes on
        "Last year you told me the desk lamp costs 20 euros. I would like to buy two. "
        "What is the price of one desk lamp?"
    ))
    print(f"tool result: {messages[3].content}")
    print(f"customer:    {messages[4].content}\n")
    steered = answer_step.invoke(messages).content             # step 3: answer from the tool result
    unsteered = baseline_step.invoke(messages).content
    print(side_by_side(steered, unsteered))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    run(main)
