#!/usr/bin/env python3
"""Generate PyTorch operator-semantics fixtures for the rfn reference interpreter.

One safetensors file per case is written to compiler/tests/fixtures/torch/. Each holds
an op's inputs, its output `y`, a random upstream gradient `grad_y`, and the gradients of
`(y * grad_y).sum()` with respect to the differentiable inputs, all computed by PyTorch
(forward and autograd) on the CPU. The Rust tests read these files; they never need
PyTorch. See tools/README.md for the file format and the list of cases.

Determinism and precision:
  * every case draws from its own torch.Generator seeded with a CRC32 of the case name,
    so adding or reordering cases does not change the others;
  * torch runs single-threaded with deterministic algorithms;
  * random inputs are drawn, rounded to float32 and widened back to float64, so every
    input is exactly representable in f32 (the Rust f32 path reads the very same
    values), then all computation is done in float64 and every float tensor is stored
    as float64 (labels as int32);
  * the safetensors files are written by this script (sorted header keys, fixed layout)
    so the bytes are reproducible; they are checked to load back with the `safetensors`
    package.

Besides recording torch's results, the script checks each case against a plain numpy
transcription of the semantics in docs/ir.md (window formulas, -inf pool padding and the
first-maximum tie rule, the bilinear source coordinates, the loss reductions), so a
disagreement between torch and the documented rfn semantics fails generation.

Usage:  /tmp/torchenv/bin/python tools/gen_torch_fixtures.py [--out DIR] [--check-only]
"""

import argparse
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "compiler", "tests", "fixtures", "torch")

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
DT = torch.float64


# ----- attribute text, exactly as compiler/src/ir/ops.rs prints it -------------------------

def fmt_float(v):
    """Rust's `{:?}` for f64 followed by ops.rs `format_float` (always a `.`)."""
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    s = repr(v)  # Python and Rust switch to exponent form at the same thresholds
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"  # '1e-05' -> '1e-5', '1e+16' -> '1e16'
    if "." in s:
        return s
    if "e" in s:
        mant, exp = s.split("e")
        return f"{mant}.0e{exp}"
    return s + ".0"


def fmt_attr(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_float(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(int(e)) for e in v) + "]"
    raise TypeError(v)


def fmt_attrs(attrs):
    if not attrs:
        return "{}"
    return "{" + ", ".join(f"{k} = {fmt_attr(attrs[k])}" for k in sorted(attrs)) + "}"


# ----- safetensors writer (deterministic bytes) ---------------------------------------------

_ST_DTYPE = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("int32"): "I32"}


def write_safetensors(path, tensors, metadata):
    names = sorted(tensors)
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in names:
        a = np.array(tensors[name], order="C")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        data = a.tobytes()
        header[name] = {
            "dtype": _ST_DTYPE[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)  # pad the header so the data is 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ----- random data ---------------------------------------------------------------------------

class Rng:
    def __init__(self, name):
        self.g = torch.Generator().manual_seed(zlib.crc32(name.encode()))

    def normal(self, *shape, scale=1.0):
        return (torch.randn(*shape, generator=self.g, dtype=torch.float32) * scale).to(DT)

    def uniform(self, lo, hi, *shape):
        u = torch.rand(*shape, generator=self.g, dtype=torch.float32) * (hi - lo) + lo
        return u.to(DT)

    def ints(self, lo, hi, *shape):
        return torch.randint(lo, hi, shape, generator=self.g)


# ----- numpy transcription of docs/ir.md, used as a cross-check -----------------------------

def np_window_out(n, lo, hi, k, s, d=1):
    return (n + lo + hi - (d * (k - 1) + 1)) // s + 1


def np_conv2d(x, w, b, stride, pad, dilation, groups):
    N, I, H, W = x.shape
    O, Ig, KH, KW = w.shape
    Ho = np_window_out(H, pad[0], pad[2], KH, stride[0], dilation[0])
    Wo = np_window_out(W, pad[1], pad[3], KW, stride[1], dilation[1])
    y = np.zeros((N, O, Ho, Wo))
    opg = O // groups
    for o in range(O):
        g = o // opg
        for i in range(Ho):
            for j in range(Wo):
                acc = np.zeros(N)
                for c in range(Ig):
                    for p in range(KH):
                        r = i * stride[0] - pad[0] + p * dilation[0]
                        if not 0 <= r < H:
                            continue
                        for q in range(KW):
                            s = j * stride[1] - pad[1] + q * dilation[1]
                            if 0 <= s < W:
                                acc += x[:, g * Ig + c, r, s] * w[o, c, p, q]
                y[:, o, i, j] = acc + (b[o] if b is not None else 0.0)
    return y


def np_max_pool2d(x, gy, kernel, stride, pad):
    """Forward and input gradient; padding is -inf, ties go to the first maximum (row-major)."""
    N, C, H, W = x.shape
    Ho = np_window_out(H, pad[0], pad[2], kernel[0], stride[0])
    Wo = np_window_out(W, pad[1], pad[3], kernel[1], stride[1])
    y = np.zeros((N, C, Ho, Wo))
    gx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    best = None
                    for p in range(kernel[0]):
                        r = i * stride[0] - pad[0] + p
                        for q in range(kernel[1]):
                            s = j * stride[1] - pad[1] + q
                            if 0 <= r < H and 0 <= s < W and (best is None or x[n, c, r, s] > x[n, c][best]):
                                best = (r, s)
                    y[n, c, i, j] = x[n, c][best]
                    gx[n, c][best] += gy[n, c, i, j]
    return y, gx


def np_bilinear_matrix(n_in, n_out, align_corners):
    """Row d: the weights of the input samples that make output sample d (docs/ir.md)."""
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
        if align_corners:
            s = d * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        t = s - i0
        m[d, i0] += 1.0 - t
        m[d, i1] += t
    return m


def np_softmax_ce(s, labels, ignore, reduction, dloss):
    N, C, H, W = s.shape
    z = s - s.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    valid = labels != ignore
    safe = np.where(valid, labels, 0)
    onehot = np.zeros_like(s)
    for n in range(N):
        for h in range(H):
            for w in range(W):
                onehot[n, safe[n, h, w], h, w] = 1.0
    per = -(logp * onehot).sum(axis=1)
    count = int(valid.sum())
    scale = 1.0 if reduction == "sum" else (1.0 / count if count else 0.0)
    loss = (per * valid).sum() * scale
    grad = (p - onehot) * valid[:, None] * scale * dloss
    return loss, grad


def np_least_squares(p, t, ignore, reduction, dloss):
    valid = t != ignore
    count = int(valid.sum())
    scale = 1.0 if reduction == "sum" else (1.0 / count if count else 0.0)
    d = (p - t) * valid
    return (d * d).sum() * scale, 2.0 * d * scale * dloss


def close(name, what, got, want, tol=1e-10):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: {what} shape {got.shape} != reference {want.shape}")
    err = np.max(np.abs(got - want) / (1.0 + np.abs(want))) if got.size else 0.0
    if not err <= tol:
        raise AssertionError(f"{name}: {what} differs from the docs/ir.md reference by {err}")


# ----- cases ---------------------------------------------------------------------------------

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def grads_of(y, grad_y, inputs):
    """Gradients of (y * grad_y).sum() w.r.t. the dict of leaf tensors `inputs`."""
    names = list(inputs)
    gs = torch.autograd.grad((y * grad_y).sum(), [inputs[k] for k in names])
    return {f"grad_{k}": g for k, g in zip(names, gs)}


def conv_case(name, desc, n, cin, hw, cout, k, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1),
              groups=1, bias=True):
    r = Rng(name)
    x = r.normal(n, cin, *hw).requires_grad_()
    w = r.normal(cout, cin // groups, *k, scale=0.5).requires_grad_()
    b = r.normal(cout).requires_grad_() if bias else None
    top, left, bottom, right = pad
    if top == bottom and left == right:
        y = F.conv2d(x, w, b, stride=stride, padding=(top, left), dilation=dilation, groups=groups)
    else:  # torch pads symmetrically only: zero-pad explicitly, then convolve unpadded
        y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=stride, dilation=dilation,
                     groups=groups)
    grad_y = r.normal(*y.shape)
    leaves = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    out = {**leaves, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, leaves)}
    ref = np_conv2d(x.detach().numpy(), w.detach().numpy(), None if b is None else b.detach().numpy(),
                    stride, pad, dilation, groups)
    close(name, "y", y.detach().numpy(), ref)
    attrs = {"dilation": list(dilation), "groups": groups, "pad": list(pad), "stride": list(stride)}
    return name, "conv2d", attrs, list(leaves), desc, out


@case
def conv2d_3x3_pad1():
    return conv_case("conv2d_3x3_pad1", "plain 3x3 conv, stride 1, pad 1, with bias, 2x3x7x7 -> 2x4x7x7",
                     2, 3, (7, 7), 4, (3, 3), pad=(1, 1, 1, 1))


@case
def conv2d_3x3_stride2():
    return conv_case("conv2d_3x3_stride2", "3x3 conv, stride 2, pad 1, with bias, 2x3x7x7 -> 2x4x4x4",
                     2, 3, (7, 7), 4, (3, 3), stride=(2, 2), pad=(1, 1, 1, 1))


@case
def conv2d_3x3_stride2_nobias_9x7():
    return conv_case("conv2d_3x3_stride2_nobias_9x7",
                     "3x3 conv, stride 2, pad 1, no bias (operands x,w), odd 9x7 input: 2x3x9x7 -> 2x5x5x4",
                     2, 3, (9, 7), 5, (3, 3), stride=(2, 2), pad=(1, 1, 1, 1), bias=False)


@case
def conv2d_3x3_dilation2():
    return conv_case("conv2d_3x3_dilation2", "3x3 conv, dilation 2, pad 2 (same size), 2x3x9x7 -> 2x4x9x7",
                     2, 3, (9, 7), 4, (3, 3), pad=(2, 2, 2, 2), dilation=(2, 2))


@case
def conv2d_3x3_groups2():
    return conv_case("conv2d_3x3_groups2", "3x3 conv, groups 2, pad 1: 2x4x7x5 -> 2x6x7x5 (weight 6x2x3x3)",
                     2, 4, (7, 5), 6, (3, 3), pad=(1, 1, 1, 1), groups=2)


@case
def conv2d_3x3_depthwise():
    return conv_case("conv2d_3x3_depthwise",
                     "3x3 conv, groups = Cin = 3 with channel multiplier 2, pad 1: 2x3x7x5 -> 2x6x7x5 (weight 6x1x3x3)",
                     2, 3, (7, 5), 6, (3, 3), pad=(1, 1, 1, 1), groups=3)


@case
def conv2d_1x1_stride2():
    return conv_case("conv2d_1x1_stride2", "1x1 conv, stride 2, no padding (MSRA downsampling): 2x4x9x7 -> 2x6x5x4",
                     2, 4, (9, 7), 6, (1, 1), stride=(2, 2))


@case
def conv2d_7x7_stride2_stem():
    return conv_case("conv2d_7x7_stride2_stem", "7x7 conv, stride 2, pad 3 (ResNet stem) on a small input: 2x3x11x13 -> 2x4x6x7",
                     2, 3, (11, 13), 4, (7, 7), stride=(2, 2), pad=(3, 3, 3, 3))


@case
def conv2d_asymmetric_size():
    return conv_case("conv2d_asymmetric_size",
                     "3x5 kernel, stride [1, 2], pad [1, 2, 1, 2] on a 5x11 input: 2x3x5x11 -> 2x4x5x6",
                     2, 3, (5, 11), 4, (3, 5), stride=(1, 2), pad=(1, 2, 1, 2))


@case
def conv2d_kernel_larger_than_input():
    return conv_case("conv2d_kernel_larger_than_input",
                     "7x7 kernel, pad 3, on a 3x5 input (the kernel is larger than the input; most taps read padding zeros): 2x3x3x5 -> 2x4x3x5",
                     2, 3, (3, 5), 4, (7, 7), pad=(3, 3, 3, 3))


@case
def conv2d_asymmetric_pad():
    return conv_case("conv2d_asymmetric_pad",
                     "3x3 conv, stride 2, asymmetric pad [top 0, left 1, bottom 2, right 0] (torch: explicit zero F.pad then conv): 2x3x7x9 -> 2x4x4x5",
                     2, 3, (7, 9), 4, (3, 3), stride=(2, 2), pad=(0, 1, 2, 0))


def pool_case(name, desc, x, kernel, stride, pad, r):
    x = x.requires_grad_()
    top, left, bottom, right = pad
    if top == bottom and left == right:
        y = F.max_pool2d(x, kernel, stride, (top, left))
    else:  # torch pads symmetrically only: pad with -inf explicitly, then pool unpadded
        y = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), kernel, stride, 0)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    ry, rgx = np_max_pool2d(x.detach().numpy(), grad_y.numpy(), kernel, stride, pad)
    close(name, "y", y.detach().numpy(), ry, 0.0)
    close(name, "grad_x", out["grad_x"].numpy(), rgx)
    attrs = {"kernel": list(kernel), "pad": list(pad), "stride": list(stride)}
    return name, "max_pool2d", attrs, ["x"], desc, out


@case
def max_pool2d_5x5_s1_p2_crp():
    r = Rng("max_pool2d_5x5_s1_p2_crp")
    return pool_case("max_pool2d_5x5_s1_p2_crp",
                     "5x5 window, stride 1, pad 2 (chained residual pooling), padding is -inf: 2x3x7x9 -> 2x3x7x9",
                     r.normal(2, 3, 7, 9), (5, 5), (1, 1), (2, 2, 2, 2), r)


@case
def max_pool2d_3x3_s2_p1_stem():
    r = Rng("max_pool2d_3x3_s2_p1_stem")
    return pool_case("max_pool2d_3x3_s2_p1_stem",
                     "3x3 window, stride 2, pad 1 (ResNet stem), padding is -inf: 2x3x9x7 -> 2x3x5x4",
                     r.normal(2, 3, 9, 7), (3, 3), (2, 2), (1, 1, 1, 1), r)


@case
def max_pool2d_ties():
    name = "max_pool2d_ties"
    r = Rng(name)
    x = r.ints(-2, 2, 2, 3, 7, 5).to(DT)  # values in {-2, -1, 0, 1}: many ties
    x[0, 0] = -1.0  # a constant plane: every window is one big tie
    x[1, 2, 2:5, 1:4] = 1.0  # a 3x3 block of equal maxima
    return pool_case(name,
                     "3x3 window, stride 1, pad 1 on small-integer input full of ties (one constant plane): "
                     "the gradient of each window goes to its FIRST maximal element in row-major window order "
                     "(torch's rule; padding cells are -inf and never win), overlapping windows accumulate",
                     x, (3, 3), (1, 1), (1, 1, 1, 1), r)


@case
def max_pool2d_ties_stride2():
    name = "max_pool2d_ties_stride2"
    r = Rng(name)
    x = r.ints(0, 2, 2, 2, 9, 7).to(DT)  # values in {0, 1}
    x[1, 1] = 0.5
    return pool_case(name,
                     "3x3 window, stride 2, pad 1 on 0/1 input with ties and one constant plane: the gradient goes "
                     "to the first maximal element of each window in row-major order: 2x2x9x7 -> 2x2x5x4",
                     x, (3, 3), (2, 2), (1, 1, 1, 1), r)


@case
def max_pool2d_asymmetric_pad():
    name = "max_pool2d_asymmetric_pad"
    r = Rng(name)
    x = -r.uniform(0.5, 2.0, 2, 2, 7, 9)  # all negative, so a padding 0 instead of -inf would win
    return pool_case(name,
                     "3x3 window, stride 2, asymmetric pad [top 1, left 0, bottom 0, right 1] on all-negative input "
                     "(torch: explicit -inf F.pad then pool unpadded): 2x2x7x9 -> 2x2x3x4",
                     x, (3, 3), (2, 2), (1, 0, 0, 1), r)


def resize_case(name, desc, n, c, hw_in, size, align_corners):
    r = Rng(name)
    x = r.normal(n, c, *hw_in).requires_grad_()
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    mh = np_bilinear_matrix(hw_in[0], size[0], align_corners)
    mw = np_bilinear_matrix(hw_in[1], size[1], align_corners)
    xn = x.detach().numpy()
    close(name, "y", y.detach().numpy(), np.einsum("ah,nchw,bw->ncab", mh, xn, mw))
    close(name, "grad_x", out["grad_x"].numpy(), np.einsum("ah,ncab,bw->nchw", mh, grad_y.numpy(), mw))
    attrs = {"align_corners": bool(align_corners), "size": list(size)}
    return name, "resize_bilinear", attrs, ["x"], desc, out


@case
def resize_bilinear_up_ac_false():
    return resize_case("resize_bilinear_up_ac_false",
                       "upsample 5x4 -> 11x9, align_corners false (half-pixel: s = (d + 0.5) * in / out - 0.5, "
                       "clamped below at 0; the last input row/column is repeated at the far edge)",
                       2, 3, (5, 4), (11, 9), False)


@case
def resize_bilinear_up_ac_true():
    return resize_case("resize_bilinear_up_ac_true",
                       "upsample 5x4 -> 11x9, align_corners true (s = d * (in - 1) / (out - 1))",
                       2, 3, (5, 4), (11, 9), True)


@case
def resize_bilinear_down_ac_false():
    return resize_case("resize_bilinear_down_ac_false",
                       "downsample 9x8 -> 4x3, align_corners false: plain 2-tap interpolation at "
                       "s = (d + 0.5) * in / out - 0.5, no antialiasing, some input pixels get no weight",
                       2, 3, (9, 8), (4, 3), False)


@case
def resize_bilinear_down_ac_true():
    return resize_case("resize_bilinear_down_ac_true",
                       "downsample 9x8 -> 4x3, align_corners true (s = d * (in - 1) / (out - 1)), no antialiasing",
                       2, 3, (9, 8), (4, 3), True)


@case
def resize_bilinear_width1_ac_true():
    return resize_case("resize_bilinear_width1_ac_true",
                       "1-pixel-wide input 5x1 -> 9x7, align_corners true: along W every output reads "
                       "the single column (in - 1 = 0)",
                       2, 2, (5, 1), (9, 7), True)


@case
def resize_bilinear_width1_ac_false():
    return resize_case("resize_bilinear_width1_ac_false",
                       "1-pixel-wide input 5x1 -> 9x7, align_corners false: along W every output reads the "
                       "single column (both taps clamp to index 0)",
                       2, 2, (5, 1), (9, 7), False)


@case
def resize_bilinear_to1_ac_true():
    return resize_case("resize_bilinear_to1_ac_true",
                       "7x5 -> 1x3, align_corners true: an output extent of 1 reads source coordinate 0 "
                       "(the first row), not the centre",
                       2, 2, (7, 5), (1, 3), True)


@case
def resize_bilinear_to1_ac_false():
    return resize_case("resize_bilinear_to1_ac_false",
                       "7x5 -> 1x3, align_corners false: an output extent of 1 reads the centre, "
                       "s = 0.5 * in - 0.5 = 3 along H",
                       2, 2, (7, 5), (1, 3), False)


def ce_case(name, desc, n, c, hw, reduction, ignore_mask, grad_y_value):
    r = Rng(name)
    x = r.normal(n, c, *hw, scale=2.0).requires_grad_()
    labels = r.ints(0, c, n, *hw)
    labels[ignore_mask(labels)] = 255
    grad_y = torch.tensor(grad_y_value if grad_y_value is not None else r.normal(1).item(), dtype=DT)
    count = int((labels != 255).sum())
    if reduction == "mean" and count == 0:
        # torch gives 0/0 = nan here; rfn defines the loss and its gradient as 0.
        y = torch.zeros((), dtype=DT)
        gx = torch.zeros_like(x)
        assert torch.isnan(F.cross_entropy(x, labels, ignore_index=255, reduction="mean")), \
            "torch no longer gives nan for an all-ignored mean; revisit this case"
        out = {"x": x, "labels": labels.to(torch.int32), "y": y, "grad_y": grad_y, "grad_x": gx}
    else:
        y = F.cross_entropy(x, labels, ignore_index=255, reduction=reduction)
        out = {"x": x, "labels": labels.to(torch.int32), "y": y, "grad_y": grad_y,
               **grads_of(y, grad_y, {"x": x})}
    ry, rg = np_softmax_ce(x.detach().numpy(), labels.numpy(), 255, reduction, grad_y.item())
    close(name, "y", out["y"].detach().numpy(), ry)
    close(name, "grad_x", out["grad_x"].numpy(), rg)
    attrs = {"ignore_index": 255, "reduction": reduction}
    desc = desc.format(ignored=labels.numel() - count, count=count)
    return name, "softmax_cross_entropy", attrs, ["x", "labels"], desc, out


def some_ignored(labels):
    m = torch.zeros_like(labels, dtype=torch.bool)
    m[0, 0, :3] = True  # a run at the start
    m[0, 4, 2] = True
    m[1, 2, :] = True  # a whole row
    m[1, -1, -1] = True  # the last pixel
    return m


@case
def softmax_cross_entropy_mean():
    return ce_case("softmax_cross_entropy_mean",
                   "5 classes, 2x5x5x7 logits, labels with 255 (ignored) at {ignored} pixels; mean over the {count} "
                   "counted pixels; grad_y = 1.0",
                   2, 5, (5, 7), "mean", some_ignored, 1.0)


@case
def softmax_cross_entropy_sum():
    return ce_case("softmax_cross_entropy_sum",
                   "5 classes, 2x5x5x7 logits, labels with 255 (ignored) at {ignored} pixels; sum over the {count} "
                   "counted pixels; random scalar grad_y",
                   2, 5, (5, 7), "sum", some_ignored, None)


@case
def softmax_cross_entropy_mean_random_grad():
    return ce_case("softmax_cross_entropy_mean_random_grad",
                   "3 classes, 1x3x7x5 logits, labels with 255 at {ignored} pixels; mean over the {count} counted "
                   "pixels; random scalar grad_y",
                   1, 3, (7, 5), "mean",
                   lambda l: torch.arange(l.numel()).reshape(l.shape) % 3 == 0, None)


@case
def softmax_cross_entropy_all_ignored_mean():
    return ce_case("softmax_cross_entropy_all_ignored_mean",
                   "every label is 255 (ignored), reduction mean: torch gives nan (0/0); recorded instead is "
                   "the rfn semantics computed by hand: loss 0 and gradient 0 when no pixel counts",
                   2, 3, (3, 5), "mean", lambda l: torch.ones_like(l, dtype=torch.bool), 1.0)


@case
def softmax_cross_entropy_all_ignored_sum():
    return ce_case("softmax_cross_entropy_all_ignored_sum",
                   "every label is 255 (ignored), reduction sum: torch gives loss 0 and gradient 0 "
                   "(an empty sum); random scalar grad_y",
                   2, 3, (3, 5), "sum", lambda l: torch.ones_like(l, dtype=torch.bool), None)


def ls_case(name, desc, shape, reduction, grad_y_value, ignore_frac=0.3):
    r = Rng(name)
    x = r.normal(*shape).requires_grad_()
    target = r.uniform(0.5, 3.0, *shape)
    target[r.uniform(0.0, 1.0, *shape) < ignore_frac] = 0.0  # no measurement
    grad_y = torch.tensor(grad_y_value if grad_y_value is not None else r.normal(1).item(), dtype=DT)
    valid = target != 0.0
    sq = ((x - target) ** 2 * valid).sum()
    count = int(valid.sum())
    if reduction == "sum":
        y = sq
    else:
        assert count > 0
        y = sq / count
    out = {"x": x, "target": target, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    ry, rg = np_least_squares(x.detach().numpy(), target.numpy(), 0.0, reduction, grad_y.item())
    close(name, "y", y.detach().numpy(), ry)
    close(name, "grad_x", out["grad_x"].numpy(), rg)
    # torch's own loss agrees on the valid pixels
    tl = F.mse_loss(x.detach()[valid], target[valid], reduction=reduction)
    close(name, "y vs F.mse_loss", y.detach().numpy(), tl.numpy())
    attrs = {"ignore_value": 0.0, "reduction": reduction}
    return name, "least_squares", attrs, ["x", "target"], desc.format(count=count, total=x.numel()), out


@case
def least_squares_sum():
    return ls_case("least_squares_sum",
                   "(pred - target)^2 summed over the {count} of {total} pixels whose target is not 0.0 "
                   "(ignored pixels contribute nothing, gradient 0 there), 2x1x7x5; random scalar grad_y",
                   (2, 1, 7, 5), "sum", None)


@case
def least_squares_mean():
    return ls_case("least_squares_mean",
                   "(pred - target)^2 averaged over the {count} of {total} pixels whose target is not 0.0 "
                   "(mean = sum / number of valid pixels), 2x1x7x5; grad_y = 1.0",
                   (2, 1, 7, 5), "mean", 1.0)


@case
def least_squares_mean_random_grad():
    return ls_case("least_squares_mean_random_grad",
                   "(pred - target)^2 averaged over the {count} of {total} pixels whose target is not 0.0, "
                   "1x1x9x7; random scalar grad_y",
                   (1, 1, 9, 7), "mean", None, ignore_frac=0.5)


@case
def batch_norm_frozen():
    name = "batch_norm_frozen"
    r = Rng(name)
    c = 3
    x = r.normal(2, c, 5, 7, scale=2.0).requires_grad_()
    mean, var = r.normal(c), r.uniform(0.2, 2.0, c)
    var[1] = float(np.float32(1e-6))  # smaller than eps: eps matters (f32-exact value)
    gamma = r.uniform(0.5, 1.5, c).requires_grad_()
    beta = r.normal(c).requires_grad_()
    y = F.batch_norm(x, mean, var, gamma, beta, training=False, eps=1e-5)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "mean": mean, "var": var, "gamma": gamma, "beta": beta, "y": y, "grad_y": grad_y,
           **grads_of(y, grad_y, {"x": x, "gamma": gamma, "beta": beta})}
    v = lambda t: t.detach().numpy()[None, :, None, None]
    close(name, "y", y.detach().numpy(), (x.detach().numpy() - v(mean)) / np.sqrt(v(var) + 1e-5) * v(gamma) + v(beta))
    close(name, "grad_x", out["grad_x"].numpy(), grad_y.numpy() * v(gamma) / np.sqrt(v(var) + 1e-5))
    return (name, "batch_norm", {"eps": 1e-5}, ["x", "mean", "var", "gamma", "beta"],
            "frozen (inference-mode) batch norm, F.batch_norm(training=False, eps=1e-5), 2x3x5x7, one "
            "channel with var 1e-6 < eps; grad_x, grad_gamma, grad_beta by autograd (torch refuses "
            "gradients for the running mean/var, so there are none)", out)


@case
def relu_with_zeros():
    name = "relu_with_zeros"
    r = Rng(name)
    x = r.normal(2, 3, 5, 7)
    x[r.uniform(0.0, 1.0, *x.shape) < 0.2] = 0.0
    x[0, 0, 0, :] = 0.0
    x[1, 2, 4, 6] = -0.0  # a negative zero too
    x.requires_grad_()
    y = F.relu(x)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    xn = x.detach().numpy()
    close(name, "y", y.detach().numpy(), np.maximum(xn, 0.0), 0.0)
    close(name, "grad_x", out["grad_x"].numpy(), np.where(xn > 0, grad_y.numpy(), 0.0), 0.0)
    nz = int((xn == 0).sum())
    return (name, "relu", {}, ["x"],
            f"relu on 2x3x5x7 with {nz} exact zeros in x (one -0.0): the gradient at x == 0 is 0 (torch's rule)",
            out)


def np_avg_pool2d(x, gy, kernel, stride, pad, count_include_pad):
    """Forward and input gradient of average pooling (docs/ir.md): the window's cells inside
    the input, summed, over kh * kw (count_include_pad) or over the number of those cells."""
    N, C, H, W = x.shape
    Ho = np_window_out(H, pad[0], pad[2], kernel[0], stride[0])
    Wo = np_window_out(W, pad[1], pad[3], kernel[1], stride[1])
    y = np.zeros((N, C, Ho, Wo))
    gx = np.zeros_like(x)
    for i in range(Ho):
        r0 = i * stride[0] - pad[0]
        rows = slice(max(r0, 0), min(r0 + kernel[0], H))
        for j in range(Wo):
            s0 = j * stride[1] - pad[1]
            cols = slice(max(s0, 0), min(s0 + kernel[1], W))
            cells = (rows.stop - rows.start) * (cols.stop - cols.start)
            divisor = kernel[0] * kernel[1] if count_include_pad else cells
            y[:, :, i, j] = x[:, :, rows, cols].sum(axis=(2, 3)) / divisor
            gx[:, :, rows, cols] += (gy[:, :, i, j] / divisor)[:, :, None, None]
    return y, gx


def avg_pool_case(name, desc, x, kernel, stride, pad, count_include_pad, r):
    x = x.requires_grad_()
    top, left, bottom, right = pad
    if top == bottom and left == right:
        y = F.avg_pool2d(x, kernel, stride, padding=(top, left), count_include_pad=count_include_pad)
    else:  # torch pads symmetrically only: zero-pad explicitly (counted, as count_include_pad)
        assert count_include_pad
        y = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), kernel, stride)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    ry, rg = np_avg_pool2d(x.detach().numpy(), grad_y.numpy(), kernel, stride, pad, count_include_pad)
    close(name, "y", y.detach().numpy(), ry)
    close(name, "grad_x", out["grad_x"].numpy(), rg)
    attrs = {"count_include_pad": bool(count_include_pad), "kernel": list(kernel), "pad": list(pad),
             "stride": list(stride)}
    return name, "avg_pool2d", attrs, ["x"], desc, out


@case
def avg_pool2d_3x3_s2_p1_include_pad():
    name = "avg_pool2d_3x3_s2_p1_include_pad"
    r = Rng(name)
    return avg_pool_case(name,
                         "3x3 window, stride 2, pad 1, count_include_pad true (PyTorch's default): every "
                         "window divided by 9, padding counted as zeros: 2x3x9x7 -> 2x3x5x4",
                         r.normal(2, 3, 9, 7), (3, 3), (2, 2), (1, 1, 1, 1), True, r)


@case
def avg_pool2d_3x3_s2_p1_exclude_pad():
    name = "avg_pool2d_3x3_s2_p1_exclude_pad"
    r = Rng(name)
    return avg_pool_case(name,
                         "3x3 window, stride 2, pad 1, count_include_pad false: border windows divided by "
                         "their cells inside the input (4 or 6): 2x3x9x7 -> 2x3x5x4",
                         r.normal(2, 3, 9, 7), (3, 3), (2, 2), (1, 1, 1, 1), False, r)


@case
def avg_pool2d_5x5_s1_p2_exclude_pad():
    name = "avg_pool2d_5x5_s1_p2_exclude_pad"
    r = Rng(name)
    return avg_pool_case(name,
                         "5x5 window, stride 1, pad 2 (same size), count_include_pad false; overlapping "
                         "windows accumulate gradients: 1x2x7x6 -> 1x2x7x6",
                         r.normal(1, 2, 7, 6), (5, 5), (1, 1), (2, 2, 2, 2), False, r)


@case
def avg_pool2d_2x2_s2_odd():
    name = "avg_pool2d_2x2_s2_odd"
    r = Rng(name)
    return avg_pool_case(name,
                         "2x2 window, stride 2, no padding on an odd 7x9 input: the last row and column "
                         "are in no window (gradient 0): 2x2x7x9 -> 2x2x3x4",
                         r.normal(2, 2, 7, 9), (2, 2), (2, 2), (0, 0, 0, 0), True, r)


@case
def avg_pool2d_asymmetric_pad():
    name = "avg_pool2d_asymmetric_pad"
    r = Rng(name)
    return avg_pool_case(name,
                         "3x3 window, stride 2, asymmetric pad [top 1, left 0, bottom 0, right 1], "
                         "count_include_pad true (torch: explicit zero F.pad, then pool unpadded): "
                         "2x2x7x9 -> 2x2x3x4",
                         r.normal(2, 2, 7, 9), (3, 3), (2, 2), (1, 0, 0, 1), True, r)


@case
def global_avg_pool2d_5x7():
    name = "global_avg_pool2d_5x7"
    r = Rng(name)
    x = r.normal(2, 3, 5, 7).requires_grad_()
    y = F.adaptive_avg_pool2d(x, 1)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    xn = x.detach().numpy()
    close(name, "y", y.detach().numpy(), xn.mean(axis=(2, 3), keepdims=True))
    close(name, "grad_x", out["grad_x"].numpy(), np.broadcast_to(grad_y.numpy() / 35.0, xn.shape))
    return (name, "global_avg_pool2d", {}, ["x"],
            "mean over H and W, F.adaptive_avg_pool2d(x, 1): 2x3x5x7 -> 2x3x1x1; the gradient is "
            "grad_y / 35 at every pixel", out)


@case
def concat_three():
    name = "concat_three"
    r = Rng(name)
    a, b, c = (r.normal(2, ch, 3, 5).requires_grad_() for ch in (2, 3, 1))
    y = torch.cat([a, b, c], dim=1)
    grad_y = r.normal(*y.shape)
    leaves = {"a": a, "b": b, "c": c}
    out = {**leaves, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, leaves)}
    gy = grad_y.numpy()
    close(name, "y", y.detach().numpy(),
          np.concatenate([a.detach().numpy(), b.detach().numpy(), c.detach().numpy()], axis=1))
    for k, (lo, hi) in {"a": (0, 2), "b": (2, 5), "c": (5, 6)}.items():
        close(name, f"grad_{k}", out[f"grad_{k}"].numpy(), gy[:, lo:hi])
    return (name, "concat", {}, ["a", "b", "c"],
            "torch.cat along dim 1 of 2x2x3x5, 2x3x3x5 and 2x1x3x5 -> 2x6x3x5; each gradient is "
            "its channel slice of grad_y", out)


def mul_case(name, desc, a_shape, b_shape):
    r = Rng(name)
    draw = lambda shape: r.normal(*shape) if shape else r.normal(1).reshape(())
    a = draw(a_shape).requires_grad_()
    b = draw(b_shape).requires_grad_()
    y = a * b
    grad_y = draw(tuple(y.shape))
    out = {"a": a, "b": b, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"a": a, "b": b})}
    an, bn, gy = a.detach().numpy(), b.detach().numpy(), grad_y.numpy()

    def unbroadcast(g, shape):  # the sum over the broadcast dimensions (docs/ir.md, sum_to)
        if len(shape) == 0:
            return g.sum()
        axes = tuple(d for d, n in enumerate(shape) if n == 1 and g.shape[d] != 1)
        return g.sum(axis=axes, keepdims=True)

    close(name, "y", y.detach().numpy(), an * bn)
    close(name, "grad_a", out["grad_a"].numpy(), unbroadcast(gy * bn, a_shape))
    close(name, "grad_b", out["grad_b"].numpy(), unbroadcast(gy * an, b_shape))
    return name, "mul", {}, ["a", "b"], desc, out


@case
def mul_same_shape():
    return mul_case("mul_same_shape", "elementwise product of two 2x3x4x5 tensors", (2, 3, 4, 5), (2, 3, 4, 5))


@case
def mul_channel_gate():
    return mul_case("mul_channel_gate",
                    "2x3x4x5 times a 2x3x1x1 gate (channel attention): the gate's gradient is the sum over "
                    "H and W of grad_y * a", (2, 3, 4, 5), (2, 3, 1, 1))


@case
def mul_mutual_broadcast():
    return mul_case("mul_mutual_broadcast",
                    "2x1x4x5 (spatial map) times 2x3x1x1 (channel gate): both broadcast, result 2x3x4x5",
                    (2, 1, 4, 5), (2, 3, 1, 1))


@case
def mul_scalar():
    return mul_case("mul_scalar",
                    "2x3x4x5 times a rank-0 scalar: the scalar's gradient is the sum of grad_y * a",
                    (2, 3, 4, 5), ())


@case
def mul_scalars():
    return mul_case("mul_scalars", "two rank-0 scalars (a weighted loss)", (), ())


@case
def sigmoid_wide_range():
    name = "sigmoid_wide_range"
    r = Rng(name)
    x = r.normal(2, 3, 4, 5, scale=3.0)
    x[0, 0, 0, :4] = torch.tensor([-100.0, -30.0, 30.0, 100.0], dtype=DT)  # saturated both ways
    x[1, 2, 3, 4] = 0.0
    x.requires_grad_()
    y = torch.sigmoid(x)
    grad_y = r.normal(*y.shape)
    out = {"x": x, "y": y, "grad_y": grad_y, **grads_of(y, grad_y, {"x": x})}
    xn = x.detach().numpy()
    ref = 1.0 / (1.0 + np.exp(-xn))
    close(name, "y", y.detach().numpy(), ref)
    close(name, "grad_x", out["grad_x"].numpy(), grad_y.numpy() * ref * (1.0 - ref))
    return (name, "sigmoid", {}, ["x"],
            "1 / (1 + exp(-x)) on 2x3x4x5 with std 3 and saturated values -100, -30, 30, 100; the "
            "gradient is grad_y * y * (1 - y)", out)


# ----- driver --------------------------------------------------------------------------------

def to_numpy(t):
    a = t.detach().cpu().numpy()
    if a.dtype == np.float32:
        a = a.astype(np.float64)
    assert a.dtype in (np.float64, np.int32), a.dtype
    return np.array(a, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)


def verify_file(path, expect_tensors, expect_meta):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    loaded = load_file(path)
    assert sorted(loaded) == sorted(expect_tensors), (path, sorted(loaded))
    for k, a in expect_tensors.items():
        assert loaded[k].dtype == a.dtype and loaded[k].shape == a.shape, (path, k)
        assert np.array_equal(loaded[k], a, equal_nan=True), (path, k)
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == expect_meta, (path, f.metadata())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--check-only", action="store_true", help="compute and cross-check, write nothing")
    args = ap.parse_args()
    if not args.check_only:
        os.makedirs(args.out, exist_ok=True)
    seen = set()
    total = 0
    for fn in CASES:
        name, op, attrs, operands, desc, tensors = fn()
        assert name == fn.__name__ and name not in seen, name
        seen.add(name)
        assert "\n" not in desc
        arrays = {k: to_numpy(v) for k, v in tensors.items()}
        for k in operands + ["y", "grad_y"]:
            assert k in arrays, (name, k)
        assert arrays["grad_y"].shape == arrays["y"].shape
        for k in list(arrays):
            if k.startswith("grad_") and k != "grad_y":
                assert arrays[k].shape == arrays[k[5:]].shape, (name, k)
        if op in ("softmax_cross_entropy", "least_squares"):
            assert arrays["y"].shape == () and arrays["grad_y"].shape == ()
        for k, a in arrays.items():
            assert a.dtype != np.float64 or np.all(np.isfinite(a)), (name, k)
        meta = {
            "op": op,
            "attrs": fmt_attrs(attrs),
            "operands": ",".join(operands),
            "torch": torch.__version__,
            "description": desc,
        }
        if args.check_only:
            print(f"ok {name}")
            continue
        path = os.path.join(args.out, name + ".safetensors")
        write_safetensors(path, arrays, meta)
        verify_file(path, arrays, meta)
        size = os.path.getsize(path)
        total += size
        print(f"{size:7d}  {name}.safetensors  {op} {meta['attrs']}")
    if not args.check_only:
        stale = [f for f in os.listdir(args.out)
                 if f.endswith(".safetensors") and f[: -len(".safetensors")] not in seen]
        for f in stale:
            print(f"warning: {f} is not produced by any case", file=sys.stderr)
        print(f"{len(seen)} files, {total} bytes, torch {torch.__version__}")


if __name__ == "__main__":
    main()
