"""The parallel layouts are the same computation: TP=2, PP=2 and DP=2 on gloo processes against one
layout-free reference (TP=1, PP=1, the whole batch), in fp32.

Each worker first builds the reference model (TP=1, PP=1) and fills it with fixed full tensors drawn from a
seeded generator (not Megatron's initialisation, which differs per layout), runs the GRPO loss on a fixed
batch through ``Policy.run`` and keeps loss, metrics and gradients. It then re-initialises Megatron's groups
in the layout under test, loads the same full weights (sliced into TP shards / split into PP stages), runs the
same batch and returns its loss, metrics and local gradients; the test reassembles shards and stages and
compares. ``grpo.update`` (a clipped AdamW step) and ``sft.sft_step`` are checked the same way, as is the
weight sync (``full_megatron_tensors``). The reference runs inside the workers so the pytest process never
initialises torch.distributed; all layouts share one 2-process world (importing Megatron-Core costs more
than every check together), which the module fixture starts once.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from dist_utils import run_workers

VOCAB = 64
B, S = 4, 12
PROMPT_LENS = [3, 4, 2, 5]
SEQ_LENS = [12, 9, 7, 10]  # prompt + response; right-padded to S
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
METRICS = ("loss", "kl", "clip_fraction", "entropy", "logprob_diff", "tokens")
UPDATE_METRICS = ("loss", "kl", "clip_fraction", "entropy", "logprob_diff", "grad_norm", "skipped")


# ------------------------------------------------------------------------------------------ worker helpers


def _cfg(num_layers: int = 2, loss_agg: str = "token-mean", tied: bool = False):
    from megatron_r1.config import Config

    cfg = Config()
    cfg.model.vocab_size = VOCAB
    cfg.model.num_layers = num_layers
    cfg.model.tie_word_embeddings = tied
    cfg.model.ffn_hidden_size = 96
    cfg.algorithm.kl_coef = 0.1
    cfg.algorithm.clip_high = 0.28
    cfg.algorithm.loss_agg = loss_agg
    cfg.rollout.max_new_tokens = S
    return cfg


def _full_weights(model) -> dict[str, torch.Tensor]:
    """Fixed full tensors for a TP=1, PP=1 model's parameters (same on every rank and layout)."""
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        weights[name] = 1.0 + 0.1 * noise if p.dim() == 1 else 0.15 * noise
    return weights


def _global_names(model) -> dict[str, str]:
    """Local parameter name → name with the global layer index (layer_number - 1)."""
    out = {}
    for name, _ in model.named_parameters():
        if name.startswith("decoder.layers."):
            local, rest = name[len("decoder.layers.") :].split(".", 1)
            name_global = f"decoder.layers.{model.decoder.layers[int(local)].layer_number - 1}.{rest}"
            out[name] = name_global
        else:
            out[name] = name
    return out


def _shard(name: str, full: torch.Tensor, param, rank: int, size: int) -> torch.Tensor:
    """This TP rank's slice of a full tensor: contiguous along ``partition_dim``, except linear_fc1 (gated
    SwiGLU), whose shard is [gate_r; up_r].
    linear_qkv is grouped by query group, so a dim-0 slice is exact."""
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    if name.endswith("mlp.linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    return full.chunk(size, dim=param.partition_dim)[rank]


def _unshard(name: str, shards: list[torch.Tensor], partition_dim: int | None) -> torch.Tensor:
    """The inverse of :func:`_shard` (``partition_dim`` None: replicated, all shards equal)."""
    if partition_dim is None:
        for s in shards[1:]:
            torch.testing.assert_close(s, shards[0], rtol=0, atol=0, msg=f"replicated {name} differs")
        return shards[0]
    if name.endswith("mlp.linear_fc1.weight"):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=partition_dim)


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.zeros(B, S, dtype=torch.long)
    mask = torch.zeros(B, S - 1)
    for i, (p, n) in enumerate(zip(PROMPT_LENS, SEQ_LENS)):
        tokens[i, :n] = torch.randint(1, VOCAB, (n,), generator=gen)
        mask[i, p - 1 : n - 1] = 1.0
    return {
        "tokens": tokens,
        "response_mask": mask,
        "advantages": torch.randn(B, generator=gen),
        "sampler_logprobs": -torch.rand(B, S - 1, generator=gen) * 4 * mask,
    }


def _add_old_and_ref(policy, batch: dict) -> dict:
    """old / reference log-probs near the policy's own, so the ratio is off 1 and some tokens clip."""
    gen = torch.Generator().manual_seed(2)
    logprobs = policy.logprobs(batch, micro_batch_size=B)
    mask = batch["response_mask"]
    batch["old_logprobs"] = logprobs + 0.3 * torch.randn(logprobs.shape, generator=gen) * mask
    batch["ref_logprobs"] = logprobs + 0.3 * torch.randn(logprobs.shape, generator=gen) * mask
    return batch


def _counts(batch: dict, state) -> tuple[float, float]:
    """Global (data-parallel) token and sequence counts, as grpo.update computes them."""
    from megatron_r1.training.grpo import _dp_sum

    local = [batch["response_mask"].sum().item(), float(batch["tokens"].shape[0])]
    return tuple(_dp_sum(local, SimpleNamespace(state=state)))


def _run(policy, cfg, batch: dict, counts: tuple[float, float], micro_batch_size: int) -> dict:
    """One GRPO forward/backward; returns summed metrics (last stage), local grads and the grad norm."""
    from megatron_r1.training.grpo import grpo_loss_fn
    from megatron_r1.training.optim import LocalOptimizer

    model = policy.model
    opt = LocalOptimizer(model, cfg.train, policy.state)
    opt.zero_grad()
    loss_fn = grpo_loss_fn(SimpleNamespace(cfg=cfg), *counts)
    outs = policy.run(batch, loss_fn, micro_batch_size, with_entropy=True)
    metrics = {k: sum(float(o[k]) for o in outs) for k in METRICS} if outs else {}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"metrics": metrics, "grads": grads, "grad_norm": opt.grad_norm(), "opt": opt}


def _update(policy, cfg, batch: dict, micro_batch_size: int) -> dict:
    """``grpo.update`` (one clipped AdamW step through LocalOptimizer) on these components; its metrics."""
    from megatron_r1.training.grpo import update
    from megatron_r1.training.optim import LocalOptimizer

    cfg.train.micro_batch_size = micro_batch_size
    optimizer = LocalOptimizer(policy.model, cfg.train, policy.state)
    optimizer.zero_grad()  # as the trainer leaves them after every step
    c = SimpleNamespace(cfg=cfg, state=policy.state, policy=policy, optimizer=optimizer, reference=None)
    return update(c, dict(batch), step=0, total_steps=1)


def _sft(cfg, weights: dict, batch: dict, micro_batch_size: int, hide_dp: bool = False, **layout) -> dict:
    """``sft.sft_step`` (the warm-up's step) on a fresh model with the fixed weights in ``layout``;
    ``hide_dp``: the reference, local to this process."""
    import dataclasses

    from megatron_r1.training.optim import LocalOptimizer
    from megatron_r1.training.sft import sft_step

    policy, _ = _layout(cfg, weights, **layout)
    if hide_dp:
        policy.state = dataclasses.replace(policy.state, dp_size=1, dp_rank=0)
    cfg.train.micro_batch_size = micro_batch_size
    optimizer = LocalOptimizer(policy.model, cfg.train, policy.state)
    c = SimpleNamespace(cfg=cfg, state=policy.state, policy=policy, optimizer=optimizer)
    sft = {"tokens": batch["tokens"], "loss_mask": batch["response_mask"]}
    return sft_step(c, sft, lr=1e-3)


def _sft_packed(cfg, weights: dict, batch: dict, **layout) -> dict:
    """``sft.sft_step`` on this rank's sequences packed into one row (data/sft.py: positions restarting at
    0, block-diagonal mask), as one token-budget micro-batch."""
    from megatron_r1.data.sft import Example, packed_batch
    from megatron_r1.training.optim import LocalOptimizer
    from megatron_r1.training.sft import sft_step

    policy, _ = _layout(cfg, weights, **layout)
    examples = []
    for tokens, mask in zip(batch["tokens"].tolist(), batch["response_mask"]):
        start, end = int(mask.nonzero()[0]) + 1, int(mask.nonzero()[-1]) + 2
        examples.append(Example(tokens[:start], tokens[start:end]))
    optimizer = LocalOptimizer(policy.model, cfg.train, policy.state)
    c = SimpleNamespace(cfg=cfg, state=policy.state, policy=policy, optimizer=optimizer)
    return sft_step(c, [packed_batch([examples], pad_id=0)], lr=1e-3)


def _reference(
    num_layers: int, loss_agg: str = "token-mean", micro_batch_size: int = 2, tied: bool = False
) -> dict:
    """TP=1, PP=1 model with the fixed weights on the whole batch (local to this process: the world's
    data-parallel group is hidden from it, so nothing is reduced across ranks)."""
    import dataclasses

    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed
    from megatron_r1.training.policy import Policy

    cfg = _cfg(num_layers, loss_agg, tied)
    state = dataclasses.replace(init_distributed(cfg.parallel), dp_size=1, dp_rank=0)
    model = build_model(cfg.model, cfg.parallel)
    weights = _full_weights(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    policy = Policy(model, state)
    batch = _add_old_and_ref(policy, _batch())
    counts = (batch["response_mask"].sum().item(), float(B))
    out = _run(policy, cfg, batch, counts, micro_batch_size)
    out.pop("opt")
    out["update"] = _update(policy, cfg, batch, micro_batch_size)
    return out | {"weights": weights, "batch": batch, "cfg": cfg}


def _layout(cfg, weights: dict, tp: int = 1, pp: int = 1):
    """Re-initialise Megatron's groups as TP=tp, PP=pp; this rank's model with the shared full weights."""
    from megatron_r1.models import build_model
    from megatron_r1.parallel import init_distributed
    from megatron_r1.training.policy import Policy

    cfg.parallel.tensor_parallel = tp
    cfg.parallel.pipeline_parallel = pp
    state = init_distributed(cfg.parallel)
    model = build_model(cfg.model, cfg.parallel, state.is_first_stage, state.is_last_stage)
    names = _global_names(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gname = names[name]
            # Tied embeddings under PP: the last stage's output layer is a copy of the embedding.
            full = weights[gname if gname in weights else "embedding.word_embeddings.weight"]
            p.copy_(_shard(gname, full, p, state.tp_rank, state.tp_size))
    return Policy(model, state), names


def _partition_dims(model, names: dict) -> dict:
    return {
        names[n]: (p.partition_dim if getattr(p, "tensor_model_parallel", False) else None)
        for n, p in model.named_parameters()
    }


def _ref_summary(ref: dict) -> dict:
    return {k: ref[k] for k in ("metrics", "grads", "grad_norm", "weights", "update")}


# ------------------------------------------------------------------------------------------------ workers


def _tp(rank: int) -> dict:
    from megatron_r1.rollout.reshard import full_megatron_tensors

    ref = _reference(num_layers=2)
    policy, names = _layout(ref["cfg"], ref["weights"], tp=2)
    got = _run(policy, ref["cfg"], ref["batch"], (ref["metrics"]["tokens"], float(B)), micro_batch_size=2)
    full = {n: t.clone() for n, t in full_megatron_tensors(policy.model, policy.state)}
    return {
        "ref": _ref_summary(ref),
        "tp_rank": policy.state.tp_rank,
        "metrics": got["metrics"],
        "grads": {names[n]: g for n, g in got["grads"].items()},
        "grad_norm": got["grad_norm"],
        "partition_dims": _partition_dims(policy.model, names),
        "full": full,
        "update": _update(policy, ref["cfg"], ref["batch"], micro_batch_size=2),
    }


def _pp(rank: int) -> dict:
    from megatron_r1.rollout.reshard import full_megatron_tensors

    ref = _reference(num_layers=4)
    policy, names = _layout(ref["cfg"], ref["weights"], pp=2)
    got = _run(policy, ref["cfg"], ref["batch"], (ref["metrics"]["tokens"], float(B)), micro_batch_size=1)
    full = {n: t.clone() for n, t in full_megatron_tensors(policy.model, policy.state)}
    return {
        "ref": _ref_summary(ref),
        "pp_rank": policy.state.pp_rank,
        "layer_numbers": [layer.layer_number for layer in policy.model.decoder.layers],
        "metrics": got["metrics"],
        "grads": {names[n]: g for n, g in got["grads"].items()},
        "grad_norm": got["grad_norm"],
        "full": full,
        "update": _update(policy, ref["cfg"], ref["batch"], micro_batch_size=1),
        "sft": _sft(ref["cfg"], ref["weights"], ref["batch"], micro_batch_size=1, pp=2),
        "sft_ref": _sft(ref["cfg"], ref["weights"], ref["batch"], micro_batch_size=B, hide_dp=True),
        "sft_packed": _sft_packed(ref["cfg"], ref["weights"], ref["batch"], pp=2),
    }


def _tp_pp_worker(rank: int) -> dict:
    """TP=2 × PP=2 on 4 ranks (its own world: the layouts world has 2)."""
    from megatron_r1.rollout.reshard import full_megatron_tensors

    ref = _reference(num_layers=4)
    policy, names = _layout(ref["cfg"], ref["weights"], tp=2, pp=2)
    got = _run(policy, ref["cfg"], ref["batch"], (ref["metrics"]["tokens"], float(B)), micro_batch_size=2)
    full = {n: t.clone() for n, t in full_megatron_tensors(policy.model, policy.state)}
    return {
        "ref": _ref_summary(ref) if rank == 0 else None,
        "tp_rank": policy.state.tp_rank,
        "pp_rank": policy.state.pp_rank,
        "metrics": got["metrics"],
        "grads": {names[n]: g for n, g in got["grads"].items()},
        "grad_norm": got["grad_norm"],
        "partition_dims": _partition_dims(policy.model, names),
        "full": full,
        "update": _update(policy, ref["cfg"], ref["batch"], micro_batch_size=2),
    }


def _pp_tied(rank: int) -> dict:
    """PP=2 with tied embeddings: the first stage's embedding and the last stage's output layer are two
    copies of one weight; after the optimizer's reduction each must hold the whole (tied) gradient."""
    from megatron_r1.rollout.reshard import full_megatron_tensors

    ref = _reference(num_layers=4, tied=True)
    policy, names = _layout(ref["cfg"], ref["weights"], pp=2)
    got = _run(policy, ref["cfg"], ref["batch"], (ref["metrics"]["tokens"], float(B)), micro_batch_size=2)
    got["opt"]._reduce_grads()
    grads = {names[n]: p.grad.detach().clone() for n, p in policy.model.named_parameters()}
    out = {
        "ref": _ref_summary(ref),
        "pp_rank": policy.state.pp_rank,
        "metrics": got["metrics"],
        "grads": grads,
        "grad_norm": got["opt"].grad_norm(),
        "update": _update(policy, ref["cfg"], ref["batch"], micro_batch_size=2),
    }
    # After the step both copies must still be equal (the weight sync sends both names).
    stepped = dict(full_megatron_tensors(policy.model, policy.state))
    out["copies"] = (stepped["embedding.word_embeddings.weight"], stepped["output_layer.weight"])
    return out


def _dp(rank: int) -> dict:
    results = {}
    for loss_agg in LOSS_AGGS:
        ref = _reference(num_layers=2, loss_agg=loss_agg, micro_batch_size=B)
        policy, _ = _layout(ref["cfg"], ref["weights"])
        state = policy.state
        assert state.dp_size == 2 and state.tp_size == 1
        half = B // 2
        local = {k: v[state.dp_rank * half : (state.dp_rank + 1) * half] for k, v in ref["batch"].items()}
        got = _run(policy, ref["cfg"], local, _counts(local, state), micro_batch_size=1)
        got["opt"]._reduce_grads()
        grads = {n: p.grad.detach().clone() for n, p in policy.model.named_parameters()}
        results[loss_agg] = {
            "ref": _ref_summary(ref) | {"weights": None},
            "metrics": got["metrics"],
            "local_grads": got["grads"],
            "grads": grads,
            "grad_norm": got["opt"].grad_norm(),
            "update": _update(policy, ref["cfg"], local, micro_batch_size=1),
            "stepped": {n: p.detach().clone() for n, p in policy.model.named_parameters()},
        }
    # SFT under DP: each rank its own examples, the global token count as the denominator.
    results["sft_ref"] = _sft(ref["cfg"], ref["weights"], ref["batch"], micro_batch_size=B, hide_dp=True)
    results["sft"] = _sft(ref["cfg"], ref["weights"], local, micro_batch_size=1)
    results["sft_packed"] = _sft_packed(ref["cfg"], ref["weights"], local)
    return results


def _accumulation(rank: int) -> dict:
    """Local to this process (the reference layout runs no collectives)."""
    results = {}
    for loss_agg in LOSS_AGGS:
        for mbs in (B, 3, 2, 1):
            ref = _reference(num_layers=2, loss_agg=loss_agg, micro_batch_size=mbs)
            results[loss_agg, mbs] = _ref_summary(ref) | {"weights": None}
    return results


def _layouts_worker(rank: int) -> dict:
    """Every layout in one 2-process world (one start-up: importing Megatron costs more than the checks)."""
    import time

    out, times = {}, {}
    phases = (("tp", _tp), ("pp", _pp), ("pp_tied", _pp_tied), ("dp", _dp), ("accumulation", _accumulation))
    for name, fn in phases:
        start = time.perf_counter()
        out[name] = fn(rank)
        times[name] = time.perf_counter() - start
    return out | {"times": times}


def _e2e_worker(rank: int, run_dir: str) -> dict:
    from megatron_r1.config import load_config
    from megatron_r1.training.run import train

    cfg = load_config(
        None,
        [
            "parallel.tensor_parallel=2",
            "train.steps=2",
            "train.sft_warmup_steps=2",
            "data.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=16",
            "algorithm.kl_coef=0.01",  # a learning signal every step: after 2 warm-up steps rewards are equal
            "eval.every=0",
            "data.eval_size=8",
            "log.tensorboard=false",
            "log.progress=false",
        ],
    )
    return train(cfg, run_dir)


# -------------------------------------------------------------------------------------------------- checks


def _close(got: torch.Tensor, want: torch.Tensor, name: str, rtol: float = 1e-5) -> None:
    """Equal up to fp32 reduction-order noise, relative to the tensor's scale."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, 1e-12), msg=name)


def _check_metrics(got: dict, want: dict, what: str) -> None:
    for k in METRICS:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), f"{what}: metric {k}"


def _check_update(got: dict, want: dict, what: str, keys=UPDATE_METRICS) -> None:
    """``grpo.update``'s returned metrics (every rank reports the whole batch's)."""
    assert want["grad_norm"] > 1.0 and want["skipped"] == 0.0, "the step should clip (grad_clip=1)"
    for k in keys:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), f"{what}: update metric {k}"


def _check_grads(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for name in want:
        _close(got[name], want[name], f"{what}: grad {name}")


def _check_full(full: dict, weights: dict, what: str) -> None:
    assert sorted(full) == sorted(weights), what
    for name, w in weights.items():
        torch.testing.assert_close(full[name], w, rtol=0, atol=0, msg=f"{what}: weight sync {name}")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Both ranks' results of :func:`_layouts_worker` (TP=2, PP=2, PP=2 tied, DP=2, accumulation)."""
    results = run_workers(_layouts_worker, 2, tmp_path_factory.mktemp("layouts"), timeout=240)
    for r in results:
        print("phase seconds:", {k: round(v, 2) for k, v in r["times"].items()})
    return results


def test_tensor_parallel_matches_single_process(layouts):
    """TP=2: loss, metrics, gradients (shards reassembled), TP-aware grad norm and the weight-sync gather."""
    results = [r["tp"] for r in layouts]
    ref = results[0]["ref"]
    assert sorted(r["tp_rank"] for r in results) == [0, 1]
    results.sort(key=lambda r: r["tp_rank"])
    assert ref["metrics"]["clip_fraction"] > 0, "the batch should exercise the clipped branch"
    for r in results:
        _check_metrics(r["metrics"], ref["metrics"], f"TP rank {r['tp_rank']}")
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        _check_full(r["full"], ref["weights"], f"TP rank {r['tp_rank']}")
        _check_update(r["update"], ref["update"], f"TP rank {r['tp_rank']}")
    dims = results[0]["partition_dims"]
    grads = {n: _unshard(n, [r["grads"][n] for r in results], dims[n]) for n in results[0]["grads"]}
    _check_grads(grads, ref["grads"], "TP=2")


def test_pipeline_parallel_matches_single_process(layouts):
    """PP=2 over 4 layers (1F1B over gloo p2p): loss from the last stage, gradients per stage under global
    layer names, PP-aware grad norm, and the weight-sync broadcast of each stage's layers."""
    results = [r["pp"] for r in layouts]
    ref = results[0]["ref"]
    first, last = sorted(results, key=lambda r: r["pp_rank"])
    assert (first["pp_rank"], last["pp_rank"]) == (0, 1)
    assert first["layer_numbers"] == [1, 2] and last["layer_numbers"] == [3, 4]
    assert first["metrics"] == {}
    _check_metrics(last["metrics"], ref["metrics"], "last stage")
    assert set(first["grads"]).isdisjoint(last["grads"])
    _check_grads(first["grads"] | last["grads"], ref["grads"], "PP=2")
    for r in results:
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        _check_full(r["full"], ref["weights"], f"PP rank {r['pp_rank']}")
        _check_update(r["update"], ref["update"], f"PP rank {r['pp_rank']}")


@pytest.mark.slow
def test_tensor_and_pipeline_parallel_4_ranks(tmp_path):
    """TP=2 × PP=2 (4 processes): per stage, TP shards reassembled; loss, gradients, norm, update metrics and
    the weight sync (TP gather inside each stage, then the PP broadcast) match the single process."""
    results = run_workers(_tp_pp_worker, 4, tmp_path, timeout=240)
    ref = results[0]["ref"]
    assert sorted((r["pp_rank"], r["tp_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    grads = {}
    for stage in (0, 1):
        ranks = sorted((r for r in results if r["pp_rank"] == stage), key=lambda r: r["tp_rank"])
        dims = ranks[0]["partition_dims"]
        grads |= {n: _unshard(n, [r["grads"][n] for r in ranks], dims[n]) for n in ranks[0]["grads"]}
        for r in ranks:
            if stage == 1:
                _check_metrics(r["metrics"], ref["metrics"], f"TP rank {r['tp_rank']} last stage")
    _check_grads(grads, ref["grads"], "TP=2 × PP=2")
    for r in results:
        what = f"(pp, tp) = ({r['pp_rank']}, {r['tp_rank']})"
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), what
        _check_full(r["full"], ref["weights"], what)
        _check_update(r["update"], ref["update"], what)


def test_pipeline_parallel_tied_embeddings(layouts):
    """PP=2, tied embeddings: both copies get the whole tied gradient (LocalOptimizer reduces them over the
    embedding group, as Megatron's finalize_model_grads does on CUDA), the norm counts it once, and the
    copies are still equal after the step."""
    results = [r["pp_tied"] for r in layouts]
    ref = results[0]["ref"]
    first, last = sorted(results, key=lambda r: r["pp_rank"])
    assert "output_layer.weight" not in ref["grads"]
    _check_metrics(last["metrics"], ref["metrics"], "last stage")
    tied = ref["grads"]["embedding.word_embeddings.weight"]
    _close(first["grads"]["embedding.word_embeddings.weight"], tied, "first stage: embedding grad")
    _close(last["grads"]["output_layer.weight"], tied, "last stage: output layer grad")
    del last["grads"]["output_layer.weight"]
    _check_grads(first["grads"] | last["grads"], ref["grads"], "PP=2 tied")
    for r in results:
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        _check_update(r["update"], ref["update"], f"PP rank {r['pp_rank']}")
        embedding, output = r["copies"]
        torch.testing.assert_close(output, embedding, rtol=0, atol=0)


def test_data_parallel_matches_single_process(layouts):
    """DP=2, half the batch each, global denominators: after LocalOptimizer._reduce_grads the gradients (and
    the norm) are the full batch's, for every loss aggregation; the losses add up to the full batch's;
    grpo.update reports the full batch's loss and norm, and the replicas stay identical after the step."""
    results = [r["dp"] for r in layouts]
    for loss_agg in LOSS_AGGS:
        ref = results[0][loss_agg]["ref"]
        per_rank = [r[loss_agg] for r in results]
        for k in METRICS:
            total = sum(r["metrics"][k] for r in per_rank)
            assert total == pytest.approx(ref["metrics"][k], rel=1e-5, abs=1e-6), f"{loss_agg}: {k}"
        # Each rank alone holds a part of the gradient; the sum is the whole.
        name = "output_layer.weight"
        assert not torch.allclose(per_rank[0]["local_grads"][name], ref["grads"][name], rtol=1e-3)
        for r in per_rank:
            _check_grads(r["grads"], ref["grads"], f"DP=2 {loss_agg}")
            assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
            # The per-token metrics are averaged over replicas (not token-weighted): loss and norm only.
            _check_update(r["update"], ref["update"], f"DP=2 {loss_agg}", keys=("loss", "grad_norm"))
        for name, w in per_rank[0]["stepped"].items():
            torch.testing.assert_close(per_rank[1]["stepped"][name], w, rtol=0, atol=0, msg=name)


def test_sft_step_data_and_pipeline_parallel(layouts):
    """sft.sft_step (the warm-up) under DP=2 (half the examples each) and PP=2: every rank reports the
    whole batch's loss and gradient norm — also with each rank's examples packed into one row (the mask
    reaches every pipeline stage)."""
    for layout in ("dp", "pp"):
        for r in layouts:
            want = r[layout]["sft_ref"]
            assert want["sft/grad_norm"] > 0
            for name in ("sft", "sft_packed"):
                for k in ("sft/loss", "sft/grad_norm"):
                    assert r[layout][name][k] == pytest.approx(want[k], rel=1e-5), f"{layout} {name}: {k}"


def test_gradient_accumulation_matches_full_batch(layouts):
    """Within one process: micro-batches of 3 (uneven), 2 and 1 give the loss, metrics and gradients of one
    micro-batch of B, for every loss aggregation."""
    results = layouts[0]["accumulation"]
    for loss_agg in LOSS_AGGS:
        want = results[loss_agg, B]
        for mbs in (3, 2, 1):
            got = results[loss_agg, mbs]
            _check_metrics(got["metrics"], want["metrics"], f"{loss_agg} mbs={mbs}")
            _check_grads(got["grads"], want["grads"], f"{loss_agg} mbs={mbs}")
            _check_update(got["update"], want["update"], f"{loss_agg} mbs={mbs}")


@pytest.mark.slow
def test_train_end_to_end_tensor_parallel(tmp_path):
    """Two GRPO steps of the tiny demo with TP=2 (after 2 SFT warm-up steps) write step 0 + 2 steps."""
    run_dir = tmp_path / "run"
    results = run_workers(_e2e_worker, 2, tmp_path, str(run_dir), timeout=300)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == [0, 1, 2]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])
    for row in lines[1:]:
        assert row["skipped"] == 0.0 and math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        # The engine sampled with the weights synced from the TP=2 shards: its log-probs are the trainer's.
        assert row["logprob_diff"] < 1e-4
    assert (run_dir / "checkpoints").is_dir()
