"""The GRPO loop: rollout → reward → group-relative advantage → clipped policy update (+ β·KL) → weight sync.

``grpo_step`` reads like the algorithm; each phase is a call into its own module and is timed.
Data parallelism: each DP replica generates and scores its own share of the prompts (whole groups, so the
group baseline never crosses ranks); loss denominators are global, so the summed gradients equal one big
batch.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist

from megatron_r1 import kernels
from megatron_r1.algorithms import (
    aggregate_loss,
    clipped_surrogate,
    compute_advantages,
    kl_k3,
    truncated_importance_weights,
)
from megatron_r1.eval.metrics import summarise
from megatron_r1.rewards.math_answer import extract_final_answer
from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.reshard import hf_weight_buckets
from megatron_r1.training.batch import build_batch
from megatron_r1.training.metrics import PhaseTimer
from megatron_r1.training.optim import lr_at
from megatron_r1.training.setup import Components

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite losses in a row)."""


def sampling_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank) % (2**31)


def sync_weights(c: Components) -> None:
    """Megatron shards → full HF-named tensors → the rollout engine, in bounded buckets."""
    bucket_bytes = c.cfg.rollout.weight_sync_bucket_mb * 2**20
    for bucket in hf_weight_buckets(c.model, c.state, c.to_hf, bucket_bytes):
        c.engine.update_weights(bucket)  # every rank gathers; an IdleEngine (native, off the leader) drops it


def _dp_sum(values: list[float], c: Components) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=c.state.device)
    if c.state.dp_size > 1:
        dist.all_reduce(t, group=c.state.dp_group)
    return t.tolist()


def _from_last_stage(values: dict[str, float], c: Components) -> dict[str, float]:
    """Metrics computed on the last pipeline stage (zeros elsewhere), made known to every stage."""
    if c.state.pp_size == 1:
        return values
    keys = list(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=c.state.device)
    dist.all_reduce(t, group=c.state.pp_group)
    return dict(zip(keys, t.tolist()))


def grpo_loss_fn(c: Components, num_tokens: float, num_seqs: float):
    """The per-micro-batch loss: clipped surrogate + β·k3 KL, aggregated with global denominators.

    Where the Triton kernels run (``train.logprob_impl``: CUDA under auto, or forced), the per-token
    terms come from the fused ``megatron_r1.kernels.grpo_loss``; elsewhere from the pure functions of
    ``algorithms``. With ``algorithm.tis_clip`` the surrogate term is weighted by the truncated
    importance weight min(π_train / π_sampler, C) of each token (both paths take the same weights).
    """
    a = c.cfg.algorithm
    impl = c.cfg.train.logprob_impl

    def loss_fn(logprobs, entropy, mb):
        mask = mb["response_mask"]
        old = mb.get("old_logprobs", logprobs.detach())  # π_train: the trainer's log-probs before the update
        ref = mb.get("ref_logprobs")
        n = mask.sum()
        tis = None
        if a.tis_clip > 0:
            tis, truncated = truncated_importance_weights(old, mb["sampler_logprobs"], a.tis_clip, mask)
        if impl == "triton" or (impl == "auto" and logprobs.is_cuda and kernels.triton_available()):
            per_token, clip_fraction, kl_mean = kernels.grpo_loss(
                logprobs,
                old,
                mb["advantages"],
                mask,
                ref,
                a.clip_low,
                a.clip_high,
                a.kl_coef,
                impl="triton",
                pg_weights=tis,
            )
            clipped_sum, kl_sum = clip_fraction * n, kl_mean * n
        else:
            per_token, clipped = clipped_surrogate(
                logprobs, old, mb["advantages"], a.clip_low, a.clip_high, mask=mask, weights=tis
            )
            kl = kl_k3(logprobs, ref, mask=mask) if ref is not None else torch.zeros_like(per_token)
            per_token = per_token + a.kl_coef * kl
            clipped_sum, kl_sum = (clipped.float() * mask).sum(), (kl.detach() * mask).sum()
        loss = aggregate_loss(
            per_token,
            mask,
            a.loss_agg,
            num_tokens,
            num_seqs,
            norm_constant=c.cfg.rollout.max_new_tokens,
            seq_tokens=mb.get("seq_tokens"),  # whole sequences' counts: under CP mask is a part of each
        )
        metrics = {
            "loss": loss.detach(),
            "kl": kl_sum.detach(),
            "clip_fraction": clipped_sum.detach(),
            "entropy": (entropy.detach() * mask).sum() if entropy is not None else n * 0,
            "logprob_diff": ((logprobs.detach() - mb["sampler_logprobs"]).abs() * mask).sum(),
            "tokens": n,
        }
        if tis is not None:
            metrics["tis_weight"] = (tis * mask).sum()
            metrics["tis_clipped"] = (truncated.float() * mask).sum()
        return loss, metrics

    return loss_fn


def rollout(c: Components, step: int, rows: list[dict]):
    r = c.cfg.rollout
    sampling = SamplingParams(
        n=r.group_size,
        temperature=r.temperature,
        top_p=r.top_p,
        max_new_tokens=r.max_new_tokens,
        stop_token_ids=(c.tokenizer.eos_token_id,),
        stop_strings=tuple(r.stop_strings),
        seed=sampling_seed(c.cfg.train.seed, step, c.state.dp_rank),
    )
    prompt_ids = [c.prompts.encode(row) for row in rows]
    return prompt_ids, generate_once(c, prompt_ids, sampling)


def generate_once(c: Components, prompt_ids: list[list[int]], sampling: SamplingParams) -> list:
    """Generate on the first rank of each data-parallel replica (TP × CP × PP) and broadcast to the others,
    so every rank of a DP replica trains on the same completions (two GPUs need not sample bit-identically);
    an SPMD engine (vLLM under torchrun) generates on every rank in the rollout layout (``rollout/spmd``)."""
    s = c.state
    if getattr(c.engine, "spmd", False):  # vLLM on every rank, in its own rollout layout
        from megatron_r1.rollout.spmd import generate_spmd

        tp = c.cfg.rollout.tensor_parallel
        return generate_spmd(c.engine, prompt_ids, sampling, s.dp_rank, s.dp_size, tp)
    if s.tp_size * s.pp_size * s.cp_size == 1:
        return c.engine.generate(prompt_ids, sampling) if prompt_ids else []
    group = s.replica_group
    if group is None:
        from megatron.core import parallel_state as mpu

        group = mpu.get_model_parallel_group()
    leader = dist.get_global_rank(group, 0)
    payload = [None]
    if s.mp_leader:
        payload = [c.engine.generate(prompt_ids, sampling) if prompt_ids else []]
    dist.broadcast_object_list(payload, src=leader, group=group)
    return payload[0]


UPDATE_METRICS = (
    "loss",
    "kl",
    "clip_fraction",
    "entropy",
    "logprob_diff",
    "grad_norm",
    "skipped",
    "no_signal",
)
TIS_METRICS = {"tis/weight_mean": "tis_weight", "tis/clipped_fraction": "tis_clipped"}
"""Token-weighted means reported with algorithm.tis_clip > 0 → the loss function's per-token sums."""


def has_learning_signal(c: Components, batch: dict[str, torch.Tensor]) -> bool:
    """False when no token of the step (over all DP replicas) carries a gradient: every advantage is 0
    (each group's rewards were all equal) and there is no KL term. Identical on every rank."""
    if c.reference is not None and c.cfg.algorithm.kl_coef > 0:
        return True
    signal = (batch["advantages"].abs() * (batch["response_mask"].sum(dim=1) > 0)).sum().item()
    return _dp_sum([signal], c)[0] > 0


def no_signal_metrics(tis: bool) -> dict[str, float]:
    """The update's metrics for a step without learning signal, whose forward/backward and optimizer step
    were skipped: loss, KL, clipping and gradient are exactly 0; entropy, logprob_diff and the TIS weights
    were not measured (NaN, written as null)."""
    metrics = {k: 0.0 for k in UPDATE_METRICS}
    metrics |= {"entropy": math.nan, "logprob_diff": math.nan, "no_signal": 1.0}
    if tis:
        metrics |= {k: math.nan for k in TIS_METRICS}
    return metrics


def update(c: Components, batch: dict[str, torch.Tensor], step: int, total_steps: int) -> dict[str, float]:
    """Policy-gradient update over the rollout batch: micro-batches accumulate, one optimizer step.

    A step with no learning signal (``has_learning_signal``) is not computed: its gradient would be exactly
    zero, and an optimizer step on it would only move the weights by Adam's momentum / weight decay.
    """
    cfg = c.cfg
    mbs = cfg.train.micro_batch_size
    if not has_learning_signal(c, batch):
        return no_signal_metrics(cfg.algorithm.tis_clip > 0)
    # Everything is scored at the rollout temperature, the distribution the sampler drew from: the ratio,
    # the reference's log-probs (KL between the tempered distributions, as verl) and the entropy.
    temp = cfg.rollout.temperature
    num_tokens, num_seqs = _dp_sum([batch["response_mask"].sum().item(), batch["tokens"].shape[0]], c)
    batch["seq_tokens"] = batch["response_mask"].sum(dim=1)  # per sequence, before any context-parallel split
    if c.reference is not None:
        batch["ref_logprobs"] = _on_all_stages(c.reference.logprobs(batch, mbs, temp), batch, c)
    if cfg.algorithm.ppo_epochs > 1:
        batch["old_logprobs"] = _on_all_stages(c.policy.logprobs(batch, mbs, temp), batch, c)
    totals: dict[str, float] = {}
    for _ in range(cfg.algorithm.ppo_epochs):
        loss_fn = grpo_loss_fn(c, num_tokens, num_seqs)
        outs = c.policy.run(batch, loss_fn, mbs, with_entropy=True, temperature=temp)
        for out in outs:
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        grad_norm, stepped = c.optimizer.step(lr_at(step, cfg.train, total_steps))
    # Raw sums from the last stage, summed over the DP replicas, then divided: token-weighted global means.
    means = ["kl", "clip_fraction", "entropy", "logprob_diff"]
    if cfg.algorithm.tis_clip > 0:
        means += list(TIS_METRICS.values())
    keys = ["loss", "tokens", *means]
    sums = dict(
        zip(keys, _dp_sum(list(_from_last_stage({k: totals.get(k, 0.0) for k in keys}, c).values()), c))
    )
    tokens = max(sums["tokens"], 1.0)
    metrics = {k: sums[k] / tokens for k in means}
    for name, key in TIS_METRICS.items():
        if key in metrics:
            metrics[name] = metrics.pop(key)
    # Each replica's loss is its share of the global batch's (global denominators): shares add up.
    metrics["loss"] = sums["loss"] / cfg.algorithm.ppo_epochs
    metrics["grad_norm"] = grad_norm
    metrics["skipped"] = 0.0 if stepped and math.isfinite(metrics["loss"]) else 1.0
    metrics["no_signal"] = 0.0
    return metrics | c.policy.router_load.metrics(c.state)  # MoE: tokens per expert (routing collapse)


def _on_all_stages(logprobs: torch.Tensor | None, batch: dict, c: Components) -> torch.Tensor:
    """Log-probs live on the last stage; only it uses them, other stages carry a placeholder."""
    return logprobs if logprobs is not None else torch.zeros_like(batch["response_mask"])


def grpo_step(c: Components, step: int, total_steps: int, timer: PhaseTimer) -> dict[str, float]:
    """One GRPO step; returns its metrics (identical on every rank)."""
    cfg = c.cfg
    per_rank = cfg.data.prompts_per_step // c.state.dp_size
    all_rows = c.prompts.rows(step, per_rank * c.state.dp_size)
    rows = all_rows[c.state.dp_rank * per_rank : (c.state.dp_rank + 1) * per_rank]
    G = cfg.rollout.group_size

    with timer.phase("rollout"):
        c.engine.wake_up()
        prompt_ids, completions = rollout(c, step, rows)
        c.engine.sleep()
    with timer.phase("reward"):
        result = c.scorer.score(
            [comp.text for comp in completions],
            [rows[i // G] for i in range(len(completions))],
            lengths=[len(comp.token_ids) for comp in completions],
        )
        rewards = result.total_tensor()
        advantages, zero_std = compute_advantages(cfg.algorithm.advantage, rewards, G)
    with timer.phase("train"):
        batch = build_batch(prompt_ids, completions, G, c.tokenizer.pad_token_id)
        batch["advantages"] = advantages
        if cfg.algorithm.drop_zero_std_groups and not zero_std.all():
            keep = (~zero_std).repeat_interleave(G)
            batch = {k: v[keep] for k, v in batch.items()}
        batch = {k: v.to(c.state.device) for k, v in batch.items()}
        train_metrics = update(c, batch, step, total_steps)
    with timer.phase("weight_sync"):
        sync_weights(c)

    metrics = rollout_metrics(c, result, zero_std, [len(comp.token_ids) for comp in completions])
    metrics["lr"] = lr_at(step, cfg.train, total_steps)
    return metrics | train_metrics


def rollout_metrics(c: Components, result, zero_std: torch.Tensor, lengths: list[int]) -> dict[str, float]:
    """Reward, length and zero-std-group statistics of this step's rollouts, over all DP replicas."""
    rewards = result.total_tensor()
    lengths = torch.tensor(lengths, dtype=torch.float64)
    acc = torch.tensor(result.components.get(c.cfg.reward.accuracy, result.total), dtype=torch.float64)
    sums = _dp_sum(
        [
            rewards.sum().item(),
            (rewards.double() ** 2).sum().item(),
            acc.sum().item(),
            lengths.sum().item(),
            float(len(lengths)),
            float(zero_std.sum()),
            float(zero_std.numel()),
            float(result.timeouts + result.crashes + result.errors),
        ],
        c,
    )
    n = sums[4]
    mean = sums[0] / n
    max_len = lengths.max().reshape(1).to(c.state.device)
    if c.state.dp_size > 1:
        dist.all_reduce(max_len, op=dist.ReduceOp.MAX, group=c.state.dp_group)
    metrics = {
        "reward/mean": mean,
        "reward/std": math.sqrt(max(sums[1] / n - mean**2, 0.0)),
        "reward/accuracy": sums[2] / n,
        "response_length/mean": sums[3] / n,
        "response_length/max": float(max_len),
        "zero_std_groups": sums[5],
        "zero_std_fraction": sums[5] / max(sums[6], 1.0),
    }
    metrics["reward/failures"] = sums[7]
    names = sorted(result.components)
    for name, total in zip(names, _dp_sum([sum(result.components[k]) for k in names], c)):
        metrics[f"reward/{name}"] = total / n
    return metrics


def evaluate(c: Components) -> dict[str, float]:
    """Held-out evaluation the paper's way: k = eval.samples samples per problem; ``eval/accuracy`` is
    pass@1 (mean correctness), and with k > 1 also ``eval/pass@k`` and ``eval/cons@k`` (majority vote)."""
    e = c.cfg.eval
    k = e.samples
    rows = c.prompts.eval_rows[c.state.dp_rank :: c.state.dp_size]
    sampling = SamplingParams(
        n=k,
        temperature=e.temperature,
        top_p=e.top_p,
        max_new_tokens=c.cfg.rollout.max_new_tokens,
        stop_token_ids=(c.tokenizer.eos_token_id,),
        stop_strings=tuple(c.cfg.rollout.stop_strings),
        seed=sampling_seed(c.cfg.train.seed, -1, c.state.dp_rank),
    )
    c.engine.wake_up()
    completions = generate_once(c, [c.prompts.encode(r) for r in rows], sampling)
    c.engine.sleep()
    texts = [comp.text for comp in completions]
    correct = c.eval_scorer.score(texts, [rows[i // k] for i in range(len(texts))]).total
    answers = [extract_final_answer(t) for t in texts]
    summary = summarise(
        [answers[i * k : (i + 1) * k] for i in range(len(rows))],
        [correct[i * k : (i + 1) * k] for i in range(len(rows))],
    )
    keys = ["pass@1"] + ([f"pass@{k}", f"cons@{k}"] if k > 1 else [])
    totals = _dp_sum([summary.get(key, 0.0) * len(rows) for key in keys] + [float(len(rows))], c)
    problems = max(totals[-1], 1.0)
    out = {"eval/accuracy": totals[0] / problems}
    out |= {f"eval/{key}": total / problems for key, total in zip(keys[1:], totals[1:-1])}
    return out
