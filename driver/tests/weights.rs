//! Weights against a graph: save/load round trip, the checks against the graph's
//! parameters, and the deterministic initialisation from its rules.

use rfnc_compiler::ir::parse_graph;
use rfnc_driver::weights::{check_weights, init_weights};
use rfnc_runtime::{load_weights, save_weights, WeightsError};

const GRAPH: &str = r#""rfn.graph"() ({
  %0 = "rfn.input"() {name = "image"} : () -> tensor<1x64x8x8xf32> loc(unknown)
  %1 = "rfn.param"() {kind = "conv_weight", name = "c.weight"} : () -> tensor<32x64x3x3xf32> loc(unknown)
  %2 = "rfn.param"() {kind = "conv_bias", name = "c.bias"} : () -> tensor<32xf32> loc(unknown)
  %3 = "rfn.conv2d"(%0, %1, %2) {dilation = [1, 1], groups = 1, pad = [1, 1, 1, 1], stride = [1, 1]} : (tensor<1x64x8x8xf32>, tensor<32x64x3x3xf32>, tensor<32xf32>) -> tensor<1x32x8x8xf32> loc(unknown)
  %4 = "rfn.param"() {kind = "bn_mean", name = "bn.running_mean"} : () -> tensor<32xf32> loc(unknown)
  %5 = "rfn.param"() {kind = "bn_var", name = "bn.running_var"} : () -> tensor<32xf32> loc(unknown)
  %6 = "rfn.param"() {kind = "bn_gamma", name = "bn.weight"} : () -> tensor<32xf32> loc(unknown)
  %7 = "rfn.param"() {kind = "bn_beta", name = "bn.bias"} : () -> tensor<32xf32> loc(unknown)
  %8 = "rfn.batch_norm"(%3, %4, %5, %6, %7) {eps = 1.0e-5} : (tensor<1x32x8x8xf32>, tensor<32xf32>, tensor<32xf32>, tensor<32xf32>, tensor<32xf32>) -> tensor<1x32x8x8xf32> loc(unknown)
  "rfn.return"(%8) {names = ["y"]} : (tensor<1x32x8x8xf32>) -> ()
}) {sym_name = "g"} : () -> ()
"#;

#[test]
fn saved_weights_load_back_identically_and_fit_the_graph() {
    let graph = parse_graph(GRAPH).unwrap();
    let weights = init_weights(&graph, 7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    save_weights(&path, &weights).unwrap();
    let loaded = load_weights(&path).unwrap();
    assert_eq!(loaded, weights);
    assert_eq!(check_weights(&graph, &loaded), Ok(()));
}

#[test]
fn initialisation_is_deterministic_and_he_scaled() {
    let graph = parse_graph(GRAPH).unwrap();
    let a = init_weights(&graph, 1);
    assert_eq!(a, init_weights(&graph, 1));
    assert_ne!(
        a.tensors["c.weight"].1,
        init_weights(&graph, 2).tensors["c.weight"].1
    );
    let w = &a.tensors["c.weight"].1;
    let n = w.len() as f64;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let he = (2.0f64 / (64.0 * 9.0)).sqrt();
    assert!(mean.abs() < 0.01 * 3.0 * he, "mean {mean}");
    assert!((std / he - 1.0).abs() < 0.03, "std {std} vs {he}");
    assert!(a.tensors["c.bias"].1.iter().all(|&v| v == 0.0));
    assert!(a.tensors["bn.running_var"].1.iter().all(|&v| v == 1.0));
    assert!(a.tensors["bn.weight"].1.iter().all(|&v| v == 1.0));
    assert!(a.tensors["bn.running_mean"].1.iter().all(|&v| v == 0.0));
}

#[test]
fn mismatches_name_every_tensor() {
    let graph = parse_graph(GRAPH).unwrap();
    let mut w = init_weights(&graph, 0);
    w.tensors.remove("bn.bias");
    w.tensors.get_mut("c.weight").unwrap().0 = vec![32, 64, 1, 9];
    w.tensors.insert("fc.weight".into(), (vec![1], vec![0.0]));
    let Err(WeightsError::Mismatch { problems }) = check_weights(&graph, &w) else {
        panic!("must mismatch")
    };
    assert_eq!(
        problems,
        vec![
            "missing tensor `bn.bias` of shape [32]".to_string(),
            "tensor `c.weight` has shape [32, 64, 1, 9], the network needs [32, 64, 3, 3]"
                .to_string(),
            "extra tensor `fc.weight` is not a parameter of the network".to_string(),
        ]
    );
}
