//! The CUDA executor against the CPU executor on hand-made bundles (hand-written PTX).
//! The tests that need a GPU are `#[ignore]`d, so a machine without one shows them as
//! ignored; `./dev test` includes them where it finds an NVIDIA driver.

mod common;

use std::collections::BTreeMap;

use common::*;
use rfnc_runtime::{load_bundle, Device, LoadedBundle, RuntimeError, Session, Weights};

/// A CUDA session on GPU 0 (the tests that ask for one are ignored unless a driver is
/// present, so a missing GPU here is a failure).
fn cuda_session(loaded: &LoadedBundle, test: &str) -> Session {
    Session::new(loaded, Device::Cuda { ordinal: 0 })
        .unwrap_or_else(|e| panic!("{test}: cannot open the GPU: {e}"))
}

fn load(session: &mut Session) {
    feed_inference(session, 3);
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
            "{what}[{i}]: gpu {x} vs cpu {y}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA driver and GPU; ./dev test runs it where one is found"]
fn gpu_matches_cpu_on_the_inference_bundle() {
    let dir = tempfile::tempdir().unwrap();
    inference_bundle(dir.path());
    let loaded = load_bundle(dir.path()).unwrap();
    let mut gpu = cuda_session(&loaded, "gpu_matches_cpu_on_the_inference_bundle");
    let mut cpu = Session::new(&loaded, Device::Cpu { threads: 2 }).unwrap();
    load(&mut gpu);
    load(&mut cpu);
    cpu.run().unwrap();
    // First run captures the CUDA graph, the later ones replay it.
    for _ in 0..3 {
        gpu.run().unwrap();
        for (name, expected) in cpu.outputs().unwrap() {
            let got = gpu.output(&name).unwrap();
            assert_eq!(got.shape, expected.shape);
            close(got.as_f32().unwrap(), expected.as_f32().unwrap(), &name);
        }
    }
    // Inputs changed between replays are seen by the graph.
    let x: Vec<f32> = x_values().iter().map(|v| -v).collect();
    gpu.set_leaf_f32("x", &x).unwrap();
    cpu.set_leaf_f32("x", &x).unwrap();
    gpu.run().unwrap();
    cpu.run().unwrap();
    close(
        gpu.output("y").unwrap().as_f32().unwrap(),
        cpu.output("y").unwrap().as_f32().unwrap(),
        "y",
    );
    assert_eq!(gpu.leaf("step").unwrap().as_i32().unwrap(), &[3]);
    gpu.set_profiling(true);
    gpu.run().unwrap();
    assert_eq!(
        gpu.last_timings().unwrap().launches.as_ref().unwrap().len(),
        3
    );
}

#[test]
#[ignore = "needs a CUDA driver and GPU; ./dev test runs it where one is found"]
fn gpu_training_steps_update_parameters_in_place() {
    let dir = tempfile::tempdir().unwrap();
    train_bundle(dir.path());
    let loaded = load_bundle(dir.path()).unwrap();
    let mut gpu = cuda_session(&loaded, "gpu_training_steps_update_parameters_in_place");
    let weights = Weights {
        tensors: BTreeMap::from([("p".to_string(), (vec![N], p_values()))]),
        ..Weights::default()
    };
    gpu.load_weights(&weights).unwrap();
    gpu.set_leaf_f32("x", &x_values()).unwrap();
    for _ in 0..3 {
        gpu.run().unwrap();
    }
    let expected: Vec<f32> = p_values()
        .iter()
        .zip(x_values())
        .map(|(p, x)| p + 3.0 * x)
        .collect();
    close(gpu.output("p").unwrap().as_f32().unwrap(), &expected, "p");
}

#[test]
fn a_missing_device_ordinal_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    train_bundle(dir.path());
    let loaded = load_bundle(dir.path()).unwrap();
    match Session::new(&loaded, Device::Cuda { ordinal: 4096 }) {
        Err(RuntimeError::NoGpu(message)) => {
            assert!(
                message.starts_with("no NVIDIA driver") || message.contains("no CUDA device 4096"),
                "{message}"
            );
        }
        Err(e) => panic!("expected NoGpu, got {e}"),
        Ok(_) => panic!("expected NoGpu for device 4096"),
    }
}

/// The hand-written PTX is valid: assembled with `ptxas` (`$RFNC_PTXAS`, else where the
/// set-up puts it; a missing one fails the test).
#[test]
fn hand_written_ptx_assembles() {
    let installed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.cache/cuda-nvcc/nvidia/cuda_nvcc/bin/ptxas"
    );
    let ptxas = std::env::var("RFNC_PTXAS").unwrap_or_else(|_| installed.to_string());
    assert!(
        std::path::Path::new(&ptxas).is_file(),
        "ptxas not found at `{ptxas}`: run scripts/setup.sh (./dev test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    for kernel in [&RELU, &ADD, &EXP, &LOG] {
        let path = dir.path().join(format!("{}.ptx", kernel.name));
        std::fs::write(&path, ptx(kernel)).unwrap();
        let out = std::process::Command::new(&ptxas)
            .args(["-arch=sm_80", "-o"])
            .arg(dir.path().join("out.cubin"))
            .arg(&path)
            .output()
            .expect("ptxas runs");
        assert!(
            out.status.success(),
            "ptxas rejects {}: {}\n{}",
            kernel.name,
            String::from_utf8_lossy(&out.stderr),
            ptx(kernel)
        );
    }
}
