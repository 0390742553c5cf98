//! The runtime on hand-made bundles: CPU execution with one and two threads, the prepare
//! program and folded leaves, training steps in place, and every user error's message.

mod common;

use std::collections::BTreeMap;

use common::*;
use rfnc_bundle::BUNDLE_VERSION;
use rfnc_runtime::{load_bundle, Device, LoadedBundle, RuntimeError, Session, Weights};

fn weights(entries: &[(&str, Vec<u64>, Vec<f32>)]) -> Weights {
    Weights {
        tensors: entries
            .iter()
            .map(|(n, s, d)| (n.to_string(), (s.clone(), d.clone())))
            .collect::<BTreeMap<_, _>>(),
        ..Weights::default()
    }
}

fn inference() -> (tempfile::TempDir, LoadedBundle) {
    let dir = tempfile::tempdir().unwrap();
    inference_bundle(dir.path());
    let loaded = load_bundle(dir.path()).unwrap();
    (dir, loaded)
}

fn ready_session(loaded: &LoadedBundle, threads: usize) -> Session {
    let mut session = Session::new(loaded, Device::Cpu { threads }).unwrap();
    feed_inference(&mut session, 0);
    session
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn cpu_runs_with_one_and_two_threads() {
    let (_dir, loaded) = inference();
    let x = x_values();
    let p = p_values();
    let y: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    let z: Vec<f32> = y.iter().zip(&p).map(|(a, b)| a + b.exp()).collect();
    let w: Vec<f32> = x2_values().iter().map(|v| v.ln()).collect();
    for threads in [1, 2, 3, 8] {
        let mut session = ready_session(&loaded, threads);
        session.run().unwrap();
        let out = session.output("y").unwrap();
        assert_eq!(out.shape, vec![N]);
        assert_eq!(out.as_f32().unwrap(), y.as_slice(), "threads={threads}");
        close(session.output("z").unwrap().as_f32().unwrap(), &z);
        close(session.output("w").unwrap().as_f32().unwrap(), &w);
        let names: Vec<String> = session
            .outputs()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["y", "z", "w"]);
        // The folded leaf holds exp(p).
        let folded: Vec<f32> = p.iter().map(|v| v.exp()).collect();
        close(session.leaf("p.folded").unwrap().as_f32().unwrap(), &folded);
        assert_eq!(session.leaf("step").unwrap().as_i32().unwrap(), &[0]);
    }
}

#[test]
fn prepare_runs_again_after_parameters_change() {
    let (_dir, loaded) = inference();
    let mut session = ready_session(&loaded, 2);
    session.prepare().unwrap();
    session.run().unwrap();
    let new_p = vec![0.0f32; N as usize];
    session.set_leaf_f32("p", &new_p).unwrap();
    session.run().unwrap();
    let z = session.output("z").unwrap();
    let y: Vec<f32> = x_values().iter().map(|v| v.max(0.0) + 1.0).collect();
    close(z.as_f32().unwrap(), &y);
}

#[test]
fn profiling_times_every_launch() {
    let (_dir, loaded) = inference();
    let mut session = ready_session(&loaded, 1);
    session.set_profiling(true);
    session.run().unwrap();
    let timings = session.last_timings().unwrap();
    assert_eq!(timings.launches.as_ref().unwrap().len(), 3);
}

#[test]
fn training_steps_update_parameters_in_place() {
    let dir = tempfile::tempdir().unwrap();
    train_bundle(dir.path());
    let loaded = load_bundle(dir.path()).unwrap();
    let mut session = Session::new(&loaded, Device::Cpu { threads: 2 }).unwrap();
    // Momentum is optional in the weights: zeros.
    session
        .load_weights(&weights(&[("p", vec![N], p_values())]))
        .unwrap();
    session.set_leaf_f32("x", &x_values()).unwrap();
    session.run().unwrap();
    session.run().unwrap();
    let expected: Vec<f32> = p_values()
        .iter()
        .zip(x_values())
        .map(|(p, x)| p + 2.0 * x)
        .collect();
    assert_eq!(
        session.output("p").unwrap().as_f32().unwrap(),
        expected.as_slice()
    );
    let saved = session.weights().unwrap();
    assert_eq!(saved.tensors["p"].1, expected);
    assert_eq!(saved.tensors["p.momentum"].1, vec![0.0; N as usize]);
    // Saved weights (with momentum) load back into the training bundle.
    session.load_weights(&saved).unwrap();
}

fn error_text<T>(result: Result<T, RuntimeError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_bundle_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = error_text(load_bundle(dir.path()));
    assert!(text.contains("bundle.json"), "{text}");
    assert!(text.contains("no such file"), "{text}");
}

#[test]
fn corrupt_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bundle.json"), "{\"format\": ").unwrap();
    let text = error_text(load_bundle(dir.path()));
    assert!(text.contains("bundle.json"), "{text}");
    assert!(text.contains("invalid JSON"), "{text}");
}

#[test]
fn wrong_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bundle = inference_bundle(dir.path());
    bundle.version = BUNDLE_VERSION + 1;
    write_bundle(dir.path(), &bundle);
    let text = error_text(load_bundle(dir.path()));
    assert!(text.contains("bundle.json"), "{text}");
    assert!(text.contains("recompile"), "{text}");
    bundle.version = BUNDLE_VERSION;
    bundle.format = "something-else".to_string();
    write_bundle(dir.path(), &bundle);
    let text = error_text(load_bundle(dir.path()));
    assert!(text.contains("format is `something-else`"), "{text}");
}

#[test]
fn missing_kernel_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    inference_bundle(dir.path());
    std::fs::remove_file(dir.path().join("kernels/add.ptx")).unwrap();
    let text = error_text(load_bundle(dir.path()));
    assert!(text.contains("kernels/add.ptx"), "{text}");
    assert!(text.contains("kernel `add`"), "{text}");
}

/// A bundle with one device's code only (as `rfnc run FILE` compiles) refuses the other
/// device before touching it, and does not look for the files it does not have.
#[test]
fn a_bundle_runs_only_on_devices_whose_code_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut bundle = inference_bundle(dir.path());
    bundle.gpu_target = None;
    for k in &mut bundle.kernels {
        k.ptx = None;
    }
    write_bundle(dir.path(), &bundle);
    std::fs::remove_dir_all(dir.path().join("kernels")).unwrap();
    let loaded = load_bundle(dir.path()).expect("a host-only bundle loads");
    let text = error_text(Session::new(&loaded, Device::Cuda { ordinal: 0 }));
    assert!(text.contains("holds no PTX"), "{text}");
    assert!(Session::new(&loaded, Device::Cpu { threads: 1 }).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let mut bundle = inference_bundle(dir.path());
    bundle.host_code = false;
    write_bundle(dir.path(), &bundle);
    std::fs::remove_file(dir.path().join("host.bc")).unwrap();
    let loaded = load_bundle(dir.path()).expect("a PTX-only bundle loads");
    let text = error_text(Session::new(&loaded, Device::Cpu { threads: 1 }));
    assert!(text.contains("holds no host code"), "{text}");
}

#[test]
fn missing_or_corrupt_host_code_is_named() {
    let (dir, loaded) = inference();
    std::fs::write(dir.path().join("host.bc"), b"not bitcode").unwrap();
    let text = error_text(Session::new(&loaded, Device::Cpu { threads: 1 }));
    assert!(text.contains("host.bc"), "{text}");
    assert!(text.contains("not valid LLVM bitcode"), "{text}");
    std::fs::remove_file(dir.path().join("host.bc")).unwrap();
    let text = error_text(Session::new(&loaded, Device::Cpu { threads: 1 }));
    assert!(text.contains("host.bc"), "{text}");
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn leaf_errors_name_the_leaf() {
    let (_dir, loaded) = inference();
    let mut session = Session::new(&loaded, Device::Cpu { threads: 1 }).unwrap();
    let text = error_text(session.set_leaf_f32("image", &[0.0]));
    assert!(text.contains("leaf `image`"), "{text}");
    assert!(
        text.contains("no leaf of this name (its inputs: x, x2, step)"),
        "{text}"
    );
    let text = error_text(session.set_leaf_f32("x", &[0.0; 3]));
    assert_eq!(
        text,
        "leaf `x`: expected 10 values (shape [2, 5]), 3 were given"
    );
    let text = error_text(session.set_leaf_i32("x", &[0; 10]));
    assert_eq!(text, "leaf `x`: it holds f32 values, i32 were given");
    let text = error_text(session.set_leaf_f32("p.folded", &[0.0; 10]));
    assert!(text.contains("computed by the prepare program"), "{text}");
    let text = error_text(session.output("scores"));
    assert_eq!(
        text,
        "the bundle has no output named `scores` (outputs: y, z, w)"
    );
}

#[test]
fn running_without_inputs_or_weights_says_what_is_missing() {
    let (_dir, loaded) = inference();
    let mut session = Session::new(&loaded, Device::Cpu { threads: 1 }).unwrap();
    session.set_leaf_f32("x", &x_values()).unwrap();
    session.set_leaf_f32("x2", &x2_values()).unwrap();
    let text = error_text(session.run());
    assert!(
        text.starts_with("leaf `step`: input i32 of shape [1] was never given a value"),
        "{text}"
    );
    assert!(text.contains("1 more leaves are unset"), "{text}");
    session.set_leaf_i32("step", &[1]).unwrap();
    let text = error_text(session.run());
    assert!(text.starts_with("leaf `p`: parameter"), "{text}");
    assert!(text.contains("load the weights"), "{text}");
}

#[test]
fn weight_errors_name_every_tensor() {
    let (_dir, loaded) = inference();
    let mut session = Session::new(&loaded, Device::Cpu { threads: 1 }).unwrap();
    let text = error_text(session.load_weights(&weights(&[])));
    assert!(text.contains("missing tensor `p` of shape [10]"), "{text}");
    let text = error_text(session.load_weights(&weights(&[
        ("p", vec![2, 5], vec![0.0; 10]),
        ("q", vec![1], vec![0.0]),
    ])));
    assert!(
        text.contains("tensor `p` has shape [2, 5], the bundle needs [10]"),
        "{text}"
    );
    assert!(
        text.contains("extra tensor `q` is not a parameter of the bundle"),
        "{text}"
    );
    // An input or folded leaf is not a weight either.
    let text = error_text(session.load_weights(&weights(&[
        ("p", vec![N], p_values()),
        ("x", vec![2, 5], vec![0.0; 10]),
    ])));
    assert!(text.contains("extra tensor `x`"), "{text}");
    // A training checkpoint's momentum is accepted (and ignored) by an inference bundle.
    session
        .load_weights(&weights(&[
            ("p", vec![N], p_values()),
            ("p.momentum", vec![N], vec![0.0; 10]),
        ]))
        .unwrap();
}

#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    if rfnc_runtime::probe_driver().is_ok() {
        eprintln!("note: an NVIDIA driver is present; the no-driver error is not tested here");
        return;
    }
    let (_dir, loaded) = inference();
    match Session::new(&loaded, Device::Cuda { ordinal: 0 }) {
        Err(RuntimeError::NoGpu(message)) => {
            assert!(
                message.starts_with("no NVIDIA driver: libcuda.so.1 could not be loaded ("),
                "{message}"
            )
        }
        Err(e) => panic!("expected NoGpu, got {e}"),
        Ok(_) => panic!("expected NoGpu, got a session"),
    }
}
