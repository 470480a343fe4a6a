"""Where keys live in each supported architecture: one table, nothing else.

SEKA edits key vectors *before* RoPE. In every supported family that point is either the
output of ``k_proj`` (a flat ``(batch, tokens, kv_heads * head_dim)`` tensor) or the output of
``k_norm`` where the family normalises keys per head. The tensor layout differs by family, so the
table records it; the steering hook reshapes accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from .errors import UnsupportedModelError

#: Layout of the tensor a key/query module outputs.
#: ``flat``: (batch, tokens, heads * head_dim); ``bthd``: (batch, tokens, heads, head_dim);
#: ``bhtd``: (batch, heads, tokens, head_dim).
Layout = Literal["flat", "bthd", "bhtd"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """Module names and tensor layout of one model family."""

    layer_paths: tuple[str, ...]  #: candidate dotted paths to the decoder layer list
    key_module: str  #: dotted path, inside a decoder layer, of the module whose output is the key
    key_layout: Layout
    query_module: str  #: same for the query (AdaSEKA's router reads it)
    query_layout: Layout
    text_config_attr: str | None = None  #: where the text config lives on a multimodal config


_STANDARD = dict(
    layer_paths=("model.layers",),
    key_module="self_attn.k_proj",
    key_layout="flat",
    query_module="self_attn.q_proj",
    query_layout="flat",
)

#: ``config.model_type`` → where its keys live. Every supported family, in one place.
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": ArchitectureSpec(**_STANDARD),  # Llama, SmolLM2
    "mistral": ArchitectureSpec(**_STANDARD),
    "qwen2": ArchitectureSpec(**_STANDARD),  # Qwen2, Qwen2.5, Qwen2.5-Coder
    "qwen3": ArchitectureSpec(
        layer_paths=("model.layers",),
        key_module="self_attn.k_norm",
        key_layout="bthd",
        query_module="self_attn.q_norm",
        query_layout="bthd",
    ),
    "gemma3_text": ArchitectureSpec(
        layer_paths=("model.layers",),
        key_module="self_attn.k_norm",
        key_layout="bhtd",
        query_module="self_attn.q_norm",
        query_layout="bhtd",
    ),
    "gemma3": ArchitectureSpec(  # multimodal wrapper: the text decoder sits inside
        layer_paths=("model.language_model.layers", "language_model.model.layers"),
        key_module="self_attn.k_norm",
        key_layout="bhtd",
        query_module="self_attn.q_norm",
        query_layout="bhtd",
        text_config_attr="text_config",
    ),
}


@dataclass(frozen=True)
class ModelGeometry:
    """What steering needs to know about one loaded model."""

    model_type: str
    num_layers: int
    num_kv_heads: int
    num_query_heads: int
    head_dim: int
    spec: ArchitectureSpec


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values SEKA can steer (every architecture in :data:`ARCHITECTURES`)."""
    return sorted(ARCHITECTURES)


def spec_for(model_type: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported model types: "
            f"{', '.join(supported_model_types())}"
        ) from None


def text_config(config):
    """The language-model part of a (possibly multimodal) config."""
    spec = spec_for(config.model_type)
    if spec.text_config_attr:
        return getattr(config, spec.text_config_attr)
    return config


def geometry(model: nn.Module) -> ModelGeometry:
    """Read the layer count, head counts and head size of a loaded model."""
    config = model.config
    spec = spec_for(getattr(config, "model_type", type(model).__name__))
    tc = text_config(config)
    n_q = tc.num_attention_heads
    n_kv = getattr(tc, "num_key_value_heads", None) or n_q
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // n_q
    return ModelGeometry(
        model_type=config.model_type,
        num_layers=len(decoder_layers(model)),
        num_kv_heads=n_kv,
        num_query_heads=n_q,
        head_dim=head_dim,
        spec=spec,
    )


def _resolve(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a supported model."""
    spec = spec_for(model.config.model_type)
    for path in spec.layer_paths:
        layers = _resolve(model, path)
        if isinstance(layers, nn.ModuleList):
            return layers
    # a bare base model (e.g. Qwen2Model) holds its layers directly
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    raise UnsupportedModelError(
        f"could not find the decoder layers of {type(model).__name__} "
        f"(looked at {', '.join(spec.layer_paths)})"
    )


def layer_module(layer: nn.Module, dotted: str) -> nn.Module:
    """The submodule at ``dotted`` (e.g. ``"self_attn.k_proj"``) of a decoder layer, or a clear error."""
    module = _resolve(layer, dotted)
    if module is None:
        raise UnsupportedModelError(f"{type(layer).__name__} has no module {dotted!r}")
    return module
