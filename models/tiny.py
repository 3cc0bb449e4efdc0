"""Tiny random-weight models built in code, for fast unit tests and examples without downloads.

Each family (Gemma 3, Llama, GPT-2) gets a config a few hundred parameters wide, a character-level
tokenizer built with ``tokenizers`` and a TransformerBridge around it, so tests exercise the same
code path as the real models in milliseconds.
"""

from __future__ import annotations

import string
from typing import Literal

import torch

Family = Literal["gemma3", "llama", "gpt2"]
FAMILIES: tuple[Family, ...] = ("gemma3", "llama", "gpt2")
_BRIDGE_NAMES = {
    "gemma3": "google/gemma-3-270m",
    "llama": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gpt2": "gpt2",
}


def tiny_tokenizer():
    """A character-level fast tokenizer: printable ASCII plus specials, ids 0-3 reserved."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = sorted(set(string.printable) - {"\x0b", "\x0c"})
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        name_or_path="lenslab-tiny-chars",
        add_bos_token=True,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return fast


def tiny_hf_model(family: Family = "gemma3", *, seed: int = 0, n_layers: int = 2, vocab: int = 104):
    """A randomly initialised HF causal LM of ``family`` with a handful of small layers."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    common = {"vocab_size": vocab, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    if family == "gemma3":
        cfg = Gemma3TextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            sliding_window=8,
            query_pre_attn_scalar=16,
            attn_implementation="eager",
            **common,
        )
        model = Gemma3ForCausalLM(cfg)
    elif family == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            attn_implementation="eager",
            **common,
        )
        model = LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(
            n_embd=32,
            n_layer=n_layers,
            n_head=4,
            n_positions=512,
            attn_implementation="eager",
            **common,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {FAMILIES}")
    model.config.architectures = [type(model).__name__]
    # Random init leaves norms at 1 and biases at 0: perturb them so tests see real coefficients.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias") or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def tiny_session(family: Family = "gemma3", *, seed: int = 0, n_layers: int = 2, dtype=torch.float32):
    """A ModelSession around a tiny random ``family`` model on CPU."""
    from transformer_lens.model_bridge import TransformerBridge

    from lenslab.models.session import ModelSession

    hf_model = tiny_hf_model(family, seed=seed, n_layers=n_layers).to(dtype)
    bridge = TransformerBridge.boot_transformers(
        _BRIDGE_NAMES[family], hf_model=hf_model, tokenizer=tiny_tokenizer(), device="cpu", dtype=dtype
    )
    return ModelSession.from_bridge(bridge, model_id=f"tiny-{family}-s{seed}")
