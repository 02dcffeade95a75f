"""Tiny random Hugging Face models, built by transformers from a config and saved locally (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def make_hf_model(kind: str, out_dir: Path, tied: bool = False, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` model (llama | qwen2 | qwen3 | qwen3_moe | deepseek_v3) to ``out_dir``.

    Every parameter (norms included) is perturbed so that a mis-mapped tensor changes the logits."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**TINY, tie_word_embeddings=tied))
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY, tie_word_embeddings=tied))
    elif kind == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**TINY, head_dim=24, tie_word_embeddings=tied))
    elif kind == "qwen3_moe":
        config = tf.Qwen3MoeConfig(
            **TINY,
            head_dim=16,
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            tie_word_embeddings=tied,
        )
        model = tf.Qwen3MoeForCausalLM(config)
    elif kind in ("deepseek_v3", "deepseek_v3_yarn"):
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        if kind == "deepseek_v3_yarn":
            rope = {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            }
        config = tf.DeepseekV3Config(
            **(TINY | {"num_key_value_heads": 4}),
            moe_intermediate_size=32,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            n_shared_experts=1,
            first_k_dense_replace=1,
            q_lora_rank=32,
            kv_lora_rank=16,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            rope_parameters=rope,
            tie_word_embeddings=tied,
        )
        model = tf.DeepseekV3ForCausalLM(config)
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.1)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    """name → saved tiny HF directory, built lazily once per session."""
    root = tmp_path_factory.mktemp("hf")
    cache: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, key: str) -> Path:
            kind, _, tied = key.partition("-")
            cache[key] = make_hf_model(kind, root / key, tied=tied == "tied")
            return cache[key]

    return Lazy()


@pytest.fixture(scope="session")
def world():
    """A single-process distributed world (TP = PP = 1)."""
    from megatron_r1.config import ParallelConfig
    from megatron_r1.parallel import init_distributed

    return init_distributed(ParallelConfig())
