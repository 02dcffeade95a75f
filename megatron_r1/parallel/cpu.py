"""The few patches that let Megatron-Core's model code run on CPU with gloo.

Megatron-Core assumes CUDA in a handful of places. On a machine without CUDA (the development laptops, CI and
the tests) :func:`apply_cpu_patches` replaces exactly those, each patch below naming the function it replaces
and why. Nothing here runs when CUDA is available: GPU runs use Megatron-Core unmodified.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import operator

import torch

_APPLIED = False


class CpuRNGStatesTracker:
    """Replaces ``tensor_parallel.random.CudaRNGStatesTracker``: the original seeds and swaps CUDA generator
    states; this one does the same with the CPU generator, so ``fork()`` (used around dropout and weight
    initialisation) works without CUDA."""

    def __init__(self) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"rng seed {seed} already exists")
        self.seeds_.add(seed)
        gen = torch.Generator()
        gen.manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        if name not in self.states_:
            raise KeyError(f"rng state {name!r} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _cpu_get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
    required = functools.reduce(operator.mul, tensor_shape, 1)
    buf = self.buffer.get((name, dtype))
    if buf is None or buf.numel() < required:
        buf = self.buffer[(name, dtype)] = torch.empty(required, dtype=dtype)
    return buf[:required].view(*tensor_shape)


class _CpuTorchProxy:
    """``torch`` for one Megatron module, with ``zeros`` / ``ones`` / ``empty`` / ``tensor`` placing tensors
    asked for on CUDA on the CPU instead; every other attribute is torch's own."""

    def __getattr__(self, name: str):
        attr = getattr(torch, name)
        if name in ("zeros", "ones", "empty", "tensor", "full"):

            def on_cpu(*args, **kwargs):
                if str(kwargs.get("device", "cpu")).startswith("cuda"):
                    kwargs["device"] = "cpu"
                return attr(*args, **kwargs)

            return on_cpu
        return attr


def apply_cpu_patches() -> None:
    """Patch Megatron-Core for CPU execution (idempotent). Called when the run chose the CPU
    (:func:`megatron_r1.parallel.uses_cuda` is False), also on a host where CUDA is visible: a gloo run
    there must not place anything on the GPU."""
    global _APPLIED
    if _APPLIED:
        return
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel.random as tp_random
    import megatron.core.transformer.utils as transformer_utils
    import megatron.core.utils as core_utils

    # torch.cuda.current_device: Megatron-Core uses it as a placement target (rotary / YaRN inv_freq,
    # MoE router weights, dist_checkpointing); on CPU every such tensor belongs on the CPU.
    torch.cuda.current_device = lambda: "cpu"
    # torch.cuda.synchronize: called around checkpoint I/O and timers; nothing to wait for on CPU.
    torch.cuda.synchronize = lambda *args, **kwargs: None
    # GlobalMemoryBuffer.get_tensor: allocates its scratch buffer with device=cuda.
    core_utils.GlobalMemoryBuffer.get_tensor = _cpu_get_tensor
    # transformer.utils.get_default_causal_mask: builds the mask with device="cuda" (also imported by name
    # into fused_softmax, so both bindings are replaced).
    transformer_utils.get_default_causal_mask = _cpu_causal_mask
    fused_softmax.get_default_causal_mask = _cpu_causal_mask
    # tensor_parallel.random tracker: the CUDA RNG tracker cannot seed without CUDA.
    tp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # tensor_parallel.checkpoint (train.recompute=full): its CheckpointFunction saves and restores CUDA RNG
    # states; torch's own checkpoint does the same with the CPU generator.
    import megatron.core.tensor_parallel as tensor_parallel

    tensor_parallel.checkpoint = tp_random.checkpoint = _cpu_checkpoint
    # pipeline_parallel.schedules: forward_backward_* allocate ``total_num_tokens`` with device="cuda"; the
    # module's ``torch`` is swapped for a proxy whose factory functions map a CUDA device to the CPU.
    import megatron.core.pipeline_parallel.schedules as schedules

    schedules.torch = _CpuTorchProxy()
    _apply_model_patches()
    _APPLIED = True


def _cpu_checkpoint(function, distribute_saved_activations, *args):
    """``tensor_parallel.random.checkpoint`` on CPU: recompute ``function`` in the backward (the tracker's
    forked streams are not replayed: the models here have no dropout)."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(function, *args, use_reentrant=False, preserve_rng_state=True)


@contextlib.contextmanager
def _tensor_cuda_is_identity():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _apply_model_patches() -> None:
    """Patches for tied embeddings under pipeline parallelism and the MoE / MLA layers (Qwen3-MoE,
    DeepSeek-V3) on CPU."""
    from megatron.core.models.common.language_module.language_module import LanguageModule

    # LanguageModule.setup_embeddings_and_output_layer: with PP > 1 and tied embeddings it moves the
    # shared embedding to CUDA (``weight.data.cuda()``) before all-reducing it over the embedding group;
    # run it with ``Tensor.cuda`` as the identity (only for the duration of that call).
    setup = LanguageModule.setup_embeddings_and_output_layer

    @functools.wraps(setup)
    def setup_on_cpu(self, *args, **kwargs):
        with _tensor_cuda_is_identity():
            return setup(self, *args, **kwargs)

    LanguageModule.setup_embeddings_and_output_layer = setup_on_cpu
    import megatron.core.transformer.moe.moe_utils as moe_utils

    # moe_utils.RouterGatingLinearFunction.forward: tests ``te_general_gemm is not None`` but the name is
    # only bound when Transformer Engine imports (0.16.x); bind it to None so the torch.mm path runs.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    # MLASelfAttention.__init__: with Transformer Engine absent, ``HAVE_TE`` is still True (the TE extension
    # module imports, binding ``TELinear`` to a MagicMock) and ``isinstance(linear_proj, TELinear)`` raises;
    # TE really is absent on CPU, so say so.
    import megatron.core.transformer.multi_latent_attention as mla

    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        mla.HAVE_TE = False
    _allow_sequence_parallel_torch_norm()
    _exact_mla_rope_key_gradient(mla)
    _context_parallel_rotary_on_cpu()
    _context_parallel_dot_product_attention()


def _allow_sequence_parallel_torch_norm() -> None:
    """``torch_norm.WrappedTorchNorm.__new__`` (the local spec's norms) asserts "sequence parallel not
    supported by torch LayerNorm"; a LayerNorm / RMSNorm is per token, so on a sequence-parallel shard it
    needs nothing more than what Transformer Engine's norms do: its weights marked ``sequence_parallel``,
    so that their gradients (each rank's share of the tokens) are summed over TP (``LocalOptimizer``, as
    ``finalize_model_grads`` does on CUDA). The norm is built from a copy of the config without the flag."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    build = WrappedTorchNorm.__new__
    if getattr(build, "_megatron_r1_cpu", False):
        return

    @functools.wraps(build)
    def build_on_sequence_shards(cls, config, *args, **kwargs):
        if not config.sequence_parallel:
            return build(cls, config, *args, **kwargs)
        plain = copy.copy(config)
        plain.sequence_parallel = False
        norm = build(cls, plain, *args, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm

    build_on_sequence_shards._megatron_r1_cpu = True
    WrappedTorchNorm.__new__ = build_on_sequence_shards


def _exact_mla_rope_key_gradient(mla) -> None:
    """``MLASelfAttention.get_query_key_value_tensors`` with the local spec (``linear_kv_down_proj`` a
    ``ColumnParallelLinear``, 0.16) all-gathers the down projection's columns and splits off the shared
    rotary key ``k_pos_emb``, which each TP rank then uses for its own heads only; the gather's backward
    keeps this rank's columns of its *own* partial gradient, so the other ranks' share of ``k_pos_emb``'s
    gradient is lost and every gradient upstream differs from one process under TP (with or without SP).
    After ``MLASelfAttention.__init__`` the projection's class becomes :class:`_MLAKVDownProjection`, which
    hands MLA the layout of TE's duplicated projection instead; MLA's code for that layout sums the rotary
    key's gradient over TP."""
    from megatron.core.tensor_parallel import ColumnParallelLinear

    init = mla.MLASelfAttention.__init__
    if getattr(init, "_megatron_r1_cpu", False):
        return

    @functools.wraps(init)
    def init_with_exact_rope_key_gradient(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self.linear_kv_down_proj) is ColumnParallelLinear:
            self.linear_kv_down_proj.__class__ = _mla_kv_down_projection_class()

    init_with_exact_rope_key_gradient._megatron_r1_cpu = True
    mla.MLASelfAttention.__init__ = init_with_exact_rope_key_gradient


@functools.cache
def _mla_kv_down_projection_class():
    from megatron.core.tensor_parallel import ColumnParallelLinear
    from megatron.core.tensor_parallel.mappings import (
        gather_from_tensor_model_parallel_region,
        scatter_to_sequence_parallel_region,
    )

    class _SumGradOverTP(torch.autograd.Function):
        """Forward: identity; backward: the gradient summed over TP. (Megatron's
        ``copy_to_tensor_model_parallel_region`` all-reduces ``grad.contiguous()`` and returns the original:
        a non-contiguous gradient, as this one is, would come back unreduced.)"""

        @staticmethod
        def forward(ctx, tensor, group):
            ctx.group = group
            return tensor.view_as(tensor)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous()
            torch.distributed.all_reduce(grad, group=ctx.group)
            return grad, None

    class _MLAKVDownProjection(ColumnParallelLinear):
        """The column-parallel KV down projection returning full columns: under SP on 1/TP of the tokens
        (MLA then all-gathers ``k_pos_emb`` over the sequence; backward: reduce-scatter, the TP sum), without
        SP with the rotary columns' gradient summed over TP."""

        def forward(self, hidden_states, *args, **kwargs):
            out, bias = super().forward(hidden_states, *args, **kwargs)
            if self.tp_group.size() == 1:
                return out, bias
            out = gather_from_tensor_model_parallel_region(out, group=self.tp_group)  # [s, b, lora + rope]
            if self.config.sequence_parallel:
                return scatter_to_sequence_parallel_region(out, group=self.tp_group), bias
            latent, rope = out.split([self.config.kv_lora_rank, self.config.qk_pos_emb_head_dim], dim=-1)
            rope = _SumGradOverTP.apply(rope, self.tp_group)
            return torch.cat([latent, rope], dim=-1), bias

    return _MLAKVDownProjection


def _context_parallel_rotary_on_cpu() -> None:
    """``rope_utils.get_pos_emb_on_this_cp_rank`` (imported by name into the rotary and YaRN embeddings)
    builds its chunk index with ``pin_memory=True`` and moves it with ``.cuda()``; on CPU the same slice is
    :func:`megatron_r1.parallel.context.cp_split` (chunks r and 2·CP − 1 − r of the position table)."""
    import megatron.core.models.common.embeddings.rope_utils as rope_utils
    import megatron.core.models.common.embeddings.rotary_pos_embedding as rotary
    import megatron.core.models.common.embeddings.yarn_rotary_pos_embedding as yarn

    from megatron_r1.parallel.context import cp_split

    def pos_emb_on_this_cp_rank(pos_emb, seq_dim, cp_group):
        if cp_group is None:
            raise ValueError("cp_group must be provided to get positional embedding per CP rank")
        return cp_split(pos_emb, cp_group.size(), cp_group.rank(), dim=seq_dim)

    for module in (rope_utils, rotary, yarn):
        if hasattr(module, "get_pos_emb_on_this_cp_rank"):  # bound by name where a version imports it
            module.get_pos_emb_on_this_cp_rank = pos_emb_on_this_cp_rank


def _context_parallel_dot_product_attention() -> None:
    """``DotProductAttention`` (the local spec's core attention, also under :class:`MLADotProductAttention`)
    asserts "Context parallelism is only supported by TEDotProductAttention!". On CPU, with CP > 1, it is
    built from a copy of the config without CP (it needs nothing else), and its forward first all-gathers the
    keys and values over the CP group (:func:`~megatron_r1.parallel.context.cp_gather`: autograd-correct, the
    backward sums every rank's gradient of its chunks) into global order, then masks by *global* positions:
    the query chunks this rank holds see the keys at or before their positions. An explicit mask (packed
    rows) arrives split over its query dim only, as ``get_batch_on_this_cp_rank`` splits it, so it already
    is [b, 1, local queries, all keys]. The softmax then takes the mask as given (``padding`` type), never
    its own square causal mask. The result equals one process's attention exactly (the same products and
    sums per query; the masked scores get the same −10000 fill).

    Transformer Engine's ``TEDotProductAttention`` does CP itself on CUDA; these patches only run on CPU."""
    from megatron.core import parallel_state
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_r1.parallel.context import cp_gather, cp_positions

    init, forward = DotProductAttention.__init__, DotProductAttention.forward
    if getattr(init, "_megatron_r1_cpu", False):
        return

    @functools.wraps(init)
    def init_without_cp(self, config, *args, **kwargs):
        cp = config.context_parallel_size
        if cp == 1:
            return init(self, config, *args, **kwargs)
        if config.window_size is not None:
            raise ValueError("context parallelism on CPU: sliding-window attention is not supported")
        plain = copy.copy(config)
        plain.context_parallel_size = 1
        init(self, plain, *args, **kwargs)
        group = getattr(kwargs.get("pg_collection"), "cp", None)
        self._megatron_r1_cp_group = (
            group if group is not None else parallel_state.get_context_parallel_group()
        )
        self.scale_mask_softmax.attn_mask_type = AttnMaskType.padding  # the mask below is always given

    @functools.wraps(forward)
    def forward_over_cp(self, query, key, value, attention_mask, *args, **kwargs):
        group = getattr(self, "_megatron_r1_cp_group", None)
        if group is None or group.size() == 1:
            return forward(self, query, key, value, attention_mask, *args, **kwargs)
        key, value = cp_gather(key, group, dim=0), cp_gather(value, group, dim=0)  # [S, b, ng, hn]
        if attention_mask is None:  # causal by global position: True = hidden
            length = key.shape[0]
            q_pos = cp_positions(length, group.size(), group.rank(), device=query.device)
            k_pos = torch.arange(length, device=query.device)
            attention_mask = (k_pos[None, :] > q_pos[:, None])[None, None]  # [1, 1, sq, S]
        return forward(self, query, key, value, attention_mask, *args, **kwargs)

    init_without_cp._megatron_r1_cpu = True
    DotProductAttention.__init__ = init_without_cp
    DotProductAttention.forward = forward_over_cp


def seed_cpu_rng_tracker(seed: int, tp_rank: int) -> None:
    """The CPU counterpart of ``tensor_parallel.model_parallel_cuda_manual_seed``: the model-parallel stream
    differs per TP rank (offset 2718, as Megatron does), the default stream is shared."""
    import megatron.core.tensor_parallel.random as tp_random

    tracker = tp_random._CUDA_RNG_STATE_TRACKER
    tracker.reset()
    tracker.add("model-parallel-rng", seed + 2718 + tp_rank)
    tracker.add("data-parallel-rng", seed)
