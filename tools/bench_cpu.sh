#!/usr/bin/env bash
# rfnc's CPU backend against PyTorch on the same graph, on this machine, in one invocation:
# refinenet4.rfn (ResNet-101 by default) at 512x512, float32, every core, inference and the
# training step (forward, loss, backward, SGD momentum update; batch norm frozen, as rfnc
# trains). Rounds alternate rfnc and PyTorch eager so that load on the machine hits them
# alike; each figure is the median over ROUNDS rounds of a warm run (each framework warms
# up once per round first). COMPILE=1 adds torch.compile's inference (after the rounds). Then the GEMMs of the largest
# convolutions from `rfnc run --profile`, in GFLOP/s against the machine's FMA peak.
#
#   tools/bench_cpu.sh      # DEPTH=101 INPUT=1x3x512x512 ROUNDS=3 PY=/tmp/torchenv/bin/python
#
# PyTorch runs the graph IR that `rfnc compile --emit graph` prints, op by op
# (tools/torch_run_graph.py, oneDNN convolutions).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=/dev/null
source .cache/env.sh
DEPTH="${DEPTH:-101}"
INPUT="${INPUT:-1x3x512x512}"
ROUNDS="${ROUNDS:-3}"
PY="${PY:-/tmp/torchenv/bin/python}"
COMPILE="${COMPILE:-0}"
THREADS="$(nproc)"
RFNC=./target/release/rfnc
cargo build --release --quiet -p rfnc
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
net=(examples/refinenet4.rfn -D "depth=$DEPTH" --input "$INPUT")
"$RFNC" compile "${net[@]}" --emit graph -o "$work/graph.mlir"
"$RFNC" compile "${net[@]}" -o "$work/infer" >/dev/null
"$RFNC" compile "${net[@]}" --train -o "$work/train" >/dev/null
# The first run of a bundle compiles its host code for this CPU (cached afterwards).
"$RFNC" run "$work/infer" --threads "$THREADS" >/dev/null 2>&1
"$RFNC" run "$work/train" --train --threads "$THREADS" >/dev/null 2>&1

# Seconds of rfnc's second run (the first warms up) of a bundle.
rfnc_time() {
  "$RFNC" run "$@" --threads "$THREADS" --steps 2 |
    python3 -c 'import re,sys; t=[float(m) for m in re.findall(r"in ([0-9.]+) ms|\(([0-9.]+) ms\)", sys.stdin.read()) for m in m if m]; print(t[-1] / 1e3)'
}
# Seconds of PyTorch's warm run.
torch_time() {
  "$PY" tools/torch_run_graph.py "$work/graph.mlir" --threads "$THREADS" --repeat 1 --json "$@" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["median_s"])'
}

declare -A times
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  times[rfnc_infer]+="$(rfnc_time "$work/infer") "
  times[torch_infer]+="$(torch_time) "
  times[rfnc_train]+="$(rfnc_time "$work/train" --train) "
  times[torch_train]+="$(torch_time --with-losses --train-step) "
done
# torch.compile compiles for minutes in its warm-up run: once, then ROUNDS timed runs (not
# alternated with the others).
if [[ "$COMPILE" == 1 ]]; then
  times[compile_infer]="$("$PY" tools/torch_run_graph.py "$work/graph.mlir" --threads "$THREADS" \
    --repeat "$ROUNDS" --json --compile | python3 -c 'import json,sys; print(*json.load(sys.stdin)["times_s"])')"
fi

python3 - "$DEPTH" "$INPUT" "$THREADS" "${times[rfnc_infer]}" "${times[torch_infer]}" \
  "${times[rfnc_train]}" "${times[torch_train]}" "${times[compile_infer]:-}" <<'PY'
import statistics, sys
depth, shape, threads = sys.argv[1:4]
med = lambda s: statistics.median(float(x) for x in s.split()) if s.strip() else None
ri, ti, rt, tt, ci = (med(s) for s in sys.argv[4:9])
print(f"refinenet4.rfn ResNet-{depth} {shape}, float32, {threads} threads, median of warm runs")
print(f"| | rfnc (s) | PyTorch eager (s) | rfnc / eager |")
print(f"|---|---|---|---|")
print(f"| inference | {ri:.3f} | {ti:.3f} | {ri / ti:.2f}x |")
print(f"| training step | {rt:.3f} | {tt:.3f} | {rt / tt:.2f}x |")
if ci:
    print(f"| inference, torch.compile | | {ci:.3f} | {ri / ci:.2f}x |")
PY

# The clock under load, measured: a chain of dependent adds runs one per cycle (a VM's
# /proc/cpuinfo often reports the base clock, not the one the cores run at).
cat > "$work/clock.c" <<'C'
#include <stdio.h>
#include <time.h>
int main(void) {
    long x = 0, n = 400000000;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.3f\n", 4.0 * n / ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)));
    return x == 0;
}
C
cc -O1 -o "$work/clock" "$work/clock.c"
GHZ="$("$work/clock")"

# The GEMMs of the convolutions, in GFLOP/s, against the FMA peak of this machine.
"$RFNC" run "$work/infer" --threads "$THREADS" --profile > "$work/profile.txt"
python3 - "$work/profile.txt" "$THREADS" "$GHZ" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
threads, ghz = int(sys.argv[2]), float(sys.argv[3])
flags = open("/proc/cpuinfo").read()
# The gemm crate picks its AVX-512 kernels where the CPU has AVX-512F, else AVX2 + FMA.
isa, lanes = ("AVX-512", 16) if re.search(r"\bavx512f\b", flags) else ("AVX2", 8)
peak = threads * lanes * 2 * 2 * ghz
print(f"FMA peak: {threads} cores x {lanes} f32 lanes ({isa}) x 2 FMA units x 2 flops x "
      f"{ghz:.2f} GHz (measured: dependent adds, one per cycle) = {peak:.0f} GFLOP/s")
print("| GEMM (m x n x k) | launches | ms | GFLOP/s | of peak |")
print("|---|---|---|---|---|")
rows = []
for ms, count, m, n, k, b in re.findall(
        r"^\s*([0-9.]+)\s+[0-9.]+%\s+([0-9]+)\s+gemm (\d+)x(\d+)x(\d+) x(\d+)", text, re.M):
    flops = 2 * int(m) * int(n) * int(k) * int(b) * int(count)
    rows.append((flops, m, n, k, b, int(count), float(ms)))
for flops, m, n, k, b, count, ms in sorted(rows, reverse=True)[:6]:
    gflops = flops / ms / 1e6
    batch = f" (x{b})" if b != "1" else ""
    print(f"| {m} x {n} x {k}{batch} | {count} | {ms:.1f} | {gflops:.0f} | {100 * gflops / peak:.0f}% |")
PY
