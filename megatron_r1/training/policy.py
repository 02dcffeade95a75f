"""The policy on Megatron-Core: micro-batched forward (and backward) that turns token ids into per-token
log-probs, through Megatron's pipeline schedules (no pipelining, or 1F1B across stages).

Sequences are laid out ``[prompt + response]`` from position 0 and right-padded, so plain causal attention is
exact for every real token and no attention mask is needed (the same on the local and the TE layer spec).
Position t's label is token t + 1; ``response_mask`` [B, S − 1] marks the labels that are generated tokens.
Under sequence parallelism the model's input is right-padded to a multiple of TP and its logits cut back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from megatron_r1.kernels import token_logprobs
from megatron_r1.parallel import ParallelState
from megatron_r1.training.router_load import RouterLoad

# (logprobs [b, S-1], entropy [b, S-1] | None, micro-batch dict) -> (loss scalar, metrics {name: tensor})
LossFn = Callable[[torch.Tensor, torch.Tensor | None, dict], tuple[torch.Tensor, dict]]


def pad_to_multiple(tokens: torch.Tensor, multiple: int, pad_id: int = 0) -> torch.Tensor:
    """tokens [b, s] → [b, s'] right-padded with ``pad_id`` to the next multiple of ``multiple``; the causal
    model's outputs at the first s positions do not depend on the padding."""
    extra = -tokens.shape[1] % multiple
    return torch.nn.functional.pad(tokens, (0, extra), value=pad_id) if extra else tokens


class Policy:
    """Megatron GPTModel + the forward/backward the GRPO and SFT loops need."""

    def __init__(self, model: torch.nn.Module, state: ParallelState, logprob_impl: str = "auto"):
        self.model = model
        self.state = state
        self.logprob_impl = logprob_impl
        # The loss functions below divide by global token / sequence counts themselves: Megatron's schedule
        # must not divide again by the number of micro-batches.
        model.config.calculate_per_token_loss = True
        model.config.variable_seq_lengths = True
        self.router_load = RouterLoad(model)
        """Tokens per expert of the MoE routers in the training forwards (load-balance metrics)."""

    def _forward_step(self, loss_fn: LossFn, with_entropy: bool, data_iterator, model):
        mb = next(data_iterator)
        tokens = pad_to_multiple(mb["tokens"], self._sequence_multiple())
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        output = model(tokens, positions, None)
        return output, partial(self._loss, loss_fn, with_entropy, mb)

    def _sequence_multiple(self) -> int:
        """Sequence parallelism splits the sequence over TP ranks: its length must be a multiple of TP."""
        return self.state.tp_size if self.model.config.sequence_parallel else 1

    def _loss(self, loss_fn: LossFn, with_entropy: bool, mb: dict, logits: torch.Tensor):
        logits = logits[:, : mb["tokens"].shape[1]]  # drop the sequence-parallel padding (causal: exact)
        out = token_logprobs(
            logits[:, :-1],
            mb["tokens"][:, 1:],
            tp_group=self.state.tp_group if self.state.tp_size > 1 else None,
            return_entropy=with_entropy,
            impl=self.logprob_impl,
        )
        logprobs, entropy = out if with_entropy else (out, None)
        loss, metrics = loss_fn(logprobs, entropy, mb)
        return loss, torch.ones((), dtype=torch.int), metrics

    def run(
        self,
        batch: dict[str, torch.Tensor],
        loss_fn: LossFn,
        micro_batch_size: int,
        forward_only: bool = False,
        with_entropy: bool = False,
    ) -> list[dict]:
        """Forward (+ backward unless ``forward_only``) over ``batch`` in micro-batches; gradients accumulate
        in ``.grad``. Returns the per-micro-batch metrics dicts (on the last pipeline stage; [] elsewhere)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        n, seq_length = batch["tokens"].shape
        seq_length += -seq_length % self._sequence_multiple()
        micro = [
            {k: v[i : i + micro_batch_size] for k, v in batch.items()} for i in range(0, n, micro_batch_size)
        ]
        self.model.train(not forward_only)
        context = torch.no_grad() if forward_only else torch.enable_grad()
        with context:
            return get_forward_backward_func()(
                forward_step_func=partial(self._forward_step, loss_fn, with_entropy),
                data_iterator=iter(micro),
                model=[self.model],
                num_microbatches=len(micro),
                seq_length=seq_length,
                micro_batch_size=micro_batch_size,
                forward_only=forward_only,
            )

    def logprobs(self, batch: dict[str, torch.Tensor], micro_batch_size: int) -> torch.Tensor | None:
        """Per-token log-probs [B, S − 1] without gradients (old / reference policy); None off the last
        stage."""

        def keep(logprobs, _entropy, _mb):
            return logprobs.sum() * 0.0, {"logprobs": logprobs.detach()}

        outs = self.run(batch, keep, micro_batch_size, forward_only=True)
        if not outs:
            return None
        return torch.cat([o["logprobs"] for o in outs], dim=0)
