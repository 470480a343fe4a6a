"""LangChain's own standard test suites (``langchain-tests``) run against ChatSeka.

Both suites use a tiny random model registered under a name, so they are fast: the standard
integration tests check the structure of what the model returns (messages, chunks, usage metadata,
batching, async, stop sequences, per-call model override), not its content. Capability flags are set
honestly: usage metadata with token counts — yes; tool calling, structured output, JSON mode,
image / audio / PDF / video inputs — not supported (those tests skip).
"""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_seka import ChatSeka, register_model, unregister_model


@pytest.fixture(scope="module", autouse=True)
def _standard_models(helpers, tokenizer):
    """Two tiny models under shared names: the suite's model and its per-call override."""
    register_model("tiny-standard", helpers.build_tiny_model("llama", tokenizer, seed=5))
    register_model("tiny-standard-override", helpers.build_tiny_model("qwen2", tokenizer, seed=6))
    yield
    unregister_model("tiny-standard")
    unregister_model("tiny-standard-override")


class _Flags:
    @property
    def chat_model_class(self) -> type[ChatSeka]:
        return ChatSeka

    @property
    def returns_usage_metadata(self) -> bool:
        return True  # input / output / total token counts

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return True  # invoke(..., model="other-shared-model")

    @property
    def model_override_value(self) -> str:
        return "tiny-standard-override"

    # ChatSeka overrides bind_tools / with_structured_output only to say clearly that they are not
    # supported, so the flags the suite would derive from those overrides are set here: those tests skip.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


class TestChatSekaStandardUnit(_Flags, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        # an embedded model's name: construction must not load it (test_init_time builds 10 of them)
        return {"model": "smollm2-135m"}


class TestChatSekaStandardIntegration(_Flags, ChatModelIntegrationTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": "tiny-standard", "max_tokens": 8}
