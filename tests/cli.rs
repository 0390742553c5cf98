//! The `rfnc` command line: subcommands, output files, exit codes and error reporting.

mod common;

use common::*;

#[test]
fn check_reports_a_summary() {
    let out = rfnc(&["check", "examples/tiny.rfn", "--input", "1x3x64x64"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("tiny: ok ("), "{}", stdout(&out));
}

#[test]
fn compile_emits_each_stage() {
    let graph = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x64x64",
        "--emit",
        "graph",
    ]);
    assert!(graph.status.success());
    assert!(stdout(&graph).starts_with("\"rfn.graph\"() ({"));
    let ast = rfnc(&["compile", "examples/tiny.rfn", "--emit", "ast"]);
    assert!(
        stdout(&ast).starts_with("module std/"),
        "dependencies first: {}",
        &stdout(&ast)[..80]
    );
    assert!(stdout(&ast).contains("module examples/tiny.rfn"));
    let dot = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x64x64",
        "--emit",
        "dot",
    ]);
    assert!(stdout(&dot).starts_with("digraph \"tiny\" {"));
    assert!(stdout(&dot).trim_end().ends_with('}'));
}

#[test]
fn output_file_matches_stdout_and_creates_folders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/out.mlir");
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x64x64",
        "--emit",
        "graph",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    let printed = stdout(&rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x64x64",
        "--emit",
        "graph",
    ]));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), printed);
    // Only the output itself is left behind (the temporary file was renamed).
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn a_failed_compile_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mlir");
    std::fs::write(&path, "previous good output").unwrap();
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "-D",
        "classes=abc",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "previous good output"
    );
}

#[test]
fn stats_json_has_components_and_total() {
    let out = rfnc(&[
        "stats",
        "examples/refinenet4.rfn",
        "-D",
        "depth=50",
        "--input",
        "1x3x128x128",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    for component in [
        "backbone", "refine4", "refine3", "refine2", "refine1", "head",
    ] {
        for key in ["params", "macs", "naive_feature_bytes"] {
            assert!(
                v["components"][component][key].is_u64(),
                "{component}.{key}"
            );
        }
    }
    let total_macs: u64 = v["components"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["macs"].as_u64().unwrap())
        .sum();
    assert_eq!(v["total"]["macs"].as_u64().unwrap(), total_macs);
    assert_eq!(v["network"], "refinenet4");
}

#[test]
fn stats_table_lists_components() {
    let out = rfnc(&["stats", "examples/refinenet2.rfn", "--input", "1x3x64x64"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for row in ["backbone", "refine_a", "refine_b", "head", "total"] {
        assert!(
            text.lines().any(|l| l.starts_with(row)),
            "row {row} in\n{text}"
        );
    }
}

#[test]
fn user_errors_exit_1_with_a_diagnostic() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["check", "examples/nope.rfn"],
            "cannot read `examples/nope.rfn`",
        ),
        (
            &["check", "examples/tiny.rfn", "--input", "1x3x0x64"],
            "--input 1x3x0x64",
        ),
        (
            &["check", "examples/tiny.rfn", "--input", "1x3x64"],
            "--input has 3 dimensions",
        ),
        (
            &["check", "examples/tiny.rfn", "-D", "depth"],
            "expected NAME=VALUE",
        ),
        (
            &["check", "examples/tiny.rfn", "-D", "depht=50"],
            "did you mean `depth`?",
        ),
        (
            &["check", "examples/refinenet4.rfn", "-D", "depth=42"],
            "ResNet depth must be 50, 101 or 152",
        ),
        (
            &["check", "examples/tiny.rfn", "--input", "1x4x64x64"],
            "--input gives 4 for dimension 1",
        ),
        (
            &["compile", "examples/tiny.rfn", "--emit", "wasm"],
            "invalid value 'wasm'",
        ),
        (
            &["compile", "examples/tiny.rfn"],
            "the bundle is a directory: give it with -o DIR",
        ),
        (
            &["compile", "examples/tiny.rfn", "--gpu", "volta"],
            "expected sm_XX",
        ),
        (
            &[
                "compile",
                "examples/tiny.rfn",
                "--emit",
                "graph",
                "--ptx-report",
            ],
            "--ptx-report needs PTX",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let out = rfnc(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: expected `{needle}` in\n{}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{args:?}");
    }
}

#[test]
fn syntax_errors_point_into_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.rfn");
    std::fs::write(
        &path,
        "network n {\n    input image: f32[1, 3, H, W]\n    output y = image;\n}\n",
    )
    .unwrap();
    let out = rfnc(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("syntax error: expected `;`") || err.contains("syntax error"),
        "{err}"
    );
    assert!(
        err.contains("broken.rfn:2:"),
        "location in the message: {err}"
    );
}

#[test]
fn help_explains_the_commands() {
    let out = rfnc(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for word in ["check", "compile", "stats", "Exit status"] {
        assert!(text.contains(word), "{word} in --help");
    }
    let compile = stdout(&rfnc(&["compile", "--help"]));
    for word in [
        "--emit",
        "ast",
        "graph",
        "dot",
        "--input",
        "-D",
        "-o, --output",
    ] {
        assert!(
            compile.contains(word),
            "{word} in compile --help:\n{compile}"
        );
    }
}

#[test]
fn timings_go_to_stderr() {
    let out = rfnc(&[
        "check",
        "examples/tiny.rfn",
        "--input",
        "1x3x64x64",
        "--timings",
    ]);
    assert!(out.status.success());
    let err = stderr(&out);
    for stage in ["load (parse + imports)", "elaborate + shapes", "verify"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("timing: ") && l.contains(stage)),
            "{stage} in {err}"
        );
    }
    assert!(!stdout(&out).contains("timing:"));
}

#[test]
fn weights_are_written_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let p = path.to_str().unwrap();
    let out = rfnc(&["weights", "examples/tiny.rfn", "-o", p, "--seed", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(rfnc(&["check", "examples/tiny.rfn", "--weights", p])
        .status
        .success());
    // A different network shape: every mismatch is named, exit 1.
    let out = rfnc(&[
        "check",
        "examples/tiny.rfn",
        "--weights",
        p,
        "-D",
        "classes=5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("does not fit network `tiny`"), "{err}");
    assert!(err.contains("tensor `head.classifier.weight` has shape [3, 8, 3, 3], the network needs [5, 8, 3, 3]"), "{err}");
    // A file that is not safetensors.
    std::fs::write(&path, "not weights").unwrap();
    let out = rfnc(&["check", "examples/tiny.rfn", "--weights", p]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not a usable safetensors weights file"));
}

#[test]
fn compile_train_applies_source_and_command_line_settings() {
    let out = rfnc(&[
        "compile",
        "examples/refinenet4.rfn",
        "-D",
        "depth=50",
        "--input",
        "1x3x64x64",
        "--train",
        "--emit",
        "graph",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("{sym_name = \"refinenet4_train\"}"));
    // The source sets lr 5e-4 with the backbone at 0.1x.
    assert!(
        text.contains("\"rfn.sgd_step\"")
            && text.contains("{lr = 5.0e-5}")
            && text.contains("{lr = 0.0005}"),
        "lr groups"
    );
    assert!(text.contains("\"rfn.input\"() {name = \"step\"} : () -> tensor<i32>"));
    // The command line overrides the rate and adds a frozen scope.
    let out = rfnc(&[
        "compile",
        "examples/refinenet4.rfn",
        "-D",
        "depth=50",
        "--input",
        "1x3x64x64",
        "--train",
        "--emit",
        "graph",
        "--lr",
        "0.01",
        "--freeze",
        "refine4",
        "--lr-scale",
        "head=2",
        "--seed",
        "9",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("{lr = 0.02}")
            && text.contains("{lr = 0.001}")
            && text.contains("{lr = 0.01}")
    );
    assert!(
        !text.contains("name = \"refine4.crp.conv1.weight.momentum\""),
        "refine4 is frozen"
    );
    assert!(text.contains("seed = 9"));
}

#[test]
fn train_flag_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["compile", "examples/tiny.rfn", "--lr", "0.1"], "--train"),
        (
            &[
                "compile",
                "examples/tiny.rfn",
                "--train",
                "--freeze",
                "bakbone",
            ],
            "--freeze bakbone: the pattern matches no trainable parameter",
        ),
        (
            &[
                "compile",
                "examples/tiny.rfn",
                "--train",
                "--lr-scale",
                "backbone",
            ],
            "--lr-scale backbone: expected PATTERN=FACTOR",
        ),
        (
            &["compile", "examples/tiny.rfn", "--train", "--lr=-1"],
            "the lr must be a finite non-negative number",
        ),
    ];
    for (args, needle) in cases {
        let out = rfnc(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: expected `{needle}` in\n{}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_training_numbers_are_user_errors() {
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--train",
        "--lr-scale",
        "backbone=nan",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("the learning-rate scale of `backbone` must be a finite non-negative number"),
        "{}",
        stderr(&out)
    );
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--train",
        "--seed",
        "18446744073709551615",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_rfnc"))
        .args([
            "compile",
            "examples/refinenet4.rfn",
            "--train",
            "-D",
            "depth=152",
            "--emit",
            "graph",
        ])
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once
    let out = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("internal compiler error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn memory_budget_recomputes_or_names_the_smallest_budget() {
    let base = [
        "stats",
        "examples/refinenet4.rfn",
        "-D",
        "depth=50",
        "--input",
        "1x3x128x128",
        "--memory",
        "--train",
        "--json",
    ];
    let plain = rfnc(&base);
    let v: serde_json::Value = serde_json::from_str(&stdout(&plain)).unwrap();
    let full = v["memory"]["arena_bytes"].as_u64().unwrap();
    let budget = format!("{}", full - 1);
    let mut args = base.to_vec();
    args.extend(["--memory-budget", &budget]);
    let out = rfnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["memory"]["arena_bytes"].as_u64().unwrap() < full);
    assert!(
        stderr(&out).contains("values recomputed") && stderr(&out).contains("saved"),
        "{}",
        stderr(&out)
    );

    let mut args = base.to_vec();
    args.extend(["--memory-budget", "1KiB"]);
    let out = rfnc(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the smallest it can be planned in is"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("use --memory-budget"),
        "{}",
        stderr(&out)
    );

    let mut args = base.to_vec();
    args.extend(["--memory-budget", "lots"]);
    let out = rfnc(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--memory-budget lots: not a size"));
}

#[test]
fn prepare_program_folds_batch_norm() {
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x32x32",
        "--emit",
        "prepare",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\"rfn.fold_bn_weight\"") && text.contains("\"rfn.fold_bn_bias\""));
    assert!(
        text.contains("names = [\"backbone.conv1.folded_weight\", \"backbone.conv1.folded_bias\"")
    );
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--emit",
        "prepare",
        "--train",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--emit prepare is for inference"));
}

#[test]
fn training_stats_do_not_count_momentum_as_parameters() {
    let count = |extra: &[&str]| {
        let mut args = vec![
            "stats",
            "examples/tiny.rfn",
            "--input",
            "1x3x32x32",
            "--json",
        ];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&stdout(&rfnc(&args))).unwrap();
        v["total"]["params"].as_u64().unwrap()
    };
    assert_eq!(count(&[]), count(&["--train"]));
}

#[test]
fn small_and_unusual_networks_lower_without_internal_errors() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // No batch norm at all: nothing to fold, but every stage works.
    let plain = write(
        "plain.rfn",
        "network a { input image: f32[N, 3, H, W]; output y = relu(image); }\n",
    );
    for emit in ["fused", "plan", "prepare"] {
        let out = rfnc(&["compile", &plain, "--input", "1x3x4x4", "--emit", emit]);
        assert!(out.status.success(), "{emit}: {}", stderr(&out));
    }
    // Only an objective: inference has nothing to compute (a user error), training works.
    let only = write(
        "only.rfn",
        "network b { input image: f32[N, 3, H, W]; input labels: i32[N, H, W];\n  objective loss = softmax_cross_entropy(batchnorm(conv(image, 3) as c) as bn, labels); }\n",
    );
    let out = rfnc(&["compile", &only, "--input", "1x3x4x4", "--emit", "fused"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("computes nothing at inference"));
    assert!(
        rfnc(&["compile", &only, "--input", "1x3x4x4", "--emit", "fused", "--train"])
            .status
            .success()
    );
    // An input named `step` clashes with the training step's counter: a user error.
    let step = write(
        "step.rfn",
        "network c { input image: f32[N, 3, H, W]; input step: i32[N, H, W];\n  objective loss = softmax_cross_entropy(conv(image, 3) as c, step); }\n",
    );
    let out = rfnc(&["compile", &step, "--input", "1x3x4x4", "--train"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("input named `step`"));
    // Enormous costs saturate instead of overflowing.
    let big = write(
        "big.rfn",
        "network d { input image: f32[N, C, H, W]; output y = conv(image, 1, k = 1048575); }\n",
    );
    assert!(rfnc(&["check", &big, "--input", "1x1x1048576x1048576"])
        .status
        .success());
}

#[test]
fn memory_budget_is_refused_where_it_cannot_apply() {
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--train",
        "--emit",
        "graph",
        "--memory-budget",
        "garbage",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--memory-budget applies to the stages after memory planning"),
        "{}",
        stderr(&out)
    );
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x32x32",
        "--train",
        "--emit",
        "plan",
        "--memory-budget",
        "1GiB",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A CPU run compiles host code only, so it needs no libdevice (an empty RFNC_LIBDEVICE
/// means none); the bundle that `rfnc compile` writes has PTX too, which does need it.
#[test]
fn a_cpu_run_needs_no_gpu_tools() {
    let no_libdevice = [("RFNC_LIBDEVICE", "")];
    let args = [
        "run",
        "examples/tiny.rfn",
        "--input",
        "1x3x16x16",
        "--no-cache",
    ];
    let out = rfnc_with_env(&args, &no_libdevice);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("scores"), "{}", stdout(&out));

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("tiny");
    let bundle = bundle.to_str().unwrap();
    let args = [
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x16x16",
        "--no-cache",
        "-o",
        bundle,
    ];
    let out = rfnc_with_env(&args, &no_libdevice);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("libdevice"), "{}", stderr(&out));
}

/// `rfnc run` with the small settings of the tiny network.
fn run_tiny(extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "examples/tiny.rfn", "--input", "1x3x16x16"];
    args.extend_from_slice(extra);
    rfnc(&args)
}

#[test]
fn run_executes_inference_and_training_on_the_cpu() {
    let out = run_tiny(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ran tiny.rfn on cpu"), "{text}");
    assert!(text.contains("scores"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let trained = dir.path().join("trained.safetensors");
    let outputs = dir.path().join("outputs.safetensors");
    let out = run_tiny(&[
        "--train",
        "--steps",
        "3",
        "--save-weights",
        trained.to_str().unwrap(),
        "-o",
        outputs.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let losses: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| {
            l.split_whitespace()
                .nth(4)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("a loss in `{l}`"))
        })
        .collect();
    assert_eq!(losses.len(), 3, "{text}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        losses[0] != losses[2],
        "training changes the loss: {losses:?}"
    );
    // The trained weights are complete: they run again.
    let out = run_tiny(&["--weights", trained.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(outputs.is_file());
}

#[test]
fn run_errors_are_clear() {
    // No GPU driver on a machine without one: a clear error, not a panic.
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        let out = run_tiny(&["--device", "cuda"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("no NVIDIA"), "{}", stderr(&out));
        assert!(stderr(&out).contains("--device cpu"), "{}", stderr(&out));
    }
    // Weights of another network.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("r1.safetensors");
    let out = rfnc(&[
        "weights",
        "examples/refinenet1.rfn",
        "-D",
        "depth=50",
        "--input",
        "1x3x32x32",
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_tiny(&["--weights", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not fit network"),
        "{}",
        stderr(&out)
    );
    // A bundle runs by itself with random weights from the rules it records: the same
    // weights `rfnc weights` writes for the program.
    let bundle = dir.path().join("bundle");
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x16x16",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let random = rfnc(&["run", bundle.to_str().unwrap()]);
    assert!(random.status.success(), "{}", stderr(&random));
    let weights = dir.path().join("tiny.safetensors");
    let w = weights.to_str().unwrap();
    let out = rfnc(&[
        "weights",
        "examples/tiny.rfn",
        "--input",
        "1x3x16x16",
        "-o",
        w,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let given = rfnc(&["run", bundle.to_str().unwrap(), "--weights", w]);
    assert!(given.status.success(), "{}", stderr(&given));
    let outputs = |o: &std::process::Output| -> Vec<String> {
        stdout(o)
            .lines()
            .filter(|l| !l.starts_with("ran "))
            .map(String::from)
            .collect()
    };
    assert!(!outputs(&random).is_empty(), "{}", stdout(&random));
    assert_eq!(outputs(&random), outputs(&given));
    let other_seed = rfnc(&["run", bundle.to_str().unwrap(), "--init-seed", "1"]);
    assert_ne!(outputs(&random), outputs(&other_seed));
    // Flags that shape compilation cannot apply to a compiled bundle.
    for (flag, value) in [("-D", "classes=5"), ("--precision", "bf16")] {
        let out = rfnc(&["run", bundle.to_str().unwrap(), flag, value]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains(&format!("{flag} shapes compilation")),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_bundle_never_replaces_a_directory_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("notes");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("thesis.txt"), "years of work").unwrap();
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x16x16",
        "-o",
        precious.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an rfnc bundle"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(precious.join("thesis.txt")).unwrap(),
        "years of work"
    );
    // A bundle is replaced by a new one.
    let bundle = dir.path().join("bundle");
    for _ in 0..2 {
        let out = rfnc(&[
            "compile",
            "examples/tiny.rfn",
            "--input",
            "1x3x16x16",
            "-o",
            bundle.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let json = std::fs::read_to_string(bundle.join("bundle.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "rfnc-bundle");
    assert!(bundle.join("host.bc").is_file());
    // Nothing left over beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// `rfnc run --inputs`: the outputs for inputs from a file are the reference interpreter's
/// for the same inputs and weights; a file that does not fit the inputs is an error naming
/// every problem.
#[test]
fn run_takes_its_inputs_from_a_file() {
    use rfnc_compiler::interp::{run as interpret, Tensor, Value};
    use rfnc_driver::weights::init_weights;
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let dims = vec![1u64, 3, 32, 32];
    let image: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let mut inputs = rfnc_runtime::Weights::default();
    inputs
        .tensors
        .insert("image".into(), (dims.clone(), image.clone()));
    let file = dir.path().join("in.safetensors");
    rfnc_runtime::save_weights(&file, &inputs).unwrap();
    let out_file = dir.path().join("out.safetensors");
    let (f, o) = (file.to_str().unwrap(), out_file.to_str().unwrap());
    let out = rfnc(&[
        "run",
        "examples/tiny.rfn",
        "--input",
        "1x3x32x32",
        "--inputs",
        f,
        "-o",
        o,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let forward = graph("tiny", &[1, 3, 32, 32], &[]);
    let program = rfnc_compiler::passes::canonical::inference(&forward);
    let mut feeds: HashMap<String, Value<f32>> = HashMap::new();
    for (name, (shape, data)) in init_weights(&forward, 0).tensors {
        feeds.insert(name, Value::Real(Tensor::new(shape, data)));
    }
    feeds.insert("image".into(), Value::Real(Tensor::new(dims, image)));
    let expected = interpret(&program, &feeds).unwrap();
    let got = rfnc_runtime::load_weights(&out_file).unwrap();
    for (name, value) in expected {
        let (_, data) = &got.tensors[&name];
        let error = relative_error(data, &value.real().data, 1e-6);
        assert!(
            error < 1e-4,
            "`{name}` differs from the interpreter by {error:e}"
        );
    }

    inputs
        .tensors
        .insert("image".into(), (vec![1, 3, 16, 16], vec![0.0; 768]));
    inputs.tensors.insert("imgae".into(), (vec![1], vec![0.0]));
    rfnc_runtime::save_weights(&file, &inputs).unwrap();
    let out = rfnc(&[
        "run",
        "examples/tiny.rfn",
        "--input",
        "1x3x32x32",
        "--inputs",
        f,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("in.safetensors` does not fit the network's inputs"),
        "{text}"
    );
    assert!(
        text.contains("`image` is f32[1, 3, 16, 16], the network's input is f32[1, 3, 32, 32]"),
        "{text}"
    );
    assert!(
        text.contains("`imgae` is not an input of the network"),
        "{text}"
    );
}

/// A training setting is an error without `--train` (the flags are shared with `rfnc train`).
#[test]
fn training_settings_need_train() {
    for (flag, value) in [
        ("--lr", "0.1"),
        ("--freeze", "backbone"),
        ("--memory-budget", "1GiB"),
    ] {
        let out = rfnc(&[
            "compile",
            "examples/tiny.rfn",
            "--emit",
            "graph",
            flag,
            value,
        ]);
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let text = stderr(&out);
        assert!(
            text.contains(&format!(
                "{flag} is a setting of the training step: add --train"
            )),
            "{text}"
        );
    }
}

/// A head that is an output but not in the objective: the training step leaves its
/// parameters out (with a note), runs with the program's own weights file, and the saved
/// weights still hold them (issue: "extra tensor `depth_head...` is not a parameter").
#[test]
fn parameters_outside_the_objective_are_set_aside_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("twoheads.rfn");
    std::fs::write(
        &program,
        "import std.resnet;
         import std.refinenet;
         network twoheads {
             input image: f32[N, 3, H, W];
             input labels: i32[N, H, W];
             let taps = resnet(image, width = 4, blocks = [1, 1, 1, 1]) as backbone;
             let r1 = refinenet([taps.s1, taps.s2], width = 8, crp_blocks = 1) as refine1;
             output scores = head(r1, 3) as head;
             output depth = head(r1, 1, p = 0.0) as depth_head;
             objective loss = softmax_cross_entropy(resize(scores, H, W), labels);
         }",
    )
    .unwrap();
    let (p, w, saved) = (
        program.to_str().unwrap(),
        dir.path().join("w.safetensors"),
        dir.path().join("trained.safetensors"),
    );
    let out = rfnc(&[
        "weights",
        p,
        "--input",
        "1x3x32x32",
        "-o",
        w.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = [
        "run",
        p,
        "--input",
        "1x3x32x32",
        "--train",
        "--steps",
        "2",
        "--weights",
        w.to_str().unwrap(),
        "--save-weights",
        saved.to_str().unwrap(),
    ];
    let out = rfnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("they do not reach the objective and are not trained"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("depth_head.*"), "{}", stderr(&out));
    let before = rfnc_runtime::load_weights(&w).unwrap();
    let after = rfnc_runtime::load_weights(&saved).unwrap();
    let head = "depth_head.classifier.weight";
    assert_eq!(after.tensors[head], before.tensors[head], "kept as it was");
    assert_ne!(
        after.tensors["head.classifier.weight"],
        before.tensors["head.classifier.weight"]
    );
}

/// `--device cpu-gpu-kernels` computes what the CPU's schedule computes, and `--profile`
/// lists the launches of the last run, GEMMs of the CPU's schedule among them.
#[test]
fn cpu_schedules_agree_and_profile_lists_launches() {
    let run = |device: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "examples/tiny.rfn",
            "--input",
            "1x3x32x32",
            "--device",
            device,
        ];
        args.extend(extra);
        let out = rfnc(&args);
        assert!(out.status.success(), "{device}: {}", stderr(&out));
        stdout(&out)
    };
    // The mean, min and max of the scores.
    let scores = |text: &str| -> Vec<f64> {
        let line = text
            .lines()
            .find(|l| l.starts_with("scores"))
            .expect("a scores line");
        line.split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect()
    };
    let host = run("cpu", &["--profile"]);
    let (a, b) = (scores(&host), scores(&run("cpu-gpu-kernels", &[])));
    assert_eq!(a.len(), 3, "{host}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
    assert!(host.contains("profile of the last run:"), "{host}");
    assert!(host.lines().any(|l| l.contains(" gemm ")), "{host}");
    let kinds = host
        .lines()
        .find(|l| l.starts_with("by kind: "))
        .unwrap_or_else(|| panic!("no summary by kind:\n{host}"));
    assert!(kinds.contains("GEMMs ") && kinds.contains("%)"), "{kinds}");
    assert!(
        kinds.contains("im2col ") || kinds.contains("Winograd data transforms "),
        "the CPU's steps by kind: {kinds}"
    );
    assert!(
        host.lines()
            .any(|l| l.contains("host_im2col_") || l.contains("host_winograd_")),
        "{host}"
    );
}

/// Tensor-core precisions need sm_80: an older GPU is refused with what to do instead;
/// `--precision f32` compiles for it.
#[test]
fn tensor_core_precisions_need_sm80() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("b");
    let out = out_dir.to_str().unwrap();
    let file = "examples/tiny.rfn";
    let refused = rfnc(&["compile", file, "--gpu", "sm_75", "-o", out]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--precision tf32 needs tensor cores")
            && stderr(&refused).contains("--precision f32"),
        "{}",
        stderr(&refused)
    );
    assert!(!out_dir.exists(), "nothing is written");
    let f32 = rfnc(&[
        "compile",
        file,
        "--gpu",
        "sm_75",
        "--precision",
        "f32",
        "-o",
        out,
    ]);
    assert!(f32.status.success(), "{}", stderr(&f32));
}

/// Each CPU schedule compiles only the kernels it launches: the CPU's schedule leaves out
/// the host forms of the GPU's convolutions (most of the host code), `cpu-gpu-kernels`
/// the CPU's own kernels, and each is cached as a library of its own.
#[test]
fn each_cpu_schedule_compiles_only_its_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b");
    let bundle_arg = bundle.to_str().unwrap();
    let out = rfnc(&[
        "compile",
        "examples/tiny.rfn",
        "--input",
        "1x3x32x32",
        "-o",
        bundle_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
    let names = |launches: &serde_json::Value| -> std::collections::BTreeSet<String> {
        let launches = launches.as_array().unwrap().iter();
        launches
            .filter_map(|l| l.get("kernel").map(|k| k.get("kernel").unwrap_or(k)))
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    let gpu = names(&json["main"]["launches"]);
    let host = names(&json["main"]["host"]["launches"]);
    let gpu_only: Vec<_> = gpu.difference(&host).collect();
    let host_only: Vec<_> = host.difference(&gpu).collect();
    assert!(
        gpu_only.iter().any(|k| k.starts_with("conv2d")),
        "{gpu_only:?}"
    );
    assert!(
        host_only.iter().any(|k| k.starts_with("host_")),
        "{host_only:?}"
    );

    let cache = tempfile::tempdir().unwrap();
    let libraries = || -> Vec<Vec<u8>> {
        let mut found: Vec<_> = std::fs::read_dir(cache.path().join("host"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect();
        found.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
        found.iter().map(|p| std::fs::read(p).unwrap()).collect()
    };
    let has = |library: &[u8], name: &str| {
        library
            .windows(name.len() + 1)
            .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
    };
    let cache_dir = cache.path().to_str().unwrap();
    for (device, count) in [("cpu", 1), ("cpu-gpu-kernels", 2)] {
        let out = rfnc_with_env(
            &["run", bundle_arg, "--device", device],
            &[("RFNC_CACHE_DIR", cache_dir)],
        );
        assert!(out.status.success(), "{device}: {}", stderr(&out));
        let all = libraries();
        assert_eq!(all.len(), count, "{device}: one library per schedule");
        let (wanted, left_out) = match device {
            "cpu" => (&host, &gpu_only),
            _ => (&gpu, &host_only),
        };
        let library = all.last().unwrap();
        for name in wanted {
            assert!(has(library, name), "{device}: `{name}` is missing");
        }
        for name in left_out {
            assert!(!has(library, name), "{device}: `{name}` was compiled");
        }
    }
}

/// Compiling the host code prints nothing a user cannot act on: a loop the kernels ask
/// LLVM to vectorise that it cannot (tiny's batch-norm epilogues at 128x128 are such) runs
/// scalar without LLVM's warning.
#[test]
fn host_compilation_prints_no_llvm_warnings() {
    let cache = tempfile::tempdir().unwrap();
    let out = rfnc_with_env(
        &[
            "run",
            "examples/tiny.rfn",
            "--input",
            "1x3x128x128",
            "--train",
        ],
        &[("RFNC_CACHE_DIR", cache.path().to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("compiled the host code"), "{err}");
    assert!(!err.contains("warning"), "{err}");
}
