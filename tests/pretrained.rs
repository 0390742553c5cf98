//! Importing torchvision ResNet weights (`rfnc weights --from-torchvision`,
//! `rfnc_driver::pretrained`): ResNet-50's four taps against torchvision's own (the fixture
//! of tools/gen_torchvision_fixture.py), both backbones of the 2-scale example, and the
//! refusals (MSRA style, wrong shapes, missing tensors, other dtypes, no backbone).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{rfnc, stderr, stdout};
use rfnc_compiler::interp::{self, Real, Tensor, Value};
use rfnc_compiler::ir::Graph;
use rfnc_driver::pretrained::{import_torchvision, torchvision_to_rfnc, Imported, Mapped};
use rfnc_driver::{Error, Log, Network, Source};
use rfnc_runtime::Weights;

const TAPS_PROGRAM: &str = "tests/programs/resnet_taps.rfn";
const FIXTURE: &str = "tests/fixtures/torchvision/resnet50_taps.safetensors";
const TAPS: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];

// ----- the weight rule (tools/gen_torchvision_fixture.py states the same rule) -------------
//
//   fnv1a64(name)  = FNV-1a over the UTF-8 bytes: h = 0xcbf29ce484222325;
//                    for each byte b: h = (h ^ b) * 0x100000001b3   (mod 2^64)
//   splitmix64(z)  = z += 0x9e3779b97f4a7c15; z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
//                    z = (z ^ (z >> 27)) * 0x94d049bb133111eb; z ^ (z >> 31)   (mod 2^64)
//   u(name, i)     = (splitmix64(fnv1a64(name) ^ splitmix64(i)) >> 11) * 2^-53   in [0, 1)
//   s(name, i)     = 2 * u(name, i) - 1                                          in [-1, 1)
//
//   element i (row-major) of tensor `name`, computed in float64 and rounded to float32:
//     4-D `*.weight` (conv, OIHW):  s * sqrt(3 / fan_in),  fan_in = I * kh * kw
//                                   (uniform with std sqrt(1 / fan_in))
//     1-D `*.weight` (BN gamma):    1 + 0.25 * s      in [0.75, 1.25)
//     `*.bias` (BN beta, fc.bias):  0.1 * s
//     `*.running_mean`:             0.1 * s
//     `*.running_var`:              1 + 0.5 * s       in [0.5, 1.5)
//     2-D `fc.weight`:              s * sqrt(3 / fan_in),  fan_in = in_features
//     `*.num_batches_tracked`:      0 (int64; not used in eval mode)
//   the input, named `input`, shape [1, 3, 48, 48]: s(`input`, i), rounded to float32.

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// s(name, i): uniform in [-1, 1), exact in f64.
fn symmetric(key: u64, i: u64) -> f64 {
    let u = (splitmix64(key ^ splitmix64(i)) >> 11) as f64 * (-53f64).exp2();
    2.0 * u - 1.0
}

/// Every element of state_dict tensor `name` under the rule.
fn rule(name: &str, shape: &[u64]) -> Vec<f32> {
    let key = fnv1a64(name);
    let count: u64 = shape.iter().product();
    let fan_in: u64 = shape.iter().skip(1).product();
    let value = |s: f64| -> f64 {
        if name.ends_with(".running_var") {
            1.0 + 0.5 * s
        } else if name.ends_with(".running_mean") || name.ends_with(".bias") {
            0.1 * s
        } else if name.ends_with(".weight") && shape.len() == 1 {
            1.0 + 0.25 * s
        } else if name.ends_with(".weight") && matches!(shape.len(), 2 | 4) {
            s * (3.0 / fan_in as f64).sqrt()
        } else {
            panic!("no rule for `{name}` {shape:?}")
        }
    };
    (0..count)
        .map(|i| value(symmetric(key, i)) as f32)
        .collect()
}

// ----- torchvision's ResNet state_dict, for any width ---------------------------------------

/// One tensor of a safetensors file: name, dtype, shape, little-endian bytes.
struct FileTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

fn f32_tensor(name: &str, shape: &[u64], data: &[f32]) -> FileTensor {
    FileTensor {
        name: name.to_string(),
        dtype: "F32",
        shape: shape.to_vec(),
        bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The names and shapes of torchvision's `ResNet(Bottleneck, blocks)` state_dict with stem
/// width `width` (torchvision: 64), in its order, `num_batches_tracked` and `fc` included.
fn torchvision_shapes(width: u64, blocks: [usize; 4]) -> Vec<(String, Vec<u64>)> {
    let mut out: Vec<(String, Vec<u64>)> = vec![("conv1.weight".into(), vec![width, 3, 7, 7])];
    let bn = |out: &mut Vec<(String, Vec<u64>)>, p: &str, c: u64| {
        for k in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{p}.{k}"), vec![c]));
        }
        out.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    bn(&mut out, "bn1", width);
    let mut inplanes = width;
    for (s, &count) in blocks.iter().enumerate() {
        let planes = width << s;
        for i in 0..count {
            let p = format!("layer{}.{i}", s + 1);
            let ins = [inplanes, planes, planes];
            let outs = [planes, planes, 4 * planes];
            for (k, kernel) in [1, 3, 1].into_iter().enumerate() {
                let conv = format!("{p}.conv{}.weight", k + 1);
                out.push((conv, vec![outs[k], ins[k], kernel, kernel]));
                bn(&mut out, &format!("{p}.bn{}", k + 1), outs[k]);
            }
            if i == 0 {
                let down = format!("{p}.downsample.0.weight");
                out.push((down, vec![4 * planes, inplanes, 1, 1]));
                bn(&mut out, &format!("{p}.downsample.1"), 4 * planes);
            }
            inplanes = 4 * planes;
        }
    }
    out.push(("fc.weight".into(), vec![1000, inplanes]));
    out.push(("fc.bias".into(), vec![1000]));
    out
}

/// The state_dict under the rule: F32 tensors, `num_batches_tracked` as I64 zeros.
fn torchvision_state(width: u64, blocks: [usize; 4]) -> Vec<FileTensor> {
    torchvision_shapes(width, blocks)
        .into_iter()
        .map(|(name, shape)| {
            if name.ends_with("num_batches_tracked") {
                FileTensor {
                    name,
                    dtype: "I64",
                    shape,
                    bytes: vec![0; 8],
                }
            } else {
                f32_tensor(&name, &shape, &rule(&name, &shape))
            }
        })
        .collect()
}

const R50: [usize; 4] = [3, 4, 6, 3];
const R101: [usize; 4] = [3, 4, 23, 3];

/// Writes a safetensors file (header JSON, then the data in order).
fn write_safetensors(path: &Path, tensors: &[FileTensor]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.bytes.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text);
    for t in tensors {
        bytes.extend(&t.bytes);
    }
    std::fs::write(path, bytes).unwrap();
}

/// Reads the F64 tensors of a safetensors file (the fixture).
fn read_f64_safetensors(path: &Path) -> HashMap<String, (Vec<u64>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = HashMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(info["dtype"], "F64", "{name}");
        let shape = info["shape"].as_array().unwrap();
        let shape = shape.iter().map(|d| d.as_u64().unwrap()).collect();
        let [start, end] = [0, 1].map(|k| info["data_offsets"][k].as_u64().unwrap() as usize);
        let values = data[start..end]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.insert(name.clone(), (shape, values));
    }
    out
}

// ----- helpers ------------------------------------------------------------------------------

/// The forward graph of a program at `input` with `-D` settings.
fn network(file: &str, input: &str, defines: &[&str]) -> Graph {
    let source = Source {
        file: PathBuf::from(file),
        input: input.to_string(),
        defines: defines.iter().map(|d| d.to_string()).collect(),
    };
    match Network::elaborate(&source, &Log::default()) {
        Ok(n) => n.forward,
        Err(e) => panic!("{file}: {e:?}"),
    }
}

/// The rendered diagnostic of a user error.
fn user_error(result: Result<Imported, Error>) -> String {
    match result {
        Err(Error::User(d, sources)) => d.render(&sources),
        Err(Error::Internal(m)) => panic!("internal error: {m}"),
        Ok(_) => panic!("the import succeeded"),
    }
}

/// Runs the graph in the interpreter on `weights` and `image`; the outputs by name.
fn run<T: Real>(graph: &Graph, weights: &Weights, image: &[f32]) -> HashMap<String, Vec<f64>> {
    let mut feeds: HashMap<String, Value<T>> = HashMap::new();
    for (name, (dims, data)) in &weights.tensors {
        let values = data.iter().map(|&v| T::of(v as f64)).collect();
        feeds.insert(name.clone(), Value::Real(Tensor::new(dims.clone(), values)));
    }
    let image = image.iter().map(|&v| T::of(v as f64)).collect();
    feeds.insert(
        "image".into(),
        Value::Real(Tensor::new(vec![1, 3, 48, 48], image)),
    );
    let outputs = interp::run(graph, &feeds).expect("the interpreter runs");
    outputs
        .into_iter()
        .map(|(name, v)| (name, v.real().data.iter().map(|x| x.f64()).collect()))
        .collect()
}

// ----- ResNet-50 against torchvision --------------------------------------------------------

#[test]
fn resnet50_taps_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("resnet50.safetensors");
    write_safetensors(&file, &torchvision_state(64, R50));
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &[]);
    let imported = import_torchvision(&graph, &file, 0).expect("the import succeeds");
    assert_eq!(imported.backbones, ["backbone"]);
    assert_eq!(imported.imported.len(), 265);
    assert!(
        imported.initialised.is_empty(),
        "{:?}",
        imported.initialised
    );
    assert_eq!(imported.ignored.len(), 53 + 2, "num_batches_tracked and fc");

    let fixture = read_f64_safetensors(&root_path(FIXTURE));
    let key = fnv1a64("input");
    let image: Vec<f32> = (0..3 * 48 * 48).map(|i| symmetric(key, i) as f32).collect();
    let stored: Vec<f32> = fixture["input"].1.iter().map(|&v| v as f32).collect();
    assert_eq!(image, stored, "the rule's input differs from the fixture's");

    let f64_taps = run::<f64>(&graph, &imported.weights, &image);
    let f32_taps = run::<f32>(&graph, &imported.weights, &image);
    for tap in TAPS {
        let want = &fixture[tap].1;
        let (e64, e32) = (
            common::relative_error(&f64_taps[tap], want, 0.0),
            common::relative_error(&f32_taps[tap], want, 0.0),
        );
        eprintln!("{tap}: max relative error f64 {e64:.2e}, f32 {e32:.2e}");
        assert!(e64 < 1e-12, "{tap}: f64 relative error {e64}");
        assert!(e32 < 1e-4, "{tap}: f32 relative error {e32}");
    }
}

fn root_path(relative: &str) -> PathBuf {
    common::root().join(relative)
}

/// The comparison above can fail: the same weights in the MSRA style (placed by the name
/// mapping directly, since the import refuses that style) give other taps.
#[test]
fn the_fixture_tells_the_stride_styles_apart() {
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &["style=msra"]);
    let mut weights = Weights::default();
    for (name, shape) in torchvision_shapes(64, R50) {
        if let Mapped::Param(rest) = torchvision_to_rfnc(&name) {
            let data = rule(&name, &shape);
            weights
                .tensors
                .insert(format!("backbone.{rest}"), (shape, data));
        }
    }
    let fixture = read_f64_safetensors(&root_path(FIXTURE));
    let image: Vec<f32> = fixture["input"].1.iter().map(|&v| v as f32).collect();
    let taps = run::<f32>(&graph, &weights, &image);
    let e = common::relative_error(&taps["layer2"], &fixture["layer2"].1, 0.0);
    eprintln!("msra-style layer2: relative error {e:.2}");
    assert!(e > 0.1, "msra-style layer2 differs by only {e}");
}

// ----- refusals -----------------------------------------------------------------------------

/// A narrow torchvision-named ResNet-50 file in `dir`, after `edit`.
fn narrow_file(dir: &Path, blocks: [usize; 4], edit: impl FnOnce(&mut Vec<FileTensor>)) -> PathBuf {
    let mut tensors = torchvision_state(4, blocks);
    edit(&mut tensors);
    let path = dir.join("narrow.safetensors");
    write_safetensors(&path, &tensors);
    path
}

const NARROW: [&str; 1] = ["width=4"];

#[test]
fn an_msra_network_is_refused_with_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let file = narrow_file(dir.path(), R50, |_| {});
    let out = rfnc(&[
        "weights",
        TAPS_PROGRAM,
        "-D",
        "width=4",
        "-D",
        "style=msra",
        "--from-torchvision",
        file.to_str().unwrap(),
        "-o",
        dir.path().join("out.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("uses the MSRA stride style"), "{err}");
    assert!(err.contains("`backbone.layer2.unit0.conv1`"), "{err}");
    assert!(err.contains("-D style=torchvision"), "{err}");
    assert!(!dir.path().join("out.safetensors").exists());
}

#[test]
fn a_wrong_shape_and_a_missing_tensor_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let file = narrow_file(dir.path(), R50, |t| {
        let conv2 = t
            .iter_mut()
            .find(|t| t.name == "layer2.0.conv2.weight")
            .unwrap();
        *conv2 = f32_tensor("layer2.0.conv2.weight", &[8, 8, 1, 1], &[0.0; 64]);
        t.retain(|t| t.name != "layer3.1.bn2.running_var");
    });
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &NARROW);
    let err = user_error(import_torchvision(&graph, &file, 0));
    assert!(
        err.contains(&format!("`{}` does not fit the backbone", file.display())),
        "{err}"
    );
    assert!(
        err.contains("`layer2.0.conv2.weight` has shape [8, 8, 1, 1]; `backbone.layer2.unit0.conv2.weight` needs [8, 8, 3, 3]"),
        "{err}"
    );
    assert!(
        err.contains("`backbone.layer3.unit1.bn2.running_var` [16] is missing: the file has no `layer3.1.bn2.running_var`"),
        "{err}"
    );
    assert_eq!(err.matches("Note:").count(), 2, "{err}");
}

#[test]
fn a_deeper_file_lists_the_first_problems_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = narrow_file(dir.path(), R101, |_| {});
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &NARROW);
    let err = user_error(import_torchvision(&graph, &file, 0));
    // 17 more units of layer3, 15 tensors each (3 convs, 3 batch norms of 4)
    assert!(err.contains("... and 235 more"), "{err}");
    assert!(
        err.contains("which is not a parameter of the network"),
        "{err}"
    );
    assert!(err.contains("check `-D depth=...`"), "{err}");
}

#[test]
fn a_tensor_given_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = narrow_file(dir.path(), R50, |t| {
        t.push(f32_tensor(
            "layer1.unit0.conv1.weight",
            &[4, 4, 1, 1],
            &[0.0; 16],
        ));
    });
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &NARROW);
    let err = user_error(import_torchvision(&graph, &file, 0));
    assert!(
        err.contains("which another tensor of the file already gives"),
        "{err}"
    );
}

#[test]
fn an_integer_tensor_is_refused_by_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let file = narrow_file(dir.path(), R50, |t| {
        let bn = t.iter_mut().find(|t| t.name == "bn1.running_mean").unwrap();
        bn.dtype = "I64";
        bn.bytes = vec![0; 8 * 4];
    });
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &NARROW);
    let err = user_error(import_torchvision(&graph, &file, 0));
    assert!(err.contains("tensor `bn1.running_mean`"), "{err}");
    assert!(
        err.contains("is I64; --from-torchvision reads F32, F64, F16 and BF16"),
        "{err}"
    );
}

#[test]
fn a_network_without_a_backbone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("plain.rfn");
    std::fs::write(
        &program,
        "network plain {\n    input image: f32[N, 3, H, W];\n    output y = conv(image, 4, k = 3) as head;\n}\n",
    )
    .unwrap();
    let file = narrow_file(dir.path(), R50, |_| {});
    let graph = network(program.to_str().unwrap(), "1x3x16x16", &[]);
    let err = user_error(import_torchvision(&graph, &file, 0));
    assert!(
        err.contains("network `plain` has no ResNet backbone"),
        "{err}"
    );
}

// ----- what is imported, and from which tensor types ---------------------------------------

/// Values exact in F16 and BF16: the rule rounded to multiples of 1/64 in [-2, 2].
fn coarse(name: &str, shape: &[u64]) -> Vec<f32> {
    rule(name, shape)
        .iter()
        .map(|v| (v * 64.0).round() / 64.0)
        .collect()
}

/// The same values as F64, F16 or BF16 bytes.
fn encode(dtype: &'static str, values: &[f32]) -> Vec<u8> {
    let half = |v: f32| -> u16 {
        // exact for multiples of 1/64 below 2 (no rounding, no subnormals but 0)
        if v == 0.0 {
            return 0;
        }
        let bits = v.to_bits();
        let sign = (bits >> 16) as u16 & 0x8000;
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        sign | ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
    };
    match dtype {
        "F64" => values
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect(),
        "F16" => values.iter().flat_map(|&v| half(v).to_le_bytes()).collect(),
        "BF16" => values
            .iter()
            .flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        _ => unreachable!(),
    }
}

#[test]
fn float_types_are_widened_and_extra_tensors_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let types = ["F64", "F16", "BF16"];
    let mut expected = Vec::new();
    let file = narrow_file(dir.path(), R50, |tensors| {
        for (k, t) in tensors.iter_mut().filter(|t| t.dtype == "F32").enumerate() {
            let values = coarse(&t.name, &t.shape);
            t.dtype = types[k % 3];
            t.bytes = encode(t.dtype, &values);
            expected.push((t.name.clone(), values));
        }
    });
    let graph = network(TAPS_PROGRAM, "1x3x48x48", &NARROW);
    let imported = import_torchvision(&graph, &file, 0).expect("the import succeeds");
    assert_eq!(imported.ignored.len(), 55);
    let mut checked = 0;
    for (name, values) in expected {
        if let Mapped::Param(rest) = torchvision_to_rfnc(&name) {
            let got = &imported.weights.tensors[&format!("backbone.{rest}")].1;
            assert_eq!(got, &values, "{name}");
            checked += 1;
        }
    }
    assert_eq!(checked, 265);
}

#[test]
fn both_backbones_of_the_2scale_example_are_filled() {
    let dir = tempfile::tempdir().unwrap();
    let file = narrow_file(dir.path(), R50, |_| {});
    let out_path = dir.path().join("init.safetensors");
    let defines = [
        "depth=50",
        "base_width=4",
        "refine_width=8",
        "style=torchvision",
    ];
    let mut args = vec![
        "weights",
        "examples/refinenet4_2scale.rfn",
        "--input",
        "1x3x32x32",
    ];
    for d in &defines {
        args.extend(["-D", d]);
    }
    args.extend(["--seed", "3", "--from-torchvision", file.to_str().unwrap()]);
    args.extend(["-o", out_path.to_str().unwrap()]);
    let out = rfnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("imported 530 tensors (265 each) from ")
            && text.contains(
                " into backbone_large, backbone_small (ignored 55: fc.*, num_batches_tracked)"
            ),
        "{text}"
    );
    assert!(
        text.contains(
            "by the network's rules (seed 3): refine4.*, refine3.*, refine2.*, refine1.*, head.*"
        ),
        "{text}"
    );

    let written = rfnc_runtime::load_weights(&out_path).unwrap();
    let graph = network("examples/refinenet4_2scale.rfn", "1x3x32x32", &defines);
    rfnc_driver::weights::check_weights(&graph, &written).expect("every parameter, no other");
    let random = rfnc_driver::weights::init_weights(&graph, 3);
    for (name, shape) in torchvision_shapes(4, R50) {
        let Mapped::Param(rest) = torchvision_to_rfnc(&name) else {
            continue;
        };
        for scope in ["backbone_large", "backbone_small"] {
            let got = &written.tensors[&format!("{scope}.{rest}")];
            assert_eq!(got, &(shape.clone(), rule(&name, &shape)), "{scope}.{rest}");
        }
    }
    for (name, tensor) in &written.tensors {
        if !name.starts_with("backbone_") {
            assert_eq!(tensor, &random.tensors[name], "{name} is the seed's");
        }
    }
}
