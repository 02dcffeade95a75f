"""Tiny random Hugging Face models (no download) and a toy tokenizer for the rollout tests."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from megatron_r1.rollout.native import NativeEngine

VOCAB = 128
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


class CharTokenizer:
    """Token i decodes to one or two letters, so stop strings can end inside a token."""

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(97 + t % 26) * (1 + t % 2) for t in token_ids)


def make_hf_model(family: str, tied: bool, seed: int = 0, **overrides):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs.update(overrides)
    model = model_cls(config_cls(**kwargs)).eval()
    # Larger-than-default weights give peaked, varied next-token distributions, which makes
    # greedy comparisons meaningful (no near-ties) and generations non-repetitive.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
            elif name.endswith("bias"):  # Qwen2 q/k/v biases start at zero
                p.normal_(0.0, 0.1)
            elif name.endswith("norm.weight"):  # norms start at one
                p.normal_(1.0, 0.1)
    return model


def make_engine(hf_model, **kwargs) -> NativeEngine:
    engine = NativeEngine(hf_model.config.to_dict(), CharTokenizer(), **kwargs)
    engine.update_weights(hf_model.state_dict().items())
    return engine


PROMPTS = [[3, 17, 42, 5, 9], [100, 2], [7, 8, 9, 10, 11, 12, 13, 14, 15]]
