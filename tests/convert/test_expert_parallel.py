"""Expert parallelism (2 gloo processes, EP = 2, allgather dispatcher): each rank holds half the experts of
the tiny Qwen3-MoE / DeepSeek-V3 models, loaded from HF weights and from the converted (EP = 1)
dist_checkpoint; the logits equal transformers'."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from megatron_r1.convert.checkpoint import hf_logits, hf_to_megatron

TOKENS = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(5))


def _worker(rank: int, world: int, port: int, cases: list[tuple[str, str, str]], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0"
    )
    from megatron.core import parallel_state as mpu

    from megatron_r1.config import ParallelConfig
    from megatron_r1.convert.checkpoint import (
        load_dist_checkpoint,
        load_hf_weights,
        megatron_logits,
        read_model_config,
    )
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed, shutdown

    init_distributed(ParallelConfig(backend="gloo"))
    mpu.destroy_model_parallel()
    mpu.initialize_model_parallel(expert_model_parallel_size=world)
    parallel = ParallelConfig(expert_parallel=world, backend="gloo")
    results = {}
    for name, hf_dir, ckpt_dir in cases:
        cfg = read_model_config(ckpt_dir)
        direct = build_model(cfg, parallel)
        load_hf_weights(direct, hf_dir, cfg)
        from_ckpt = build_model(cfg, parallel)
        load_dist_checkpoint(from_ckpt, ckpt_dir)
        local = sum(".local_experts." in n for n, _ in direct.named_parameters())
        results[name] = (
            megatron_logits(direct.eval(), TOKENS),
            megatron_logits(from_ckpt.eval(), TOKENS),
            local,
        )
    torch.save(results, f"{out}.{rank}")
    shutdown()


@pytest.mark.slow
def test_ep2_matches_transformers(hf_models, world, tmp_path):
    from megatron_r1.parallel import free_port

    cases = []
    for name in ("qwen3_moe", "deepseek_v3"):
        hf_to_megatron(hf_models[name], tmp_path / name)
        cases.append((name, str(hf_models[name]), str(tmp_path / name)))
    out = str(tmp_path / "ep2")
    mp.spawn(_worker, args=(2, free_port(), cases, out), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(f"{out}.{rank}")
        for name, hf_dir, _ in cases:
            direct, from_ckpt, local = results[name]
            expected = hf_logits(hf_dir, TOKENS, torch.float32)
            # qwen3_moe: 2 MoE layers × 4 experts / 2 ranks × 2 linears; deepseek_v3: 1 × 8 / 2 × 2.
            assert local == {"qwen3_moe": 8, "deepseek_v3": 8}[name]
            assert (direct - expected).abs().max() < 1e-4, (name, rank)
            assert (from_ckpt - expected).abs().max() < 1e-4, (name, rank)
