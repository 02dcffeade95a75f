"""Expert parallelism in the trainer (2 gloo processes, EP = 2): the weight sync gathers every rank's
experts back into the full HF checkpoint, and one GRPO-style backward gives, after the optimizer's
expert-aware gradient reduction, the single-process (EP = 1) gradients and gradient norm."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

TOKENS = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(7))


def _loss(model, tokens):
    logits = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return -logp.sum() / TOKENS[:, 1:].numel()  # global denominator: the DP shares add up


def _grads(model) -> dict[str, torch.Tensor]:
    from megatron_r1.convert.checkpoint import global_name

    return {global_name(model, n): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, hf_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    from megatron_r1.config import ParallelConfig, TrainConfig
    from megatron_r1.convert import get_adapter
    from megatron_r1.convert.checkpoint import load_hf_weights
    from megatron_r1.models import build_model
    from megatron_r1.models.hf import model_config_from_hf
    from megatron_r1.parallel import init_distributed, shutdown
    from megatron_r1.rollout.reshard import hf_weight_buckets
    from megatron_r1.training.optim import LocalOptimizer

    parallel = ParallelConfig(backend="gloo", expert_parallel=world)
    state = init_distributed(parallel)
    cfg = model_config_from_hf(hf_dir)
    model = build_model(cfg, parallel)
    load_hf_weights(model, hf_dir, cfg)
    adapter = get_adapter(cfg.preset)
    synced = {
        n: t.clone()
        for bucket in hf_weight_buckets(model, state, lambda n, t: adapter.to_hf(n, t, cfg), 1 << 20)
        for n, t in bucket
    }
    half = TOKENS.shape[0] // world
    _loss(model, TOKENS[rank * half : (rank + 1) * half]).backward()
    opt = LocalOptimizer(model, TrainConfig(), state)
    opt._reduce_grads()
    torch.save({"synced": synced, "grads": _grads(model), "norm": opt.grad_norm()}, f"{out}.{rank}")
    shutdown()


@pytest.mark.slow
def test_ep2_weight_sync_and_gradients_match_one_process(hf_models, world, tmp_path):
    from megatron_r1.config import ParallelConfig, TrainConfig
    from megatron_r1.convert.checkpoint import iter_hf_tensors, load_hf_weights
    from megatron_r1.models import build_model
    from megatron_r1.models.hf import model_config_from_hf
    from megatron_r1.parallel import free_port
    from megatron_r1.training.optim import LocalOptimizer

    hf_dir = hf_models["qwen3_moe"]
    cfg = model_config_from_hf(hf_dir)
    reference = build_model(cfg, ParallelConfig())
    load_hf_weights(reference, hf_dir, cfg)
    _loss(reference, TOKENS).backward()
    expected = _grads(reference)
    expected_norm = LocalOptimizer(reference, TrainConfig(), world).grad_norm()

    out = str(tmp_path / "ep2")
    mp.spawn(_worker, args=(2, free_port(), str(hf_dir), out), nprocs=2, join=True)
    original = dict(iter_hf_tensors(hf_dir))
    seen_experts = set()
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert set(result["synced"]) == set(original)
        for name, tensor in original.items():
            assert torch.equal(result["synced"][name].to(tensor.dtype), tensor), (rank, name)
        for name, grad in result["grads"].items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)
            if ".local_experts." in name:
                seen_experts.add(name)
        assert result["norm"] == pytest.approx(expected_norm, rel=1e-5)
    assert seen_experts == {n for n in expected if ".local_experts." in n}
