"""The native engine's static cache, slot scheduling and per-row sampling (the GPU path's logic, on CPU)."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import PROMPTS, VOCAB, CharTokenizer, make_engine

from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.sampling import row_uniforms, seed_key
from megatron_r1.rollout.scheduler import SlotScheduler, pow2_bucket

ATOL = 1e-5
MORE_PROMPTS = [*PROMPTS, [50, 51], [60, 61, 62, 63, 64, 65, 66], [1, 2, 3, 4], [90]]


def _tokens(out):
    return [c.token_ids for c in out]


def test_scheduler_lowest_free_slot_release_and_compaction() -> None:
    s = SlotScheduler(8)
    assert s.admit([10, 11, 12, 13]) == [0, 1, 2, 3]
    assert s.release(1) == 11 and s.release(0) == 10
    assert s.admit([14]) == [0] and s.width == 4
    s.release(2)
    assert s.compact() == [(1, 3)]  # row 13 moves into the hole; rows occupy 0..n-1
    assert s.row_of == {0: 14, 1: 13} and s.width == 2
    assert s.admit([15, 16]) == [2, 3]
    with pytest.raises(ValueError, match="free slots"):
        s.admit(list(range(5)))


def test_scheduler_pow2_width_moves_only_when_the_bucket_shrinks() -> None:
    s = SlotScheduler(8, lambda n: pow2_bucket(n, 8))
    s.admit(list(range(6)))
    assert s.width == 8
    s.release(0)
    assert s.compact() == [] and s.width == 8  # 5 rows still need width 8
    s.release(1)
    assert sorted(s.compact()) == [(0, 5), (1, 4)] and s.width == 4
    assert sorted(s.row_of.values()) == [2, 3, 4, 5]
    assert [pow2_bucket(n, 12) for n in (0, 1, 3, 4, 5, 9, 12)] == [0, 1, 4, 4, 8, 12, 12]


def test_row_uniforms_match_splitmix64_reference() -> None:
    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x &= mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    key = seed_key(1234)
    rows, steps = torch.tensor([0, 1, 7, 1 << 40]), torch.tensor([0, 5, 3, 99])
    golden = 0x9E3779B97F4A7C15
    expected = [
        (mix(mix(r * golden + key) + s * golden) >> 11) / (1 << 53)
        for r, s in zip(rows.tolist(), steps.tolist())
    ]
    assert row_uniforms(key, rows, steps).tolist() == expected
    many = row_uniforms(key, torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    assert 0 <= many.min() and many.max() < 1 and abs(many.mean().item() - 0.5) < 0.01
    assert not torch.equal(
        many, row_uniforms(seed_key(1235), torch.arange(20000), torch.zeros_like(many).long())
    )


@torch.inference_mode()
def test_prefix_shared_prefill_equals_independent_prefill(llama_engine) -> None:
    model = llama_engine.model
    a, b = PROMPTS[0], PROMPTS[2]
    ids = torch.zeros(2, len(b), dtype=torch.long)
    ids[0, : len(a)], ids[1] = torch.tensor(a), torch.tensor(b)
    shared = model.allocate_kv_cache(4, 16)
    # Prompt a fills slots 3 and 0, prompt b slot 1: one prefill, the G samples share it.
    logits = model.prefill(
        ids, torch.tensor([len(a), len(b)]), shared, torch.tensor([3, 1, 0]), torch.tensor([0, 1, 0])
    )
    for prompt, slots, row in ((a, [3, 0], 0), (b, [1], 1)):
        alone = model.allocate_kv_cache(1, 16)
        alone_logits = model.prefill(
            torch.tensor([prompt]), torch.tensor([len(prompt)]), alone, torch.tensor([0]), torch.tensor([0])
        )
        torch.testing.assert_close(logits[row], alone_logits[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits[row], model(torch.tensor([prompt]))[0, -1], atol=ATOL, rtol=0)
        for slot in slots:
            n = len(prompt)
            torch.testing.assert_close(shared.k[:, slot, :, :n], alone.k[:, 0, :, :n], atol=ATOL, rtol=0)
            torch.testing.assert_close(shared.v[:, slot, :, :n], alone.v[:, 0, :, :n], atol=ATOL, rtol=0)


@torch.inference_mode()
def test_decode_at_per_row_positions_equals_full_forward(llama_engine) -> None:
    model = llama_engine.model
    prompts = [PROMPTS[2], PROMPTS[1], PROMPTS[0]]
    cache = model.allocate_kv_cache(3, 32)
    cache.k.zero_(), cache.v.zero_()
    width = max(map(len, prompts))
    ids = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    lengths = torch.tensor([len(p) for p in prompts])
    model.prefill(ids, lengths, cache, torch.arange(3), torch.arange(3))
    seqs = [list(p) for p in prompts]
    positions = lengths.clone()
    for step in range(4):
        tokens = torch.tensor([(7 * step + 11 * i) % VOCAB for i in range(3)])
        logits = model.decode(tokens, positions, cache, kv_len=32)
        for i in range(3):
            seqs[i].append(int(tokens[i]))
            torch.testing.assert_close(logits[i], model(torch.tensor([seqs[i]]))[0, -1], atol=ATOL, rtol=0)
        positions += 1


def test_continuous_batching_greedy_equals_one_at_a_time(llama) -> None:
    prompts = MORE_PROMPTS[:5]
    big = make_engine(llama)
    stop = big.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=4))[0].token_ids[3]
    sampling = SamplingParams(n=2, temperature=0, max_new_tokens=10, stop_token_ids=(stop,))
    alone = [c for p in prompts for c in big.generate([p], sampling)]
    assert len({len(c.token_ids) for c in alone}) > 1  # rows finish at different steps
    # 3 slots: a prompt's 2 rows are split over admissions; sync_every 4: rows run past their stop.
    for engine in (make_engine(llama, max_batch_size=3), make_engine(llama, max_batch_size=4, sync_every=4)):
        out = engine.generate(prompts, sampling)
        assert _tokens(out) == _tokens(alone)
        assert [c.finish_reason for c in out] == [c.finish_reason for c in alone]
        for x, y in zip(out, alone):
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=ATOL, rtol=0)


def test_seeded_sampling_independent_of_batching(llama) -> None:
    prompts = MORE_PROMPTS[:5]
    sampling = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7, stop_token_ids=(5,))
    reference = make_engine(llama, max_batch_size=64).generate(prompts, sampling)
    for kwargs in ({"max_batch_size": 2}, {"max_batch_size": 4, "sync_every": 3}):
        assert _tokens(make_engine(llama, **kwargs).generate(prompts, sampling)) == _tokens(reference)
    # A prompt's rows are rows p*n .. p*n+n-1 of the call: alone, prompt 0 draws what it drew among all.
    assert _tokens(make_engine(llama).generate(prompts[:1], sampling)) == _tokens(reference[:3])


def test_sync_every_drops_tokens_after_a_stop_string(llama) -> None:
    tok = CharTokenizer()
    base = make_engine(llama)
    greedy = base.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    stop = tok.decode(greedy[1].token_ids)[5:8]
    sampling = SamplingParams(temperature=0, max_new_tokens=12, stop_strings=(stop,))
    expected = base.generate(PROMPTS, sampling)
    out = make_engine(llama, max_batch_size=2, sync_every=6).generate(PROMPTS, sampling)
    assert _tokens(out) == _tokens(expected)
    assert out[1].finish_reason == "stop" and stop in out[1].text
    assert all(len(c.logprobs) == len(c.token_ids) for c in out)


def test_cache_is_reused_across_calls_and_freed_by_sleep(llama) -> None:
    engine = make_engine(llama, max_batch_size=8)
    sampling = SamplingParams(n=2, temperature=0, max_new_tokens=6)
    first = engine.generate(PROMPTS, sampling)
    state = engine._state
    assert engine.generate(PROMPTS[:2], sampling) and engine._state is state  # fits: no reallocation
    engine.sleep()
    assert engine._state is None
    engine.wake_up()
    assert _tokens(engine.generate(PROMPTS, sampling)) == _tokens(first)
    resident = make_engine(llama, max_batch_size=8, offload_on_sleep=False)
    resident.generate(PROMPTS, sampling)
    state = resident._state
    resident.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        resident.generate(PROMPTS, sampling)
    resident.wake_up()
    assert _tokens(resident.generate(PROMPTS, sampling)) == _tokens(first) and resident._state is state
