#!/usr/bin/env bash
# The GPU check, as one command that fits a lent GPU machine (600 s per command, at
# most 64 MiB carried, a few files brought back). Run from the repository root:
#
#   trainer/scripts/build-cuda.sh        # here: target/cuda-dist/s3-train.gz (~49 MB)
#   tests/gpu/prepare.sh                 # here: tests/gpu/fixtures/ (6.7 MB, git-ignored)
#   tests/gpu/run.sh [--ranks N]         # there, with both carried
#
# Every step runs against one deadline (BUDGET seconds, default 540); a step that
# would not fit is skipped and said so. Everything it writes goes into one archive,
# $OUT/gpu-check.tar.gz (OUT defaults to gpu-check), beside $OUT/summary.txt, which
# it also prints:
#   1. preflight: the GPUs, NVRTC's headers, the libnccl the binary loads (libnccl.so.2
#      or libnccl.so; S3_NCCL_LIBRARY names another);
#   2. check-fixture on CUDA: f32 held to 1e-4 (FAIL otherwise), bf16's error reported;
#   3. a few training steps on a phantom store with N ranks, one GPU each, synchronised
#      through NCCL, and the weights digest of every rank (they must be equal);
#   4. vit_b_ori forward+backward samples/s (f32; bf16 and unpadded attention if time);
#   5. NCCL all-reduce: first --verify (non-trivial values averaged out of place through
#      the training buckets, each bucket's first, middle and last element read back:
#      the device pointers checked, on one GPU too), then 400 MB timed (algbw, busbw);
#   6. the same step in PyTorch beside ours, if PyTorch with CUDA and the reference import.
#
# Settings: --ranks N (default: every GPU; NCCL needs one GPU per rank), BUDGET,
# STEPS (timed micro-steps, default 3), TRAIN_STEPS (default 4), S3_TRAIN_BIN (the
# binary or its .gz), S3_FIXTURES (default tests/gpu/fixtures), PRESET (vit_b_ori).
# DEVICE=cpu rehearses the sequence on the CPU build (TCP instead of NCCL; with
# PRESET=small STEPS=1 TRAIN_STEPS=2 --ranks 2 it takes a few minutes).
set -uo pipefail
cd "$(dirname "$0")/../.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
ranks=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks) ranks="${2:-}"; shift 2 ;;
    --ranks=*) ranks="${1#--ranks=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$ranks" ] && ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
  echo "--ranks $ranks: a positive number of ranks (one GPU each)" >&2; exit 2
fi

out="${OUT:-gpu-check}"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
work="$tmp/gpu-check"
mkdir -p "$work"
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
fail() { say "FAIL: $*"; failed=1; }
failed=0
deadline=$(( SECONDS + ${BUDGET:-540} ))
left() { echo $(( deadline - SECONDS )); }
# fits SECS: whether a step that needs about SECS still fits before the deadline.
fits() { [ "$(left)" -gt "$1" ]; }
limit() { timeout "$(left)" "$@"; }
finish() {
  [ -d "$tmp/kernels" ] && say "   kernel cache: $(find "$tmp/kernels" -type f | wc -l) file(s), $(du -sh "$tmp/kernels" | cut -f1)"
  say "== $([ $failed = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED'); details in $out/gpu-check.tar.gz"
  cp "$summary" "$work/summary.txt"
  tar -czf "$out/gpu-check.tar.gz" -C "$tmp" gpu-check
  exit $failed
}

# --- the binary ------------------------------------------------------------------------
device="${DEVICE:-cuda}"
preset="${PRESET:-vit_b_ori}"
bin=""
for c in "${S3_TRAIN_BIN:-}" target/cuda-dist/s3-train.gz target/cuda-dist/s3-train ./s3-train; do
  [ -n "$c" ] && [ -f "$c" ] || continue
  case "$c" in
    *.gz) gunzip -c "$c" >"$tmp/s3-train" && chmod +x "$tmp/s3-train" && bin="$tmp/s3-train" ;;
    *) bin="$c" ;;
  esac
  break
done
[ -n "$bin" ] && [ -x "$bin" ] || {
  echo "no s3-train: set S3_TRAIN_BIN (trainer/scripts/build-cuda.sh makes target/cuda-dist/s3-train.gz)" >&2
  exit 2
}

# --- 1. preflight -----------------------------------------------------------------------
if [ "$device" = cpu ]; then
  gpus="${ranks:-2}"
  say "== 1. CPU rehearsal, $gpus ranks"
else
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
    || { echo "no NVIDIA driver here (nvidia-smi -L failed)" >&2; exit 2; }
  have=$(nvidia-smi -L | grep -c '^GPU ')
  gpus="${ranks:-$have}"
  if [ "$gpus" -gt "$have" ]; then
    echo "--ranks $gpus but this machine has $have GPU(s): NCCL needs one GPU per rank" >&2
    exit 2
  fi
  if [ -z "${CUDA_PATH:-}" ]; then
    for d in /usr/local/cuda /opt/cuda; do [ -f "$d/include/cuda_fp16.h" ] && { export CUDA_PATH="$d"; break; }; done
  fi
  [ -f "${CUDA_PATH:-/nonexistent}/include/cuda_fp16.h" ] \
    || { echo "no CUDA headers for NVRTC: set CUDA_PATH to a toolkit with include/cuda_fp16.h" >&2; exit 2; }
  export LD_LIBRARY_PATH="$CUDA_PATH/lib64:${LD_LIBRARY_PATH:-}"
  # pip's wheel, when no libnccl2 package is installed.
  if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so'; then
    wheel=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
    [ -n "$wheel" ] && export LD_LIBRARY_PATH="$wheel:$LD_LIBRARY_PATH"
  fi
  say "== 1. $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1) × $have, $gpus rank(s), CUDA_PATH=$CUDA_PATH"
fi
say "   $("$bin" --version)"
say "   $("$bin" info --preset tiny 2>/dev/null | grep '^libnccl' || echo 'libnccl: (info failed)')"
# Kernels compile through NVRTC on first use: one on-disk cache for every process here.
export S3_KERNEL_CACHE="$tmp/kernels"
run() { limit "$bin" --device "$device" "$@"; }

# --- 2. parity on CUDA ----------------------------------------------------------------
fixture="${S3_FIXTURES:-tests/gpu/fixtures}/sam3d_tiny"
if [ ! -f "$fixture.json" ]; then
  fail "no fixture at $fixture.json: run tests/gpu/prepare.sh where ../shared exists, and carry tests/gpu/fixtures"
elif fits 30; then
  say "== 2. check-fixture on $device"
  if run check-fixture "$fixture" >"$work/fixture-f32.txt" 2>&1; then
    say "   f32: $(tail -1 "$work/fixture-f32.txt")"
  else
    fail "check-fixture f32: $(tail -3 "$work/fixture-f32.txt")"
  fi
  if fits 60 && run check-fixture "$fixture" --precision bf16 >"$work/fixture-bf16.txt" 2>&1; then
    say "   $(tail -1 "$work/fixture-bf16.txt")"
  fi
fi

# --- ranks --------------------------------------------------------------------------
port=$(( 29500 + RANDOM % 1000 ))
launch() { # NAME ARGS...: one process per GPU, rank = local rank = GPU index
  local name=$1 r pids=()
  shift
  for ((r = 0; r < gpus; r++)); do
    RANK=$r WORLD_SIZE=$gpus LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port S3_JOB_TOKEN=gpu-check \
      RUST_LOG=s3_trainer=info limit "$bin" --device "$device" "$@" \
      >"$work/$name-rank$r.out" 2>"$work/$name-rank$r.err" &
    pids+=($!)
  done
  local status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  port=$((port + 1))
  return $status
}

# --- 3. a few synchronised training steps -----------------------------------------------
train_steps="${TRAIN_STEPS:-4}"
if fits 120; then
  say "== 3. $train_steps training steps of $preset on a phantom store, $gpus rank(s)"
  run bench phantom-store "$tmp/data" --cases $((gpus * train_steps)) >/dev/null 2>"$work/phantom.err" \
    || fail "phantom store: $(tail -3 "$work/phantom.err")"
  cat >"$tmp/stage.toml" <<EOF
name = "gpu-check"
preset = "$preset"
epochs = 1000
lr = 8e-4
batch = 1
accumulation = 1
clicks = 11
seed = 7
checkpoint_every = 1000
max_steps = $train_steps
shard_window = 2
[datasets]
select = "all"
[schedule]
kind = "constant"
EOF
  start=$SECONDS
  if launch train train --stage "$tmp/stage.toml" --data "$tmp/data" --run "$tmp/run" --no-resume --step-timeout 0; then
    digests=$(cat "$work"/train-rank*.out | grep -o 'weights xxh3 [0-9a-f]*' | sort -u)
    n=$(echo "$digests" | grep -c xxh3)
    say "   $(grep -h 'trained' "$work"/train-rank0.out) — $((SECONDS - start)) s wall for the whole run"
    if [ "$device" = cuda ] && [ "$gpus" -gt 1 ]; then
      say "   NCCL joined on $(cat "$work"/train-rank*.err | grep -c 'joined the NCCL group') of $gpus ranks"
    fi
    if [ "$n" = 1 ]; then say "   every rank holds the same weights: $digests"; else fail "ranks' weights differ: $digests"; fi
  else
    fail "training run: $(tail -3 "$work"/train-rank0.err)"
  fi
else
  say "== 3. skipped: $(left) s left"
fi

# --- 4. model step throughput ---------------------------------------------------------
say "== 4. $preset forward+backward (micro-step, batch 1, 11 passes), ${STEPS:-3} timed steps"
for variant in "f32 exact" "bf16 exact" "f32 unpadded" "bf16 unpadded"; do
  read -r precision attention <<<"$variant"
  if ! fits 90; then say "   $variant: skipped, $(left) s left"; continue; fi
  if line=$(run bench model --preset "$preset" --precision "$precision" --attention "$attention" \
    --steps "${STEPS:-3}" 2>"$work/model-$precision-$attention.err"); then
    say "   $line"
  else
    fail "bench model $variant: $(tail -3 "$work/model-$precision-$attention.err")"
  fi
done

# --- 5. NCCL all-reduce: verified, then timed ---------------------------------------------
if fits 60; then
  say "== 5. all-reduce of 400 MB, $gpus rank(s), verified first"
  if launch allreduce bench all-reduce --mb 400 --iters 5 --verify; then
    while read -r line; do say "   $line"; done <"$work/allreduce-rank0.out"
  else
    fail "all-reduce: $(tail -3 "$work"/allreduce-rank0.err)"
  fi
else
  say "== 5. skipped: $(left) s left"
fi

# --- 6. beside PyTorch ----------------------------------------------------------------
[ -n "${SAM_MED3D:-}" ] && export PYTHONPATH="$SAM_MED3D:${PYTHONPATH:-}"
if [ "$device" = cuda ] && fits 120 \
  && python3 -c 'import torch, segment_anything.build_sam3D; assert torch.cuda.is_available()' 2>/dev/null; then
  say "== 6. one forward+backward pass, ours / PyTorch reference (same GPU, f32)"
  ours=$(run bench model --preset vit_b_ori --clicks 1 --steps "${STEPS:-3}" 2>/dev/null)
  theirs=$(DEVICE=cuda STEPS="${STEPS:-3}" limit python3 trainer/bench/torch_model.py vit_b_ori 2>/dev/null | tail -1)
  say "   $ours"
  say "   $theirs"
  a=$(echo "$ours" | grep -o '[0-9.]* samples/s' | head -1 | cut -d' ' -f1)
  b=$(echo "$theirs" | grep -o '[0-9.]* samples/s' | head -1 | cut -d' ' -f1)
  [ -n "$a" ] && [ -n "$b" ] && say "   ratio ours / PyTorch: $(python3 -c "print(f'{$a / $b:.2f}x')")"
else
  say "== 6. skipped: PyTorch with CUDA and the reference (SAM_MED3D=dir) do not import here, or no time"
fi

finish
