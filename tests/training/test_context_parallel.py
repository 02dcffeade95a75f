"""Context parallelism (CP = 2) on gloo against one process: each sequence is split into 2 × CP load-balanced
chunks, the CPU attention patch gathers keys and values over CP, and the loss, metrics, gradients, gradient
norm, ``grpo.update`` (every loss aggregation), the old / reference log-probs (``Policy.logprobs``, gathered
back to whole sequences) and the SFT step (plain and packed rows) match the single process — for a dense
model, MLA, the DeepSeek-V3 shape, Qwen3-MoE with the aux loss, and on 4 ranks CP × TP (with and without
SP), CP × PP, DP × CP and (DeepSeek-V3 shape) CP × EP; a GRPO run's first step matches; the planner's
activation bytes and K / V traffic under CP match what a real CP forward saves and sends.

The references and the harness are the other parallel tests': the tiny dense model with fixed weights of
``test_parallel.py`` and the tiny DeepSeek-V3 shape (MLA, routed + shared experts, expert bias) of
``test_parallel_moe.py``, loaded from the same HF checkpoint. The reference runs inside the workers, with its
data-parallel group hidden, as there.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from dist_utils import run_workers
from test_parallel import (
    LOSS_AGGS,
    METRICS,
    B,
    _add_old_and_ref,
    _batch,
    _cfg,
    _check_metrics,
    _check_update,
    _full_weights,
    _run,
    _sft,
    _sft_packed,
    _update,
)
from test_parallel_moe import _dense_variant, _make_hf_model, _reassemble
from test_parallel_moe import _run as _run_hf

pytestmark = pytest.mark.slow  # each test starts 2 or 4 gloo processes (~25-40 s on a loaded 2-core box)

# ------------------------------------------------------------------------------------------ worker helpers


def _cp_layout(cfg, weights: dict, cp: int = 2, tp: int = 1, sp: bool = False, pp: int = 1):
    """Megatron's groups re-initialised with CP = cp (and TP = tp); this rank's model, the full weights."""
    from test_parallel import _global_names, _shard

    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed
    from megatron_r1.training.policy import Policy

    cfg.parallel.tensor_parallel = tp
    cfg.parallel.pipeline_parallel = pp
    cfg.parallel.context_parallel = cp
    cfg.parallel.sequence_parallel = sp
    state = init_distributed(cfg.parallel)
    model = build_model(cfg.model, cfg.parallel, state.is_first_stage, state.is_last_stage)
    names = _global_names(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_shard(names[name], weights[names[name]], p, state.tp_rank, state.tp_size))
    return Policy(model, state), names


def _reference(loss_agg: str = "token-mean") -> dict:
    """One process (TP = CP = 1, its DP group hidden), the fixed weights, the whole batch."""
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed
    from megatron_r1.training.policy import Policy

    cfg = _cfg(2, loss_agg)
    cfg.parallel.context_parallel = 1
    state = dataclasses.replace(init_distributed(cfg.parallel), dp_size=1, dp_rank=0)
    model = build_model(cfg.model, cfg.parallel)
    weights = _full_weights(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    policy = Policy(model, state)
    batch = _add_old_and_ref(policy, _batch())
    out = _run(policy, cfg, batch, (batch["response_mask"].sum().item(), float(B)), micro_batch_size=2)
    out.pop("opt")
    return out | {
        "logprobs": policy.logprobs(batch, micro_batch_size=3),
        "update": _update(policy, cfg, batch, micro_batch_size=2),
        "weights": weights,
        "batch": batch,
        "cfg": cfg,
    }


def _dense(rank: int, tp: int = 1, sp: bool = False, pp: int = 1) -> dict:
    """The tiny dense model under CP = 2 (× TP = tp, × PP = pp): one GRPO forward/backward, the log-probs,
    grpo.update for every loss aggregation and (CP alone) the SFT step."""
    ref = _reference()
    cfg, weights, batch = ref["cfg"], ref["weights"], ref["batch"]
    policy, names = _cp_layout(cfg, weights, tp=tp, sp=sp, pp=pp)
    got = _run(policy, cfg, batch, (ref["metrics"]["tokens"], float(B)), micro_batch_size=2)
    out = {
        "ref": {k: ref[k] for k in ("metrics", "grads", "grad_norm", "logprobs", "update")},
        "cp_rank": policy.state.cp_rank,
        "tp_rank": policy.state.tp_rank,
        "pp_rank": policy.state.pp_rank,
        "metrics": got["metrics"],
        "local_grads": {names[n]: g for n, g in got["grads"].items()},
        "logprobs": policy.logprobs(batch, micro_batch_size=3),
        "partition_dims": {
            names[n]: (p.partition_dim if getattr(p, "tensor_model_parallel", False) else None)
            for n, p in policy.model.named_parameters()
        },
    }
    got["opt"]._reduce_grads()
    out["grads"] = {names[n]: p.grad.detach().clone() for n, p in policy.model.named_parameters()}
    out["grad_norm"] = got["opt"].grad_norm()
    out["update"] = {"token-mean": _update(policy, cfg, batch, micro_batch_size=2)}
    for loss_agg in LOSS_AGGS[1:]:
        want = _reference(loss_agg)
        policy, _ = _cp_layout(want["cfg"], weights, tp=tp, sp=sp, pp=pp)
        out["update"][loss_agg] = _update(policy, want["cfg"], batch, micro_batch_size=2)
        out["ref"][f"update/{loss_agg}"] = want["update"]
    if tp == pp == 1:
        layout = {"tp": 1, "pp": 1}
        cfg.parallel.context_parallel = 1
        out["sft_ref"] = _sft(cfg, weights, batch, micro_batch_size=B, hide_dp=True, **layout)
        cfg.parallel.context_parallel = 2
        out["sft"] = _sft(cfg, weights, batch, micro_batch_size=2, **layout)
        out["sft_packed"] = _sft_packed(cfg, weights, batch, **layout)
    return out


def _moe_aux_loss(rank: int) -> dict:
    """A tiny Qwen3-MoE with the load-balancing aux loss (its routers reduce tokens per expert over TP × CP)
    and the fixed weights: one process, then CP = 2; loss, gradients and norm after the optimizer's sum."""
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed
    from megatron_r1.training.policy import Policy

    def run(cp: int) -> dict:
        cfg = _cfg(2)
        m = cfg.model
        m.preset, m.qk_layernorm, m.kv_channels = "qwen3_moe", True, 16
        m.num_experts, m.moe_router_topk, m.moe_ffn_hidden_size, m.moe_aux_loss_coeff = 4, 2, 32, 0.1
        cfg.parallel.context_parallel = cp
        state = init_distributed(cfg.parallel)
        if cp == 1:
            state = dataclasses.replace(state, dp_size=1, dp_rank=0)
        model = build_model(cfg.model, cfg.parallel)
        weights = _full_weights(model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(weights[name])
        batch = _batch()
        counts = (batch["response_mask"].sum().item(), float(B))
        out = _run(Policy(model, state, "torch"), cfg, batch, counts, micro_batch_size=2)
        out["opt"]._reduce_grads()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        return {"metrics": out["metrics"], "grads": grads, "grad_norm": out["opt"].grad_norm()}

    return {"ref": run(1), "got": run(2)}


def _deepseek_v3(rank: int, hf_dirs: dict) -> dict:
    """The tiny DeepSeek-V3 shape and its MLA-only variant: 11 tokens (padded to 12) under CP = 2."""
    out = {}
    for name, seq in (("mla_dense", 11), ("deepseek_v3", 12)):
        out[name] = {
            "ref": _run_hf(hf_dirs[name], seq, hide_dp=True),
            "got": _run_hf(hf_dirs[name], seq, context_parallel=2),
        }
    return out


def _activations(rank: int) -> dict:
    """The bytes one layer saves for backward under CP = 2 (bf16, local spec), measured on this rank's
    chunks as tests/plan/test_activations.py measures one process, and the planner's figure."""
    import importlib.util
    from pathlib import Path

    from megatron_r1.config import ModelConfig, ParallelConfig
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed
    from megatron_r1.parallel.context import cp_split
    from megatron_r1.plan.layout import Layout
    from megatron_r1.plan.memory import layer_activation_bytes
    from megatron_r1.plan.timing import cp_kv_bytes_per_layer

    path = Path(__file__).parents[1] / "plan/test_activations.py"
    spec = importlib.util.spec_from_file_location("plan_activations", path)
    plan_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan_test)
    parallel = ParallelConfig(backend="gloo", context_parallel=2)
    layout = Layout(world=2, tp=1, pp=1, cp=2, dp=1, ep=1, etp=1, edp=2, sp=False, rollout_tp=1, engines=1)
    received: list[int] = []  # bytes each all-gather brought from the other ranks
    all_gather = torch.distributed.all_gather

    def counting(outputs, tensor, *args, **kwargs):
        received.append((len(outputs) - 1) * tensor.numel() * tensor.element_size())
        return all_gather(outputs, tensor, *args, **kwargs)

    out = {}
    for case in ("qwen2", "deepseek_v3"):
        cfg = ModelConfig(**(plan_test.BASE | plan_test.CASES[case]))
        state = init_distributed(parallel)
        model = build_model(cfg, parallel)
        batch, seq, index = 2, 32, cfg.num_layers - 1
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
        local = cp_split(tokens, 2, state.cp_rank)
        received.clear()
        torch.distributed.all_gather = counting
        try:
            measured = plan_test.saved_bytes(model, model.decoder.layers[index], local)
        finally:
            torch.distributed.all_gather = all_gather
        planned = layer_activation_bytes(cfg, index, layout, batch * seq / 2, seq, fp8=False, te=False)
        kv = (cp_kv_bytes_per_layer(cfg, layout, batch * seq / 2), sum(received) / cfg.num_layers)
        out[case] = {"activations": (planned, measured), "kv_bytes": kv}
    return out


def _deepseek_v3_ep_worker(rank: int, hf_dir: str) -> dict:
    """The DeepSeek-V3 shape under CP = 2 × EP = 2 on 4 ranks (DP = 2: EP splits the experts over the DP
    ranks, the expert-DP group spans CP)."""
    return {
        "ref": _run_hf(hf_dir, 12, hide_dp=True),
        "got": _run_hf(hf_dir, 12, context_parallel=2, expert_parallel=2),
    }


def _two_ranks_worker(rank: int, hf_dirs: dict) -> dict:
    import time

    out, times = {}, {}
    phases = (
        ("dense", _dense),
        ("deepseek_v3", lambda r: _deepseek_v3(r, hf_dirs)),
        ("moe_aux_loss", _moe_aux_loss),
        ("activations", _activations),
    )
    for name, fn in phases:
        start = time.perf_counter()
        out[name] = fn(rank)
        times[name] = time.perf_counter() - start
    return out | {"times": times}


def _four_ranks_worker(rank: int, layouts: dict[str, dict]) -> dict:
    return {name: _dense(rank, **layout) for name, layout in layouts.items()}


def _data_and_context_worker(rank: int) -> dict:
    """DP = 2 × CP = 2: each replica half the batch, its two CP ranks half of each sequence; grpo.update
    for every loss aggregation, then the weights after the step."""
    out = {"cp_rank": None, "update": {}, "ref": {}}
    for loss_agg in LOSS_AGGS:
        ref = _reference(loss_agg)
        policy, _ = _cp_layout(ref["cfg"], ref["weights"])
        state = policy.state
        assert (state.dp_size, state.cp_size) == (2, 2)
        half = B // 2
        local = {k: v[state.dp_rank * half : (state.dp_rank + 1) * half] for k, v in ref["batch"].items()}
        out["update"][loss_agg] = _update(policy, ref["cfg"], local, micro_batch_size=1)
        out["ref"][loss_agg] = ref["update"]
        out["cp_rank"], out["dp_rank"] = state.cp_rank, state.dp_rank
    out["stepped"] = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    return out


def _train_worker(rank: int, run_dir: str, cp: int) -> dict:
    from megatron_r1.config import load_config
    from megatron_r1.training.run import train

    cfg = load_config(
        None,
        [
            f"parallel.context_parallel={cp}",
            "train.steps=1",
            "train.sft_warmup_steps=0",
            "data.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=12",
            "algorithm.kl_coef=0.01",  # a learning signal even if every group's rewards are equal
            "eval.every=0",
            "data.eval_size=4",
            "log.tensorboard=false",
            "log.progress=false",
        ],
    )
    return train(cfg, run_dir)


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    ds = _make_hf_model("deepseek_v3", root / "deepseek_v3")
    return {"deepseek_v3": str(ds), "mla_dense": str(_dense_variant(ds, root / "mla_dense"))}


@pytest.fixture(scope="module")
def two_ranks(hf_dirs, tmp_path_factory) -> list[dict]:
    """Every CP = 2 case in one 2-process world (importing Megatron costs more than the checks)."""
    results = run_workers(_two_ranks_worker, 2, tmp_path_factory.mktemp("cp"), hf_dirs, timeout=300)
    for r in results:
        print("phase seconds:", {k: round(v, 2) for k, v in r["times"].items()})
    return results


# --------------------------------------------------------------------------------------------------- checks


def _check_grads_fp32(got: dict, want: dict, what: str) -> None:
    """Every gradient within 1e-6 (these are of order 0.1–1; fp32 summation-order noise measured here: up to
    1.2e-7 at CP = 2, 7.7e-7 at CP = 2 × TP = 2)."""
    assert sorted(got) == sorted(want), what
    for name, g in want.items():
        scale = max(g.abs().max().item(), 1.0)
        torch.testing.assert_close(got[name], g, rtol=1e-6, atol=1e-6 * scale, msg=f"{what}: grad {name}")


def _check_dense(results: list[dict], what: str) -> None:
    """Every rank's results against the reference; gradients reassembled per CP rank (TP shards joined,
    pipeline stages united): after the optimizer's sum over CP each CP rank holds the whole gradient."""
    from test_parallel import _unshard

    ref = results[0]["ref"]
    last = max(r["pp_rank"] for r in results)
    assert ref["metrics"]["clip_fraction"] > 0, "the batch should exercise the clipped branch"
    for r in results:
        where = f"{what} (pp, cp, tp) = ({r['pp_rank']}, {r['cp_rank']}, {r['tp_rank']})"
        if r["pp_rank"] == last:  # the loss, its metrics and the log-probs live on the last stage
            _check_metrics(r["metrics"], ref["metrics"], where)  # summed over CP by the policy
            torch.testing.assert_close(r["logprobs"], ref["logprobs"], rtol=1e-5, atol=1e-5, msg=where)
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), where
        _check_update(r["update"]["token-mean"], ref["update"], where)
        for loss_agg in LOSS_AGGS[1:]:
            _check_update(r["update"][loss_agg], ref[f"update/{loss_agg}"], f"{where} {loss_agg}")
    grid = {(r["pp_rank"], r["cp_rank"], r["tp_rank"]): r for r in results}
    tp_size = 1 + max(r["tp_rank"] for r in results)
    # Each CP rank alone holds a part of the gradient (its chunks); after the optimizer's sum, the whole.
    name = "output_layer.weight"
    local = [grid[last, cp, 0]["local_grads"][name] for cp in (0, 1)]
    assert not torch.allclose(local[0], local[1], rtol=1e-3), "CP ranks saw the same tokens"
    for cp_rank in range(2):
        grads = {}
        for stage in range(last + 1):
            shards = [grid[stage, cp_rank, t] for t in range(tp_size)]
            dims = shards[0]["partition_dims"]
            grads |= {n: _unshard(n, [s["grads"][n] for s in shards], dims[n]) for n in shards[0]["grads"]}
        _check_grads_fp32(grads, ref["grads"], f"{what} cp rank {cp_rank}")


def _check_hf(per_rank: list[dict], what: str) -> None:
    """Every CP rank reports its replica's whole loss (the replicas' losses add up to one process's);
    gradients (replicated over CP after the optimizer's sum), the norm, the expert bias update and the router
    load are one process's."""
    ref = per_rank[0]["ref"]
    got = [r["got"] for r in per_rank]
    assert sum(r["loss"] for r in got) / 2 == pytest.approx(ref["loss"], rel=1e-5), f"{what}: loss"  # CP = 2
    for r in got:
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), f"{what}: grad norm"
        for name, bias in r["bias"].items():
            torch.testing.assert_close(bias, ref["bias"][name], rtol=0, atol=0, msg=f"{what}: {name}")
        for key, value in ref["router_load"].items():
            # The reference's counts are summed over the world (it ran on both ranks): twice the batch.
            want = value if key == "moe/load_balance" else value / len(per_rank)
            assert r["router_load"][key] == pytest.approx(want, rel=1e-9), f"{what}: {key}"
    _check_grads_fp32(_reassemble(got), {n: g for n, (g, *_rest) in ref["grads"].items()}, what)


# ---------------------------------------------------------------------------------------------------- tests


def test_dense_context_parallel_matches_single_process(two_ranks):
    """CP = 2, the tiny dense model: loss and metrics (summed over CP), every gradient, the norm, the
    log-probs gathered back to whole sequences, grpo.update under token-mean, seq-mean-token-mean
    (per-sequence counts from the full masks) and Dr.GRPO's sum-norm."""
    _check_dense([r["dense"] for r in two_ranks], "CP=2")


def test_sft_step_under_context_parallel(two_ranks):
    """sft.sft_step under CP = 2: the whole batch's loss and norm, also with the examples packed into one row
    (positions restarting at 0, the block-diagonal mask split over its query dim)."""
    for r in two_ranks:
        want = r["dense"]["sft_ref"]
        for name in ("sft", "sft_packed"):
            for k in ("sft/loss", "sft/grad_norm"):
                assert r["dense"][name][k] == pytest.approx(want[k], rel=1e-5), f"{name}: {k}"


@pytest.mark.parametrize("model", ["mla_dense", "deepseek_v3"])
def test_deepseek_v3_shape_context_parallel(two_ranks, model):
    """CP = 2 on MLA (the shared rotary key, YaRN-free rope sliced per CP rank) and on the whole DeepSeek-V3
    shape (routed + shared experts, the expert bias updated from counts over CP): 11 tokens padded to 12."""
    _check_hf([r["deepseek_v3"][model] for r in two_ranks], f"{model} CP=2")


def test_moe_aux_loss_under_context_parallel(two_ranks):
    """Qwen3-MoE with the aux loss under CP = 2: each router sees its rank's half of every sequence; the loss
    and every gradient (routers' included: aux loss weighted by the tokens summed over DP × CP) match."""
    for r in two_ranks:
        ref, got = r["moe_aux_loss"]["ref"], r["moe_aux_loss"]["got"]
        _check_metrics(got["metrics"], ref["metrics"], "MoE aux loss CP=2")
        _check_grads_fp32(got["grads"], ref["grads"], "MoE aux loss CP=2")
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)


def test_data_and_context_parallel_four_ranks(tmp_path):
    """DP = 2 × CP = 2 (4 processes): gradients summed over the DP × CP group, metrics over CP then DP; every
    rank reports the whole batch's loss and gradient norm, and all four hold the same weights after the
    step."""
    results = run_workers(_data_and_context_worker, 4, tmp_path, timeout=300)
    assert sorted((r["dp_rank"], r["cp_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in results:
        for loss_agg in LOSS_AGGS:
            what = f"DP=2 x CP=2 (dp, cp) = ({r['dp_rank']}, {r['cp_rank']}) {loss_agg}"
            _check_update(r["update"][loss_agg], r["ref"][loss_agg], what, keys=("loss", "grad_norm"))
        for name, w in results[0]["stepped"].items():
            torch.testing.assert_close(r["stepped"][name], w, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("case", ["qwen2", "deepseek_v3"])
def test_planned_activations_under_context_parallel(two_ranks, case):
    """The planner's activation bytes of one layer under CP = 2 (local spec: K / V gathered over CP, scores
    over the whole sequence) against the tensors Megatron's autograd graph really saves on each rank."""
    for r in two_ranks:
        planned, measured = r["activations"][case]["activations"]
        # What the planner leaves out is per sequence, not per token (the causal mask, RoPE's cos / sin).
        assert planned == pytest.approx(measured, rel=0.06)
        assert planned <= measured


@pytest.mark.parametrize("case", ["qwen2", "deepseek_v3"])
def test_planned_context_parallel_traffic(two_ranks, case):
    """The planner's K / V bytes per layer a CP rank receives (its communication time's CP term) against
    what the attention's all-gathers really received in a forward of the model (bf16, CP = 2)."""
    for r in two_ranks:
        planned, measured = r["activations"][case]["kv_bytes"]
        assert measured > 0
        assert planned == pytest.approx(measured, rel=1e-9)


def test_deepseek_v3_shape_context_and_expert_parallel_four_ranks(hf_dirs, tmp_path):
    """CP = 2 × EP = 2 (DP = 2, 4 processes): experts split over the DP ranks, each replica's sequences over
    CP; gradients (experts united), norm, expert bias and router load as one process."""
    results = run_workers(_deepseek_v3_ep_worker, 4, tmp_path, hf_dirs["deepseek_v3"], timeout=300)
    assert sorted(r["got"]["dp_rank"] for r in results) == [0, 0, 1, 1]
    _check_hf(results, "deepseek_v3 CP=2 x EP=2")


def test_context_and_tensor_parallel_four_ranks(tmp_path):
    """CP = 2 × TP = 2 (4 processes), with sequence parallelism (the sequence padded to 2 × CP × TP, each CP
    rank's part split again over TP) and without."""
    layouts = {"sp": {"tp": 2, "sp": True}, "no_sp": {"tp": 2}}
    results = run_workers(_four_ranks_worker, 4, tmp_path, layouts, timeout=300)
    for name in layouts:
        per_rank = [r[name] for r in results]
        assert sorted((r["cp_rank"], r["tp_rank"]) for r in per_rank) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        _check_dense(per_rank, f"CP=2 x TP=2 ({name})")


def test_context_and_pipeline_parallel_four_ranks(tmp_path):
    """CP = 2 × PP = 2 (4 processes, 1F1B over gloo): the stages pass CP-local activations (the schedule's
    shapes divide the sequence by CP); loss on the last stage, gradients united over the stages."""
    results = [r["pp"] for r in run_workers(_four_ranks_worker, 4, tmp_path, {"pp": {"pp": 2}}, timeout=300)]
    assert sorted((r["pp_rank"], r["cp_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    _check_dense(results, "CP=2 x PP=2")


def test_grpo_first_step_context_parallel_matches_one_process(tmp_path):
    """A GRPO run with parallel.context_parallel=2 (two processes, as torchrun) and the same run in one
    process: the same completions (generated on the replica's first rank, broadcast to its CP peer), and
    the first step's metrics match."""
    one = run_workers(_train_worker, 1, tmp_path / "one", str(tmp_path / "one" / "run"), 1, timeout=300)
    two = run_workers(_train_worker, 2, tmp_path / "two", str(tmp_path / "two" / "run"), 2, timeout=300)
    rows = {
        k: [json.loads(line) for line in (tmp_path / k / "run" / "metrics.jsonl").read_text().splitlines()]
        for k in ("one", "two")
    }
    want, got = rows["one"][-1], rows["two"][-1]
    assert want["step"] == got["step"] == 1
    assert want["skipped"] == 0.0 and math.isfinite(want["loss"])
    for key in ("reward/mean", "response_length/mean", *METRICS[:-1], "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert two[0]["loss"] == pytest.approx(two[1]["loss"]) == pytest.approx(one[0]["loss"], rel=1e-5)
    assert got["logprob_diff"] < 1e-4  # the engine sampled with the weights the trainer had
