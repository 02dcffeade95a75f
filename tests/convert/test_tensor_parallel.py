"""A converted checkpoint loads under a different tensor-parallel layout (2 gloo processes, TP = 2) and gives
the TP = 1 logits; HF weights stream straight into a TP = 2 model with the same result."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from megatron_r1.config import ParallelConfig
from megatron_r1.convert.checkpoint import hf_logits, hf_to_megatron, load_megatron_model, megatron_logits

TOKENS = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(3))


def _worker(rank: int, world: int, port: int, ckpt_dir: str, hf_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0"
    )
    from megatron_r1.convert.checkpoint import load_hf_weights
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed, shutdown

    parallel = ParallelConfig(tensor_parallel=world, backend="gloo")
    init_distributed(parallel)
    model, cfg = load_megatron_model(ckpt_dir, parallel)
    from_ckpt = megatron_logits(model.eval(), TOKENS)
    direct = build_model(cfg, parallel)
    load_hf_weights(direct, hf_dir, cfg)
    from_hf = megatron_logits(direct.eval(), TOKENS)
    if rank == 0:
        torch.save({"ckpt": from_ckpt, "hf": from_hf, "shard": tuple(model.output_layer.weight.shape)}, out)
    shutdown()


@pytest.mark.slow
def test_tp2_load_matches_tp1(hf_models, world, tmp_path):
    from megatron_r1.parallel import free_port

    hf_dir = hf_models["llama"]
    ckpt = tmp_path / "mcore"
    hf_to_megatron(hf_dir, ckpt)
    model, _ = load_megatron_model(ckpt, ParallelConfig())
    tp1 = megatron_logits(model.eval(), TOKENS)
    out = tmp_path / "tp2.pt"
    mp.spawn(_worker, args=(2, free_port(), str(ckpt), str(hf_dir), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    assert result["shard"] == (48, 64)  # the vocab really is split
    assert (result["ckpt"] - tp1).abs().max() < 1e-5
    assert (result["hf"] - tp1).abs().max() < 1e-5
    assert (tp1 - hf_logits(hf_dir, TOKENS, torch.float32)).abs().max() < 1e-4
