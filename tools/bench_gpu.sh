#!/usr/bin/env bash
# The one-call GPU benchmark, made to fit in a few minutes of a lent GPU: builds rfnc, runs
# the GPU tests (RFNC_REQUIRE_GPU=1: they fail, not skip, if the GPU cannot be used), then
# times refinenet4.rfn (ResNet-101 by default) at 512x512 on GPU 0: inference and the
# training step, batch 1 and 8, each precision (tf32 and bf16 tensor cores, f32 CUDA
# cores). A configuration that fails (say, out of memory) is reported and skipped. For
# each: the median ms of STEPS runs after a warm-up (CUDA-graph replays), the achieved
# TFLOP/s, the fraction of the card's peak for that precision (looked up from the device
# name), and where the time goes by kind of kernel (convolutions forward, data gradients,
# weight gradients, other), from a profiled run (after a warm one) whose launches are
# timed by CUDA events.
# It prints one Markdown table to paste into docs/benchmarks.md.
#
#   tools/bench_gpu.sh      # DEPTH=101 SIZE=512 BATCHES="1 8" PRECISIONS="tf32 bf16 f32" STEPS=10
#                           # SKIP_TESTS=1 skips the GPU tests
#
# FLOPs: 2 per multiply-add of the convolutions (`rfnc stats`: k*k*Cin*Cout*Hout*Wout/groups
# per conv and image); a training step counts 3x the forward's (forward, data gradient,
# weight gradient), slightly more than it does (the first convolution has no data gradient).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./dev setup >&2
# shellcheck source=/dev/null
source .cache/env.sh
DEPTH="${DEPTH:-101}"
SIZE="${SIZE:-512}"
BATCHES="${BATCHES:-1 8}"
PRECISIONS="${PRECISIONS:-tf32 bf16 f32}"
STEPS="${STEPS:-10}"
SKIP_TESTS="${SKIP_TESTS:-0}"
RFNC=./target/release/rfnc

command -v nvidia-smi >/dev/null || { echo "bench_gpu: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 1; }
gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
capability="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)"
sm="sm_${capability/./}"
echo "bench_gpu: $gpu_name (compute capability $capability: $sm)" >&2

cargo build --release --quiet -p rfnc
if [[ "$SKIP_TESTS" != 1 ]]; then
  echo "bench_gpu: the GPU tests" >&2
  RFNC_REQUIRE_GPU=1 cargo test --release --workspace --quiet -- --ignored >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export RFNC_CACHE_DIR="${RFNC_CACHE_DIR:-$work/cache}"
net=(examples/refinenet4.rfn -D "depth=$DEPTH")
# Multiply-adds of one image's forward pass.
macs="$("$RFNC" stats "${net[@]}" --input "1x3x${SIZE}x${SIZE}" | awk '$1 == "total" { print $3 }')"

rows="$work/rows"
: > "$rows"
for precision in $PRECISIONS; do
  for mode in inference train; do
    for batch in $BATCHES; do
      dir="$work/$mode-$batch-$precision"
      flags=()
      [[ "$mode" == train ]] && flags=(--train)
      what="$mode, batch $batch, $precision"
      echo "bench_gpu: $what" >&2
      if ! "$RFNC" compile "${net[@]}" --input "${batch}x3x${SIZE}x${SIZE}" "${flags[@]}" \
        --precision "$precision" --gpu "$sm" -o "$dir" >/dev/null ||
        ! runs="$("$RFNC" run "$dir" --device cuda "${flags[@]}" --steps "$((STEPS + 1))")" ||
        ! profile="$("$RFNC" run "$dir" --device cuda "${flags[@]}" --steps 2 --profile)"; then
        echo "bench_gpu: $what failed: skipped" >&2
        continue
      fi
      times="$(printf '%s\n' "$runs" | grep -oE '(in |\()[0-9.]+ ms' | grep -oE '[0-9.]+' | tail -n +2 | tr '\n' ' ' || true)"
      kinds="$(printf '%s\n' "$profile" | grep '^by kind: ' | head -n 1 || true)"
      if [[ -z "${times// /}" || -z "$kinds" ]]; then
        echo "bench_gpu: $what: no timings in the output of rfnc run: skipped" >&2
        continue
      fi
      printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$batch" "$precision" "$times" "$kinds" >> "$rows"
    done
  done
done

python3 - "$gpu_name" "$DEPTH" "$SIZE" "$macs" "$rows" <<'PY'
import re, statistics, sys
name, depth, size, macs, rows = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
# Dense peaks in TFLOP/s by precision (f32 on CUDA cores; TF32 and BF16 on tensor cores),
# from NVIDIA's data sheets.
PEAKS = [
    ("H200", {"f32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    ("H100 PCIe", {"f32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"f32": 60.0, "tf32": 417.5, "bf16": 835.0}),
    ("H100", {"f32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    ("A100", {"f32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("L40S", {"f32": 91.6, "tf32": 183.0, "bf16": 362.0}),
]
peak = next((p for key, p in PEAKS if key in name), None)
kinds = ["conv forward", "conv data gradients", "conv weight gradients", "other kernels"]
print(f"refinenet4.rfn ResNet-{depth} {size}x{size} on {name}; median of warm runs (CUDA graphs); "
      f"peak (TFLOP/s): {', '.join(f'{v} {k}' for k, v in peak.items()) if peak else 'unknown for this card'}")
print("| step | batch | precision | ms | TFLOP/s | of peak | " + " | ".join(kinds) + " |")
print("|---|---|---|---|---|---|" + "---|" * len(kinds))
for line in open(rows):
    mode, batch, precision, times, by_kind = line.rstrip("\n").split("\t")
    ms = statistics.median(float(t) for t in times.split())
    flops = 2 * macs * int(batch) * (3 if mode == "train" else 1)
    tflops = flops / (ms / 1e3) / 1e12
    share = f"{100 * tflops / peak[precision]:.1f}%" if peak else "?"
    found = {k.strip(): v for k, v in re.findall(r"([a-z ]+?) [0-9.]+ ms \(([0-9.]+)%\)", by_kind)}
    cells = [found.get(k, "0") + "%" for k in kinds]
    step = "training step" if mode == "train" else "inference"
    print(f"| {step} | {batch} | {precision} | {ms:.2f} | {tflops:.1f} | {share} | " + " | ".join(cells) + " |")
PY
