"""Parallel layout: validate the dims once, initialise torch.distributed and Megatron-Core's process groups.

Works under ``torchrun`` (RANK / WORLD_SIZE / MASTER_* from the environment) and as a plain single process
(a world of one on a free local port). NCCL on CUDA, gloo on CPU (with :mod:`megatron_r1.parallel.cpu`'s
patches applied).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_r1.config import ParallelConfig


@dataclass(frozen=True)
class ParallelState:
    """This rank's place in the layout and its process groups (a view over Megatron's parallel_state)."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    mp_leader: bool
    """First rank of its data-parallel replica (TP × CP × PP, :attr:`replica_group`): the one that runs the
    rollout engine."""
    tp_group: object
    pp_group: object
    dp_group: object
    ep_size: int = 1
    """Expert-parallel size (ranks of the DP group that split the experts)."""
    cp_size: int = 1
    """Context-parallel size (ranks that split each sequence)."""
    cp_rank: int = 0
    """This rank's place in its CP group: it holds chunks cp_rank and 2·cp_size − 1 − cp_rank of each
    sequence (:mod:`megatron_r1.parallel.context`)."""
    cp_group: object = None
    """The context-parallel group (None when not initialised by :func:`init_distributed`)."""
    dp_cp_group: object = None
    """Data × context parallel ranks: the ones holding the same parameters, over which gradients are summed
    (Megatron's ``get_data_parallel_group(with_context_parallel=True)``); None: ``dp_group``."""
    replica_group: object = None
    """The ranks of one data-parallel replica (TP × CP × PP): they train on the same completions, generated
    by its first rank; None: Megatron's model-parallel group (TP × PP), the same when cp_size is 1."""

    @property
    def dp_cp_size(self) -> int:
        """Ranks over which the (replicated) parameters' gradients are summed: DP × CP."""
        return self.dp_size * self.cp_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uses_cuda(cfg: ParallelConfig) -> bool:
    """Whether a run with this layout trains on CUDA: a GPU is visible and the backend is not ``gloo``.

    Every device decision (model placement and initialisation, layer spec, MoE dispatcher, the CPU patches,
    RNG states, thread count) follows this, never ``torch.cuda.is_available()`` alone: with
    ``parallel.backend=gloo`` on a GPU host everything runs as on a CPU machine."""
    return cfg.backend != "gloo" and torch.cuda.is_available()


def init_distributed(cfg: ParallelConfig, seed: int = 1234) -> ParallelState:
    """Initialise torch.distributed (if needed) and Megatron-Core model-parallel groups."""
    from megatron.core import parallel_state as mpu

    use_cuda = uses_cuda(cfg)
    check_context_parallel(cfg, use_cuda)
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if not use_cuda:
        from megatron_r1.parallel.cpu import apply_cpu_patches

        apply_cpu_patches()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" in os.environ:  # torchrun (or another launcher) set up the rendezvous
            dist.init_process_group(backend=backend)
        else:  # a plain process: a world of one, without touching the environment
            init = f"tcp://127.0.0.1:{free_port()}"
            dist.init_process_group(backend=backend, init_method=init, rank=0, world_size=1)
    world = dist.get_world_size()
    tp, pp, cp = cfg.tensor_parallel, cfg.pipeline_parallel, getattr(cfg, "context_parallel", 1)
    if world % (tp * pp * cp):
        from megatron_r1.config import ConfigError

        raise ConfigError(
            f"world size {world} is not divisible by tensor_parallel × pipeline_parallel × context_parallel "
            f"= {tp} × {pp} × {cp}"
        )
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    ep = cfg.expert_parallel
    if (world // (tp * pp * cp)) % ep:
        from megatron_r1.config import ConfigError

        dp = world // (tp * pp * cp)
        raise ConfigError(f"parallel.expert_parallel={ep} must divide the data-parallel size {dp}")
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        expert_model_parallel_size=ep,
    )
    replica = _replica_group(tp, pp, cp, world) if cp > 1 else mpu.get_model_parallel_group()
    state = ParallelState(
        rank=dist.get_rank(),
        world_size=world,
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        tp_size=tp,
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        pp_size=pp,
        dp_rank=mpu.get_data_parallel_rank(),
        dp_size=mpu.get_data_parallel_world_size(),
        device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"),
        mp_leader=dist.get_global_rank(replica, 0) == dist.get_rank(),
        tp_group=mpu.get_tensor_model_parallel_group(),
        pp_group=mpu.get_pipeline_model_parallel_group(),
        dp_group=mpu.get_data_parallel_group(),
        ep_size=ep,
        cp_size=cp,
        cp_rank=mpu.get_context_parallel_rank(),
        cp_group=mpu.get_context_parallel_group(),
        dp_cp_group=mpu.get_data_parallel_group(with_context_parallel=True),
        replica_group=replica,
    )
    seed_model_parallel(seed, state, use_cuda)
    return state


def _replica_group(tp: int, pp: int, cp: int, world: int):
    """This rank's TP × CP × PP group (one data-parallel replica), from Megatron's own rank layout (the
    default order ``tp-cp-ep-dp-pp`` of ``initialize_model_parallel``). Megatron's model-parallel group is
    TP × PP only: with CP > 1 the replica's CP ranks would each run a rollout engine. Collective: every rank
    creates every group."""
    from megatron.core.parallel_state import RankGenerator

    ranks = RankGenerator(tp=tp, ep=1, dp=world // (tp * pp * cp), pp=pp, cp=cp, order="tp-cp-ep-dp-pp")
    mine = None
    for members in ranks.get_ranks("tp-cp-pp"):
        group = dist.new_group(members)
        if dist.get_rank() in members:
            mine = group
    return mine


def check_context_parallel(cfg: ParallelConfig, use_cuda: bool) -> None:
    """Refuse context parallelism before any work where it cannot run: on CUDA only Transformer Engine's
    attention takes Megatron's CP group (the local spec's ``DotProductAttention`` asserts CP = 1, and the
    CPU patch that lets it gather keys and values over CP, ``parallel/cpu.py``, is not applied on CUDA). On
    CPU (gloo) CP runs with that patch."""
    cp = getattr(cfg, "context_parallel", 1)
    if cp == 1 or not use_cuda:
        return
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        from megatron_r1.config import ConfigError

        raise ConfigError(
            f"parallel.context_parallel={cp} on CUDA needs Transformer Engine's attention "
            "(transformer_engine is not installed; the local layer spec cannot split sequences on CUDA): "
            "install it or use parallel.context_parallel=1"
        ) from None


def seed_model_parallel(seed: int, state: ParallelState, use_cuda: bool) -> None:
    """Seed torch and Megatron's model-parallel RNG streams (same init on every DP replica)."""
    torch.manual_seed(seed)
    if use_cuda:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        from megatron_r1.parallel.cpu import seed_cpu_rng_tracker

        seed_cpu_rng_tracker(seed, state.tp_rank)


def shutdown() -> None:
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
