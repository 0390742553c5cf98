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

/// The ops of channel attention, concatenation and average pooling, and their gradient
/// ops (a rank-0 `mul` operand and `sum_to` to a scalar included), in canonical form.
const NEW_OPS: &str = r#""rfn.graph"() ({
  %0 = "rfn.input"() {name = "a"} : () -> tensor<1x2x6x5xf32> loc(unknown)
  %1 = "rfn.input"() {name = "b"} : () -> tensor<1x3x6x5xf32> loc(unknown)
  %2 = "rfn.input"() {name = "w"} : () -> tensor<f32> loc(unknown)
  %3 = "rfn.concat"(%0, %1) : (tensor<1x2x6x5xf32>, tensor<1x3x6x5xf32>) -> tensor<1x5x6x5xf32> loc(unknown)
  %4 = "rfn.global_avg_pool2d"(%3) : (tensor<1x5x6x5xf32>) -> tensor<1x5x1x1xf32> loc(unknown)
  %5 = "rfn.sigmoid"(%4) : (tensor<1x5x1x1xf32>) -> tensor<1x5x1x1xf32> loc(unknown)
  %6 = "rfn.mul"(%3, %5) : (tensor<1x5x6x5xf32>, tensor<1x5x1x1xf32>) -> tensor<1x5x6x5xf32> loc(unknown)
  %7 = "rfn.avg_pool2d"(%6) {count_include_pad = false, kernel = [3, 3], pad = [1, 1, 1, 1], stride = [2, 2]} : (tensor<1x5x6x5xf32>) -> tensor<1x5x3x3xf32> loc(unknown)
  %8 = "rfn.mul"(%2, %7) : (tensor<f32>, tensor<1x5x3x3xf32>) -> tensor<1x5x3x3xf32> loc(unknown)
  %9 = "rfn.avg_pool2d_grad"(%8) {count_include_pad = false, input_size = [6, 5], kernel = [3, 3], pad = [1, 1, 1, 1], stride = [2, 2]} : (tensor<1x5x3x3xf32>) -> tensor<1x5x6x5xf32> loc(unknown)
  %10 = "rfn.slice_channels"(%9) {size = 3, start = 2} : (tensor<1x5x6x5xf32>) -> tensor<1x3x6x5xf32> loc(unknown)
  %11 = "rfn.sum_to"(%9) {shape = [1, 5, 1, 1]} : (tensor<1x5x6x5xf32>) -> tensor<1x5x1x1xf32> loc(unknown)
  %12 = "rfn.sigmoid_grad"(%11, %5) : (tensor<1x5x1x1xf32>, tensor<1x5x1x1xf32>) -> tensor<1x5x1x1xf32> loc(unknown)
  %13 = "rfn.global_avg_pool2d_grad"(%12) {input_size = [6, 5]} : (tensor<1x5x1x1xf32>) -> tensor<1x5x6x5xf32> loc(unknown)
  %14 = "rfn.sum_to"(%8) {shape = []} : (tensor<1x5x3x3xf32>) -> tensor<f32> loc(unknown)
  "rfn.return"(%10, %13, %14) {names = ["da", "dgap", "dw"]} : (tensor<1x3x6x5xf32>, tensor<1x5x6x5xf32>, tensor<f32>) -> ()
}) {sym_name = "new_ops"} : () -> ()
"#;

#[test]
fn new_ops_round_trip_and_verify() {
    let g = parse_graph(NEW_OPS).expect("parses");
    assert_eq!(verify(&g), vec![]);
    assert_eq!(print_graph(&g), NEW_OPS);
}

#[test]
fn new_ops_parse_and_verify_errors() {
    let no_operands = NEW_OPS.replace(
        "\"rfn.concat\"(%0, %1) : (tensor<1x2x6x5xf32>, tensor<1x3x6x5xf32>)",
        "\"rfn.concat\"() : ()",
    );
    assert!(parse_error(&no_operands).ends_with("rfn.concat takes at least 1 operand, found 0"));

    let empty_slice = NEW_OPS.replace("{size = 3, start = 2}", "{size = 0, start = 2}");
    assert!(parse_error(&empty_slice).ends_with("attribute `size` must be positive"));

    let negative = NEW_OPS.replace("{shape = [1, 5, 1, 1]}", "{shape = [1, -5, 1, 1]}");
    assert!(parse_error(&negative)
        .ends_with("attribute `shape` of rfn.sum_to must be an array of non-negative integers, found an integer array"));

    let missing = NEW_OPS.replace("{count_include_pad = false, kernel", "{kernel");
    assert!(
        parse_error(&missing).ends_with("rfn.avg_pool2d needs the attribute `count_include_pad`")
    );

    // Verifier: recorded types against the shape rules.
    let wrong_slice = NEW_OPS
        .replace(
            "-> tensor<1x3x6x5xf32> loc(unknown)\n  %11",
            "-> tensor<1x2x6x5xf32> loc(unknown)\n  %11",
        )
        .replace(
            ": (tensor<1x3x6x5xf32>, tensor<1x5x6x5xf32>, tensor<f32>) -> ()",
            ": (tensor<1x2x6x5xf32>, tensor<1x5x6x5xf32>, tensor<f32>) -> ()",
        );
    let messages = verify_messages(&wrong_slice);
    assert!(
        messages.iter().any(|m| m
            == "rfn.slice_channels is recorded as tensor<1x2x6x5xf32> but its operands give tensor<1x3x6x5xf32>"),
        "{messages:?}"
    );
    let out_of_range = NEW_OPS.replace("{size = 3, start = 2}", "{size = 3, start = 3}");
    let messages = verify_messages(&out_of_range);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("channels 3..6 are not a non-empty range of the 5 channels")),
        "{messages:?}"
    );
    let bad_sum = NEW_OPS.replace("{shape = [1, 5, 1, 1]}", "{shape = [1, 5, 2, 1]}");
    let messages = verify_messages(&bad_sum);
    assert!(
        messages
            .iter()
            .any(|m| m.contains("does not broadcast to [1, 5, 2, 1]")),
        "{messages:?}"
    );
}

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
    assert!(parse_error(&arity).contains("rfn.relu takes 1 operand, found 0"));

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
        vec!["objective \"scores\" is not a loss or a weighted sum of losses"]
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
