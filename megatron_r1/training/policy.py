"""The policy on Megatron-Core: micro-batched forward (and backward) that turns token ids into per-token
log-probs, through Megatron's pipeline schedules (no pipelining, or 1F1B across stages).

Sequences are laid out ``[prompt + response]`` from position 0 and right-padded, so plain causal attention is
exact for every real token and no attention mask is needed (the same on the local and the TE layer spec).
Position t's label is token t + 1; ``response_mask`` [B, S − 1] marks the labels that are generated tokens.

Context parallelism (CP > 1, :mod:`megatron_r1.parallel.context`): each sequence is padded to a multiple of
2 × CP (× TP under sequence parallelism), its labels are shifted *before* the split, and the model's inputs
(tokens, positions, the packed rows' mask over its query dim) and every per-label tensor of the micro-batch
(any [b, S − 1] tensor: masks, old / reference / sampler log-probs) are cut into the rank's two
load-balanced chunks. The loss function sees this rank's chunks only; its denominators are global (the
callers' counts from the full masks), so the losses of the CP ranks add up to one process's, and its
metrics (sums over tokens) are summed over the CP group here. ``logprobs()`` gathers full sequences.

Log-probs are those of ``softmax(logits / temperature)``: GRPO scores at the rollout temperature, the
distribution the sampler drew from (its log-probs are ``log_softmax(logits / T)``), so the PPO ratio, the
KL to the reference and the entropy all refer to the sampled distribution; SFT scores at 1.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from megatron_r1.kernels import token_logprobs
from megatron_r1.parallel import ParallelState
from megatron_r1.parallel.context import cp_gather, cp_split
from megatron_r1.training.router_load import RouterLoad

# (logprobs [b, S-1], entropy [b, S-1] | None, micro-batch dict) -> (loss scalar, metrics {name: tensor})
LossFn = Callable[[torch.Tensor, torch.Tensor | None, dict], tuple[torch.Tensor, dict]]

# A label no vocabulary shard holds: its row adds nothing (the kernels and the reference skip it).
IGNORE_LABEL = -1


def next_token_labels(tokens: torch.Tensor) -> torch.Tensor:
    """tokens [b, S] → labels [b, S]: token t + 1 at position t, ``IGNORE_LABEL`` at the last position."""
    return torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], IGNORE_LABEL)], dim=1)


def next_token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    tp_group=None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits [b, S, V_shard], tokens [b, S] → (log p(token t+1 | ..t) [b, S − 1], entropy [b, S − 1] | None).

    The logits go to ``token_logprobs`` whole, with the labels shifted left and the last position given
    ``IGNORE_LABEL``; slicing ``logits[:, :-1]`` instead is not viewable as [tokens, V] for b > 1, so the
    kernel path would copy all the logits (and keep the copy for backward) and the slice's backward would
    allocate another full-size gradient. Only the [b, S] results are sliced.
    """
    labels = next_token_labels(tokens)
    out = token_logprobs(
        logits, labels, tp_group=tp_group, temperature=temperature, return_entropy=with_entropy, impl=impl
    )
    logprobs, entropy = out if with_entropy else (out, None)
    return logprobs[:, :-1], (entropy[:, :-1] if entropy is not None else None)


def pad_to_multiple(tokens: torch.Tensor, multiple: int, pad_id: int = 0) -> torch.Tensor:
    """tokens [b, s] → [b, s'] right-padded with ``pad_id`` to the next multiple of ``multiple``; the causal
    model's outputs at the first s positions do not depend on the padding."""
    extra = -tokens.shape[1] % multiple
    return torch.nn.functional.pad(tokens, (0, extra), value=pad_id) if extra else tokens


def pad_packed_inputs(
    positions: torch.Tensor, mask: torch.Tensor | None, length: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Packed rows' ``positions`` [b, s] and boolean ``mask`` [b, 1, s, s] (True = hidden), grown to
    ``length``: the pad positions continue the count, see only themselves, and no real token sees them."""
    extra = length - positions.shape[1]
    if extra <= 0:
        return positions, mask
    tail = positions[:, -1:] + torch.arange(1, extra + 1, device=positions.device)
    positions = torch.cat([positions, tail], dim=1)
    if mask is not None:
        mask = torch.nn.functional.pad(mask, (0, extra, 0, extra), value=True)
        idx = torch.arange(length - extra, length, device=mask.device)
        mask[..., idx, idx] = False
    return positions, mask


def _scaled(base: Callable | None, factor: float, loss: torch.Tensor) -> torch.Tensor:
    return (base(loss) if base is not None else loss) * factor


class Policy:
    """Megatron GPTModel + the forward/backward the GRPO and SFT loops need."""

    def __init__(self, model: torch.nn.Module, state: ParallelState, logprob_impl: str = "auto"):
        self.model = model
        self.state = state
        self.logprob_impl = logprob_impl
        # The loss functions below divide by global token / sequence counts themselves: Megatron's schedule
        # must not divide again by the number of micro-batches. The model is built that way
        # (models/dense.py), since its MoE routers read the flag when they are built.
        if not model.config.calculate_per_token_loss:
            raise ValueError("Policy: the model must be built with calculate_per_token_loss=True")
        model.config.variable_seq_lengths = True
        self.router_load = RouterLoad(model)
        """Tokens per expert of the MoE routers in the training forwards (load-balance metrics)."""

    def _forward_step(
        self, loss_fn: LossFn, with_entropy: bool, temperature: float, multiplier: float, data_iterator, model
    ):
        mb = next(data_iterator)
        # Sequence / context parallelism: the model's input is padded (_sequence_multiple).
        tokens = pad_to_multiple(mb["tokens"], self._sequence_multiple())
        labels = next_token_labels(tokens)  # shifted before any CP split: a chunk's last label is the next's
        # Packed SFT rows bring their own positions and block-diagonal mask (data/sft.py); otherwise plain
        # causal attention from position 0 is exact (module docstring).
        positions, mask = mb.get("position_ids"), mb.get("attention_mask")
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        else:
            positions, mask = pad_packed_inputs(positions, mask, tokens.shape[1])
        if self.state.cp_size > 1:
            cp, rank = self.state.cp_size, self.state.cp_rank
            tokens, labels, positions = (cp_split(t, cp, rank, dim=1) for t in (tokens, labels, positions))
            mask = cp_split(mask, cp, rank, dim=2) if mask is not None else None  # queries only
            mb = self._cp_local_batch(mb, labels.shape[1] * cp)
        output = model(tokens, positions, mask)
        return output, partial(self._loss, loss_fn, with_entropy, temperature, multiplier, mb, labels)

    def _cp_local_batch(self, mb: dict, length: int) -> dict:
        """This CP rank's micro-batch for the loss: every per-label tensor ([b, S − 1, ...]) padded to the
        model's ``length`` (mask 0 there) and cut into this rank's chunks; the rest (per-sequence tensors,
        the full ``tokens``) as it is."""
        labels = mb["tokens"].shape[1] - 1
        local = {}
        for key, value in mb.items():
            if key not in ("tokens", "position_ids", "attention_mask") and (
                value.dim() >= 2 and value.shape[1] == labels
            ):
                pad = [0, 0] * (value.dim() - 2) + [0, length - labels]
                value = cp_split(torch.nn.functional.pad(value, pad), self.state.cp_size, self.state.cp_rank)
            local[key] = value
        return local

    def _sequence_multiple(self) -> int:
        """Sequence parallelism splits the sequence over TP ranks: its length must be a multiple of TP;
        context parallelism cuts it into 2 × CP chunks (each rank's two then split over TP under SP)."""
        tp = self.state.tp_size if self.model.config.sequence_parallel else 1
        return tp * (2 * self.state.cp_size if self.state.cp_size > 1 else 1)

    def _padded_length(self, seq_length: int) -> int:
        return seq_length + -seq_length % self._sequence_multiple()

    def _aux_loss_tokens(self, batch: list[dict[str, torch.Tensor]]) -> float | None:
        """Tokens the MoE routers see in this step over all micro-batches and DP ranks, or None for a
        model without router losses.

        Built with ``calculate_per_token_loss`` (as it must be), a router weights its aux loss by its
        micro-batch's token count n_mb and Megatron expects ``finalize_model_grads`` to divide every
        gradient by the step's total N. Our losses already divide by global counts, so that division is
        not done; instead the aux loss alone is scaled by 1 / N (:meth:`run`). Its gradient is then
        Σ_mb n_mb / N · coeff · ∇aux_mb: Megatron's per-token weighting, the mean over micro-batches and
        DP ranks when they are equal — not the sum (× micro-batches × DP) it was."""
        config = self.model.config
        coeffs = getattr(config, "moe_aux_loss_coeff", 0) or 0
        coeffs = coeffs if isinstance(coeffs, list | tuple) else [coeffs]
        if not getattr(config, "num_moe_experts", None) or not (
            any(coeffs) or getattr(config, "moe_z_loss_coeff", None)
        ):
            return None
        # Under sequence parallelism a router sees its TP rank's share of the sequence (n_mb / TP), under
        # context parallelism its CP rank's (n_mb / CP), and its aux loss is that share's part of the whole
        # sequence's (Megatron reduces tokens per expert over TP × CP): the parts' gradients, summed over TP
        # (sequence-parallel router) and CP (every gradient), make Σ_mb n_mb / N · coeff · ∇aux_mb when N is
        # also counted per rank — summed over DP only, where the ranks hold different sequences.
        local = sum(mb["tokens"].shape[0] * self._padded_length(mb["tokens"].shape[1]) for mb in batch) // (
            (self.state.tp_size if config.sequence_parallel else 1) * self.state.cp_size
        )
        total = torch.tensor(float(local), dtype=torch.float64, device=self.state.device)
        if self.state.dp_size > 1:
            torch.distributed.all_reduce(total, group=self.state.dp_group)
        return float(total)

    def _loss(
        self,
        loss_fn: LossFn,
        with_entropy: bool,
        temperature: float,
        multiplier: float,
        mb: dict,
        labels: torch.Tensor,
        logits: torch.Tensor,
    ):
        # ``labels`` [b, s] are the model's (padded, CP-local) input's: the logits go to the kernel whole.
        # Without CP the results are cut back to the batch's S − 1 labels (causal: the padding changes none
        # of them); with CP the micro-batch's per-label tensors were padded and split the same way.
        out = token_logprobs(
            logits,
            labels,
            tp_group=self.state.tp_group if self.state.tp_size > 1 else None,
            temperature=temperature,
            return_entropy=with_entropy,
            impl=self.logprob_impl,
        )
        logprobs, entropy = out if with_entropy else (out, None)
        if self.state.cp_size == 1:
            n = mb["tokens"].shape[1] - 1
            logprobs, entropy = logprobs[:, :n], (entropy[:, :n] if entropy is not None else None)
        loss, metrics = loss_fn(logprobs, entropy, mb)
        if self.state.cp_size > 1:
            metrics = self._sum_over_cp(metrics)
        return loss * multiplier, torch.ones((), dtype=torch.int), metrics

    def _sum_over_cp(self, metrics: dict) -> dict:
        """A loss function's metrics (sums over this rank's tokens) summed over the CP group."""
        if not metrics:
            return metrics
        keys = list(metrics)
        device = self.state.device
        values = torch.stack([torch.as_tensor(metrics[k], device=device).detach().double() for k in keys])
        torch.distributed.all_reduce(values, group=self.state.cp_group)
        return dict(zip(keys, values.unbind()))

    def run(
        self,
        batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
        loss_fn: LossFn,
        micro_batch_size: int,
        forward_only: bool = False,
        with_entropy: bool = False,
        temperature: float = 1.0,
    ) -> list[dict]:
        """Forward (+ backward unless ``forward_only``) over ``batch`` in micro-batches of
        ``micro_batch_size`` rows, or over a list of ready micro-batches (each its own shape: SFT's token
        budget); gradients accumulate in ``.grad``. Log-probs (and entropy) are of
        ``softmax(logits / temperature)``. Returns the per-micro-batch metrics dicts (on the last pipeline
        stage; [] elsewhere)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if isinstance(batch, dict):
            n = batch["tokens"].shape[0]
            micro = [
                {k: v[i : i + micro_batch_size] for k, v in batch.items()}
                for i in range(0, n, micro_batch_size)
            ]
        else:
            micro = list(batch)
            micro_batch_size = max(mb["tokens"].shape[0] for mb in micro)
        self.model.train(not forward_only)
        context = torch.no_grad() if forward_only else torch.enable_grad()
        # MoE aux loss: the schedules scale it by ``grad_scale_func(1)`` and the main loss by
        # ``grad_scale_func`` too, so the scale gets a factor 1 / N and the main loss a factor N.
        aux_tokens = None if forward_only else self._aux_loss_tokens(micro)
        config = self.model.config
        base_scale = config.grad_scale_func  # the optimizer's loss scale (fp16), or None
        if aux_tokens:
            config.grad_scale_func = partial(_scaled, base_scale, 1.0 / aux_tokens)
        try:
            with context:
                return get_forward_backward_func()(
                    forward_step_func=partial(
                        self._forward_step, loss_fn, with_entropy, temperature, aux_tokens or 1.0
                    ),
                    data_iterator=iter(micro),
                    model=[self.model],
                    num_microbatches=len(micro),
                    seq_length=max(self._padded_length(mb["tokens"].shape[1]) for mb in micro),
                    micro_batch_size=micro_batch_size,
                    forward_only=forward_only,
                )
        finally:
            config.grad_scale_func = base_scale

    def logprobs(
        self, batch: dict[str, torch.Tensor], micro_batch_size: int, temperature: float = 1.0
    ) -> torch.Tensor | None:
        """Per-token log-probs [B, S − 1] of ``softmax(logits / temperature)`` without gradients (old /
        reference policy), whole sequences on every CP rank; None off the last stage."""
        kept: list[tuple[torch.Tensor, int]] = []

        def keep(logprobs, _entropy, mb):
            kept.append((logprobs.detach(), mb["tokens"].shape[1] - 1))
            return logprobs.sum() * 0.0, {}

        self.run(batch, keep, micro_batch_size, forward_only=True, temperature=temperature)
        if not kept:
            return None
        if self.state.cp_size > 1:
            kept = [(cp_gather(lp, self.state.cp_group, dim=1)[:, :n], n) for lp, n in kept]
        return torch.cat([lp for lp, _ in kept], dim=0)
