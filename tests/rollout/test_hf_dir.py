"""The HF directory written for engines that start from one (megatron_r1/rollout/hf_dir.py): the built-in
character tokenizer as a transformers tokenizer, and config + weights that transformers loads back."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_r1.config import ModelConfig
from megatron_r1.data.tokenizer import CharTokenizer
from megatron_r1.rollout.hf_dir import char_tokenizer_to_hf, engine_hf_dir, write_engine_hf_dir

TEXTS = [
    "12+34=? <think>4+2=6, 3+1=4</think> <answer>46</answer><eos>",
    "What is 7 * (8 - 3)?\nAnswer: 35.",
    "<bos><pad>a b  c\n\n</answer>",
]


def test_char_tokenizer_as_hf_has_the_same_ids_and_text(tmp_path) -> None:
    char = CharTokenizer()
    char_tokenizer_to_hf(char).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert len(hf) == len(char)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (
        char.eos_token_id,
        char.pad_token_id,
        char.bos_token_id,
    )
    for text in TEXTS:
        ids = char.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids, skip_special_tokens=False) == char.decode(ids) == text
        # one token at a time (how a detokeniser sees a stream)
        assert "".join(hf.decode([i], skip_special_tokens=False) for i in ids) == text


def _tiny_cfg() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        num_layers=1,
        hidden_size=64,
        ffn_hidden_size=96,
        num_attention_heads=2,
        num_query_groups=1,
        vocab_size=len(CharTokenizer()),
    )


def _hf_tensors(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    h, f, v, kv = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size, 32 * cfg.num_query_groups
    shapes = {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (v, h),
        "model.layers.0.input_layernorm.weight": (h,),
        "model.layers.0.post_attention_layernorm.weight": (h,),
        "model.layers.0.self_attn.q_proj.weight": (h, h),
        "model.layers.0.self_attn.k_proj.weight": (kv, h),
        "model.layers.0.self_attn.v_proj.weight": (kv, h),
        "model.layers.0.self_attn.o_proj.weight": (h, h),
        "model.layers.0.mlp.gate_proj.weight": (f, h),
        "model.layers.0.mlp.up_proj.weight": (f, h),
        "model.layers.0.mlp.down_proj.weight": (h, f),
    }
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def test_engine_hf_dir_loads_in_transformers(tmp_path) -> None:
    cfg = _tiny_cfg()
    tensors = _hf_tensors(cfg)
    items = list(tensors.items())
    buckets = iter([items[:5], items[5:]])  # as hf_weight_buckets yields them
    out = write_engine_hf_dir(tmp_path / "hf", cfg, CharTokenizer(), buckets)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.model_type == "llama" and model.config.head_dim == 32
    state = model.state_dict()
    assert set(state) == set(tensors)
    for name, tensor in tensors.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(out).encode(
        TEXTS[0], add_special_tokens=False
    ) == CharTokenizer().encode(TEXTS[0])


def test_engine_hf_dir_prefers_the_run_checkpoint() -> None:
    cfg = _tiny_cfg()
    cfg.hf_path = "/models/x"

    def never():
        raise AssertionError("no weights are gathered when model.hf_path exists")

    assert engine_hf_dir(cfg, CharTokenizer(), never) == "/models/x"
