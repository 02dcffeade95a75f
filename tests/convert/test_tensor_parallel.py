"""A converted checkpoint loads under other layouts (2 gloo processes): TP = 2 gives the TP = 1 logits, and
HF weights stream straight into a TP = 2 model with the same result; under PP = 2 (tied embeddings) each
stage loads its own layers, from HF and from the checkpoint alike."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from megatron_r1.config import ParallelConfig
from megatron_r1.convert.checkpoint import (
    hf_logits,
    hf_to_megatron,
    load_megatron_model,
    megatron_logits,
    model_tensors,
)

TOKENS = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(3))


def _worker(rank: int, world: int, port: int, tp_case: tuple, pp_case: tuple, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0"
    )
    from megatron.core import parallel_state as mpu

    from megatron_r1.convert.checkpoint import load_hf_weights
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed, shutdown

    result = {}
    parallel = ParallelConfig(tensor_parallel=world, backend="gloo")
    init_distributed(parallel)
    hf_dir, ckpt_dir = tp_case
    model, cfg = load_megatron_model(ckpt_dir, parallel)
    result["ckpt"] = megatron_logits(model.eval(), TOKENS)
    result["shard"] = tuple(model.output_layer.weight.shape)
    direct = build_model(cfg, parallel)
    load_hf_weights(direct, hf_dir, cfg)
    result["hf"] = megatron_logits(direct.eval(), TOKENS)

    parallel = ParallelConfig(pipeline_parallel=world, backend="gloo")
    init_distributed(parallel)
    hf_dir, ckpt_dir = pp_case
    staged, cfg = load_megatron_model(ckpt_dir, parallel)
    direct = build_model(cfg, parallel, mpu.is_pipeline_first_stage(), mpu.is_pipeline_last_stage())
    load_hf_weights(direct, hf_dir, cfg)
    result["pp_ckpt"] = {k: v.detach().clone() for k, v in model_tensors(staged).items()}
    result["pp_hf"] = {k: v.detach().clone() for k, v in model_tensors(direct).items()}
    torch.save(result, f"{out}.{rank}")
    shutdown()


@pytest.mark.slow
def test_other_layouts_load_the_converted_checkpoint(hf_models, world, tmp_path):
    from megatron_r1.parallel import free_port

    tp_hf, pp_hf = hf_models["llama"], hf_models["llama-tied"]
    hf_to_megatron(tp_hf, tmp_path / "tp")
    hf_to_megatron(pp_hf, tmp_path / "pp")
    model, _ = load_megatron_model(tmp_path / "tp", ParallelConfig())
    tp1 = megatron_logits(model.eval(), TOKENS)
    full_pp, _ = load_megatron_model(tmp_path / "pp", ParallelConfig())
    full = model_tensors(full_pp)
    out = str(tmp_path / "res")
    cases = ((str(tp_hf), str(tmp_path / "tp")), (str(pp_hf), str(tmp_path / "pp")))
    mp.spawn(_worker, args=(2, free_port(), *cases, out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    assert ranks[0]["shard"] == (48, 64)  # the vocabulary really is split
    for result in ranks:
        assert (result["ckpt"] - tp1).abs().max() < 1e-5
        assert (result["hf"] - tp1).abs().max() < 1e-5
    assert (tp1 - hf_logits(tp_hf, TOKENS, torch.float32)).abs().max() < 1e-4
    full["output_layer.weight"] = full["embedding.word_embeddings.weight"]  # the last stage's tied copy
    first, last = ranks[0]["pp_ckpt"], ranks[1]["pp_ckpt"]
    assert any(k.startswith("decoder.layers.0.") for k in first)
    assert any(k.startswith("decoder.layers.1.") for k in last) and "output_layer.weight" in last
    for result in ranks:
        assert result["pp_ckpt"].keys() == result["pp_hf"].keys()
        for name, tensor in result["pp_ckpt"].items():
            assert torch.equal(tensor, full[name]), name
            assert torch.equal(result["pp_hf"][name], full[name]), name
