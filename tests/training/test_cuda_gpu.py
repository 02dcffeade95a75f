"""The trainer's CUDA path (Megatron's DDP + optimizers): save, SIGKILL and ``--resume`` give exactly the
metrics of an uninterrupted run with the plain and the distributed optimizer; a non-finite gradient is
skipped; an fp16 loss is scaled by the optimizer's loss scale. Run with ``pytest -m gpu`` on one GPU."""

import pytest
import torch
from resume_utils import straight_and_resumed

from megatron_r1.config import Config
from megatron_r1.models import build_model
from megatron_r1.parallel import init_distributed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEMO = [
    "train.steps=6",
    "train.save_every=3",
    "train.sft_warmup_steps=50",
    "eval.every=3",
    "data.eval_size=16",
    "log.tensorboard=false",
    "log.progress=false",
]


def _model_and_optimizer(dtype: str, distributed: bool = False):
    from megatron_r1.training.optim import MegatronOptimizer

    cfg = Config()
    cfg.model.vocab_size = 64
    cfg.model.params_dtype = dtype
    state = init_distributed(cfg.parallel, seed=0)
    assert state.device.type == "cuda"
    model = build_model(cfg.model, cfg.parallel).to(state.device)
    return model, MegatronOptimizer(model, cfg.train, state, distributed), state


def _tokens(state):
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1)).to(state.device)


@pytest.mark.parametrize(
    "dtype,distributed", [("bfloat16", False), ("bfloat16", True), ("float32", False)], ids=str
)
def test_non_finite_step_is_skipped_on_cuda(dtype, distributed):
    model, opt, state = _model_and_optimizer(dtype, distributed)
    tokens = _tokens(state)
    positions = torch.arange(16, device=state.device).expand_as(tokens)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (opt.model(tokens, positions, None).float().mean() * float("nan")).backward()
    norm, stepped = opt.step(1e-3)
    assert not stepped and norm != norm
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    opt.model(tokens, positions, None).float().pow(2).mean().backward()
    norm, stepped = opt.step(1e-3)
    assert stepped and 0 < norm < float("inf")
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def _first_step_norm(dtype: str) -> float:
    """Gradient norm of the first applied step of a log-likelihood loss through Policy (the schedules,
    which scale the loss by ``grad_scale_func``); fp16 first skips the overflowing loss scales."""
    from megatron_r1.training.policy import Policy

    model, opt, state = _model_and_optimizer(dtype)
    policy = Policy(opt.model, state, "torch")
    batch = {"tokens": _tokens(state)}
    for _ in range(80):
        policy.run(batch, lambda logprobs, _e, _mb: (-logprobs.float().mean(), {}), micro_batch_size=2)
        norm, stepped = opt.step(0.0)
        if stepped:
            return norm
    raise AssertionError(f"{dtype}: no step applied in 80 tries")


def test_fp16_loss_is_scaled_like_the_optimizer_unscales():
    """Unscaled by 2^k without having been scaled, fp16 gradients vanish (norm ≈ 0); they match fp32's."""
    reference = _first_step_norm("float32")
    fp16 = _first_step_norm("float16")
    assert reference > 0
    assert abs(fp16 - reference) < 0.05 * reference, (fp16, reference)


@pytest.mark.parametrize("distributed", [False, True], ids=["plain", "distributed-optimizer"])
def test_kill_9_then_resume_matches_uninterrupted_on_cuda(tmp_path, monkeypatch, distributed):
    """Three CLI runs per optimizer, ~35-40 s each on one H100 (mostly start-up and kernel compilation)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS in both runs
    args = [*DEMO, f"parallel.distributed_optimizer={str(distributed).lower()}"]
    a, b = straight_and_resumed(tmp_path, args, kill_after="step_000003", timeout=300)
    assert [r["step"] for r in b] == list(range(7))
    assert a == b
