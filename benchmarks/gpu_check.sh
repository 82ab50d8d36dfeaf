#!/usr/bin/env bash
# The first run of maeprobe on a GPU machine, in one command that needs no network and finishes in at most 8 minutes
# on an H100/H200-class GPU:
#
#   bash benchmarks/gpu_check.sh [--out DIR]     # default DIR: the repository's outputs/gpu_check
#   bash benchmarks/gpu_check.sh --dry-run       # the same stages on the CPU, tiny sizes, gloo (tests the script)
#   options: --only STAGE,STAGE (these and env only), --budget STAGE=SECONDS (another time budget; repeatable)
#
# Stages, each under its own time budget (a stage that runs out is reported as such and the script goes on):
#   env          device name, driver, versions
#   pytest-cuda  python -m pytest -m cuda (the GPU paths against the CPU: bf16, SDPA kernels, fused AdamW, TF32,
#                torch.compile with Triton, pinned memory, NCCL)
#   probe        benchmarks/probe_overhead.py: ViT-B/16 attention distance, bf16, against a bare bf16 SDPA forward
#   pretrain     benchmarks/pretrain_throughput.py: ViT-B/16 MAE training step, bf16 + SDPA + fused AdamW, eager
#   compile      the same step under torch.compile (inductor), recipe step only
#   torchrun     recipes/tiny-mae.yaml under torchrun, one process per GPU (NCCL), from an image folder with
#                pinned memory and persistent workers; then a probe of its checkpoint under torchrun
#   reproduce    maeprobe reproduce --scale released on stand-in checkpoints in temporary hub caches
# Writes DIR/results.md (device name and versions first, then one row per stage) and DIR/logs/STAGE.log.
# A relative DIR is in the caller's folder. DIR must be new, empty, or a folder this script made (it leaves the
# file .maeprobe-gpu-check there): a rerun replaces only results.md, logs/ and work/, never other files.
# Exit status 0 when every stage is ok, 1 otherwise; 2 for a refused argument or output folder.
set -u

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }  # the comment block above
shown() { printf '%q' "$1"; }  # a path in a one-line message: newlines and control characters escaped

STAGES="env pytest-cuda probe pretrain compile torchrun reproduce"
# Time budgets in seconds: 20 + 140 + 40 + 45 + 115 + 60 + 50 = 470 (8 minutes = 480).
declare -A BUDGET=([env]=20 [pytest-cuda]=140 [probe]=40 [pretrain]=45 [compile]=115 [torchrun]=60 [reproduce]=50)
# --dry-run on a 2-core CPU (the tests, CI): the same stages at tiny sizes need other budgets than a GPU; a busy
# machine ran the stand-in reproduce past 50 s. --budget still overrides these.
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then
    BUDGET=([env]=30 [pytest-cuda]=140 [probe]=90 [pretrain]=90 [compile]=150 [torchrun]=150 [reproduce]=180)
  fi
done
DRY=0
OUT=""
ONLY=""
known() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a folder" >&2; exit 2; }; OUT=$2; shift ;;
    --only)
      [ $# -ge 2 ] || { echo "error: --only needs stages, e.g. --only probe,compile" >&2; exit 2; }
      ONLY=" ${2//,/ } "; shift
      for stage in $ONLY; do
        known "$stage" || { echo "error: --only $stage: unknown stage; expected some of: $STAGES" >&2; exit 2; }
      done ;;
    --budget)
      [ $# -ge 2 ] || { echo "error: --budget needs STAGE=SECONDS" >&2; exit 2; }
      stage=${2%%=*} seconds=${2#*=}; shift
      { known "$stage" && [[ "$seconds" =~ ^[1-9][0-9]{0,4}$ ]]; } || {
        echo "error: --budget $stage=$seconds: expected STAGE=SECONDS with a stage among: $STAGES" >&2; exit 2; }
      BUDGET[$stage]=$seconds ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1'; expected --dry-run, --out DIR, --only STAGES, --budget STAGE=S or --help" >&2
       exit 2 ;;
  esac
  shift
done

# Paths the caller gave are the caller's: resolved from its folder before the script moves to the repository.
case "$OUT" in "") ;; /*) ;; *) OUT=$PWD/$OUT ;; esac
case "${PYTHON:-}" in */*) [[ "$PYTHON" = /* ]] || PYTHON=$PWD/$PYTHON ;; esac
cd "$(dirname "$0")/.." || exit 2
[ -n "$OUT" ] || OUT=$PWD/outputs/gpu_check
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
fi
# The output folder: new, empty, or one this script made (its marker file). Only what the script writes there is
# replaced; a folder of other files is refused before anything is removed or run.
MARK=.maeprobe-gpu-check
if [ -e "$OUT" ] || [ -L "$OUT" ]; then
  [ -d "$OUT" ] || { echo "error: --out $(shown "$OUT"): exists and is not a folder; name a new or empty folder" >&2
                     exit 2; }
  if [ -n "$(ls -A "$OUT" 2>/dev/null || echo unreadable)" ] && { [ ! -f "$OUT/$MARK" ] || [ -L "$OUT/$MARK" ]; }; then
    echo "error: --out $(shown "$OUT"): a folder that holds other files (no $MARK from an earlier run of this" \
         "script); name a new or empty folder" >&2
    exit 2
  fi
fi
mkdir -p "$OUT" && echo "made by benchmarks/gpu_check.sh, which replaces results.md, logs/ and work/ here" \
  > "$OUT/$MARK" || { echo "error: --out $(shown "$OUT"): cannot write there" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
rm -rf "$WORK" "$OUT/logs" "$OUT/results.md"   # the script's own, from an earlier run into this folder
mkdir -p "$WORK" "$OUT/logs"

# No network: every model comes from this script or from temporary caches.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MAEPROBE_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHON OUT WORK DRY
unset MAEPROBE_DINO

if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""   # the CPU path, even on a GPU machine
  DEVICE=cpu
  NPROC=2                          # two gloo processes
  BF16=always                      # CPU autocast: the mixed-precision code of a GPU run
  PROBE_ARGS="--images 8 --batch-size 4 --repeats 1 --device cpu --dtype bf16 --no-memory"
  TRAIN_ARGS="--batch-size 4 --steps 2 --warmup 1 --device cpu --dtype bf16"
  COMPILE_ARGS="--no-baseline --compile --compile-backend aot_eager"  # dynamo + AOT autograd; inductor: test_compile
  PROBE_IMAGES=8
  REPRODUCE_IDS="mae-local-attention contrastive-homogeneous-attention"  # one finding per set of releases it reads
  PYTEST_PATHS=$(grep -l "pytest.mark.cuda" tests/test_*.py | tr '\n' ' ')
  MODE="dry run: CPU, tiny sizes, gloo, torch.compile backend aot_eager"
else
  DEVICE=cuda
  BF16=true
  NPROC=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
  PROBE_ARGS="--preset mae_vit_base_patch16 --images 512 --batch-size 64 --repeats 3 --device cuda --dtype bf16"
  TRAIN_ARGS="--preset mae_vit_base_patch16 --batch-size 128 --steps 10 --warmup 3 --device cuda"
  COMPILE_ARGS="--no-baseline --compile"   # the baseline is the pretrain stage's
  PROBE_IMAGES=64
  PYTEST_PATHS=tests
  MODE="full"
fi
export DEVICE BF16 NPROC PROBE_ARGS TRAIN_ARGS COMPILE_ARGS PROBE_IMAGES PYTEST_PATHS REPRODUCE_IDS

stage_env() {
  "$PYTHON" benchmarks/gpu_check.py env | tee "$WORK/env.txt"
}

stage_pytest_cuda() {
  # shellcheck disable=SC2086
  "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider $PYTEST_PATHS
}

stage_probe() {
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/probe_overhead.py $PROBE_ARGS --json
}

stage_pretrain() {
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/pretrain_throughput.py $TRAIN_ARGS --json
}

stage_compile() {
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/pretrain_throughput.py $TRAIN_ARGS $COMPILE_ARGS --json
}

stage_torchrun() {
  "$PYTHON" benchmarks/gpu_check.py images "$WORK/images" 16 || return 1
  "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m maeprobe recipe run \
    recipes/tiny-mae.yaml "run.output_dir=$WORK/tiny-mae" run.resume=false "data.path=$WORK/images" \
    data.num_workers=2 "data.samples_per_epoch=$((8 * NPROC))" "optim.global_batch=$((8 * NPROC))" \
    optim.epochs=2 "run.device=$DEVICE" "run.bf16=$BF16" || return 1   # 2 epochs of one step (workers persist)
  "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m maeprobe run \
    "$WORK/tiny-mae/checkpoint-last.pth" --metrics attn-distance,decoder-attn-sim,spectrum \
    --images "$WORK/images/val" --bootstrap 20 --dtype bf16 --device "$DEVICE" --out "$WORK/probe.csv" || return 1
  echo "torchrun: $NPROC process(es), $(grep -o 'global batch [^;]*; [^]]*' "$OUT/logs/torchrun.log" | head -n 1)"
}

stage_reproduce() {
  "$PYTHON" benchmarks/gpu_check.py standins "$WORK/caches" || return 1
  # shellcheck disable=SC2086  # REPRODUCE_IDS: several ids, or none (every finding of the scale)
  TORCH_HOME="$WORK/caches/torch" HF_HUB_CACHE="$WORK/caches/hf" "$PYTHON" -m maeprobe reproduce ${REPRODUCE_IDS:-} \
    --scale released --probe-images "$PROBE_IMAGES" --device "$DEVICE" --out "$WORK/reproduce" || return 1
  "$PYTHON" -c "import pandas as pd, sys; t = pd.read_csv(sys.argv[1]); print('reproduce: ' + ', '.join(
    f'{f} {v}' for f, v in zip(t['finding'], t['verdict'])) + ' (stand-ins: random weights)')" \
    "$WORK/reproduce/findings.csv"
}
export -f stage_env stage_pytest_cuda stage_probe stage_pretrain stage_compile stage_torchrun stage_reproduce

ROWS=""
FAILED=0
START=$SECONDS

run_stage() {  # NAME FUNCTION
  local name=$1 budget=${BUDGET[$1]} fn=$2 log="$OUT/logs/$1.log" began=$SECONDS rc status result
  if [ -n "$ONLY" ] && [ "$name" != env ] && [[ "$ONLY" != *" $name "* ]]; then  # env always: the header
    ROWS="$ROWS| $name | not run (--only) | 0 | $budget | |"$'\n'
    return
  fi
  echo "== $name (budget ${budget} s)"
  timeout --kill-after=10 "$budget" bash -c "$fn" > "$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status="out of time (budget ${budget} s)"
  else
    status="failed (exit $rc)"
  fi
  [ "$status" = ok ] || FAILED=1
  result=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-400 | tr '|' '/')
  echo "   $status after $((SECONDS - began)) s: $result"
  ROWS="$ROWS| $name | $status | $((SECONDS - began)) | $budget | $result |"$'\n'
}

run_stage env stage_env
run_stage pytest-cuda stage_pytest_cuda
run_stage probe stage_probe
run_stage pretrain stage_pretrain
run_stage compile stage_compile
run_stage torchrun stage_torchrun
run_stage reproduce stage_reproduce

field() { sed -n "s/^$1: //p" "$WORK/env.txt" 2>/dev/null | head -n 1; }
DEVICE_NAME=$(field device)
{
  echo "# maeprobe GPU check: ${DEVICE_NAME:-unknown device (the env stage failed)}"
  echo
  echo "- mode: $MODE"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [ -n "$DEVICE_NAME" ]; then
    echo "- torch $(field torch), CUDA $(field cuda), cuDNN $(field cudnn), NCCL $(field nccl), timm $(field timm)," \
         "Python $(field python); bf16: $(field bf16_supported)"
    echo "- GPUs: $(field gpus); nvidia-smi: $(field nvidia_smi); CPU: $(field cpu), $(field cpu_cores) cores"
  fi
  echo "- total: $((SECONDS - START)) s; logs: logs/STAGE.log"
  echo
  echo "| stage | status | seconds | budget s | last line of its log |"
  echo "|---|---|---|---|---|"
  printf '%s' "$ROWS"
  echo
  if [ $FAILED = 0 ]; then echo "All stages ok."; else echo "Some stages did not pass; see their logs."; fi
} > "$OUT/results.md"
echo "wrote $(shown "$OUT/results.md") ($((SECONDS - START)) s)"
exit $FAILED
