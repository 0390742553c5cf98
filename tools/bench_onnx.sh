#!/usr/bin/env bash
# ONNX Runtime (CPU) against rfnc's CPU executor on the same network and weights, on this
# machine, in one run: refinenet4.rfn inference (ResNet-101 by default) at 512x512,
# float32, every core; the median of REPEAT timed runs each (after one untimed run).
#
#   tools/bench_onnx.sh                # DEPTH=101 INPUT=1x3x512x512 REPEAT=3
#
# rfnc exports the network with `rfnc export` (batch norm folded) and ONNX Runtime runs it
# through tools/onnx_check.py --bench, with the packages scripts/setup.sh installs; rfnc
# compiles the same program to a bundle and runs it with `rfnc run --device cpu --steps`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh -q
# shellcheck source=/dev/null
source .cache/env.sh
DEPTH="${DEPTH:-101}"
INPUT="${INPUT:-1x3x512x512}"
REPEAT="${REPEAT:-3}"
THREADS="$(nproc)"
RFNC=./target/release/rfnc
PY=("env" "PYTHONPATH=$RFNC_ONNX_PYTHONPATH" "$RFNC_PYTHON")
cargo build --release --quiet -p rfnc
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
NET=(examples/refinenet4.rfn -D "depth=$DEPTH" --input "$INPUT")

echo "== $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $THREADS cores; $(date -u +%F); load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$RFNC" weights "${NET[@]}" --seed 0 -o "$work/w.safetensors" >/dev/null
"$RFNC" export "${NET[@]}" --weights "$work/w.safetensors" -o "$work/refinenet4.onnx"
"${PY[@]}" -c "import numpy as np, sys; np.save(sys.argv[1], np.random.default_rng(0).uniform(-1, 1, [int(d) for d in sys.argv[2].split('x')]).astype(np.float32))" \
  "$work/image.npy" "$INPUT"

echo "== ONNX Runtime, CPU ($THREADS threads)"
"${PY[@]}" tools/onnx_check.py "$work/refinenet4.onnx" --input "image=$work/image.npy" \
  --threads "$THREADS" --bench "$REPEAT" | tail -n 2 | tee "$work/ort.txt"

echo "== rfnc CPU executor ($THREADS threads)"
# One more step than timed: the first run is the warm-up, as for ONNX Runtime.
"$RFNC" run "${NET[@]}" --weights "$work/w.safetensors" --device cpu --threads "$THREADS" \
  --steps "$((REPEAT + 1))" | tee "$work/rfnc.txt"

"${PY[@]}" - "$work/ort.txt" "$work/rfnc.txt" <<'PY'
import json, re, statistics, sys
ort = json.loads(open(sys.argv[1]).read().splitlines()[-1])["bench_ms"]["median"]
runs = [float(m) for m in re.findall(r"^ran .* in ([0-9.]+) ms$", open(sys.argv[2]).read(), re.M)][1:]
rfnc = statistics.median(runs)
print(f"== median: ONNX Runtime {ort:.1f} ms, rfnc {rfnc:.1f} ms; rfnc / ONNX Runtime = {rfnc / ort:.2f}")
PY
echo "== load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both)"
