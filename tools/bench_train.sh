#!/usr/bin/env bash
# `rfnc train` throughput on this machine: images per second and the share of the time the
# step waited for data (decoding and augmentation run on worker threads ahead of it), for
# tiny.rfn (64x64 crops, batch 8) and refinenet4.rfn (ResNet-101, 512x512, batch 1), on the
# CPU, on a synthetic VOC-layout dataset written by `rfnc dataset`.
#
#   tools/bench_train.sh                  # DEVICE=cpu TINY_ITERS=100 R4_ITERS=4
#   DEVICE=cuda tools/bench_train.sh      # on a GPU
#
# Figures are medians over the steps after the first (which includes warm-up), read from
# each run's log.jsonl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=/dev/null
source .cache/env.sh
DEVICE="${DEVICE:-cpu}"
TINY_ITERS="${TINY_ITERS:-100}"
R4_ITERS="${R4_ITERS:-4}"
RFNC=./target/release/rfnc
cargo build --release --quiet -p rfnc
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$RFNC" dataset voc -o "$work/shapes" --train 64 --val 8 >/dev/null

# Median images/s and data share of a run's log.jsonl, skipping the first step.
summarise() {
  python3 - "$1" "$2" <<'PY'
import json, statistics, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l][1:]
ips = statistics.median(s["images_per_s"] for s in steps)
data = sum(s["data_s"] for s in steps)
total = data + sum(s["step_s"] for s in steps)
step = statistics.median(s["step_s"] for s in steps)
print(f"{sys.argv[2]:<44} {ips:10.3f} img/s   step {step*1e3:10.1f} ms   data {100*data/total:5.1f}%   ({len(steps)} steps)")
PY
}

run() {
  local name="$1"; shift
  "$RFNC" train "$@" --dataset voc --data-root "$work/shapes" --work-dir "$work/$name" \
    --no-val --device "$DEVICE" --checkpoint-every 100000 2>/dev/null >/dev/null
  summarise "$work/$name/log.jsonl" "$name"
}

echo "rfnc train on $DEVICE, $(nproc) cores, $(date -u +%Y-%m-%d)"
run "tiny.rfn 8x3x64x64" examples/tiny.rfn --input 8x3x64x64 --iters "$TINY_ITERS" --lr 0.02
run "refinenet4.rfn ResNet-101 1x3x512x512" examples/refinenet4.rfn --input 1x3x512x512 \
  -D style=torchvision --iters "$R4_ITERS" --lr 1e-7
