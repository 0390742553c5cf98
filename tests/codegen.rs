//! Code generation end to end: every example, the variant examples and
//! `tests/programs/attention.rfn`, for
//! inference and for the training step, is compiled by `rfnc compile` to a bundle (MLIR ->
//! LLVM -> PTX and host code) that the CPU executor runs twice: in the CPU's schedule
//! (convolutions as packed GEMMs) and in the GPU's (the GPU kernels, proved without a
//! GPU); both match the reference interpreter on the unplanned, unfused graph. Every emitted MLIR module passes
//! `mlir-opt-22`, every PTX module assembles with `ptxas` for sm_80 and sm_90 without
//! spills, and the MLIR of representative kernels is snapshot-tested.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use rfnc_compiler::interp::{Precision, Value};
use rfnc_compiler::passes::canonical::inference;
use rfnc_runtime::{load_bundle, Device, Session};

const SMALL: &str = "1x3x32x32";

/// `rfnc compile` with the example's small settings and `extra` arguments.
fn compile(example: &str, extra: &[&str]) -> std::process::Output {
    compile_file(
        &example_path(example),
        &small_defines(example),
        SMALL,
        extra,
    )
}

/// `rfnc compile FILE` at the small input with `defines` and `extra` arguments.
fn compile_file(
    path: &Path,
    defines: &[(&str, &str)],
    input: &str,
    extra: &[&str],
) -> std::process::Output {
    let path = path.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["compile".into(), path, "--input".into(), input.into()];
    for (k, v) in defines {
        args.push("-D".into());
        args.push(format!("{k}={v}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = rfnc(&args);
    assert!(
        out.status.success(),
        "rfnc {}: {}",
        args.join(" "),
        stderr(&out)
    );
    out
}

fn bundle(example: &str, train: bool, dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let mut extra = vec!["-o", dir.as_str()];
    if train {
        extra.push("--train");
    }
    compile(example, &extra);
}

/// The CPU's schedule, and the GPU's kernels run by the CPU.
const CPU_SCHEDULES: [Device; 2] = [
    Device::Cpu { threads: 2 },
    Device::CpuGpuKernels { threads: 2 },
];

/// Checks the bundle in `dir` on both CPU schedules against the interpreter.
fn assert_bundle_matches(what: &str, graph: &rfnc_compiler::ir::Graph, dir: &Path) {
    let loaded = load_bundle(dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        loaded.bundle.main.host.is_some(),
        "{what}: the bundle has no CPU schedule"
    );
    let feeds = perturbed_feeds(graph);
    for device in CPU_SCHEDULES {
        // The CPU's own schedule multiplies in f32; the GPU's kernels in the bundle's
        // precision (TF32: against the interpreter on TF32-rounded operands).
        let precision = match device {
            Device::CpuGpuKernels { .. } => loaded.bundle.precision,
            _ => Precision::F32,
        };
        let expected = reference_outputs(graph, &feeds, loaded.bundle.mode, precision);
        let actual = run_bundle(dir, device, &feeds);
        let what = format!("{what} on {device} ({})", precision.name());
        assert_outputs_match_in(&what, (loaded.bundle.mode, precision), &actual, &expected);
    }
}

/// Runs a bundle on `device` with `feeds` and returns every output.
fn run_bundle(
    dir: &Path,
    device: Device,
    feeds: &HashMap<String, Value<f64>>,
) -> HashMap<String, Vec<f64>> {
    let loaded = load_bundle(dir).unwrap_or_else(|e| panic!("{e}"));
    let mut session = Session::new(&loaded, device).unwrap();
    set_feeds(&mut session, feeds);
    session.prepare().unwrap();
    session.run().unwrap();
    outputs_of(&session)
}

/// Sets every leaf of the session's bundle that `feeds` has.
fn set_feeds(session: &mut Session, feeds: &HashMap<String, Value<f64>>) {
    for leaf in session.bundle().leaves.clone() {
        match feeds.get(&leaf.name) {
            Some(Value::Real(t)) => {
                let data: Vec<f32> = t.data.iter().map(|&v| v as f32).collect();
                session.set_leaf_f32(&leaf.name, &data).unwrap();
            }
            Some(Value::Int(t)) => session.set_leaf_i32(&leaf.name, &t.data).unwrap(),
            None => {}
        }
    }
}

/// Every output of the session's last run.
fn outputs_of(session: &Session) -> HashMap<String, Vec<f64>> {
    session
        .bundle()
        .main
        .outputs
        .iter()
        .map(|o| {
            let t = session.output(&o.name).unwrap();
            (
                o.name.clone(),
                t.as_f32()
                    .expect("f32 output")
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn cpu_executor_matches_the_interpreter_for_every_example() {
    let tmp = tempfile::tempdir().unwrap();
    for example in EXAMPLES {
        let (forward, step) = small_graphs(example);
        // Inference: the interpreter on the unfolded, unfused inference graph.
        let dir = tmp.path().join(format!("{example}-inference"));
        bundle(example, false, &dir);
        let what = format!("{example} inference");
        assert_bundle_matches(&what, &inference(&forward), &dir);
        // The training step: loss, updated parameters and momentum.
        let dir = tmp.path().join(format!("{example}-train"));
        bundle(example, true, &dir);
        let what = format!("{example} training step");
        assert_bundle_matches(&what, &step, &dir);
    }
}

/// `tests/programs/attention.rfn` (concat, mul with broadcast gates, sigmoid, average and
/// global average pooling, and their gradients) and the variant examples (multi-task and
/// deeply supervised objectives, a user's attention-gated fusion): the CPU executor matches
/// the interpreter for inference and the training step, the PTX for sm_80 assembles
/// without spills, and the emitted MLIR passes mlir-opt.
#[test]
fn variant_programs_compile_and_run_on_the_cpu() {
    check_program(
        Path::new("tests/programs/attention.rfn"),
        &[],
        SMALL,
        "tf32",
    );
    for example in [
        "refinenet4_multitask",
        "refinenet4_deepsup",
        "refinenet4_gated",
    ] {
        check_program(
            &example_path(example),
            &small_defines(example),
            SMALL,
            "tf32",
        );
    }
}

/// `tests/programs/conv_geometry.rfn` at batch 2 and odd sizes: strided, dilated, grouped,
/// padded and pointwise convolutions (with prologues and bias) and their gradients, in both
/// CPU schedules; and `tests/programs/winograd.rfn`'s 3x3 convolutions on planes large
/// enough for F(4x4, 3x3).
#[test]
fn every_conv_geometry_runs_in_both_cpu_schedules() {
    let path = Path::new("tests/programs/conv_geometry.rfn");
    for precision in ["tf32", "bf16", "f32"] {
        check_program(path, &[], "2x3x17x11", precision);
    }
    // Planes large enough for F(4x4, 3x3), with partial tiles.
    check_program(
        Path::new("tests/programs/winograd.rfn"),
        &[],
        "2x3x67x61",
        "f32",
    );
}

/// The CPU's packed weights (Winograd filters transformed once, when the weights change)
/// follow the parameters: a session given new weights between two runs matches the
/// interpreter on the new weights (stale packed filters would give the old ones' output).
#[test]
fn packed_weights_follow_new_weights() {
    let path = Path::new("tests/programs/conv_geometry.rfn");
    let input = "2x3x17x11";
    let source = rfnc_driver::Source {
        file: path.to_path_buf(),
        input: input.into(),
        defines: Vec::new(),
    };
    let log = rfnc_driver::Log::default();
    let graph = inference(
        &rfnc_driver::Network::elaborate(&source, &log)
            .unwrap()
            .forward,
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    compile_file(path, &[], input, &["-o", dir.to_str().unwrap()]);
    let loaded = load_bundle(&dir).unwrap_or_else(|e| panic!("{e}"));
    let host = loaded.bundle.main.host.as_ref().unwrap();
    assert!(
        !host.pack.is_empty(),
        "conv_geometry's 3x3 filters are packed"
    );
    let first = perturbed_feeds(&graph);
    // Other weights: every parameter negated, halved and shifted; the same inputs.
    let params: Vec<&str> = loaded
        .bundle
        .leaves
        .iter()
        .filter(|l| l.role == rfnc_bundle::LeafRole::Param)
        .map(|l| l.name.as_str())
        .collect();
    let mut second = first.clone();
    for (name, value) in second.iter_mut() {
        if let (true, Value::Real(t)) = (params.contains(&name.as_str()), value) {
            t.data.iter_mut().for_each(|v| *v = 0.01 - 0.5 * *v);
        }
    }
    let mut session = Session::new(&loaded, Device::Cpu { threads: 2 }).unwrap();
    for feeds in [&first, &second] {
        // `run` prepares (folds, packs) first whenever a parameter changed.
        set_feeds(&mut session, feeds);
        session.run().unwrap();
        let expected =
            reference_outputs(&graph, feeds, rfnc_bundle::Mode::Inference, Precision::F32);
        assert_outputs_match_in(
            "conv_geometry with new weights",
            (rfnc_bundle::Mode::Inference, Precision::F32),
            &outputs_of(&session),
            &expected,
        );
    }
}

/// The Winograd transforms' loops over at least 16 tiles inside the plane, and the max
/// pool row passes' loops over at least 16 columns whose windows lie inside the row, carry
/// the hint that makes LLVM vectorise them (`llvm.loop.vectorize.enable` once lowered);
/// the edges' loops do not. The max pool gradients' winner searches (no edges) are hinted
/// whole, and so are the loops over rows of the epilogues, stored operands and elementwise
/// kernels.
#[test]
fn host_transforms_and_pool_rows_ask_for_vectorised_loops() {
    let path = Path::new("tests/programs/conv_geometry.rfn");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("host.mlir");
    let file_arg = file.to_string_lossy().into_owned();
    // Wide enough that some loops have the 16 tiles a vectorised loop needs; the training
    // step and inference (whose convolutions store their pooled operands).
    let mut text = String::new();
    for mode in [&["--train"][..], &[]] {
        let mut emit = vec!["--emit", "mlir-host", "-o", &file_arg];
        emit.extend(mode);
        compile_file(path, &[], "1x3x40x160", &emit);
        text += &std::fs::read_to_string(&file).unwrap();
    }
    // 16 channels: rows of filters long enough for the filter transforms' loops.
    let wide = tmp.path().join("wide.rfn");
    std::fs::write(
        &wide,
        "network wide {\n    input image: f32[N, 16, H, W];\n    input labels: i32[N, H, W];\n    \
         let a = relu(conv(image, 16, k = 3, pad = 1) as a);\n    \
         output scores = conv(a, 16, k = 3, pad = 1) as b;\n    \
         objective loss = softmax_cross_entropy(scores, labels);\n}\n",
    )
    .unwrap();
    let emit = ["--emit", "mlir-host", "-o", &file_arg, "--train"];
    compile_file(&wide, &[], "1x16x40x40", &emit);
    text += &std::fs::read_to_string(&file).unwrap();
    let hint = "} {loop_annotation = #llvm.loop_annotation<vectorize = <disable = false, \
                width = 8 : i32>>}";
    // The data transforms: one thread per plane, its column and row passes hinted (every
    // plane here is wide enough); the filter transforms: a loop per row of filters (the
    // wide program's; conv_geometry's rows are too short); the pool rows: a loop per row;
    // the channel sums: their runs of 16 partial sums.
    for (step, fewest) in [
        ("host_winograd_input", 2),
        ("host_winograd_output", 2),
        ("host_winograd_grad_output", 2),
        ("host_winograd_filter", 0),
        ("host_winograd_grad_filter", 0),
        ("host_pool_rows", 0),
        ("host_channel_sum", 1),
    ] {
        let kernels: Vec<&str> = text
            .split("// kernel ")
            .filter(|k| k.starts_with(step))
            .collect();
        assert!(!kernels.is_empty(), "no {step} kernel");
        let mut hinted = 0;
        for kernel in kernels {
            let (hints, loops) = (
                kernel.matches(hint).count(),
                kernel.matches("scf.for").count(),
            );
            assert!(hints < loops, "{step}: {hints} of {loops} loops hinted");
            assert!(
                hints >= fewest,
                "{step}: {hints} loops hinted, not {fewest}"
            );
            hinted += hints;
        }
        assert!(hinted > 0, "no {step} loop hinted");
    }
    // The losses sum rows on every worker, then the rows' sums.
    for step in ["host_loss_rows", "host_loss_sum"] {
        assert!(
            text.contains(&format!("// kernel {step}")),
            "no {step} kernel"
        );
    }
    // The max pool gradients' winner searches have no edges: their one loop over output
    // columns is hinted (the others are the host's loops over blocks and threads).
    let winners: Vec<&str> = text
        .split("// kernel ")
        .filter(|k| k.starts_with("host_pool_winners"))
        .collect();
    assert!(!winners.is_empty(), "no host_pool_winners kernel");
    for kernel in winners {
        assert_eq!(kernel.matches(hint).count(), 1, "host_pool_winners: hints");
    }
    // The convolutions' epilogues and stored operands, and the CPU's own elementwise
    // kernels, run one thread per row of at least 16 columns looping over it, hinted (a
    // weight gradient's rows of 3 stay one thread per element, unhinted).
    for step in ["host_epilogue", "host_operand"] {
        let hints: Vec<usize> = text
            .split("// kernel ")
            .filter(|k| k.starts_with(step))
            .map(|k| k.matches(hint).count())
            .collect();
        assert!(hints.iter().all(|&h| h <= 1), "{step}: hints {hints:?}");
        assert!(hints.contains(&1), "{step}: no kernel loops over rows");
    }
    let rows = text
        .split("// kernel ")
        .filter(|k| !k.starts_with("host_") && !k.starts_with("conv2d") && k.contains(hint))
        .count();
    assert!(rows > 0, "no elementwise kernel loops over rows");
}

/// Compiles a program (inference and training step, the GPU's convolutions in `precision`),
/// checks its bundles against the interpreter in both CPU schedules, that ptxas reports no
/// spills, and its MLIR with mlir-opt.
fn check_program(path: &Path, defines: &[(&str, &str)], input: &str, precision: &str) {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let source = rfnc_driver::Source {
        file: path.to_path_buf(),
        input: input.into(),
        defines: defines.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    };
    let log = rfnc_driver::Log::default();
    let network = rfnc_driver::Network::elaborate(&source, &log).unwrap();
    let step = network
        .train_step(&rfnc_driver::TrainSettings::default(), &log)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for train in [false, true] {
        let dir = tmp.path().join(format!("{name}-{train}"));
        let dir_arg = dir.to_string_lossy().into_owned();
        let mut extra = vec![
            "-o",
            dir_arg.as_str(),
            "--ptx-report",
            "--precision",
            precision,
        ];
        if train {
            extra.push("--train");
        }
        let report = stdout(&compile_file(path, defines, input, &extra));
        assert_eq!(spilling(&report), 0, "{name} (train: {train}):\n{report}");
        let (what, graph) = if train {
            (format!("{name} training step"), step.clone())
        } else {
            (format!("{name} inference"), inference(&network.forward))
        };
        assert_bundle_matches(&what, &graph, &dir);
        for emit in ["mlir", "mlir-host"] {
            let file = tmp.path().join(format!("{name}-{train}-{emit}.mlir"));
            let file_arg = file.to_string_lossy().into_owned();
            let mut extra = vec!["--emit", emit, "-o", file_arg.as_str()];
            if train {
                extra.push("--train");
            }
            compile_file(path, defines, input, &extra);
            let out = std::process::Command::new(mlir_opt())
                .arg("--split-input-file")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name} {emit}: mlir-opt: {}",
                stderr(&out)
            );
        }
    }
}

/// Splits `--emit mlir` output into (header, module) pairs.
fn kernels(text: &str) -> Vec<(String, String)> {
    text.split("// -----")
        .map(|chunk| {
            let chunk = chunk.trim();
            let (header, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
            (header.to_string(), body.to_string())
        })
        .collect()
}

#[test]
fn emitted_mlir_passes_mlir_opt() {
    let mlir_opt = mlir_opt();
    let tmp = tempfile::tempdir().unwrap();
    for example in ["tiny", "refinenet4", "refinenet4_depth"] {
        for train in [false, true] {
            for emit in ["mlir", "mlir-host"] {
                let file = tmp.path().join(format!("{example}-{train}-{emit}.mlir"));
                let file_arg = file.to_string_lossy().into_owned();
                let mut extra = vec!["--emit", emit, "-o", file_arg.as_str()];
                if train {
                    extra.push("--train");
                }
                compile(example, &extra);
                let out = std::process::Command::new(&mlir_opt)
                    .arg("--split-input-file")
                    .arg(&file)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{example} {emit} (train: {train}): mlir-opt: {}",
                    stderr(&out)
                );
            }
        }
    }
}

/// The `N kernels spill registers` line of `--ptx-report`.
fn spilling(report: &str) -> usize {
    report
        .lines()
        .find_map(|l| l.strip_suffix(" kernels spill registers"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no spill summary in:\n{report}"))
}

/// Every PTX module of every example, inference and training step, assembles for sm_80 and
/// sm_90 without spills; and the static proof of the tensor-core kernels (no GPU needed):
/// in the machine code (SASS, by `nvdisasm`) every convolution kernel multiplies with
/// `HMMA` instructions, receives its plain operands by `LDGSTS` (cp.async) and waits for
/// them, and keeps everything in registers (no `LDL`/`STL` local-memory traffic). With `--precision bf16` they use the BF16 tensor-core instruction, with
/// `--precision f32` none does.
#[test]
fn every_ptx_module_assembles_without_spills_and_convolutions_use_tensor_cores() {
    // rfnc finds ptxas where the set-up put it; without one --ptx-report fails the test.
    let tmp = tempfile::tempdir().unwrap();
    // Kernels are named by a hash of their code: each distinct one is disassembled once.
    let mut convolutions = HashMap::new();
    for example in EXAMPLES {
        for train in [false, true] {
            for gpu in ["sm_80", "sm_90"] {
                let dir = tmp.path().join(format!("{example}-{train}-{gpu}"));
                let dir_arg = dir.to_string_lossy().into_owned();
                let mut extra = vec!["-o", dir_arg.as_str(), "--gpu", gpu, "--ptx-report"];
                if train {
                    extra.push("--train");
                }
                let out = compile(example, &extra);
                let report = stdout(&out);
                assert_eq!(
                    spilling(&report),
                    0,
                    "{example} (train: {train}) on {gpu}:\n{report}"
                );
                let ptx = std::fs::read_dir(dir.join("kernels")).unwrap().count();
                assert!(ptx > 0, "{example}: kernels written");
                assert!(report.contains(&format!("ptxas report for {gpu} ({ptx} kernels)")));
                for (name, path) in convolution_ptx(&dir) {
                    convolutions.entry((name, gpu)).or_insert(path);
                }
            }
        }
    }
    let all: Vec<_> = convolutions.into_iter().collect();
    let asynchronous = std::sync::atomic::AtomicUsize::new(0);
    for_each_in_parallel(&all, |((name, gpu), path)| {
        let sass = sass_of(path, gpu);
        assert!(
            sass.contains("HMMA.1688.F32.TF32"),
            "{name} on {gpu}: no HMMA in\n{sass}"
        );
        assert_eq!(local_memory(&sass), None, "{name} on {gpu}: local memory");
        // Operands read plainly arrive by cp.async: LDGSTS, and its waits.
        let copies = std::fs::read_to_string(path)
            .unwrap()
            .contains("cp.async.ca.shared.global");
        assert_eq!(sass.contains("LDGSTS"), copies, "{name} on {gpu}: LDGSTS");
        if copies {
            assert!(
                sass.contains("DEPBAR"),
                "{name} on {gpu}: no wait for the copies"
            );
            asynchronous.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Every convolution of the examples has a weight or a stored value among its operands.
    let asynchronous = asynchronous.into_inner();
    assert_eq!(
        asynchronous,
        all.len(),
        "convolutions with asynchronous copies"
    );
    eprintln!(
        "{} convolution kernels use tensor cores on sm_80 and sm_90",
        all.len()
    );
    assert!(
        all.len() > 100,
        "too few convolution kernels checked: {}",
        all.len()
    );
    // BF16 on tensor cores too; F32 on the CUDA cores only.
    for (precision, want) in [
        (Precision::Bf16, "HMMA.16816.F32.BF16"),
        (Precision::F32, "FFMA"),
    ] {
        let dir = tmp.path().join(precision.name());
        let dir_arg = dir.to_string_lossy().into_owned();
        let args = [
            "-o",
            dir_arg.as_str(),
            "--train",
            "--precision",
            precision.name(),
        ];
        compile("tiny", &args);
        assert_eq!(load_bundle(&dir).unwrap().bundle.precision, precision);
        for (name, path) in convolution_ptx(&dir) {
            let sass = sass_of(&path, "sm_80");
            assert!(sass.contains(want), "{precision:?} {name}: no {want}");
            let tensor_cores = sass.contains("HMMA");
            assert_eq!(
                tensor_cores,
                precision != Precision::F32,
                "{precision:?} {name}"
            );
            assert_eq!(
                local_memory(&sass),
                None,
                "{precision:?} {name}: local memory"
            );
        }
    }
}

/// At a realistic size each convolution gets its own tile (`Tile::choose`): 128 x 128
/// where the grid fills the GPU, smaller ones down to 32 x 32 where it would not, and
/// 16-byte copies of the operands that are contiguous. Every kernel assembles without
/// spills (the 128 x 128 tiles hold 64 accumulators per thread), and every distinct
/// convolution's machine code multiplies with HMMA, copies with LDGSTS and uses no local
/// memory.
#[test]
fn realistic_sizes_choose_tiles_that_assemble_without_spills() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("refinenet4");
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = ["-o", &dir_arg, "--train", "--gpu", "sm_80", "--ptx-report"];
    let out = compile_file(
        &example_path("refinenet4"),
        &[("depth", "50")],
        "4x3x256x256",
        &args,
    );
    let report = stdout(&out);
    assert_eq!(spilling(&report), 0, "{report}");
    let bundle = load_bundle(&dir).unwrap().bundle;
    let convolutions: Vec<_> = bundle
        .kernels
        .iter()
        .filter(|k| k.ops.contains("conv2d") && !k.host_only)
        .collect();
    let tiles: std::collections::BTreeSet<&str> = convolutions
        .iter()
        .map(|k| k.schedule.split(" (").next().unwrap_or_default())
        .collect();
    eprintln!("tiles: {tiles:?}");
    for tile in ["tile 128x128x16", "tile 64x64x16", "tile 32x32x16"] {
        assert!(tiles.contains(tile), "no {tile} among {tiles:?}");
    }
    let wide = convolutions
        .iter()
        .filter(|k| k.schedule.contains("16 B"))
        .count();
    assert!(
        wide * 2 > convolutions.len(),
        "16-byte copies in {wide} kernels"
    );
    let ptx: Vec<_> = convolution_ptx(&dir);
    for_each_in_parallel(&ptx, |(name, path)| {
        let sass = sass_of(path, "sm_80");
        assert!(sass.contains("HMMA.1688.F32.TF32"), "{name}: no HMMA");
        assert!(sass.contains("LDGSTS"), "{name}: no LDGSTS");
        assert_eq!(local_memory(&sass), None, "{name}: local memory");
    });
}

/// The GPU convolution kernels of a bundle: name and PTX file.
fn convolution_ptx(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let bundle = load_bundle(dir).unwrap_or_else(|e| panic!("{e}")).bundle;
    bundle
        .kernels
        .iter()
        .filter(|k| k.ops.contains("conv2d") && !k.host_only)
        .map(|k| {
            (
                k.name.clone(),
                dir.join("kernels").join(format!("{}.ptx", k.name)),
            )
        })
        .collect()
}

/// The machine code of a PTX file assembled for `gpu`, as `nvdisasm -c` prints it.
fn sass_of(ptx: &Path, gpu: &str) -> String {
    let text = std::fs::read_to_string(ptx).unwrap();
    rfnc_llvm::ptxas_sass(&text, gpu)
        .unwrap_or_else(|e| panic!("{e}"))
        .1
}

/// The first SASS line that loads or stores local memory.
fn local_memory(sass: &str) -> Option<&str> {
    sass.lines().find(|l| {
        l.split_whitespace()
            .any(|w| w.starts_with("LDL") || w.starts_with("STL"))
    })
}

/// Runs `f` on every item, on every core.
fn for_each_in_parallel<T: Sync>(items: &[T], f: impl Fn(&T) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for part in items.chunks(chunk) {
            s.spawn(|| part.iter().for_each(&f));
        }
    });
}

/// The first kernel whose ops start with `ops` (exactly, up to the next space).
fn kernel_with<'a>(all: &'a [(String, String)], ops: &str) -> &'a str {
    all.iter()
        .find(|(h, _)| h.split(": ").nth(1).and_then(|r| r.split(' ').next()) == Some(ops))
        .map(|(_, m)| m.as_str())
        .unwrap_or_else(|| {
            let headers: Vec<&str> = all.iter().map(|(h, _)| h.as_str()).collect();
            panic!("no kernel `{ops}` among:\n{}", headers.join("\n"))
        })
}

/// A kernel's MLIR with its name's content hash replaced by `HASH`, so that a snapshot
/// changes when the kernel's code does, not when an unrelated detail moves the hash.
fn without_hash(mlir: &str) -> String {
    let mut out = String::with_capacity(mlir.len());
    let mut rest = mlir;
    while let Some(i) = rest.find('_') {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let hex = tail[1..].bytes().take_while(u8::is_ascii_hexdigit).count();
        let after = tail.as_bytes().get(1 + hex);
        if hex == 16 && !after.is_some_and(|b| b.is_ascii_alphanumeric()) {
            out.push_str("_HASH");
            rest = &tail[17..];
        } else {
            out.push('_');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn mlir_of_representative_kernels() {
    let inference = kernels(&stdout(&compile("refinenet1", &["--emit", "mlir"])));
    let train = kernels(&stdout(&compile(
        "refinenet1",
        &["--emit", "mlir", "--train"],
    )));
    let snapshot = |all: &[(String, String)], ops: &str| without_hash(kernel_with(all, ops));
    // A convolution with its fused residual add and relu (tiled implicit GEMM).
    insta::assert_snapshot!("conv_add_relu", snapshot(&inference, "conv2d+add+relu"));
    // Max pooling (CRP).
    insta::assert_snapshot!("max_pool", snapshot(&inference, "max_pool2d"));
    // The loss (a block reduction) and its gradient.
    insta::assert_snapshot!("loss", snapshot(&train, "softmax_cross_entropy"));
    insta::assert_snapshot!(
        "loss_gradient",
        snapshot(&train, "softmax_cross_entropy_grad")
    );
    // Multi-resolution fusion: one conv kernel whose epilogue adds the upsampled other
    // paths (its code is checked by the executor tests; here only that fusion made it).
    let fused = kernel_with(
        &inference,
        "conv2d+resize_bilinear+add+resize_bilinear+add+resize_bilinear+add+relu",
    );
    assert!(fused.contains("gpu.func @conv2d_resize_bilinear_add_resize_bilinear_"));
}

#[test]
fn kernel_hashes_are_masked_in_snapshots() {
    let text = "gpu.func @conv2d_relu_0123456789abcdef(%arg0 x_1 y_0123456789abcdef0";
    assert_eq!(
        without_hash(text),
        "gpu.func @conv2d_relu_HASH(%arg0 x_1 y_0123456789abcdef0"
    );
}

#[test]
fn labels_outside_the_classes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-train");
    bundle("tiny", true, &dir);
    let loaded = load_bundle(&dir).unwrap();
    let leaf = loaded
        .bundle
        .leaves
        .iter()
        .find(|l| l.classes.is_some())
        .expect("the labels leaf records its classes")
        .clone();
    let mut session = Session::new(&loaded, Device::Cpu { threads: 1 }).unwrap();
    let mut labels = vec![0i32; leaf.elements() as usize];
    labels[5] = leaf.classes.unwrap() as i32;
    let err = session
        .set_leaf_i32(&leaf.name, &labels)
        .unwrap_err()
        .to_string();
    assert!(err.contains("element 5 is label"), "{err}");
    labels[5] = leaf.ignore_label.expect("the ignored label") as i32;
    session.set_leaf_i32(&leaf.name, &labels).unwrap();
}
