//! Canonicalisation passes on small before/expected graphs.

use rfnc_compiler::ir::{parse_graph, print_graph, verify};
use rfnc_compiler::passes::canonical::{common_subexpressions, dead_code, inference};

const BEFORE: &str = r#""rfn.graph"() ({
  %0 = "rfn.input"() {name = "x"} : () -> tensor<1x2x4x4xf32> loc(unknown)
  %1 = "rfn.relu"(%0) : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  %2 = "rfn.relu"(%0) : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  %3 = "rfn.add"(%1, %2) : (tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  %4 = "rfn.max_pool2d"(%0) {kernel = [3, 3], pad = [1, 1, 1, 1], stride = [1, 1]} : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  %5 = "rfn.dropout"(%3) {rate = 0.5, seed = 0, stream = 0} : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  "rfn.return"(%5) {names = ["y"]} : (tensor<1x2x4x4xf32>) -> ()
}) {sym_name = "g"} : () -> ()
"#;

#[test]
fn cse_merges_equal_ops_and_dce_removes_the_unused() {
    let mut g = parse_graph(BEFORE).unwrap();
    assert_eq!(common_subexpressions(&mut g), 1, "the two relu(x) are one");
    assert_eq!(dead_code(&mut g), 1, "the unused max-pool goes");
    assert_eq!(verify(&g), vec![]);
    let expected = r#""rfn.graph"() ({
  %0 = "rfn.input"() {name = "x"} : () -> tensor<1x2x4x4xf32> loc(unknown)
  %1 = "rfn.relu"(%0) : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  %2 = "rfn.add"(%1, %1) : (tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  %3 = "rfn.dropout"(%2) {rate = 0.5, seed = 0, stream = 0} : (tensor<1x2x4x4xf32>) -> tensor<1x2x4x4xf32> loc(unknown)
  "rfn.return"(%3) {names = ["y"]} : (tensor<1x2x4x4xf32>) -> ()
}) {sym_name = "g"} : () -> ()
"#;
    assert_eq!(print_graph(&g), expected);
}

#[test]
fn inference_drops_dropout_and_the_objective() {
    let text = BEFORE
        .replace(
            "  \"rfn.return\"(%5) {names = [\"y\"]}",
            "  %6 = \"rfn.input\"() {name = \"labels\"} : () -> tensor<1x4x4xi32> loc(unknown)\n  %7 = \"rfn.softmax_cross_entropy\"(%5, %6) {ignore_index = 255, reduction = \"mean\"} : (tensor<1x2x4x4xf32>, tensor<1x4x4xi32>) -> tensor<f32> loc(unknown)\n  \"rfn.return\"(%5, %7) {names = [\"y\", \"loss\"], objective = \"loss\"}",
        )
        .replace(": (tensor<1x2x4x4xf32>) -> ()\n}", ": (tensor<1x2x4x4xf32>, tensor<f32>) -> ()\n}");
    let g = parse_graph(&text).unwrap();
    assert_eq!(verify(&g), vec![]);
    let inf = inference(&g);
    assert_eq!(verify(&inf), vec![]);
    let printed = print_graph(&inf);
    assert!(
        !printed.contains("dropout") && !printed.contains("labels") && !printed.contains("softmax"),
        "{printed}"
    );
    assert_eq!(inf.outputs.len(), 1);
    assert!(inf.objective.is_none());
}
