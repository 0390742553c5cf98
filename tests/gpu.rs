//! The GPU executor on compiled networks: bundles of every example (inference and the
//! training step), in every precision, run on CUDA and agree with the CPU executor running
//! the same kernels (`--device cpu-gpu-kernels`, tensor cores emulated), which
//! `tests/codegen.rs` checks against the reference interpreter. `#[ignore]`d, so a machine
//! without a GPU shows it as ignored; `./dev test` includes it where it finds an NVIDIA
//! driver, and with `RFNC_REQUIRE_GPU=1` it fails rather than passes without one.

mod common;

use std::path::Path;

use common::*;
use rfnc_runtime::{load_bundle, Device, Session};

fn compile(example: &str, input: &str, (train, precision): (bool, &str), dir: &Path) {
    let mut args = vec![
        "compile".to_string(),
        example_path(example).to_string_lossy().into_owned(),
        "--input".into(),
        input.into(),
        "-o".into(),
        dir.to_string_lossy().into_owned(),
        "--precision".into(),
        precision.into(),
    ];
    if example != "tiny" {
        for d in ["depth=50", "base_width=8", "refine_width=16"] {
            args.push("-D".into());
            args.push(d.into());
        }
    }
    if train {
        args.push("--train".into());
    }
    let out = rfnc(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Deterministic leaves: small values, labels within the classes, step 3.
fn fill(session: &mut Session) {
    let leaves = session.bundle().leaves.clone();
    for (k, leaf) in leaves.iter().enumerate() {
        if leaf.role == rfnc_bundle::LeafRole::Folded {
            continue;
        }
        let n = leaf.elements() as usize;
        if leaf.name == "step" {
            session.set_leaf_i32("step", &[3]).unwrap();
        } else if let Some(classes) = leaf.classes {
            let data: Vec<i32> = (0..n)
                .map(|i| ((i * 7 + k) as u64 % classes) as i32)
                .collect();
            session.set_leaf_i32(&leaf.name, &data).unwrap();
        } else {
            let positive = leaf.name.ends_with("running_var");
            let data: Vec<f32> = (0..n)
                .map(|i| {
                    let v = (((i * 31 + k * 17) % 97) as f32 / 97.0 - 0.5) * 0.2;
                    if positive {
                        1.0 + v
                    } else {
                        v
                    }
                })
                .collect();
            session.set_leaf_f32(&leaf.name, &data).unwrap();
        }
    }
}

fn outputs(session: &mut Session) -> Vec<(String, Vec<f32>)> {
    session.run().unwrap();
    session
        .outputs()
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.as_f32().map(|v| v.to_vec()).unwrap_or_default()))
        .collect()
}

#[test]
#[ignore = "needs a CUDA driver and GPU; ./dev test runs it where one is found"]
fn gpu_executor_matches_the_cpu_executor() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = EXAMPLES.iter().map(|e| {
        (
            *e,
            if *e == "tiny" {
                "2x3x64x64"
            } else {
                "1x3x64x64"
            },
        )
    });
    for (example, input) in cases {
        for (train, precision) in [false, true]
            .into_iter()
            .flat_map(|t| [(t, "tf32"), (t, "bf16"), (t, "f32")])
        {
            let dir = tmp.path().join(format!("{example}-{train}-{precision}"));
            compile(example, input, (train, precision), &dir);
            let loaded = load_bundle(&dir).unwrap();
            let mut gpu = Session::new(&loaded, Device::Cuda { ordinal: 0 })
                .unwrap_or_else(|e| panic!("cannot open the GPU: {e}"));
            let mut cpu = Session::new(&loaded, Device::CpuGpuKernels { threads: 2 }).unwrap();
            fill(&mut gpu);
            fill(&mut cpu);
            let bound = tolerance(loaded.bundle.mode, loaded.bundle.precision);
            // Two runs: the second replays the captured CUDA graph (and, for training,
            // starts from the parameters the first step updated).
            for run in 0..2 {
                let (g, c) = (outputs(&mut gpu), outputs(&mut cpu));
                for ((name, a), (_, b)) in g.iter().zip(&c) {
                    let error = relative_error(a, b, 1e-6);
                    assert!(
                        error < bound,
                        "{example} (train: {train}, {precision}) run {run}: `{name}` differs by {error:e}"
                    );
                }
            }
        }
    }
}
