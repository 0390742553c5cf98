#!/usr/bin/env python3
"""Generate the torchvision ResNet-50 fixture for `rfnc weights --from-torchvision`.

Builds torchvision's `resnet50()` (no download: its random initialisation is replaced),
sets EVERY tensor of its state_dict from the deterministic rule below, runs the model in
eval mode in float64 on a deterministic 1x3x48x48 input, and writes the input and the four
stage outputs (`layer1`..`layer4`, the taps of rfnc's `std.resnet`) to
tests/fixtures/torchvision/resnet50_taps.safetensors. The Rust test tests/pretrained.rs
regenerates the same weights under torchvision's names, imports them with
`rfnc_driver::pretrained`, runs the backbone in the reference interpreter and compares the
taps. The tests never need PyTorch; see tools/README.md.

The rule (tests/pretrained.rs states the same rule; keep the two identical):

  fnv1a64(name)  = FNV-1a over the UTF-8 bytes: h = 0xcbf29ce484222325;
                   for each byte b: h = (h ^ b) * 0x100000001b3   (mod 2^64)
  splitmix64(z)  = z += 0x9e3779b97f4a7c15; z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
                   z = (z ^ (z >> 27)) * 0x94d049bb133111eb; z ^ (z >> 31)   (mod 2^64)
  u(name, i)     = (splitmix64(fnv1a64(name) ^ splitmix64(i)) >> 11) * 2^-53   in [0, 1)
  s(name, i)     = 2 * u(name, i) - 1                                          in [-1, 1)

  element i (row-major) of tensor `name`, computed in float64 and rounded to float32:
    4-D `*.weight` (conv, OIHW):  s * sqrt(3 / fan_in),  fan_in = I * kh * kw
                                  (uniform with std sqrt(1 / fan_in))
    1-D `*.weight` (BN gamma):    1 + 0.25 * s      in [0.75, 1.25)
    `*.bias` (BN beta, fc.bias):  0.1 * s
    `*.running_mean`:             0.1 * s
    `*.running_var`:              1 + 0.5 * s       in [0.5, 1.5)
    2-D `fc.weight`:              s * sqrt(3 / fan_in),  fan_in = in_features
    `*.num_batches_tracked`:      0 (int64; not used in eval mode)
  the input, named `input`, shape [1, 3, 48, 48]: s(`input`, i), rounded to float32.

Every weight and input value is exactly a float32, so the Rust side reads the very same
numbers in its f32 weights; torch computes in float64 and the taps are stored as F64.

Usage:  /tmp/torchenv/bin/python tools/gen_torchvision_fixture.py [--out FILE] [--check-only]
"""

import argparse
import math
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_torch_fixtures import write_safetensors  # noqa: E402  (deterministic bytes)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "torchvision", "resnet50_taps.safetensors")
INPUT_SHAPE = (1, 3, 48, 48)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

M64 = (1 << 64) - 1


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def splitmix64(z):
    """SplitMix64's finaliser on a uint64 numpy array (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def symmetric(name, count):
    """s(name, i) for i in 0..count: uniform in [-1, 1), float64, exact."""
    i = np.arange(count, dtype=np.uint64)
    h = splitmix64(np.uint64(fnv1a64(name)) ^ splitmix64(i))
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return 2.0 * u - 1.0


def rule(name, shape):
    """The value of every element of state_dict tensor `name`, as float32-exact float64."""
    count = int(np.prod(shape)) if len(shape) else 1
    s = symmetric(name, count)
    if name.endswith(".running_var"):
        v = 1.0 + 0.5 * s
    elif name.endswith(".running_mean") or name.endswith(".bias"):
        v = 0.1 * s
    elif name.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.25 * s
    elif name.endswith(".weight") and len(shape) in (2, 4):
        fan_in = int(np.prod(shape[1:]))
        v = s * math.sqrt(3.0 / fan_in)
    else:
        raise ValueError(f"no rule for `{name}` of shape {list(shape)}")
    return v.astype(np.float32).astype(np.float64).reshape(shape)


def build_model():
    torch.manual_seed(0)  # only the discarded default initialisation uses it
    model = torchvision.models.resnet50(weights=None).double().eval()
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(t)
        else:
            state[name] = torch.from_numpy(rule(name, tuple(t.shape)))
    model.load_state_dict(state, strict=True)
    return model, len(state)


def taps(model, x):
    """The four stage outputs (after each stage's last ReLU)."""
    with torch.no_grad():
        y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        out = {}
        for k in range(1, 5):
            y = getattr(model, f"layer{k}")(y)
            out[f"layer{k}"] = y.clone()
        # the stages are what the whole network's trunk computes
        full = model.avgpool(y)
        assert torch.equal(full, model.avgpool(out["layer4"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--check-only", action="store_true", help="compute and print, write nothing")
    args = ap.parse_args()

    model, count = build_model()
    x = torch.from_numpy(
        symmetric("input", int(np.prod(INPUT_SHAPE))).astype(np.float32).astype(np.float64)
    ).reshape(INPUT_SHAPE)
    out = taps(model, x)
    for k, v in out.items():
        a = v.abs()
        print(f"{k}: {list(v.shape)} max |x| {a.max().item():.4g} mean |x| {a.mean().item():.4g}"
              f" zeros {(v == 0).double().mean().item():.2f}")
    tensors = {"input": x.numpy()}
    tensors.update({k: v.numpy() for k, v in out.items()})
    metadata = {
        "model": "torchvision.models.resnet50, eval, float64",
        "state_dict_tensors": str(count),
        "input_shape": "x".join(str(d) for d in INPUT_SHAPE),
        "rule": "tools/gen_torchvision_fixture.py (docstring)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if args.check_only:
        return
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_safetensors(args.out, tensors, metadata)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
