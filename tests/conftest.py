"""Shared fixtures for the unit tests: an offline tokenizer, tiny seeded models of every family, projections.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in milliseconds on a
built-in corpus, and the models are built from configs with seeded random weights.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager

import pytest
import torch

from seka_rag import Projection, ProjectionMeta, SekaModel
from seka_rag.architectures import decoder_layers, layer_module

# Tiny models gain nothing from intra-op threads; one thread keeps the suite fast on a busy machine.
torch.set_num_threads(1)

#: Every supported family, by ``config.model_type``.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nWhere is the tower?",
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Answer the question using only the highlighted document. Ignore the other documents.",
    "You are a helpful assistant. The user asks a question and the assistant answers it.",
    "Markdown **bold** text, <<markers>> and \\<<escaped markers\\>> appear in prompts.",
    "The quick brown fox jumps over the lazy dog 0123456789 times, said the system.",
    "Alice met Bob in London on Monday; Carol met Dave in Berlin on Friday.",
]
_SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(chat_template: str | None = CHATML_TEMPLATE, *, trim_offsets: bool = False):
    """A fast byte-level BPE tokenizer with offsets, BOS added by the post-processor, built offline.

    By default offsets are not trimmed, like the converted Qwen2.5 / SmolLM2 tokenizers (a token
    ``' tower'`` covers its leading space); ``trim_offsets=True`` mimics GPT-2 style tokenizers whose
    ByteLevel post-processor trims spaces from offsets (a lone-space token then has an empty offset).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 4, trainer)
    bos = tk.token_to_id("<s>")
    template = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    if trim_offsets:
        tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=True), template])
    else:
        tk.post_processor = template
    kwargs = dict(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat_template is not None:
        kwargs["chat_template"] = chat_template
    return PreTrainedTokenizerFast(**kwargs)


@pytest.fixture(scope="session")
def tokenizer():
    """Tokenizer with a ChatML-like chat template (shared: do not mutate)."""
    return make_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer():
    """Same vocabulary, no chat template (shared: do not mutate)."""
    return make_tokenizer(chat_template=None)


# ---------------------------------------------------------------------------------------- models
def _tiny_config(family: str, vocab_size: int, num_layers: int, attn_implementation: str):
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    # gemma3: alternate local (sliding) and global layers so both rotary tables are exercised
    gemma_layers = [("sliding_attention" if i % 2 == 0 else "full_attention") for i in range(num_layers)]
    gemma = dict(query_pre_attn_scalar=16, sliding_window=512, layer_types=gemma_layers)
    if family == "llama":
        cfg, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif family == "mistral":
        cfg, cls = tf.MistralConfig(**common, sliding_window=None), tf.MistralForCausalLM
    elif family == "qwen2":
        cfg, cls = tf.Qwen2Config(**common), tf.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = tf.Qwen3Config(**common), tf.Qwen3ForCausalLM
    elif family == "gemma3_text":
        cfg, cls = tf.Gemma3TextConfig(**common, **gemma), tf.Gemma3ForCausalLM
    elif family == "gemma3":
        text = tf.Gemma3TextConfig(**common, **gemma)
        vision = tf.SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=28, patch_size=14,
        )
        cfg = tf.Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=4,
            # image tokens outside the tokenizer's vocabulary: text prompts never contain them
            boi_token_index=vocab_size + 1, eoi_token_index=vocab_size + 2, image_token_index=vocab_size + 3,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
        )
        cls = tf.Gemma3ForConditionalGeneration
    else:
        raise ValueError(family)
    cfg._attn_implementation = attn_implementation
    return cfg, cls


def _reinit(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights large enough that attention is sharp and logits are far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            else:  # norms and biases: keep the default centre, add a little noise
                p.add_(0.1 * noise)


def random_projection(
    geom,
    *,
    seed: int = 0,
    layers=None,
    head_mask=None,
    gain_pos: float = 2.0,
    gain_neg: float = 0.5,
    default_layers=None,
    model_id: str = "tiny",
    **extra,
) -> Projection:
    """A valid projection with random symmetric P+ = U diag(keep) Uᵀ and P- likewise."""
    layers = list(range(geom.num_layers)) if layers is None else list(layers)
    n, h, d = len(layers), geom.num_kv_heads, geom.head_dim
    gen = torch.Generator().manual_seed(seed)
    u_pos, _ = torch.linalg.qr(torch.randn(n, h, d, d, generator=gen))
    u_neg, _ = torch.linalg.qr(torch.randn(n, h, d, d, generator=gen))
    idx = torch.arange(d)
    keep_pos = (idx < d // 2).float()
    keep_neg = (idx >= 3 * d // 4).float()
    pos = torch.einsum("lhdk,k,lhek->lhde", u_pos, keep_pos, u_pos)
    neg = torch.einsum("lhdk,k,lhek->lhde", u_neg, keep_neg, u_neg)
    s_pos = torch.sort(torch.rand(n, h, d, generator=gen), dim=-1, descending=True).values
    s_neg = torch.sort(torch.rand(n, h, d, generator=gen), dim=-1, descending=True).values
    shift = torch.rand(n, h, generator=gen)
    mask = torch.ones(n, h, dtype=torch.bool) if head_mask is None else torch.as_tensor(head_mask, dtype=torch.bool)
    meta = ProjectionMeta(
        model_type=geom.model_type, model_id=model_id, num_layers=geom.num_layers,
        num_kv_heads=geom.num_kv_heads, head_dim=geom.head_dim, layers=layers,
        gain_pos=gain_pos, gain_neg=gain_neg, default_layers=default_layers,
        construction="random", chat_format=True, notes={"test": True},
    )
    return Projection(meta=meta, pos=pos, neg=neg, u_pos=u_pos, s_pos=s_pos, u_neg=u_neg,
                      s_neg=s_neg, head_shift=shift, head_mask=mask, **extra)


def build_tiny_model(
    family: str,
    tok,
    *,
    attn_implementation: str = "sdpa",
    num_layers: int = 2,
    seed: int = 0,
    projection: bool | dict = True,
    context_window: int | None = None,
) -> SekaModel:
    cfg, cls = _tiny_config(family, len(tok), num_layers, attn_implementation)
    hf = cls(cfg)
    _reinit(hf, seed)
    hf.eval()
    # no EOS during generation: greedy runs always produce exactly max_new_tokens tokens
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = tok.pad_token_id
    seka = SekaModel(hf, tok, model_id=f"tiny-{family}", context_window=context_window)
    if projection:
        opts = projection if isinstance(projection, dict) else {}
        seka.load_projection(random_projection(seka.geometry, model_id=f"tiny-{family}", **opts))
    return seka


@pytest.fixture(scope="session")
def tiny_model(tokenizer, plain_tokenizer):
    """Factory: ``tiny_model(family, attn_implementation="sdpa", chat=True, **options)`` → SekaModel."""

    def factory(family: str, attn_implementation: str = "sdpa", *, chat: bool = True, **options) -> SekaModel:
        return build_tiny_model(
            family, tokenizer if chat else plain_tokenizer, attn_implementation=attn_implementation, **options
        )

    return factory


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory, tiny_model):
    """Factory: ``saved_model_dir(context_window=None)`` → a directory holding a tiny llama and its tokenizer,
    as ``from_pretrained`` and the CLI's ``--model DIR`` read them (no projection)."""

    def factory(context_window: int | None = None):
        seka = tiny_model("llama", projection=False)
        if context_window is not None:
            seka.model.config.max_position_embeddings = context_window
        path = tmp_path_factory.mktemp("tiny-llama")
        seka.model.save_pretrained(path)
        seka.tokenizer.save_pretrained(path)
        return path

    return factory


# ---------------------------------------------------------------------------------------- helpers
def key_modules(seka: SekaModel):
    spec = seka.geometry.spec
    return [layer_module(layer, spec.key_module) for layer in decoder_layers(seka.model)]


def to_bthd(keys: torch.Tensor, seka: SekaModel) -> torch.Tensor:
    """A key-module output as (batch, tokens, kv_heads, head_dim), whatever the family's layout."""
    g = seka.geometry
    layout = g.spec.key_layout
    if layout == "bhtd":
        keys = keys.transpose(1, 2)
    return keys.reshape(keys.shape[0], keys.shape[1], g.num_kv_heads, g.head_dim)


@contextmanager
def record_keys(seka: SekaModel):
    """Record every key-module call: ``{layer: [(before_edit, after_edit), ...]}`` as (b, t, h, d).

    One hook runs before seka's editor (prepended) and one after it, so the pair is the raw key
    tensor and the tensor the attention actually receives.
    """
    calls: dict[int, list] = defaultdict(list)
    raw: dict[int, torch.Tensor] = {}
    handles = []
    for i, module in enumerate(key_modules(seka)):
        def before(mod, args, out, i=i):
            raw[i] = to_bthd(out, seka).detach().clone()

        def after(mod, args, out, i=i):
            calls[i].append((raw.pop(i), to_bthd(out, seka).detach().clone()))

        handles.append(module.register_forward_hook(before, prepend=True))
        handles.append(module.register_forward_hook(after))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def edit_matrix(projection: Projection, layer: int, gain_pos=None, gain_neg=None, head_mask=None) -> torch.Tensor:
    """M = head_mask · (g+ P+ + g- P-) / 2 for one layer, computed independently of seka_rag.

    Projections that carry a per-layer ``layer_scale`` (calibration) multiply M by it.
    """
    row = projection.meta.layers.index(layer)
    g_pos = projection.meta.gain_pos if gain_pos is None else gain_pos
    g_neg = projection.meta.gain_neg if gain_neg is None else gain_neg
    mask = projection.head_mask[row] if head_mask is None else torch.as_tensor(head_mask, dtype=torch.bool)
    m = (g_pos * projection.pos[row] + g_neg * projection.neg[row]) / 2
    scale = getattr(projection, "layer_scale", None)
    if scale is not None:
        m = m * scale[row]
    return m * mask.float()[:, None, None]


@pytest.fixture(scope="session")
def helpers():
    """The helper functions above, as a namespace (tests cannot import conftest reliably)."""

    class H:
        FAMILIES = FAMILIES
        make_tokenizer = staticmethod(make_tokenizer)
        random_projection = staticmethod(random_projection)
        record_keys = staticmethod(record_keys)
        to_bthd = staticmethod(to_bthd)
        key_modules = staticmethod(key_modules)
        edit_matrix = staticmethod(edit_matrix)
        build_tiny_model = staticmethod(build_tiny_model)

    return H
