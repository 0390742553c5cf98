#!/usr/bin/env python3
"""Run an rfn inference graph (the text of `rfnc compile FILE --emit graph`) in PyTorch.

The script parses the graph IR's MLIR generic syntax (docs/ir.md), builds the same network
from torch.nn.functional calls and times its forward pass on the CPU. This is the PyTorch
baseline for benchmarks. With --weights/--input-file/--compare it instead loads parameters
and inputs from safetensors files and compares its outputs with given ones, to cross-check
the compiler.

  rfnc compile examples/refinenet4.rfn -D depth=101 --input 1x3x512x512 -o /tmp/r4.mlir
  python3 tools/torch_run_graph.py /tmp/r4.mlir --threads 2 --repeat 3 [--json]

Op mapping (inference ops only; gradient, optimizer and batch-norm-folding ops are refused):
  rfn.input / rfn.param / rfn.constant  leaves (random, loaded, or the constant's value)
  rfn.conv2d          F.conv2d; asymmetric pad [top, left, bottom, right] via a zero F.pad
  rfn.batch_norm      F.batch_norm(training=False) with the running statistics and eps
  rfn.relu, rfn.add   F.relu, +
  rfn.max_pool2d      F.max_pool2d (implicit -inf padding); asymmetric pad via a -inf F.pad
  rfn.resize_bilinear F.interpolate(mode="bilinear", align_corners=..., antialias=False)
  rfn.dropout         identity (one operand: inference); the training form is refused
  rfn.softmax_cross_entropy  F.cross_entropy(ignore_index, reduction); "mean" over no
                      counted pixel is 0 (rfn) rather than NaN (torch)
  rfn.least_squares   sum of (pred - target)^2 over target != ignore_value; "mean" divides
                      by the count (0 when none)

Only ops that the computed outputs depend on are run. Outputs that need an input the script
does not have (the labels of a loss, by default) are skipped and reported; --with-losses
feeds random labels/targets so that the losses are computed (and timed) too.
See tools/README.md.
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time

# ----- parsing -------------------------------------------------------------------------------

OP_RE = re.compile(r'^\s*%(\d+)\s*=\s*"rfn\.([A-Za-z0-9_]+)"\(([^)]*)\)\s*(.*)$')
RETURN_RE = re.compile(r'^\s*"rfn\.return"\(([^)]*)\)\s*(.*)$')
SYM_RE = re.compile(r'sym_name\s*=\s*"((?:[^"\\]|\\.)*)"')
TYPE_RE = re.compile(r'tensor<([^>]*)>')
VALUE_RE = re.compile(r'%(\d+)')


class ParseError(Exception):
    pass


def decode_string(body):
    """Undo the printer's escapes: \\" \\\\ \\n \\t and \\XX (two hex digits, a byte)."""
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in ('"', "\\"):
            out += nxt.encode()
            i += 2
        elif nxt == "n":
            out += b"\n"
            i += 2
        elif nxt == "t":
            out += b"\t"
            i += 2
        elif re.match(r"[0-9A-Fa-f]{2}", body[i + 1:i + 3]):
            out.append(int(body[i + 1:i + 3], 16))
            i += 3
        else:
            raise ParseError("bad escape in string %r" % body)
    return out.decode("utf-8", errors="replace")


ATTR_TOKEN_RE = re.compile(r'''
    \s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<num>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+|inf|NaN|nan))
    | (?P<bool>true|false)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_$.]*)
    | (?P<punct>[\[\]{},=])
    )''', re.VERBOSE)


def parse_attr_dict(text, pos):
    """Parse `{k = v, ...}` starting at text[pos] == '{'. Returns (dict, end position)."""
    toks = []
    i = pos
    depth = 0
    while True:
        m = ATTR_TOKEN_RE.match(text, i)
        if not m or m.end() == i:
            raise ParseError("cannot read attributes at %r" % text[i:i + 40])
        i = m.end()
        kind = m.lastgroup
        val = m.group(kind)
        toks.append((kind, val))
        if kind == "punct" and val == "{":
            depth += 1
        elif kind == "punct" and val == "}":
            depth -= 1
            if depth == 0:
                break
    # recursive descent over the tokens
    k = [1]  # skip the opening brace

    def value():
        kind, val = toks[k[0]]
        k[0] += 1
        if kind == "str":
            return decode_string(val[1:-1])
        if kind == "bool":
            return val == "true"
        if kind == "num":
            if re.fullmatch(r"[-+]?\d+", val):
                return int(val)
            return float(val)
        if kind == "punct" and val == "[":
            items = []
            if toks[k[0]] == ("punct", "]"):
                k[0] += 1
                return items
            while True:
                items.append(value())
                kind2, val2 = toks[k[0]]
                k[0] += 1
                if val2 == "]":
                    return items
                if val2 != ",":
                    raise ParseError("expected , or ] in array, got %r" % val2)
        raise ParseError("unexpected attribute token %r" % val)

    attrs = {}
    if toks[k[0]] == ("punct", "}"):
        return attrs, i
    while True:
        kind, key = toks[k[0]]
        if kind not in ("ident", "str"):
            raise ParseError("expected attribute name, got %r" % key)
        key = decode_string(key[1:-1]) if kind == "str" else key
        if toks[k[0] + 1] != ("punct", "="):
            raise ParseError("expected = after attribute %s" % key)
        k[0] += 2
        attrs[key] = value()
        kind, val = toks[k[0]]
        k[0] += 1
        if val == "}":
            return attrs, i
        if val != ",":
            raise ParseError("expected , or } after attribute %s, got %r" % (key, val))


def parse_type(t):
    """`1x3x16x16xf32` -> ((1, 3, 16, 16), 'f32'); `f32` -> ((), 'f32')."""
    parts = t.strip().split("x")
    dtype = parts[-1]
    if dtype not in ("f32", "i32", "f64", "i64"):
        raise ParseError("unknown element type in tensor<%s>" % t)
    return tuple(int(p) for p in parts[:-1]), dtype


class Op:
    __slots__ = ("id", "name", "operands", "attrs", "shape", "dtype", "line")

    def __init__(self, id_, name, operands, attrs, shape, dtype, line):
        self.id, self.name, self.operands, self.attrs = id_, name, operands, attrs
        self.shape, self.dtype, self.line = shape, dtype, line


class Graph:
    def __init__(self):
        self.name = None
        self.ops = []           # in text (topological) order
        self.by_id = {}
        self.outputs = []       # [(name, value id)]
        self.objective = None


def parse_graph(text):
    g = Graph()
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("//"):
            continue
        m = OP_RE.match(line)
        if m:
            vid, name, operands, rest = int(m.group(1)), m.group(2), m.group(3), m.group(4)
            attrs = {}
            rest = rest.lstrip()
            if rest.startswith("{"):
                attrs, end = parse_attr_dict(rest, 0)
                rest = rest[end:]
            arrow = rest.find("->")
            if arrow < 0:
                raise ParseError("line %d: no result type" % lineno)
            tm = TYPE_RE.search(rest, arrow)
            if not tm:
                raise ParseError("line %d: no tensor result type" % lineno)
            shape, dtype = parse_type(tm.group(1))
            op = Op(vid, name, [int(v) for v in VALUE_RE.findall(operands)], attrs, shape,
                    dtype, lineno)
            for v in op.operands:
                if v not in g.by_id:
                    raise ParseError("line %d: %%%d used before its definition" % (lineno, v))
            if vid in g.by_id:
                raise ParseError("line %d: %%%d defined twice" % (lineno, vid))
            g.ops.append(op)
            g.by_id[vid] = op
            continue
        m = RETURN_RE.match(line)
        if m:
            vals = [int(v) for v in VALUE_RE.findall(m.group(1))]
            rest = m.group(2).lstrip()
            attrs = {}
            if rest.startswith("{"):
                attrs, _ = parse_attr_dict(rest, 0)
            names = attrs.get("names") or ["out%d" % i for i in range(len(vals))]
            if len(names) != len(vals):
                raise ParseError("line %d: rfn.return has %d values but %d names"
                                 % (lineno, len(vals), len(names)))
            g.outputs = list(zip(names, vals))
            g.objective = attrs.get("objective")
            continue
        sm = SYM_RE.search(line)
        if sm and s.startswith("})"):
            g.name = decode_string(sm.group(1))
            continue
        if s.startswith('"rfn.graph"'):
            continue
        if s.startswith('"rfn.fused"') or '"rfn.kernel"' in s:
            raise ParseError("this is the fused form (--emit fused); give the graph form "
                             "(--emit graph)")
        raise ParseError("line %d: cannot read: %s" % (lineno, s[:120]))
    if not g.ops:
        raise ParseError("no ops found: is this the output of `rfnc compile --emit graph`?")
    if not g.outputs:
        raise ParseError("no rfn.return found")
    return g


# ----- building and running ------------------------------------------------------------------

SUPPORTED = {"input", "param", "constant", "conv2d", "batch_norm", "relu", "add", "max_pool2d",
             "resize_bilinear", "dropout", "softmax_cross_entropy", "least_squares"}


def shape_str(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def make_kernel(op, torch, F):
    """A function of the operand tensors computing op, per docs/ir.md."""
    a = op.attrs
    n = op.name
    if n == "conv2d":
        top, left, bottom, right = a["pad"]
        stride, dilation, groups = tuple(a["stride"]), tuple(a["dilation"]), a["groups"]
        if top == bottom and left == right:
            pad = (top, left)

            def conv(x, w, b=None):
                return F.conv2d(x, w, b, stride, pad, dilation, groups)
        else:
            fpad = (left, right, top, bottom)

            def conv(x, w, b=None):
                return F.conv2d(F.pad(x, fpad), w, b, stride, 0, dilation, groups)
        return conv
    if n == "batch_norm":
        eps = float(a["eps"])

        def bn(x, mean, var, gamma, beta):
            return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, eps)
        return bn
    if n == "relu":
        return F.relu
    if n == "add":
        return torch.add
    if n == "max_pool2d":
        top, left, bottom, right = a["pad"]
        kernel, stride = tuple(a["kernel"]), tuple(a["stride"])
        if top == bottom and left == right:
            pad = (top, left)

            def pool(x):
                return F.max_pool2d(x, kernel, stride, pad)
        else:
            fpad = (left, right, top, bottom)

            def pool(x):
                return F.max_pool2d(F.pad(x, fpad, value=-math.inf), kernel, stride, 0)
        return pool
    if n == "resize_bilinear":
        size, ac = tuple(a["size"]), bool(a["align_corners"])

        def resize(x):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=ac,
                                 antialias=False)
        return resize
    if n == "dropout":
        if len(op.operands) != 1:
            raise ParseError("line %d: rfn.dropout with a step operand is the training form; "
                             "only inference graphs are supported" % op.line)
        return lambda x: x
    if n == "softmax_cross_entropy":
        ignore, red = int(a["ignore_index"]), a["reduction"]

        def sce(scores, labels):
            labels = labels.long()
            loss = F.cross_entropy(scores, labels, ignore_index=ignore, reduction="sum")
            if red == "mean":
                count = (labels != ignore).sum()
                loss = loss / count.clamp(min=1).to(loss.dtype)
            return loss
        return sce
    if n == "least_squares":
        ignore, red = float(a["ignore_value"]), a["reduction"]

        def lsq(pred, target):
            mask = target != ignore
            loss = torch.where(mask, (pred - target) ** 2, torch.zeros((), dtype=pred.dtype)).sum()
            if red == "mean":
                loss = loss / mask.sum().clamp(min=1).to(loss.dtype)
            return loss
        return lsq
    raise ParseError("line %d: rfn.%s is not supported" % (op.line, n))


def conv_macs(g, ops):
    total = 0
    for op in ops:
        if op.name == "conv2d":
            w = g.by_id[op.operands[1]].shape
            n_out = 1
            for d in op.shape:
                n_out *= d
            total += n_out * w[1] * w[2] * w[3]
    return total


class Runner:
    """The pruned, ordered program computing the selected outputs."""

    def __init__(self, g, out_ids, torch, F):
        needed = set()
        stack = list(out_ids)
        while stack:
            v = stack.pop()
            if v in needed:
                continue
            needed.add(v)
            stack.extend(g.by_id[v].operands)
        self.ops = [op for op in g.ops if op.id in needed]
        self.leaves = [op for op in self.ops if op.name in ("input", "param", "constant")]
        self.compute = [op for op in self.ops if op.name not in ("input", "param", "constant")]
        last_use = {}
        for i, op in enumerate(self.compute):
            for v in op.operands:
                last_use[v] = i
        keep = set(out_ids) | {op.id for op in self.leaves}
        frees = [[] for _ in self.compute]
        for v, i in last_use.items():
            if v not in keep:
                frees[i].append(v)
        self.steps = [(op.id, make_kernel(op, torch, F), tuple(op.operands), tuple(frees[i]))
                      for i, op in enumerate(self.compute)]
        self.out_ids = list(out_ids)

    def run(self, leaf_values, check_shapes=False, by_id=None):
        env = dict(leaf_values)
        for vid, fn, operands, frees in self.steps:
            y = fn(*[env[v] for v in operands])
            if check_shapes:
                op = by_id[vid]
                if tuple(y.shape) != op.shape:
                    raise RuntimeError("line %d: rfn.%s gave shape %s, the IR says %s"
                                       % (op.line, op.name, shape_str(tuple(y.shape)),
                                          shape_str(op.shape)))
            env[vid] = y
            for v in frees:
                del env[v]
        return [env[v] for v in self.out_ids]


def random_param(op, gen, torch, dtype):
    """Seeded normal draws, scaled so activations stay finite through deep networks."""
    kind = op.attrs.get("kind", "")
    shape = op.shape
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    if kind == "conv_weight":
        fan_in = shape[1] * shape[2] * shape[3]
        t = z * math.sqrt(2.0 / fan_in)
    elif kind == "bn_var":
        t = 1.0 + 0.1 * z.abs()               # positive
    elif kind == "bn_gamma":
        t = 1.0 + 0.1 * z
    elif kind in ("conv_bias", "bn_mean", "bn_beta"):
        t = 0.1 * z
    elif kind == "momentum":
        t = torch.zeros(shape)
    else:
        t = z
    return t.to(dtype)


def random_input(op, g, gen, torch, dtype):
    """The image (standard normal), labels (classes from the consuming loss, ~10% ignored),
    depth targets (positive, ~10% at the ignore value)."""
    shape = op.shape
    if op.dtype.startswith("i"):
        classes, ignore = 2, None
        for user in g.ops:
            if op.id in user.operands and user.name == "softmax_cross_entropy":
                classes = g.by_id[user.operands[0]].shape[1]
                ignore = int(user.attrs["ignore_index"])
        lab = torch.randint(0, classes, shape, generator=gen, dtype=torch.int64)
        if ignore is not None:
            drop = torch.rand(shape, generator=gen) < 0.1
            lab = torch.where(drop, torch.full_like(lab, ignore), lab)
        return lab.to(torch.int32)
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    for user in g.ops:
        if op.id in user.operands and user.name == "least_squares" and user.operands[1] == op.id:
            ignore = float(user.attrs["ignore_value"])
            t = z.abs() + 0.5
            drop = torch.rand(shape, generator=gen) < 0.1
            return torch.where(drop, torch.full_like(t, ignore), t).to(dtype)
    return z.to(dtype)


def load_safetensors(path, torch):
    from safetensors.torch import load_file
    return load_file(path)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Build an rfn inference graph (rfnc compile --emit graph) in PyTorch and "
                    "time its forward pass on the CPU, or cross-check outputs.")
    ap.add_argument("graph", help="graph IR text from `rfnc compile FILE --emit graph`")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up (3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of random parameters/inputs (0)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--with-losses", action="store_true",
                    help="feed random labels/targets so that loss outputs are computed too")
    ap.add_argument("--outputs", default=None,
                    help="comma-separated output names to compute (default: every output "
                         "whose inputs are available)")
    ap.add_argument("--train-step", action="store_true",
                    help="time a training step instead: forward, the first loss output (random "
                         "labels), backward and an SGD momentum update of the convolutions' "
                         "weights and biases (batch norm frozen, as rfnc trains)")
    ap.add_argument("--compile", action="store_true",
                    help="run the forward pass through torch.compile (inductor); the warm-up "
                         "run compiles")
    ap.add_argument("--double", action="store_true", help="compute in float64")
    ap.add_argument("--weights", help="safetensors of parameters, by rfn.param name "
                                      "(e.g. from `rfnc weights`); missing ones are an error")
    ap.add_argument("--input-file", help="safetensors of inputs, by rfn.input name")
    ap.add_argument("--compare", help="safetensors of reference outputs, by output name: "
                                      "report the error of each and fail above --tol")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="largest max relative error --compare accepts (1e-4)")
    ap.add_argument("--save-outputs", help="write the computed outputs as safetensors")
    ap.add_argument("--save-weights", help="write the parameters used as safetensors")
    ap.add_argument("--save-input", help="write the inputs used as safetensors")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.double else torch.float32

    with open(args.graph) as f:
        text = f.read()
    try:
        g = parse_graph(text)
    except ParseError as e:
        sys.exit("torch_run_graph: %s: %s" % (args.graph, e))
    unsupported = sorted({op.name for op in g.ops if op.name not in SUPPORTED})
    if unsupported:
        sys.exit("torch_run_graph: %s: unsupported ops (not an inference graph?): %s"
                 % (args.graph, ", ".join("rfn." + u for u in unsupported)))

    weights = load_safetensors(args.weights, torch) if args.weights else None
    inputs_file = load_safetensors(args.input_file, torch) if args.input_file else None

    # Leaves: parameters and constants always; inputs when available.
    gen = torch.Generator().manual_seed(args.seed)
    leaf_values = {}
    missing_inputs = set()
    input_ops = [op for op in g.ops if op.name == "input"]
    image = next((op for op in input_ops if op.dtype == "f32" and len(op.shape) == 4),
                 input_ops[0] if input_ops else None)
    for op in g.ops:
        if op.name == "param":
            name = op.attrs["name"]
            if weights is not None:
                if name not in weights:
                    sys.exit("torch_run_graph: parameter %s is not in %s" % (name, args.weights))
                t = weights[name]
                if tuple(t.shape) != op.shape:
                    sys.exit("torch_run_graph: parameter %s has shape %s in %s, the graph "
                             "says %s" % (name, shape_str(tuple(t.shape)), args.weights,
                                          shape_str(op.shape)))
                t = t.to(dtype)
            else:
                t = random_param(op, gen, torch, dtype)
            leaf_values[op.id] = t
        elif op.name == "constant":
            leaf_values[op.id] = torch.tensor(float(op.attrs["value"]), dtype=dtype)
    for op in input_ops:
        name = op.attrs["name"]
        if inputs_file is not None and name in inputs_file:
            t = inputs_file[name]
            if tuple(t.shape) != op.shape:
                sys.exit("torch_run_graph: input %s has shape %s in %s, the graph says %s"
                         % (name, shape_str(tuple(t.shape)), args.input_file,
                            shape_str(op.shape)))
            leaf_values[op.id] = t.to(torch.int64 if op.dtype.startswith("i") else dtype)
        elif op is image or args.with_losses:
            leaf_values[op.id] = random_input(op, g, gen, torch, dtype)
        else:
            missing_inputs.add(op.id)

    # Which outputs can be computed?
    def deps_inputs(v, seen=None):
        seen = set() if seen is None else seen
        stack, found = [v], set()
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            o = g.by_id[x]
            if o.name == "input":
                found.add(x)
            stack.extend(o.operands)
        return found

    wanted = None if args.outputs is None else args.outputs.split(",")
    if wanted is not None:
        unknown = [w for w in wanted if w not in dict(g.outputs)]
        if unknown:
            sys.exit("torch_run_graph: no output named %s (outputs: %s)"
                     % (", ".join(unknown), ", ".join(n for n, _ in g.outputs)))
    outputs, skipped = [], []
    for name, vid in g.outputs:
        if wanted is not None and name not in wanted:
            continue
        lacking = deps_inputs(vid) & missing_inputs
        if lacking:
            skipped.append({"name": name, "needs": sorted(g.by_id[v].attrs["name"]
                                                          for v in lacking)})
        else:
            outputs.append((name, vid))
    if not outputs:
        sys.exit("torch_run_graph: no output can be computed (skipped: %s)"
                 % json.dumps(skipped))

    if args.train_step:
        losses = [(n, v) for n, v in outputs if g.by_id[v].shape == ()]
        if not losses:
            sys.exit("torch_run_graph: --train-step needs a scalar loss output (with "
                     "--with-losses)")
        outputs = losses[:1]
    runner = Runner(g, [v for _, v in outputs], torch, F)
    run_leaves = {op.id: leaf_values[op.id] for op in runner.leaves}

    if args.train_step:
        trained = set()
        for op in runner.compute:
            if op.name == "conv2d":
                trained.update(v for v in op.operands[1:] if g.by_id[v].name == "param")
        params = []
        for v in trained:
            run_leaves[v] = run_leaves[v].clone().requires_grad_(True)
            params.append(run_leaves[v])
        sgd = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)

        def step():
            sgd.zero_grad(set_to_none=True)
            loss = runner.run(run_leaves)[0]
            loss.backward()
            sgd.step()
            return [loss.detach()]

        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        results = step()  # warm-up
        warm = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            results = step()
            times.append(time.perf_counter() - t0)
        load_after = os.getloadavg()[0]
    else:
        run = torch.compile(runner.run) if args.compile else runner.run
        with torch.inference_mode():
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            if args.compile:
                results = run(run_leaves)  # warm-up: compiles
            else:
                results = run(run_leaves, check_shapes=True, by_id=g.by_id)  # warm-up
            warm = time.perf_counter() - t0
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                results = run(run_leaves)
                times.append(time.perf_counter() - t0)
            load_after = os.getloadavg()[0]

    from collections import Counter
    op_counts = Counter(op.name for op in runner.compute)
    report = {
        "network": g.name,
        "graph": args.graph,
        "input": shape_str(image.shape) if image is not None else None,
        "outputs": [{"name": n, "shape": shape_str(tuple(r.shape))}
                    for (n, _), r in zip(outputs, results)],
        "skipped_outputs": skipped,
        "ops_run": dict(sorted(op_counts.items())),
        "conv_gmacs": conv_macs(g, runner.compute) / 1e9,
        "dtype": "float64" if args.double else "float32",
        "params": "loaded" if weights is not None else "random(seed=%d)" % args.seed,
        "warmup_s": warm,
        "times_s": times,
        "median_s": statistics.median(times) if times else None,
        "min_s": min(times) if times else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": load_after,
    }
    for (n, _), r in zip(outputs, results):
        if r.dtype.is_floating_point and not bool(torch.isfinite(r).all()):
            report.setdefault("warnings", []).append("output %s has non-finite values" % n)

    failed = False
    if args.compare:
        ref = load_safetensors(args.compare, torch)
        cmp = []
        for (n, _), r in zip(outputs, results):
            if n not in ref:
                cmp.append({"name": n, "status": "not in %s" % args.compare})
                continue
            b = ref[n].to(torch.float64)
            a = r.to(torch.float64)
            if tuple(a.shape) != tuple(b.shape):
                cmp.append({"name": n, "status": "shape %s vs %s" % (
                    shape_str(tuple(a.shape)), shape_str(tuple(b.shape)))})
                failed = True
                continue
            diff = (a - b).abs()
            max_abs = float(diff.max()) if diff.numel() else 0.0
            scale = float(b.abs().max()) if b.numel() else 0.0
            rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
            ok = rel <= args.tol
            failed |= not ok
            cmp.append({"name": n, "max_abs_err": max_abs, "max_ref_abs": scale,
                        "max_rel_err": rel, "status": "ok" if ok else "FAIL"})
        report["compare"] = {"file": args.compare, "tol": args.tol, "outputs": cmp}

    if args.save_outputs or args.save_weights or args.save_input:
        from safetensors.torch import save_file
        if args.save_outputs:
            save_file({n: r.contiguous() for (n, _), r in zip(outputs, results)},
                      args.save_outputs)
        if args.save_weights:
            save_file({op.attrs["name"]: leaf_values[op.id].contiguous()
                       for op in g.ops if op.name == "param"}, args.save_weights)
        if args.save_input:
            save_file({op.attrs["name"]: leaf_values[op.id].contiguous()
                       for op in input_ops if op.id in leaf_values}, args.save_input)

    if args.json:
        print(json.dumps(report))
    else:
        print("network     %s (%s)" % (g.name, args.graph))
        print("input       %s" % report["input"])
        print("outputs     %s" % ", ".join("%s %s" % (o["name"], o["shape"])
                                          for o in report["outputs"]))
        for s in skipped:
            print("skipped     %s (needs input %s; --with-losses feeds random ones)"
                  % (s["name"], ", ".join(s["needs"])))
        print("ops run     %s" % ", ".join("%s %d" % kv for kv in report["ops_run"].items()))
        print("conv GMACs  %.2f" % report["conv_gmacs"])
        if times:
            print("%-11s median %.4f s, min %.4f s over %d runs (warm-up %.4f s)"
                  % ("train step" if args.train_step else "forward", report["median_s"], report["min_s"], len(times), warm))
        print("torch       %s, %d threads, %s" % (torch.__version__, report["threads"],
                                                 report["dtype"]))
        print("load avg    %.2f before, %.2f after (1 min)" % (load_before, load_after))
        for w in report.get("warnings", []):
            print("warning     %s" % w)
        if args.compare:
            for c in report["compare"]["outputs"]:
                if "max_rel_err" in c:
                    print("compare     %s: max abs err %.3e, max rel err %.3e (of max |ref| "
                          "%.3e) %s" % (c["name"], c["max_abs_err"], c["max_rel_err"],
                                        c["max_ref_abs"], c["status"]))
                else:
                    print("compare     %s: %s" % (c["name"], c["status"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
