#!/usr/bin/env python3
"""Checks an ONNX model written by `rfnc export` and runs it in ONNX Runtime (CPU).

    onnx_check.py MODEL.onnx [--input NAME=FILE.npy]... [--out DIR] [--bench N] [--threads T]

1. `onnx.checker.check_model(MODEL, full_check=True)`: the structure, the opset's rules
   and strict shape inference (a path, so external data is followed);
2. prints one JSON line: the opset, IR version, node op types, and each graph input and
   output with its element type and dims (a symbolic dim as its name);
3. with inputs, runs the model once in ONNX Runtime on the CPU and writes each output to
   DIR/NAME.npy (another JSON line lists them with their shapes);
4. with --bench N, runs it N more times and prints the median and every time in ms.

The Rust tests (tests/export.rs) call it with the Python and the packages that
scripts/setup.sh installs into .cache/onnx-py; tools/bench_onnx.sh uses --bench.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort


def describe(values):
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "elem_type": t.elem_type, "dims": dims})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    ap.add_argument("--out", metavar="DIR")
    ap.add_argument("--bench", type=int, default=0, metavar="N")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default, every core)")
    args = ap.parse_args()

    onnx.checker.check_model(args.model, full_check=True)
    model = onnx.load(args.model, load_external_data=False)
    print(json.dumps({
        "checker": "ok",
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "ir_version": model.ir_version,
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0],
        "op_types": sorted({n.op_type for n in model.graph.node}),
        "nodes": len(model.graph.node),
        "undocumented": sorted({n.op_type for n in model.graph.node if not n.doc_string}),
        "docs": {n.op_type: n.doc_string for n in reversed(model.graph.node)},
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
    }))
    if not args.input:
        return 0
    feeds = {}
    for item in args.input:
        name, _, path = item.partition("=")
        feeds[name] = np.load(path)
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, value in zip(names, results):
            np.save(os.path.join(args.out, name + ".npy"), value)
    print(json.dumps({"outputs": {n: list(v.shape) for n, v in zip(names, results)}}))
    if args.bench:
        times = []
        for _ in range(args.bench):
            start = time.perf_counter()
            session.run(names, feeds)
            times.append((time.perf_counter() - start) * 1e3)
        print(json.dumps({
            "bench_ms": {"median": statistics.median(times), "runs": [round(t, 1) for t in times]},
            "threads": args.threads or os.cpu_count(),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
