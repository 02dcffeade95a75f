"""The few patches that let Megatron-Core's model code run on CPU with gloo.

Megatron-Core assumes CUDA in a handful of places. On a machine without CUDA (the development laptops, CI and
the tests) :func:`apply_cpu_patches` replaces exactly those, each patch below naming the function it replaces
and why. Nothing here runs when CUDA is available: GPU runs use Megatron-Core unmodified.
"""

from __future__ import annotations

import contextlib
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


def seed_cpu_rng_tracker(seed: int, tp_rank: int) -> None:
    """The CPU counterpart of ``tensor_parallel.model_parallel_cuda_manual_seed``: the model-parallel stream
    differs per TP rank (offset 2718, as Megatron does), the default stream is shared."""
    import megatron.core.tensor_parallel.random as tp_random

    tracker = tp_random._CUDA_RNG_STATE_TRACKER
    tracker.reset()
    tracker.add("model-parallel-rng", seed + 2718 + tp_rank)
    tracker.add("data-parallel-rng", seed)
