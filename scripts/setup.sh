#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test rfnc, and writes
# .cache/env.sh with the variables the build and the tests read. Idempotent: a second run
# only checks (well under a second). Progress goes to stderr, so `./dev rfnc ... > file`
# keeps its standard output clean.
#
#   scripts/setup.sh [-q]     -q: say nothing when there is nothing to do
#
# What it does:
#   1. apt packages: LLVM/MLIR 22 (headers, libraries, mlir-opt), libclang, zstd, and the
#      basics a bare image may lack (C toolchain, pip, unzip). `apt-get update` runs once,
#      only when something is missing; sudo only when not root.
#   2. Rust (rustup, stable) when no `cargo` is on PATH.
#   3. The PyPI wheel nvidia-cuda-nvcc-cu12 (`pip download --no-deps`, unzipped into
#      .cache/cuda-nvcc/): `ptxas` and `libdevice.10.bc` without a CUDA toolkit or GPU;
#      and the wheel nvidia-cuda-nvdisasm (into .cache/cuda-nvdisasm/): `nvdisasm`, which
#      shows the machine code ptxas made (the tests look for tensor-core instructions).
#   4. The PyPI wheels onnx and onnxruntime (with numpy; versions pinned), installed with
#      `pip install --target` into .cache/onnx-py/ for the tests of `rfnc export`
#      (tools/onnx_check.py); reinstalled only when the pins or the Python change.
#   5. .cache/env.sh exporting MLIR_SYS_220_PREFIX, TABLEGEN_220_PREFIX,
#      LLVM_SYS_221_PREFIX, RFNC_PTXAS, RFNC_LIBDEVICE, RFNC_NVDISASM, RFNC_MLIR_OPT,
#      RFNC_PYTHON, RFNC_ONNX_PYTHONPATH.
set -euo pipefail

QUIET=0
[[ "${1:-}" == "-q" ]] && QUIET=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
LLVM_PREFIX=/usr/lib/llvm-22
# Pinned for reproducible tool versions; override with RFNC_NVCC_WHEEL_VERSION=X.Y.Z.
NVCC_WHEEL_VERSION="${RFNC_NVCC_WHEEL_VERSION:-12.9.86}"
NVCC_DIR="$CACHE/cuda-nvcc"
# nvdisasm ships only in CUDA 13 wheels (no -cu12 name exists); it reads sm_80/sm_90 cubins.
NVDISASM_WHEEL_VERSION="${RFNC_NVDISASM_WHEEL_VERSION:-13.5.37}"
NVDISASM_DIR="$CACHE/cuda-nvdisasm"
# onnx, onnxruntime and everything they import, pinned (override with RFNC_ONNX_PACKAGES).
ONNX_PACKAGES="${RFNC_ONNX_PACKAGES:-onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 protobuf==7.36.2 ml_dtypes==0.7.0 flatbuffers==25.12.19 packaging==26.4 typing_extensions==4.16.0}"
ONNX_DIR="$CACHE/onnx-py"

say() { echo "setup: $*" >&2; }
note() { [[ $QUIET == 1 ]] || say "$@"; }
die() { say "error: $*"; exit 1; }

mkdir -p "$CACHE"
# One set-up at a time (e.g. two `./dev` commands started together).
exec 9>"$CACHE/setup.lock"
flock 9

SUDO=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo: install the packages below as root"
  SUDO=(sudo)
fi

# --- 1. apt packages ---------------------------------------------------------------------
# libpolly-22-dev: inkwell (llvm-sys) links LLVM statically, which needs Polly
APT_PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools libclang-22-dev libzstd-dev libpolly-22-dev
              build-essential pkg-config ca-certificates curl python3-pip unzip)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { "${SUDO[@]}" apt-get update -q &&
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >"$CACHE/apt.log" 2>&1 || { tail -n 20 "$CACHE/apt.log" >&2; die "apt-get failed (.cache/apt.log)"; }
else
  note "apt packages present"
fi

# --- 2. Rust -----------------------------------------------------------------------------
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  say "installing Rust (rustup, stable, minimal profile)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain stable >&2
  export PATH="$HOME/.cargo/bin:$PATH"
else
  note "cargo present ($(cargo --version))"
fi

# --- 3. ptxas and libdevice from the nvidia-cuda-nvcc-cu12 wheel --------------------------
# fetch_wheel PACKAGE VERSION DIR: downloads the wheel (no dependencies) and unpacks it into
# DIR, replacing it; only a complete tree ever appears under DIR.
fetch_wheel() {
  wheel_tmp="$(mktemp -d "$3.tmp.XXXXXX")"
  trap 'rm -rf "$wheel_tmp"' EXIT
  python3 -m pip download --quiet --no-input --no-deps --only-binary=:all: \
    --dest "$wheel_tmp/wheel" "$1==$2" >&2
  unzip -q "$wheel_tmp"/wheel/*.whl -d "$wheel_tmp/tree"
  rm -rf "$3"
  mv "$wheel_tmp/tree" "$3"
  rm -rf "$wheel_tmp"
  trap - EXIT
}
# find_in DIR PATTERN: the first file under DIR whose path matches PATTERN (empty if none).
find_in() { [[ -d "$1" ]] && find "$1" -path "$2" -type f | head -n 1 || true; }

PTXAS="$(find_in "$NVCC_DIR" '*/bin/ptxas')"
LIBDEVICE="$(find_in "$NVCC_DIR" '*/libdevice.10.bc')"
if [[ -z "$PTXAS" || -z "$LIBDEVICE" || ! -x "$PTXAS" ]]; then
  say "downloading nvidia-cuda-nvcc-cu12==$NVCC_WHEEL_VERSION (ptxas, libdevice; ~40 MB)"
  fetch_wheel nvidia-cuda-nvcc-cu12 "$NVCC_WHEEL_VERSION" "$NVCC_DIR"
  PTXAS="$(find_in "$NVCC_DIR" '*/bin/ptxas')"
  LIBDEVICE="$(find_in "$NVCC_DIR" '*/libdevice.10.bc')"
  [[ -n "$PTXAS" && -n "$LIBDEVICE" ]] || die "ptxas or libdevice.10.bc not found in the wheel"
  chmod +x "$PTXAS"
  say "ptxas: $("$PTXAS" --version | grep -o "release.*" || true)"
else
  note "ptxas and libdevice present in .cache/cuda-nvcc"
fi
NVDISASM="$(find_in "$NVDISASM_DIR" '*/bin/nvdisasm')"
if [[ -z "$NVDISASM" || ! -x "$NVDISASM" ]]; then
  say "downloading nvidia-cuda-nvdisasm==$NVDISASM_WHEEL_VERSION (nvdisasm; ~5 MB)"
  fetch_wheel nvidia-cuda-nvdisasm "$NVDISASM_WHEEL_VERSION" "$NVDISASM_DIR"
  NVDISASM="$(find_in "$NVDISASM_DIR" '*/bin/nvdisasm')"
  [[ -n "$NVDISASM" ]] || die "nvdisasm not found in the wheel"
  chmod +x "$NVDISASM"
else
  note "nvdisasm present in .cache/cuda-nvdisasm"
fi

# --- 4. onnx and onnxruntime for the export tests -----------------------------------------
PYTHON="$(python3 -c 'import sys; print(sys.executable)')" || die "python3 not found (package python3)"
onnx_stamp="$("$PYTHON" --version 2>&1) $ONNX_PACKAGES"
if [[ ! -f "$ONNX_DIR/.rfnc-stamp" || "$(cat "$ONNX_DIR/.rfnc-stamp")" != "$onnx_stamp" ]]; then
  say "installing $ONNX_PACKAGES into .cache/onnx-py (~190 MB)"
  tmp="$(mktemp -d "$CACHE/onnx-py.tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --quiet --no-input --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --only-binary=:all: --target "$tmp" $ONNX_PACKAGES >&2 \
    || die "pip could not install the onnx packages"
  PYTHONPATH="$tmp" "$PYTHON" -c 'import onnx, onnxruntime, numpy' || die "the onnx packages do not import"
  printf '%s' "$onnx_stamp" > "$tmp/.rfnc-stamp"
  rm -rf "$ONNX_DIR"
  mv "$tmp" "$ONNX_DIR"   # only a complete install ever appears under the final name
  trap - EXIT
else
  note "onnx and onnxruntime present in .cache/onnx-py"
fi

# --- 5. .cache/env.sh --------------------------------------------------------------------
MLIR_OPT="$LLVM_PREFIX/bin/mlir-opt"
[[ -x "$MLIR_OPT" ]] || MLIR_OPT="$(command -v mlir-opt-22 || true)"
[[ -n "$MLIR_OPT" ]] || die "mlir-opt not found (package mlir-22-tools)"
[[ -d "$LLVM_PREFIX/lib/cmake/mlir" ]] || die "$LLVM_PREFIX has no MLIR cmake files (package libmlir-22-dev)"

env_text="# Written by scripts/setup.sh; source it before cargo.
export MLIR_SYS_220_PREFIX=$LLVM_PREFIX
export TABLEGEN_220_PREFIX=$LLVM_PREFIX
export LLVM_SYS_221_PREFIX=$LLVM_PREFIX
export RFNC_PTXAS=$PTXAS
export RFNC_LIBDEVICE=$LIBDEVICE
export RFNC_NVDISASM=$NVDISASM
export RFNC_MLIR_OPT=$MLIR_OPT
export RFNC_PYTHON=$PYTHON
export RFNC_ONNX_PYTHONPATH=$ONNX_DIR
case \":\$PATH:\" in *\":\$HOME/.cargo/bin:\"*) ;; *) [ -d \"\$HOME/.cargo/bin\" ] && export PATH=\"\$HOME/.cargo/bin:\$PATH\" ;; esac
"
if [[ ! -f "$CACHE/env.sh" || "$(cat "$CACHE/env.sh")"$'\n' != "$env_text" ]]; then
  printf '%s' "$env_text" > "$CACHE/env.sh.tmp"
  mv "$CACHE/env.sh.tmp" "$CACHE/env.sh"
  say "wrote .cache/env.sh"
else
  note "ready (.cache/env.sh up to date)"
fi
