//! The IR text form: print -> parse -> print identity over every op, parse errors with
//! line:column, and the verifier's checks, written as before/expected IR text.

use rfnc_compiler::ir::{parse_graph, print_graph, verify};

/// A graph using every op and attribute kind, in the printer's canonical form.
const EVERY_OP: &str = r#""rfn.graph"() ({
  %0 = "rfn.input"() {name = "image"} : () -> tensor<1x4x9x9xf32> loc("t.rfn":1:1 to 1:20)
  %1 = "rfn.input"() {name = "labels"} : () -> tensor<1x9x9xi32> loc("t.rfn":2:1 to 2:20)
  %2 = "rfn.input"() {name = "depth"} : () -> tensor<1x1x9x9xf32> loc(unknown)
  %3 = "rfn.param"() {kind = "conv_weight", name = "c.weight"} : () -> tensor<6x2x3x3xf32> loc("c"("t.rfn":3:5 to 3:30))
  %4 = "rfn.param"() {kind = "conv_bias", name = "c.bias"} : () -> tensor<6xf32> loc("c")
  %5 = "rfn.conv2d"(%0, %3, %4) {dilation = [2, 2], groups = 2, pad = [2, 2, 2, 2], stride = [2, 2]} : (tensor<1x4x9x9xf32>, tensor<6x2x3x3xf32>, tensor<6xf32>) -> tensor<1x6x5x5xf32> loc("c"("t.rfn":3:5 to 3:30))
  %6 = "rfn.param"() {kind = "bn_mean", name = "bn.running_mean"} : () -> tensor<6xf32> loc("bn")
  %7 = "rfn.param"() {kind = "bn_var", name = "bn.running_var"} : () -> tensor<6xf32> loc("bn")
  %8 = "rfn.param"() {kind = "bn_gamma", name = "bn.weight"} : () -> tensor<6xf32> loc("bn")
  %9 = "rfn.param"() {kind = "bn_beta", name = "bn.bias"} : () -> tensor<6xf32> loc("bn")
  %10 = "rfn.batch_norm"(%5, %6, %7, %8, %9) {eps = 1.0e-5} : (tensor<1x6x5x5xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>) -> tensor<1x6x5x5xf32> loc("bn")
  %11 = "rfn.relu"(%10) : (tensor<1x6x5x5xf32>) -> tensor<1x6x5x5xf32> loc(unknown)
  %12 = "rfn.max_pool2d"(%11) {kernel = [5, 5], pad = [2, 2, 2, 2], stride = [1, 1]} : (tensor<1x6x5x5xf32>) -> tensor<1x6x5x5xf32> loc(unknown)
  %13 = "rfn.add"(%11, %12) : (tensor<1x6x5x5xf32>, tensor<1x6x5x5xf32>) -> tensor<1x6x5x5xf32> loc(unknown)
  %14 = "rfn.dropout"(%13) {rate = 0.5, seed = 0, stream = 3} : (tensor<1x6x5x5xf32>) -> tensor<1x6x5x5xf32> loc(unknown)
  %15 = "rfn.resize_bilinear"(%14) {align_corners = true, size = [9, 9]} : (tensor<1x6x5x5xf32>) -> tensor<1x6x9x9xf32> loc(unknown)
  %16 = "rfn.softmax_cross_entropy"(%15, %1) {ignore_index = 255, reduction = "mean"} : (tensor<1x6x9x9xf32>, tensor<1x9x9xi32>) -> tensor<f32> loc(unknown)
  %17 = "rfn.param"() {kind = "conv_weight", name = "d.weight"} : () -> tensor<1x6x1x1xf32> loc("d")
  %18 = "rfn.conv2d"(%15, %17) {dilation = [1, 1], groups = 1, pad = [0, 0, 0, 0], stride = [1, 1]} : (tensor<1x6x9x9xf32>, tensor<1x6x1x1xf32>) -> tensor<1x1x9x9xf32> loc("d")
  %19 = "rfn.least_squares"(%18, %2) {ignore_value = 0.0, reduction = "sum"} : (tensor<1x1x9x9xf32>, tensor<1x1x9x9xf32>) -> tensor<f32> loc(unknown)
  "rfn.return"(%15, %16, %19) {names = ["scores", "loss", "depth_loss"], objective = "loss"} : (tensor<1x6x9x9xf32>, tensor<f32>, tensor<f32>) -> ()
}) {sym_name = "every_op"} : () -> ()
"#;

#[test]
fn every_op_round_trips_and_verifies() {
    let g = parse_graph(EVERY_OP).expect("parses");
    assert_eq!(verify(&g), vec![]);
    assert_eq!(print_graph(&g), EVERY_OP);
    assert_eq!(g.name, "every_op");
    assert_eq!(g.objective.as_deref(), Some("loss"));
}

#[test]
fn parser_accepts_mlir_opt_style_attribute_types_and_comments() {
    let text = EVERY_OP
        .replace("{eps = 1.0e-5}", "{eps = 1.000000e-05 : f64}")
        .replace("groups = 2,", "groups = 2 : i64,")
        .replace("\"rfn.graph\"() ({\n", "// a comment\n\"rfn.graph\"() ({\n");
    let g = parse_graph(&text).expect("parses");
    assert_eq!(print_graph(&g), EVERY_OP);
}

fn parse_error(text: &str) -> String {
    parse_graph(text)
        .map(|_| ())
        .expect_err("must not parse")
        .to_string()
}

#[test]
fn parse_errors_name_the_line_and_column() {
    let undefined = EVERY_OP.replace("\"rfn.relu\"(%10)", "\"rfn.relu\"(%99)");
    assert_eq!(parse_error(&undefined), "13:20: use of undefined value %99");

    let twice = EVERY_OP.replace("%11 = \"rfn.relu\"", "%10 = \"rfn.relu\"");
    assert!(parse_error(&twice).contains("value %10 is defined twice"));

    let unknown = EVERY_OP.replace("rfn.relu", "rfn.gelu");
    assert!(parse_error(&unknown).ends_with("unknown operation \"rfn.gelu\""));

    let missing = EVERY_OP.replace(
        "{rate = 0.5, seed = 0, stream = 3}",
        "{rate = 0.5, seed = 0}",
    );
    assert!(parse_error(&missing).ends_with("rfn.dropout needs the attribute `stream`"));

    let extra = EVERY_OP.replace(
        "{rate = 0.5, seed = 0, stream = 3}",
        "{rate = 0.5, seed = 0, stream = 3, mask = 1}",
    );
    assert!(parse_error(&extra).ends_with("rfn.dropout has no attribute `mask`"));

    let wrong_kind = EVERY_OP.replace(
        "stride = [1, 1]} : (tensor<1x6x5x5",
        "stride = 1} : (tensor<1x6x5x5",
    );
    assert!(parse_error(&wrong_kind)
        .contains("attribute `stride` of rfn.max_pool2d must be an array of 2 integers"));

    let operand_type = EVERY_OP.replace(
        "\"rfn.relu\"(%10) : (tensor<1x6x5x5xf32>)",
        "\"rfn.relu\"(%10) : (tensor<1x6x5x4xf32>)",
    );
    assert!(parse_error(&operand_type).contains(
        "operand type tensor<1x6x5x4xf32> does not match the value's type tensor<1x6x5x5xf32>"
    ));

    let arity = EVERY_OP.replace(
        "\"rfn.relu\"(%10) : (tensor<1x6x5x5xf32>)",
        "\"rfn.relu\"() : ()",
    );
    assert!(parse_error(&arity).contains("rfn.relu takes 1..=1 operands, found 0"));

    let syntax = EVERY_OP.replace("%13 = \"rfn.add\"", "%13 = rfn.add");
    assert_eq!(
        parse_error(&syntax),
        "15:9: syntax error: expected an op name such as \"rfn.relu\""
    );

    let names = EVERY_OP.replace(
        "names = [\"scores\", \"loss\", \"depth_loss\"]",
        "names = [\"scores\"]",
    );
    assert!(parse_error(&names).contains("rfn.return has 3 values but 1 names"));
}

fn verify_messages(text: &str) -> Vec<String> {
    verify(&parse_graph(text).expect("parses"))
        .into_iter()
        .map(|e| e.message)
        .collect()
}

#[test]
fn verifier_rejects_a_wrong_recorded_type() {
    let text = EVERY_OP.replace(
        "-> tensor<1x6x5x5xf32> loc(\"c\"(",
        "-> tensor<1x6x4x4xf32> loc(\"c\"(",
    );
    // The conv now claims 4x4, and the batch norm that uses it no longer fits either.
    let text = text.replace(
        "(tensor<1x6x5x5xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>)",
        "(tensor<1x6x4x4xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>, tensor<6xf32>)",
    );
    let messages = verify_messages(&text);
    assert!(
        messages.iter().any(|m| m == "rfn.conv2d is recorded as tensor<1x6x4x4xf32> but its operands give tensor<1x6x5x5xf32>"),
        "{messages:?}"
    );
}

#[test]
fn verifier_rejects_duplicate_names_and_bad_objectives() {
    let dup = EVERY_OP.replace("name = \"bn.bias\"", "name = \"bn.weight\"");
    assert!(verify_messages(&dup)
        .iter()
        .any(|m| m.contains("parameter name \"bn.weight\" is empty or used twice")));

    let not_loss = EVERY_OP.replace("objective = \"loss\"", "objective = \"scores\"");
    assert_eq!(
        verify_messages(&not_loss),
        vec!["objective \"scores\" is not a loss"]
    );

    let missing = EVERY_OP.replace("objective = \"loss\"", "objective = \"total\"");
    assert_eq!(
        verify_messages(&missing),
        vec!["objective \"total\" is not an output"]
    );

    let bad_param = EVERY_OP
        .replace(
            "-> tensor<6xf32> loc(\"bn\")\n  %7",
            "-> tensor<6x1xf32> loc(\"bn\")\n  %7",
        )
        .replace(
            "(tensor<1x6x5x5xf32>, tensor<6xf32>, tensor<6xf32>",
            "(tensor<1x6x5x5xf32>, tensor<6x1xf32>, tensor<6xf32>",
        );
    let messages = verify_messages(&bad_param);
    assert!(
        messages.iter().any(|m| m.contains(
            "parameter \"bn.running_mean\" of kind bn_mean cannot have type tensor<6x1xf32>"
        )),
        "{messages:?}"
    );
}
