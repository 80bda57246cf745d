#!/usr/bin/env bash
# The GPU check (issue 13). Run from the repository root on a machine with one or more
# NVIDIA GPUs and the CUDA build of s3-train (trainer/scripts/build-cuda.sh) beside it:
#
#   S3_TRAIN_BIN=/path/to/s3-train tests/gpu/run.sh        # or ./s3-train, target/cuda-dist/s3-train
#
# Prints, and keeps in $OUT/summary.txt (default OUT=gpu-check):
#   1. check-fixture on CUDA: f32 held to 1e-4 (FAIL otherwise), bf16's error reported;
#   2. vit_b_ori forward+backward samples/s (a training micro-step, 11 decoder passes),
#      f32 and bf16, exact and unpadded attention;
#   3. a few training steps on a phantom store with world = number of GPUs, synchronised
#      through NCCL, and the weights digest of every rank (they must be equal);
#   4. NCCL all-reduce of a 400 MB buffer (vit_b_ori's gradients): time, algbw, busbw;
#   5. if PyTorch with CUDA and the reference (SAM-Med3D on PYTHONPATH, or SAM_MED3D=dir)
#      import, the same one-pass step in PyTorch beside ours, as a ratio.
# A few minutes on one H100/H200 (most of it NVRTC compiling kernels on first use).
#
# What the machine needs:
#   - the NVIDIA driver (libcuda) and a CUDA toolkit's headers for NVRTC: CUDA_PATH (or
#     /usr/local/cuda, /opt/cuda) with include/cuda_fp16.h, and libnvrtc on the loader path;
#   - libnccl.so: this build opens `libnccl.so`, not `libnccl.so.2`. NCCL's pip wheels
#     (nvidia-nccl-cu12) ship only libnccl.so.2; this script links one into a temporary
#     directory on LD_LIBRARY_PATH when it finds only that (by hand:
#     `ln -s $SITE/nvidia/nccl/lib/libnccl.so.2 DIR/libnccl.so`, DIR on LD_LIBRARY_PATH),
#     or install libnccl2 + libnccl-dev.
# Settings: GPUS (default: all), STEPS (timed micro-steps, default 3), TRAIN_STEPS
# (default 4), LIMIT (seconds per command, default 900), S3_FIXTURES
# (default ../shared/fixtures/model), PRESET (default vit_b_ori).
# DEVICE=cpu runs the same sequence on the CPU build (TCP instead of NCCL; with PRESET=small
# GPUS=2 STEPS=1 TRAIN_STEPS=2 it takes a few minutes): a rehearsal of this script itself.
set -uo pipefail
cd "$(dirname "$0")/../.."

out="${OUT:-gpu-check}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
fail() { say "FAIL: $*"; failed=1; }
failed=0
limit="${LIMIT:-900}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- the binary and the machine -------------------------------------------------------
device="${DEVICE:-cuda}"
preset="${PRESET:-vit_b_ori}"
bin="${S3_TRAIN_BIN:-}"
for c in "$bin" ./s3-train target/cuda-dist/s3-train; do
  if [ -n "$c" ] && [ -x "$c" ]; then bin="$c"; break; fi
done
[ -x "$bin" ] || { echo "no s3-train: set S3_TRAIN_BIN (trainer/scripts/build-cuda.sh builds it)" >&2; exit 2; }
# The driver, NVRTC's headers and libnccl.so (linked from libnccl.so.2 when that is all
# there is); sets gpus.
cuda_preflight() {
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 \
    || { echo "no NVIDIA driver here (nvidia-smi -L failed)" >&2; exit 2; }
  gpus="${GPUS:-$(nvidia-smi -L | grep -c '^GPU ')}"

  if [ -z "${CUDA_PATH:-}" ]; then
    for d in /usr/local/cuda /opt/cuda; do [ -f "$d/include/cuda_fp16.h" ] && { export CUDA_PATH="$d"; break; }; done
  fi
  [ -f "${CUDA_PATH:-/nonexistent}/include/cuda_fp16.h" ] \
    || { echo "no CUDA headers for NVRTC: set CUDA_PATH to a toolkit with include/cuda_fp16.h" >&2; exit 2; }
  export LD_LIBRARY_PATH="$CUDA_PATH/lib64:${LD_LIBRARY_PATH:-}"

  has_lib() { # NAME: on LD_LIBRARY_PATH or in the loader cache
    local d
    for d in ${LD_LIBRARY_PATH//:/ }; do [ -e "$d/$1" ] && return 0; done
    ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 "
  }
  if ! has_lib libnccl.so; then
    so2=$(ldconfig -p 2>/dev/null | awk '/libnccl\.so\.2 /{print $NF; exit}')
    [ -z "$so2" ] && so2=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
    if [ -n "$so2" ] && [ -e "$so2" ]; then
      mkdir -p "$tmp/nccl" && ln -s "$so2" "$tmp/nccl/libnccl.so"
      export LD_LIBRARY_PATH="$tmp/nccl:$LD_LIBRARY_PATH"
      echo "(linked $so2 as libnccl.so in a temporary directory)"
    else
      echo "no libnccl.so or libnccl.so.2 found: install libnccl2 libnccl-dev, or pip install nvidia-nccl-cu12" >&2
      exit 2
    fi
  fi
}
if [ "$device" = cpu ]; then gpus="${GPUS:-2}"; else cuda_preflight; fi

run() { timeout "$limit" "$bin" --device "$device" "$@"; }
if [ "$device" = cpu ]; then
  say "== CPU rehearsal, $gpus ranks"
else
  say "== $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1) × $gpus, CUDA_PATH=$CUDA_PATH"
fi
say "   $("$bin" --version)"

# --- 1. parity on CUDA ----------------------------------------------------------------
fixture="${S3_FIXTURES:-../shared/fixtures/model}/sam3d_tiny"
say "== 1. check-fixture $fixture on $device"
if run check-fixture "$fixture" >"$out/fixture-f32.txt" 2>&1; then
  say "   f32: $(tail -1 "$out/fixture-f32.txt")"
else
  cat "$out/fixture-f32.txt"; fail "check-fixture f32 (see $out/fixture-f32.txt)"
fi
if run check-fixture "$fixture" --precision bf16 >"$out/fixture-bf16.txt" 2>&1; then
  say "   $(tail -1 "$out/fixture-bf16.txt")"
else
  cat "$out/fixture-bf16.txt"; fail "check-fixture bf16"
fi

# --- 2. model step throughput ---------------------------------------------------------
say "== 2. $preset forward+backward (micro-step, batch 1, 11 passes), ${STEPS:-3} timed steps"
for precision in f32 bf16; do
  for attention in exact unpadded; do
    if line=$(run bench model --preset "$preset" --precision "$precision" --attention "$attention" \
      --steps "${STEPS:-3}" 2>"$out/model-$precision-$attention.err"); then
      say "   $line"
    else
      fail "bench model $precision $attention: $(tail -3 "$out/model-$precision-$attention.err")"
    fi
  done
done

# --- ranks --------------------------------------------------------------------------
port=$(( 29500 + RANDOM % 1000 ))
launch() { # NAME ARGS...: one process per GPU, rank = local rank = GPU index
  local name=$1 r pids=()
  shift
  for ((r = 0; r < gpus; r++)); do
    RANK=$r WORLD_SIZE=$gpus LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port S3_JOB_TOKEN=gpu-check \
      RUST_LOG=s3_trainer=info timeout "$limit" "$bin" --device "$device" "$@" \
      >"$out/$name-rank$r.out" 2>"$out/$name-rank$r.err" &
    pids+=($!)
  done
  local status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  port=$((port + 1))
  return $status
}

# --- 3. a few synchronised training steps -----------------------------------------------
train_steps="${TRAIN_STEPS:-4}"
say "== 3. $train_steps training steps of $preset on a phantom store, world $gpus"
run bench phantom-store "$tmp/data" --cases $((gpus * train_steps)) >/dev/null 2>"$out/phantom.err" \
  || fail "phantom store: $(tail -3 "$out/phantom.err")"
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
start=$(date +%s)
if launch train train --stage "$tmp/stage.toml" --data "$tmp/data" --run "$tmp/run" --no-resume --step-timeout 0; then
  secs=$(( $(date +%s) - start ))
  digests=$(cat "$out"/train-rank*.out | grep -o 'weights xxh3 [0-9a-f]*' | sort -u)
  n=$(echo "$digests" | grep -c xxh3)
  joined=$(cat "$out"/train-rank*.err | grep -c 'joined the NCCL group')
  say "   $(grep -h 'trained' "$out"/train-rank0.out) — ${secs} s wall for the whole run"
  [ "$device" = cuda ] && say "   NCCL joined on $joined of $gpus ranks$([ "$gpus" = 1 ] && echo ' (one rank: no collective needed)')"
  if [ "$n" = 1 ]; then say "   every rank holds the same weights: $digests"; else fail "ranks' weights differ: $digests"; fi
else
  fail "training run (see $out/train-rank*.err)"; tail -5 "$out"/train-rank*.err
fi

# --- 4. NCCL all-reduce bandwidth -------------------------------------------------------
say "== 4. all-reduce of 400 MB, world $gpus"
if launch allreduce bench all-reduce --mb 400 --iters 5; then
  say "   $(cat "$out/allreduce-rank0.out")"
else
  fail "all-reduce (see $out/allreduce-rank*.err)"; tail -5 "$out"/allreduce-rank*.err
fi

# --- 5. beside PyTorch ----------------------------------------------------------------
[ -n "${SAM_MED3D:-}" ] && export PYTHONPATH="$SAM_MED3D:${PYTHONPATH:-}"
if [ "$device" = cuda ] && python3 -c 'import torch, segment_anything.build_sam3D; assert torch.cuda.is_available()' 2>/dev/null; then
  say "== 5. one forward+backward pass, ours / PyTorch reference (same GPU, f32)"
  ours=$(run bench model --preset vit_b_ori --clicks 1 --steps "${STEPS:-3}" 2>/dev/null)
  theirs=$(DEVICE=cuda STEPS="${STEPS:-3}" timeout "$limit" python3 trainer/bench/torch_model.py vit_b_ori 2>/dev/null | tail -1)
  say "   $ours"
  say "   $theirs"
  a=$(echo "$ours" | grep -o '[0-9.]* samples/s' | head -1 | cut -d' ' -f1)
  b=$(echo "$theirs" | grep -o '[0-9.]* samples/s' | head -1 | cut -d' ' -f1)
  [ -n "$a" ] && [ -n "$b" ] && say "   ratio ours / PyTorch: $(python3 -c "print(f'{$a / $b:.2f}x')")"
  say "   (ours: encoder + one decoder pass + full-resolution Dice+BCE; theirs: encoder + one pass + a"
  say "    low-res square loss: the encoder dominates both)"
else
  say "== 5. skipped: PyTorch with CUDA and the reference (SAM_MED3D=dir) do not import here"
fi

say "== $([ $failed = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED'); figures in $summary"
exit $failed
