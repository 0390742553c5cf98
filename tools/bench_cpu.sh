#!/usr/bin/env bash
# The CPU executor against PyTorch on the same network, on this machine, in one run:
# refinenet4.rfn inference (ResNet-101 by default) at 512x512, float32, every core.
#
#   tools/bench_cpu.sh                 # DEPTH=101 INPUT=1x3x512x512 PY=/tmp/torchenv/bin/python
#
# PyTorch runs the graph IR that `rfnc compile --emit graph` prints (tools/torch_run_graph.py);
# rfnc compiles the same program to a bundle and runs it with `rfnc run --device cpu`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=/dev/null
source .cache/env.sh
DEPTH="${DEPTH:-101}"
INPUT="${INPUT:-1x3x512x512}"
PY="${PY:-/tmp/torchenv/bin/python}"
THREADS="$(nproc)"
RFNC=./target/release/rfnc
cargo build --release --quiet -p rfnc
graph="$(mktemp --suffix .mlir)"
trap 'rm -f "$graph"' EXIT
"$RFNC" compile examples/refinenet4.rfn -D "depth=$DEPTH" --input "$INPUT" --emit graph -o "$graph"
echo "== PyTorch ($THREADS threads)"
"$PY" tools/torch_run_graph.py "$graph" --threads "$THREADS" --repeat 3
echo "== rfnc CPU executor ($THREADS threads)"
"$RFNC" run examples/refinenet4.rfn -D "depth=$DEPTH" --input "$INPUT" --threads "$THREADS" --steps 3 --timings
