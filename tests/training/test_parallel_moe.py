"""The DeepSeek-V3 shape (MLA with q/kv LoRA, 8 routed experts top-2 in 2 groups, a shared expert, sigmoid
router with expert bias, first layer dense) and Qwen3 (q/k layernorms) under TP = 2 + sequence parallelism,
EP = 2, PP = 2 and TP = 2 × EP = 2 (4 ranks) on gloo, against one process with the same HF weights.

Each worker runs the reference (TP = PP = EP = 1, the whole batch, its data-parallel group hidden) and then
the layout under test: ``load_hf_weights`` slices the same tiny HF checkpoint into the layout, one GRPO
forward/backward runs through ``Policy.run`` (so sequence-parallel padding is exercised), ``LocalOptimizer``
reduces the gradients (TP sums of sequence-parallel and q/k-norm grads, DP / expert-DP sums) and
``update_expert_bias`` moves the routers' bias. The test reassembles TP shards, EP experts and PP stages and
compares loss, every gradient, the gradient norm, the updated expert bias and the weight sync (which must give
the HF checkpoint exactly).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dist_utils import run_workers

B = 4


def _make_hf_model(kind: str, out_dir: Path) -> Path:
    """tests/convert/conftest.py's tiny random HF models (one definition of each family's shape)."""
    spec = importlib.util.spec_from_file_location(
        "convert_models", Path(__file__).parents[1] / "convert/conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_hf_model(kind, out_dir)


def _batch(seq: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, vocab, (B, seq), generator=gen)
    mask = torch.zeros(B, seq - 1)
    for i, (prompt, length) in enumerate(zip([3, 4, 2, 5], [seq, seq - 3, seq - 5, seq - 1])):
        tokens[i, length:] = 0
        mask[i, prompt - 1 : length - 1] = 1.0
    return {
        "tokens": tokens,
        "response_mask": mask,
        "advantages": torch.randn(B, generator=gen),
        "sampler_logprobs": torch.zeros(B, seq - 1),
    }


def _run(hf_dir: str, seq: int, hide_dp: bool = False, **layout) -> dict:
    """One layout: load the HF weights, one GRPO forward/backward, the optimizer's reductions, the bias update
    and the weight sync. Gradients come back under global canonical names with their TP layout."""
    import dataclasses

    from megatron.core import parallel_state as mpu

    from megatron_r1.config import Config, ParallelConfig
    from megatron_r1.convert import get_adapter
    from megatron_r1.convert.checkpoint import load_hf_weights
    from megatron_r1.convert.naming import canonical_name, gated_parameters, global_name, model_tensors
    from megatron_r1.models import build_model
    from megatron_r1.models.hf import model_config_from_hf
    from megatron_r1.parallel import init_distributed
    from megatron_r1.rollout.reshard import hf_weight_buckets
    from megatron_r1.training.grpo import grpo_loss_fn
    from megatron_r1.training.optim import LocalOptimizer, update_expert_bias
    from megatron_r1.training.policy import Policy

    cfg = Config()
    cfg.model = model_config_from_hf(hf_dir)
    cfg.parallel = ParallelConfig(backend="gloo", **layout)
    cfg.algorithm.kl_coef = 0.0
    cfg.rollout.max_new_tokens = seq
    state = init_distributed(cfg.parallel)
    if hide_dp:
        state = dataclasses.replace(state, dp_size=1, dp_rank=0)
    model = build_model(cfg.model, cfg.parallel, state.is_first_stage, state.is_last_stage)
    load_hf_weights(model, hf_dir, cfg.model)
    batch = _batch(seq, cfg.model.vocab_size)
    counts = (batch["response_mask"].sum().item(), float(B))
    share = B // state.dp_size
    batch = {k: v[state.dp_rank * share : (state.dp_rank + 1) * share] for k, v in batch.items()}
    policy = Policy(model, state, logprob_impl="torch")
    outs = policy.run(batch, grpo_loss_fn(SimpleNamespace(cfg=cfg), *counts), micro_batch_size=2)
    router_load = policy.router_load.metrics(state)  # tokens per expert over TP × DP, worst stage
    optimizer = LocalOptimizer(model, cfg.train, state)
    optimizer._reduce_grads()
    gated = gated_parameters(model)
    grads = {}
    for name, p in model.named_parameters():
        expert = ".experts." in name
        tp_rank = mpu.get_expert_tensor_parallel_rank() if expert else state.tp_rank
        dim = p.partition_dim if getattr(p, "tensor_model_parallel", False) else None
        grads[canonical_name(global_name(model, name))] = (p.grad.clone(), dim, id(p) in gated, tp_rank)
    adapter = get_adapter(cfg.model.preset)
    to_hf = lambda n, t: adapter.to_hf(n, t, cfg.model)  # noqa: E731
    synced = {n: t.clone() for bucket in hf_weight_buckets(model, state, to_hf, 1 << 16) for n, t in bucket}
    update_expert_bias(model)  # after the sync: the synced bias is the checkpoint's
    return {
        "loss": sum(float(o["loss"]) for o in outs) if outs else None,
        "grads": grads,
        "grad_norm": optimizer.grad_norm(),
        "bias": {n: t.clone() for n, t in model_tensors(model).items() if n.endswith("expert_bias")},
        "synced": synced,
        "router_load": router_load,
        "dp_rank": state.dp_rank,
        "tp_rank": state.tp_rank,
    }


def _worker(rank: int, cases: list[tuple[str, str, int, dict]]) -> dict:
    out = {}
    for name, hf_dir, seq, layout in cases:
        out[name] = {"ref": _run(hf_dir, seq, hide_dp=True), "got": _run(hf_dir, seq, **layout)}
    return out


# -------------------------------------------------------------------------------------------------- checks


def _reassemble(results: list[dict]) -> dict[str, torch.Tensor]:
    """Full gradients from every rank's: replicated copies must agree; TP shards are joined (per half for
    SwiGLU's [gate; up]); experts and stages are unions."""
    from megatron_r1.convert.naming import tp_unshard

    pieces: dict[str, dict] = {}
    for r in results:
        for name, (grad, dim, gated, tp_rank) in r["grads"].items():
            entry = pieces.setdefault(name, {"dim": dim, "gated": gated, "shards": {}})
            if tp_rank in entry["shards"]:  # a replica (DP, or TP for a replicated parameter)
                torch.testing.assert_close(grad, entry["shards"][tp_rank], rtol=1e-6, atol=1e-7, msg=name)
            entry["shards"][tp_rank] = grad
    full = {}
    for name, e in pieces.items():
        shards = [e["shards"][k] for k in sorted(e["shards"])]
        if e["dim"] is None:
            for s in shards[1:]:
                torch.testing.assert_close(s, shards[0], rtol=1e-6, atol=1e-7, msg=f"replicated {name}")
            full[name] = shards[0]
        else:
            full[name] = tp_unshard(shards, e["dim"], e["gated"])
    return full


def _check(results: list[dict], ref: dict, hf_dir: Path, what: str) -> None:
    from megatron_r1.convert.checkpoint import iter_hf_tensors

    losses = [r["loss"] for r in results if r["loss"] is not None and r["tp_rank"] == 0]
    assert sum(losses) == pytest.approx(ref["loss"], rel=1e-5), f"{what}: loss"
    want = {n: g for n, (g, *_rest) in ref["grads"].items()}
    got = _reassemble(results)
    assert sorted(got) == sorted(want), what
    for name, g in want.items():
        scale = max(g.abs().max().item(), 1e-6)
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-5 * scale, msg=f"{what}: grad {name}")
    original = dict(iter_hf_tensors(hf_dir))
    # The reference ran on every rank (its counts summed over the world): the same routing, world times over.
    world = len(results)
    for key, value in ref["router_load"].items():
        want = value if key == "moe/load_balance" else value / world
        assert all(r["router_load"][key] == pytest.approx(want, rel=1e-9) for r in results), f"{what}: {key}"
    assert bool(ref["router_load"]) == (len(ref["bias"]) > 0), what
    for r in results:
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), f"{what}: grad norm"
        assert set(r["synced"]) == set(original), f"{what}: synced names"
        for name, tensor in original.items():
            assert torch.equal(r["synced"][name].to(tensor.dtype), tensor), f"{what}: weight sync {name}"
        for name, bias in r["bias"].items():
            torch.testing.assert_close(bias, ref["bias"][name], rtol=0, atol=0, msg=f"{what}: {name}")
            # Moved by ± the update rate from the checkpoint's (counts summed over TP × DP).
            loaded = original[
                name.replace("decoder.layers", "model.layers").replace(
                    "mlp.router.expert_bias", "mlp.gate.e_score_correction_bias"
                )
            ]
            step = (bias - loaded).abs()
            assert bool((((step - 1e-3).abs() < 1e-6) | (step < 1e-9)).all()) and step.max() > 0, what
    if ref["bias"]:
        assert set().union(*(r["bias"] for r in results)) == set(ref["bias"]), what


def _dense_variant(moe_dir: Path, out_dir: Path) -> Path:
    """The DeepSeek-V3 checkpoint with its MoE layer replaced by a dense MLP (random weights): MLA without
    MoE, for TP = 2 without sequence parallelism (which Megatron's MoE layer requires)."""
    from safetensors.torch import load_file, save_file

    config = json.loads((moe_dir / "config.json").read_text())
    config["first_k_dense_replace"] = config["num_hidden_layers"]
    gen = torch.Generator().manual_seed(3)
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    tensors = {
        k: v
        for k, v in load_file(moe_dir / "model.safetensors").items()
        if not k.startswith("model.layers.1.mlp.")
    }
    for name, shape in (
        ("gate_proj", (inner, hidden)),
        ("up_proj", (inner, hidden)),
        ("down_proj", (hidden, inner)),
    ):
        tensors[f"model.layers.1.mlp.{name}.weight"] = 0.05 * torch.randn(shape, generator=gen)
    out_dir.mkdir()
    (out_dir / "config.json").write_text(json.dumps(config))
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    dirs = {kind: _make_hf_model(kind, root / kind) for kind in ("deepseek_v3", "qwen3")}
    dirs["mla_dense"] = _dense_variant(dirs["deepseek_v3"], root / "mla_dense")
    return dirs


@pytest.fixture(scope="module")
def two_ranks(hf_dirs, tmp_path_factory) -> dict:
    """Every 2-rank layout in one 2-process world (importing Megatron costs more than the checks)."""
    ds, qwen3, mla = str(hf_dirs["deepseek_v3"]), str(hf_dirs["qwen3"]), str(hf_dirs["mla_dense"])
    cases = [
        ("mla_tp2", mla, 12, {"tensor_parallel": 2}),
        ("ds_tp2_sp", ds, 12, {"tensor_parallel": 2, "sequence_parallel": True}),
        ("ds_ep2", ds, 12, {"expert_parallel": 2}),
        ("ds_pp2", ds, 12, {"pipeline_parallel": 2}),
        ("qwen3_tp2", qwen3, 11, {"tensor_parallel": 2}),
        ("qwen3_tp2_sp", qwen3, 11, {"tensor_parallel": 2, "sequence_parallel": True}),  # 11: padded to 12
    ]
    results = run_workers(_worker, 2, tmp_path_factory.mktemp("moe"), cases, timeout=300)
    return {name: [r[name] for r in results] for name, *_ in cases}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ds_tp2_sp", "ds_ep2", "ds_pp2"])
def test_deepseek_v3_shape_matches_one_process(two_ranks, hf_dirs, layout):
    per_rank = two_ranks[layout]
    _check([r["got"] for r in per_rank], per_rank[0]["ref"], hf_dirs["deepseek_v3"], layout)


@pytest.mark.slow
def test_mla_tensor_parallel_without_sequence_parallel(two_ranks, hf_dirs):
    """MLA's shared rotary key is used by every TP rank's heads: its gradient is summed over TP (the local
    spec lost the other ranks' share, and every gradient upstream was off)."""
    per_rank = two_ranks["mla_tp2"]
    _check([r["got"] for r in per_rank], per_rank[0]["ref"], hf_dirs["mla_dense"], "mla_tp2")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["qwen3_tp2", "qwen3_tp2_sp"])
def test_qwen3_qk_layernorm_gradients_under_tensor_parallel(two_ranks, hf_dirs, layout):
    """The q/k layernorms see only their rank's heads: their gradients are summed over TP (they were off by
    up to 1e-1 before); with SP the sequence (11 tokens) is padded to a multiple of TP."""
    per_rank = two_ranks[layout]
    _check([r["got"] for r in per_rank], per_rank[0]["ref"], hf_dirs["qwen3"], layout)


@pytest.mark.slow
def test_deepseek_v3_shape_tp2_ep2_four_ranks(hf_dirs, tmp_path):
    ds = str(hf_dirs["deepseek_v3"])
    layout = {"tensor_parallel": 2, "sequence_parallel": True, "expert_parallel": 2}
    results = run_workers(_worker, 4, tmp_path, [("tp2_ep2", ds, 12, layout)], timeout=300)
    per_rank = [r["tp2_ep2"] for r in results]
    _check([r["got"] for r in per_rank], per_rank[0]["ref"], hf_dirs["deepseek_v3"], "TP=2 x EP=2")
