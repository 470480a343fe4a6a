"""Standard constructor arguments of hosted LangChain models, accepted as no-ops by the in-process ones."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class HostedModelArguments(BaseModel):
    """``timeout``, ``max_retries``, ``api_key`` and ``base_url``: accepted, documented, no effect.

    Generation runs in process (nothing to time out or retry) and there is no service to address.
    """

    model_config = ConfigDict(
        populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid"
    )

    timeout: float | None = Field(default=None, description="Accepted for compatibility; no effect.")
    max_retries: int | None = Field(default=None, description="Accepted for compatibility; no effect.")
    api_key: SecretStr | None = Field(default=None, description="Accepted for compatibility; no effect.")
    base_url: str | None = Field(default=None, description="Accepted for compatibility; no effect.")
