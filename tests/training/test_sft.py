"""SFT: loss only on response tokens, packing exact against unpacked rows (loss and gradients through
Megatron-Core at one process), token-budget micro-batches, and a run that resumes where it stopped."""

import json

import pytest
import torch

from megatron_r1.config import Config, ConfigError, load_config
from megatron_r1.data.sft import Example, micro_batches, pack, packed_batch, read_sft_jsonl

EXAMPLES = [Example([5, 6, 7], [8, 9, 2]), Example([10, 11], [12, 2]), Example([13], [14, 15, 16, 2])]


def test_packed_batch_positions_mask_and_loss_mask():
    b = packed_batch([EXAMPLES], pad_id=0)
    assert b["tokens"][0].tolist() == [5, 6, 7, 8, 9, 2, 10, 11, 12, 2, 13, 14, 15, 16, 2]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    # label t is token t + 1: response labels only, never the jump from one example to the next
    labels = b["tokens"][0, 1:][b["loss_mask"][0].bool()].tolist()
    assert labels == [8, 9, 2, 12, 2, 14, 15, 16, 2]
    assert b["loss_mask"][0, 5] == 0  # EOS of example 0 → first token of example 1
    allowed = ~b["attention_mask"][0, 0]
    assert allowed[7].tolist() == [False] * 6 + [True, True] + [False] * 7
    assert allowed.tril().equal(allowed)  # causal
    assert allowed[14, 10:].all() and not allowed[14, :10].any()


def test_padding_attends_only_to_itself():
    b = packed_batch([[EXAMPLES[0]], [EXAMPLES[1]]], pad_id=0)
    allowed = ~b["attention_mask"][1, 0]
    assert allowed[5].tolist() == [False] * 5 + [True]  # the last pad position of the shorter row
    assert b["loss_mask"][1].tolist() == [0, 1, 1, 0, 0]


def test_pack_respects_the_row_limit_and_token_budget():
    bins = pack(EXAMPLES * 3, max_len=10)
    assert sorted(len(ex) for b in bins for ex in b) == sorted(len(ex) for ex in EXAMPLES * 3)
    assert all(sum(len(ex) for ex in b) <= 10 for b in bins)
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        pack(EXAMPLES, max_len=4)
    micro = micro_batches(EXAMPLES * 4, max_tokens=24, max_len=12, pad_id=0, packed=True)
    assert all(mb["tokens"].numel() <= 24 for mb in micro)
    assert sum(mb["loss_mask"].sum().item() for mb in micro) == 4 * 9


def test_sft_rows_are_validated(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(
        '{"prompt": "1+1=", "completion": "2"}\n{"messages": [{"role": "user", "content": "x"}]}\n'
    )
    with pytest.raises(ValueError, match=r"sft.jsonl:2: 'messages' must end with an assistant message"):
        read_sft_jsonl(path)
    path.write_text('{"prompt": "1+1=", "completion": "2", "scores": {}}\n')
    with pytest.raises(ValueError, match="unknown field 'scores'"):
        read_sft_jsonl(path)


def _tiny(**sft) -> Config:
    cfg = load_config(overrides=["train.cpu_threads=1", "log.progress=false", "log.tensorboard=false"])
    for k, v in sft.items():
        setattr(cfg.sft, k, v)
    return cfg


def test_packing_matches_unpacked_loss_and_grads():
    """Megatron-Core GPTModel (local spec) at one process: the packed row's summed response NLL and its
    gradients equal those of the examples each in its own (padded) row."""
    from megatron_r1.training.setup import build_components
    from megatron_r1.training.sft import sft_loss_fn

    c = build_components(_tiny())
    tokens = sum(len(ex.response) for ex in EXAMPLES)

    def loss_and_grads(batch):
        c.model.zero_grad()
        for p in c.model.parameters():
            p.grad = None
        outs = c.policy.run([batch], sft_loss_fn(tokens), micro_batch_size=1)
        grads = {n: p.grad.clone() for n, p in c.model.named_parameters() if p.grad is not None}
        return sum(float(o["loss"]) for o in outs), grads

    packed_loss, packed_grads = loss_and_grads(packed_batch([EXAMPLES], c.tokenizer.pad_token_id))
    plain_loss, plain_grads = loss_and_grads(
        packed_batch([[ex] for ex in EXAMPLES], c.tokenizer.pad_token_id)
    )
    assert packed_loss == pytest.approx(plain_loss, rel=1e-5)
    assert packed_grads.keys() == plain_grads.keys() and len(packed_grads) > 5
    for name in packed_grads:
        torch.testing.assert_close(packed_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # without the block-diagonal mask the examples would see each other: the loss differs
    cross = packed_batch([EXAMPLES], c.tokenizer.pad_token_id)
    del cross["attention_mask"]
    assert loss_and_grads(cross)[0] != pytest.approx(plain_loss, rel=1e-3)


def _write_rows(path, n=24):
    with open(path, "w") as f:
        for i in range(n):
            a, b = 10 + i, 31 + 2 * i
            f.write(
                json.dumps({"prompt": f"{a}+{b}=", "completion": f"<answer>{a + b}</answer>", "id": i}) + "\n"
            )


@pytest.mark.slow
def test_sft_run_learns_and_resumes_exactly(tmp_path):
    from megatron_r1.training.sft_run import run_sft

    data = tmp_path / "sft.jsonl"
    _write_rows(data)
    kw = dict(data=str(data), batch_size=8, lr=3e-3, max_tokens_per_micro_batch=64, max_seq_len=32)
    straight = run_sft(_tiny(steps=6, **kw), tmp_path / "straight")
    rows = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["sft/loss"] < rows[0]["sft/loss"]
    run_sft(_tiny(steps=3, **kw), tmp_path / "resumed")
    resumed = run_sft(_tiny(steps=6, **kw), tmp_path / "resumed", resume=True)
    assert resumed["sft/loss"] == pytest.approx(straight["sft/loss"], rel=1e-6)
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step_000006"


def test_sft_missing_data_is_one_line(tmp_path):
    from megatron_r1.training.sft_run import run_sft

    with pytest.raises(ConfigError, match="sft.data=.*nope.jsonl: file not found"):
        run_sft(_tiny(data=str(tmp_path / "nope.jsonl")), tmp_path / "r")
