"""Megatron-Core's optimizer path (used on CUDA), exercised with its real classes on the CPU: checkpoints
save and restore its state, non-finite gradients are skipped, the loss is scaled by its loss scale."""

import itertools

import torch
from megatron_cpu import cuda_factories_on_cpu, megatron_optimizer, step

from megatron_r1.config import Config
from megatron_r1.models import build_model
from megatron_r1.parallel import init_distributed
from megatron_r1.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _setup(seed: int = 3, distributed: bool = False):
    cfg = Config()
    cfg.model.vocab_size = 32
    cfg.train.grad_clip = 0.0
    cfg.parallel.backend = "gloo"  # the CPU path, also on a GPU host
    state = init_distributed(cfg.parallel, seed=seed)
    model = build_model(cfg.model, cfg.parallel)
    return model, megatron_optimizer(model, cfg.train, state, distributed), state


def _backward(opt, scale: float = 1.0):
    tokens = torch.randint(0, 32, (2, 6))
    logits = opt.model(tokens, torch.arange(6).expand(2, 6), None)
    (logits.float().pow(2).mean() * scale).backward()


def _optim_params(opt):
    return list(itertools.chain.from_iterable(g["params"] for g in opt.optimizer.param_groups))


def _adam_state(opt) -> list[torch.Tensor]:
    """exp_avg / exp_avg_sq of every parameter, in the optimizer's order."""
    inner = opt.optimizer.chained_optimizers[0].optimizer  # the torch Adam under FP32Optimizer
    return [inner.state[p][k].clone() for p in _optim_params(opt) for k in ("exp_avg", "exp_avg_sq")]


def test_param_map_is_emptied_by_the_model_save_and_rebuilt_from_a_fresh_dict(tmp_path):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.optimizer import get_param_id_to_sharded_param_map

    model, opt, _ = _setup()
    params = _optim_params(opt)
    model_sd = model.sharded_state_dict()
    assert len(get_param_id_to_sharded_param_map(model_sd, params)) == len(params)
    (tmp_path / "model").mkdir()
    dist_checkpointing.save(model_sd, str(tmp_path / "model"))
    # The mechanism of the GPU crash: the save rewrote the dict's ShardedTensors in place.
    assert get_param_id_to_sharded_param_map(model_sd, params) == {}
    assert len(get_param_id_to_sharded_param_map(model.sharded_state_dict(), params)) == len(params)


def test_checkpoint_round_trip_with_megatron_optimizer(tmp_path):
    model, opt, state = _setup()
    for _ in range(2):
        _backward(opt)
        assert step(opt, 1e-2)[1]
    save_checkpoint(tmp_path, 2, model, opt, state)  # raised "Param id 0 does not match ..." before the fix
    saved = _adam_state(opt)

    model2, opt2, _ = _setup(seed=11)
    assert load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, state)["step"] == 2
    restored = _adam_state(opt2)
    assert len(restored) == len(saved) > 0
    for a, b in zip(saved, restored, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_distributed_optimizer_resumes_exactly(tmp_path):
    """Saved after two steps and loaded into a fresh distributed optimizer (whose empty Adam state made
    Megatron's ``state_dict()`` assert without Apex / TE), the next step equals the uninterrupted one."""
    model, opt, state = _setup(distributed=True)
    for _ in range(2):
        _backward(opt)
        assert step(opt, 1e-2)[1]
    save_checkpoint(tmp_path, 2, model, opt, state)
    model2, opt2, _ = _setup(seed=11, distributed=True)
    with cuda_factories_on_cpu():
        load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, state)
    for o in (opt, opt2):
        torch.manual_seed(5)
        _backward(o)
        assert step(o, 1e-2)[1]
    for (name, a), b in zip(model.named_parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_non_finite_gradients_skip_the_step():
    model, opt, _ = _setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _backward(opt, scale=float("nan"))
    norm, stepped = step(opt, 1e-2)
    assert not stepped and norm != norm  # NaN norm reported, nothing applied
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0, msg=n)
    assert all(float(b.grad_data.abs().sum()) == 0 for b in opt.model.buffers)  # grads zeroed
    _backward(opt)
    norm, stepped = step(opt, 1e-2)  # a healthy step afterwards is applied
    assert stepped and norm > 0
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_loss_is_scaled_by_the_optimizers_loss_scale():
    """Megatron's schedules multiply the loss by ``config.grad_scale_func`` before backward and the
    optimizer unscales by its loss scale; both must be the same number (fp16: 2^32 at first)."""
    model, opt, _ = _setup()
    assert model.config.grad_scale_func is not None
    loss = torch.tensor([3.0])
    scale = opt.optimizer.get_loss_scale()
    torch.testing.assert_close(model.config.grad_scale_func(loss), loss * scale.cpu())
