"""Every family generates in the engine the trainer ships with, from exactly the trained weights: GRPO steps
through the CLI (Megatron policy → weight sync → in-process engine → trainer log-probs) on tiny Qwen3,
Qwen3-MoE and DeepSeek-V3 presets built from config fields, ``logprob_diff`` below 1e-5 in fp32."""

from __future__ import annotations

import json

import pytest

from megatron_r1.cli import main

SMALL = [
    "train.steps=2",
    "train.sft_warmup_steps=1",
    "data.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=12",
    "eval.every=0",
    "log.progress=false",
    "log.tensorboard=false",
    "data.eval_size=4",
    "train.sft_batch_size=4",
    # A KL term keeps every step's forward even when all rewards of a random model tie (no-signal skip).
    "algorithm.kl_coef=0.01",
]
FAMILIES = {
    "qwen3": ["model.preset=qwen3"],
    "qwen3_moe": ["model.preset=qwen3_moe", "model.num_experts=4"],
    # MLA (q/kv LoRA, YaRN), sigmoid group-limited routing with expert bias, shared expert, dense layer 0.
    "deepseek_v3": [
        "model.preset=deepseek_v3",
        "model.num_query_groups=4",
        "model.multi_latent_attention=true",
        "model.qk_layernorm=true",
        "model.q_lora_rank=32",
        "model.kv_lora_rank=16",
        "model.qk_head_dim=16",
        "model.qk_pos_emb_head_dim=8",
        "model.v_head_dim=16",
        "model.rope_scaling_factor=4.0",
        "model.rope_original_max_position_embeddings=128",
        "model.rope_mscale_all_dim=1.0",
        "model.num_experts=4",
        "model.moe_router_topk=2",
        "model.moe_ffn_hidden_size=32",
        "model.moe_shared_expert_intermediate_size=32",
        "model.moe_first_k_dense=1",
        "model.moe_router_score_function=sigmoid",
        "model.moe_router_enable_expert_bias=true",
        "model.moe_router_num_groups=2",
        "model.moe_router_group_topk=1",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_engine_samples_from_the_trained_weights(family, tmp_path):
    assert main(["train", "--run-dir", str(tmp_path), *FAMILIES[family], *SMALL]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2 and all(r["skipped"] == 0.0 and r["response_length/mean"] > 0 for r in rows)
    # The engine samples from the weights synced after the warm-up's optimizer steps: every tensor, routers
    # and expert biases included, reached it under its HF name.
    assert all(r["logprob_diff"] < 1e-5 for r in rows), [r["logprob_diff"] for r in rows]
