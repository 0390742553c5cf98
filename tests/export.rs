//! `rfnc export`: every example, at a small size with perturbed random weights, exports to
//! an ONNX model that `onnx.checker` accepts (full check) and that ONNX Runtime runs with
//! the reference interpreter's results (relative 1e-4): both CRP orders, both bilinear
//! corner conventions, max-pool padding, folded and kept batch norm, `--argmax`,
//! `--dynamic-size` at other sizes, external data, the opsets at both ends, and the errors.
//!
//! ONNX and ONNX Runtime run in Python through `tools/onnx_check.py`, with the packages
//! that `scripts/setup.sh` installs into `.cache/onnx-py` (`RFNC_PYTHON`,
//! `RFNC_ONNX_PYTHONPATH` in `.cache/env.sh`); when they are missing the tests fail.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rfnc_compiler::interp::{self, Tensor, Value};
use rfnc_compiler::ir::{Graph, Op};
use rfnc_compiler::passes::canonical::inference;
use rfnc_compiler::rng::splitmix64;
use rfnc_runtime::{save_weights, Weights};
use serde_json::Value as Json;

/// A network to export: a `.rfn` file with its `--input` and `-D` settings.
#[derive(Clone)]
struct Net {
    file: PathBuf,
    input: Vec<u64>,
    defines: Vec<String>,
}

impl Net {
    /// An example at the small settings of the other end-to-end tests.
    fn example(name: &str, extra: &[&str]) -> Net {
        let mut defines: Vec<String> = small_defines(name)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        defines.extend(extra.iter().map(|d| d.to_string()));
        Net {
            file: example_path(name),
            input: SMALL_INPUT.to_vec(),
            defines,
        }
    }

    fn program(path: &str, input: &[u64]) -> Net {
        Net {
            file: PathBuf::from(path),
            input: input.to_vec(),
            defines: Vec::new(),
        }
    }

    fn at(&self, input: &[u64]) -> Net {
        Net {
            input: input.to_vec(),
            ..self.clone()
        }
    }

    fn input_text(&self) -> String {
        let dims: Vec<String> = self.input.iter().map(|d| d.to_string()).collect();
        dims.join("x")
    }

    fn forward(&self) -> Graph {
        let source = rfnc_driver::Source {
            file: self.file.clone(),
            input: self.input_text(),
            defines: self.defines.clone(),
        };
        let network = rfnc_driver::Network::elaborate(&source, &rfnc_driver::Log::default())
            .unwrap_or_else(|e| panic!("{}: {e:?}", self.file.display()));
        network.forward
    }

    /// `rfnc export FILE --input .. -D .. -o MODEL ARGS`.
    fn export(&self, model: &Path, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = vec![
            "export".into(),
            self.file.display().to_string(),
            "--input".into(),
            self.input_text(),
            "-o".into(),
            model.display().to_string(),
        ];
        for d in &self.defines {
            all.extend(["-D".to_string(), d.clone()]);
        }
        all.extend(args.iter().map(|a| a.to_string()));
        rfnc(&all)
    }
}

/// The Python that runs `tools/onnx_check.py`, with `onnx`, `onnxruntime` and `numpy`
/// importable; panics (the test fails) when they are not.
fn python() -> Command {
    let python = std::env::var("RFNC_PYTHON").unwrap_or_else(|_| "python3".into());
    let path = std::env::var("RFNC_ONNX_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".cache/onnx-py"));
    let mut cmd = Command::new(&python);
    cmd.env("PYTHONPATH", &path).current_dir(root());
    let probe = Command::new(&python)
        .env("PYTHONPATH", &path)
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output();
    match probe {
        Ok(o) if o.status.success() => cmd,
        Ok(o) => panic!(
            "onnx/onnxruntime are not importable from {} with {python}: {}\ninstall them with scripts/setup.sh (./dev test runs it) and source .cache/env.sh",
            path.display(),
            stderr(&o)
        ),
        Err(e) => panic!("cannot run {python}: {e}; scripts/setup.sh sets RFNC_PYTHON"),
    }
}

/// What `onnx_check.py` reported: the model's description and its outputs by name.
struct Checked {
    info: Json,
    outputs: HashMap<String, (Vec<u64>, Vec<f64>)>,
}

/// Checks `model` and runs it in ONNX Runtime on `image`.
fn check(model: &Path, image: &Tensor<f64>, dir: &Path) -> Checked {
    let input = dir.join("image.npy");
    write_npy(&input, &image.dims, &image.data);
    let out_dir = dir.join("outputs");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = python()
        .arg("tools/onnx_check.py")
        .arg(model)
        .arg("--input")
        .arg(format!("image={}", input.display()))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "onnx_check.py failed on {}:\n{}",
        model.display(),
        stderr(&out)
    );
    let text = stdout(&out);
    let info: Json = serde_json::from_str(text.lines().next().expect("a line")).unwrap();
    assert_eq!(info["checker"], "ok");
    let outputs = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, read_npy(&path))
        })
        .collect();
    Checked { info, outputs }
}

/// Perturbed random weights of `graph` (batch norm that is not the identity), rounded to
/// f32 as the weights file holds them.
fn weights(graph: &Graph) -> HashMap<String, Value<f64>> {
    let mut feeds = perturbed_feeds(graph);
    feeds.retain(|name, _| {
        graph
            .node_ids()
            .any(|id| matches!(&graph.node(id).op, Op::Param { name: n, .. } if n == name))
    });
    for v in feeds.values_mut() {
        if let Value::Real(t) = v {
            t.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
    }
    feeds
}

fn save(weights: &HashMap<String, Value<f64>>, path: &Path) {
    let mut w = Weights::default();
    for (name, v) in weights {
        let t = v.real();
        let data = t.data.iter().map(|&x| x as f32).collect();
        w.tensors.insert(name.clone(), (t.dims.clone(), data));
    }
    save_weights(path, &w).unwrap();
}

/// A random image in [-1, 1), exact in f32.
fn image(dims: &[u64], seed: u64) -> Tensor<f64> {
    let n: u64 = dims.iter().product();
    let data = (0..n)
        .map(|i| ((splitmix64(seed * 1_000_003 + i) >> 40) as f64 / (1u64 << 23) as f64) - 1.0)
        .collect();
    Tensor::new(dims.to_vec(), data)
}

/// The interpreter's outputs of the inference graph of `forward`.
fn reference(
    forward: &Graph,
    weights: &HashMap<String, Value<f64>>,
    image: &Tensor<f64>,
) -> Vec<(String, Value<f64>)> {
    let mut feeds = weights.clone();
    feeds.insert("image".into(), Value::Real(image.clone()));
    interp::run(&inference(forward), &feeds).expect("the interpreter runs")
}

/// Every output the interpreter gives is in `got` with its shape and within 1e-4.
fn assert_matches(what: &str, got: &Checked, want: &[(String, Value<f64>)]) {
    for (name, value) in want {
        let t = value.real();
        let (dims, data) = got
            .outputs
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no output `{name}` from onnxruntime"));
        assert_eq!(dims, &t.dims, "{what}: shape of `{name}`");
        let error = relative_error(data, &t.data, 1e-6);
        assert!(
            error < 1e-4,
            "{what}: `{name}` differs from the interpreter by {error:e} (relative)"
        );
    }
}

/// Exports `net` with perturbed weights (and `args`), runs it on a random image and
/// compares with the interpreter; returns what the check reported.
fn export_and_compare(what: &str, net: &Net, args: &[&str]) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let forward = net.forward();
    let w = weights(&forward);
    let wpath = dir.path().join("w.safetensors");
    save(&w, &wpath);
    let model = dir.path().join("model.onnx");
    let mut all = vec!["--weights", wpath.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = net.export(&model, &all);
    assert!(
        out.status.success(),
        "{what}: export failed: {}",
        stderr(&out)
    );
    let img = image(&net.input, 1);
    let got = check(&model, &img, dir.path());
    assert_matches(what, &got, &reference(&forward, &w, &img));
    assert_eq!(got.info["undocumented"], serde_json::json!([]), "{what}");
    got
}

#[test]
fn every_example_runs_in_onnxruntime_as_in_the_interpreter() {
    let mut nets: Vec<(String, Net)> = EXAMPLES
        .iter()
        .map(|e| (e.to_string(), Net::example(e, &[])))
        .collect();
    for e in ["tiny", "refinenet4"] {
        let net = Net::example(e, &["crp_order=conv_pool"]);
        nets.push((format!("{e} (conv_pool)"), net));
    }
    for (what, net) in &nets {
        let got = export_and_compare(what, net, &[]);
        // Batch norm folded into the convs, no dropout, nothing else.
        let ops = &got.info["op_types"];
        let want = serde_json::json!(["Add", "Conv", "MaxPool", "Relu", "Resize"]);
        assert_eq!(ops, &want, "{what}");
        let conv = got.info["docs"]["Conv"].as_str().unwrap();
        assert!(
            conv.contains(".rfn:"),
            "{what}: a conv's doc string: {conv}"
        );
        assert_eq!(got.info["opset"], 17, "{what}");
        assert_eq!(got.info["inputs"][0]["name"], "image", "{what}");
    }
}

#[test]
fn resize_conventions_max_pool_padding_and_conv_attributes() {
    let net = Net::program("tests/programs/export_ops.rfn", &[2, 3, 9, 7]);
    let got = export_and_compare("export_ops", &net, &[]);
    let ops = got.info["op_types"].as_array().unwrap();
    // The batch norm after an add cannot be folded; `same` is the input itself.
    assert!(ops.contains(&"BatchNormalization".into()), "{ops:?}");
    assert!(ops.contains(&"Identity".into()), "{ops:?}");
    assert!(got.outputs["one"].0 == [2, 6, 1, 1]);
}

/// The variant ops (concat, mul with broadcast gates, sigmoid, average and global average
/// pooling with both padding conventions) and the variant examples: the weighted
/// objectives' extra heads are left out, the user's gated fusion exports as it computes.
#[test]
fn variant_ops_and_examples_run_in_onnxruntime() {
    let attention = Net::program("tests/programs/attention.rfn", &[1, 3, 32, 32]);
    let got = export_and_compare("attention", &attention, &[]);
    let ops = got.info["op_types"].as_array().unwrap();
    for op in [
        "Concat",
        "Mul",
        "Sigmoid",
        "AveragePool",
        "GlobalAveragePool",
    ] {
        assert!(ops.contains(&op.into()), "{op} in {ops:?}");
    }
    for e in [
        "refinenet4_multitask",
        "refinenet4_deepsup",
        "refinenet4_gated",
    ] {
        export_and_compare(e, &Net::example(e, &[]), &[]);
    }
}

#[test]
fn batch_norm_can_be_kept_and_opsets_13_and_21_are_written() {
    let tiny = Net::example("tiny", &[]);
    let kept = export_and_compare("tiny --keep-batch-norm", &tiny, &["--keep-batch-norm"]);
    let ops = kept.info["op_types"].as_array().unwrap();
    assert!(ops.contains(&"BatchNormalization".into()), "{ops:?}");
    for (opset, ir) in [("13", 7), ("21", 10)] {
        let got = export_and_compare(&format!("opset {opset}"), &tiny, &["--opset", opset]);
        assert_eq!(got.info["opset"].to_string(), opset);
        assert_eq!(got.info["ir_version"], ir);
    }
}

#[test]
fn argmax_gives_the_class_of_each_pixel() {
    let net = Net::example("tiny", &[]).at(&[2, 3, 32, 32]);
    let got = export_and_compare("tiny --argmax", &net, &["--argmax"]);
    let (sdims, scores) = &got.outputs["scores"];
    let (adims, classes) = &got.outputs["scores_argmax"];
    assert_eq!(adims, &[sdims[0], sdims[2], sdims[3]]);
    let (c, plane) = (sdims[1] as usize, (sdims[2] * sdims[3]) as usize);
    let scale = scores.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for n in 0..sdims[0] as usize {
        for p in 0..plane {
            let at = |k: usize| scores[(n * c + k) * plane + p];
            let best = (0..c).map(at).fold(f64::MIN, f64::max);
            let k = classes[n * plane + p] as usize;
            assert!(
                k < c && at(k) >= best - 1e-5 * scale,
                "pixel {n},{p}: class {k}"
            );
        }
    }
    assert_eq!(got.info["outputs"][1]["elem_type"], 7, "int64");
}

#[test]
fn dynamic_sizes_run_at_other_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Net::example("tiny", &[]);
    let w = weights(&tiny.forward());
    let wpath = dir.path().join("w.safetensors");
    save(&w, &wpath);
    let model = dir.path().join("tiny.onnx");
    let args = ["--weights", wpath.to_str().unwrap(), "--dynamic-size"];
    let out = tiny.export(&model, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "nothing stays fixed: {}",
        stderr(&out)
    );
    for (k, dims) in [[1, 3, 32, 32], [2, 3, 45, 37], [1, 3, 64, 24]]
        .iter()
        .enumerate()
    {
        let img = image(dims, k as u64 + 3);
        let got = check(&model, &img, dir.path());
        let what = format!("tiny --dynamic-size at {dims:?}");
        assert_matches(&what, &got, &reference(&tiny.at(dims).forward(), &w, &img));
        let input = &got.info["inputs"][0]["dims"];
        assert_eq!(input, &serde_json::json!(["N", 3, "H", "W"]), "{what}");
    }
    // `rescale` computes sizes from the input at elaboration: H and W stay, N does not.
    let two = Net::example("refinenet4_2scale", &[]);
    let w = weights(&two.forward());
    save(&w, &wpath);
    let out = two.export(&model, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("H and W stay 32x32")
            && stderr(&out).contains("refinenet4_2scale.rfn:"),
        "{}",
        stderr(&out)
    );
    let img = image(&[3, 3, 32, 32], 9);
    let got = check(&model, &img, dir.path());
    let input = &got.info["inputs"][0]["dims"];
    assert_eq!(input, &serde_json::json!(["N", 3, 32, 32]));
    let want = reference(&two.at(&[3, 3, 32, 32]).forward(), &w, &img);
    assert_matches("2-scale at N = 3", &got, &want);
}

#[test]
fn external_data_lies_beside_the_model_and_exports_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Net::example("tiny", &[]);
    let inline = dir.path().join("inline.onnx");
    let again = dir.path().join("again.onnx");
    for path in [&inline, &again] {
        let out = tiny.export(path, &["--init-seed", "4"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        std::fs::read(&inline).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let got = export_and_compare("tiny --external-data", &tiny, &["--external-data"]);
    assert_eq!(got.info["checker"], "ok");
    let model = dir.path().join("nested/split.onnx");
    let out = tiny.export(&model, &["--init-seed", "4", "--external-data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("external data:"), "{}", stdout(&out));
    let data = dir.path().join("nested/split.onnx.data");
    let (small, big) = (len(&model), len(&data));
    assert!(small < 64 * 1024 && big > len(&inline) / 2, "{small} {big}");
    // The same model either way.
    let img = image(&tiny.input, 2);
    let a = check(&inline, &img, dir.path()).outputs;
    let b = check(&model, &img, dir.path()).outputs;
    assert_eq!(a["scores"], b["scores"]);
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn errors_name_the_file_or_the_op() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    let tiny = Net::example("tiny", &[]);
    let refused = |out: std::process::Output, says: &str| {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(says),
            "wanted `{says}` in:\n{}",
            stderr(&out)
        );
        assert!(!model.exists(), "nothing is written on an error");
    };
    refused(
        tiny.export(&model, &["--weights", "no/such.safetensors"]),
        "no/such.safetensors",
    );
    let other = dir.path().join("other.safetensors");
    save(&weights(&Net::example("refinenet1", &[]).forward()), &other);
    refused(
        tiny.export(&model, &["--weights", other.to_str().unwrap()]),
        "does not fit network `tiny`",
    );
    refused(tiny.export(&model, &[]), "--weights");
    refused(
        tiny.export(&model, &["--init-seed", "0", "--opset", "12"]),
        "--opset",
    );
    let depth = Net::example("refinenet4_depth", &[]);
    refused(
        depth.export(&model, &["--init-seed", "0", "--argmax"]),
        "--argmax: no output holds class scores",
    );
    let loss = Net::program("tests/programs/export_loss_output.rfn", &[1, 3, 8, 8]);
    let out = loss.export(&model, &["--init-seed", "0"]);
    let text = stderr(&out);
    refused(
        out,
        "`rfn.least_squares` (at tests/programs/export_loss_output.rfn:10:20",
    );
    assert!(
        text.contains("output error = least_squares(pred, target);"),
        "{text}"
    );
}

#[test]
fn help_describes_the_command() {
    let out = rfnc(&["export", "--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for flag in [
        "--weights",
        "--init-seed",
        "--opset",
        "--dynamic-size",
        "--argmax",
        "--keep-batch-norm",
        "--external-data",
        "-o, --output",
    ] {
        assert!(text.contains(flag), "`{flag}` in:\n{text}");
    }
    let top = stdout(&rfnc(&["--help"]));
    assert!(top.contains("export"), "{top}");
}

/// Writes a little-endian f32 `.npy` file (version 1.0).
fn write_npy(path: &Path, dims: &[u64], data: &[f64]) {
    let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for &v in data {
        bytes.extend_from_slice(&(v as f32).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Reads a C-order `.npy` file of little-endian f32 or i64 (as onnxruntime's outputs are).
fn read_npy(path: &Path) -> (Vec<u64>, Vec<f64>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let dims = shape[..shape.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let body = &bytes[start + len..];
    let data = if header.contains("'<f4'") {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else if header.contains("'<i8'") {
        body.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    } else {
        panic!("{}: unexpected dtype in {header}", path.display())
    };
    (dims, data)
}
