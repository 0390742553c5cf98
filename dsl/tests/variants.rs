//! What cascade variants need of the language: sizes computed from the first input's symbols
//! (`f32[N, 1, H / 4, W / 4]`, and in block arguments), and calls that share parameters
//! (`as shared NAME`).

use rfnc_dsl::{elaborate, load_source, Options};

fn shapes(text: &str, input: &[u64]) -> Result<Vec<(String, Vec<u64>)>, String> {
    let program = load_source("main.rfn", text.to_string(), None).map_err(|(d, s)| d.render(&s))?;
    let options = Options {
        input: input.to_vec(),
        defines: Vec::new(),
    };
    let graph = elaborate(&program, &options).map_err(|d| d.render(&program.sources))?;
    Ok(graph
        .outputs
        .iter()
        .map(|o| (o.name.clone(), graph.node(o.value).ty.dims.clone()))
        .collect())
}

#[test]
fn later_inputs_and_block_arguments_compute_with_the_sizes() {
    let text = "
        config stride: int = 4;
        network n {
            input image: f32[N, 3, H, W];
            input small: f32[N, 1, H / stride, (W + 2) / 4 - 1 + 1];
            output same = small + resize(image, H / 4, W / stride)[0:1];
        }";
    // `[0:1]` is not the language: use a conv to one channel instead.
    let text = text.replace(
        "resize(image, H / 4, W / stride)[0:1]",
        "conv(resize(image, H / 4, W / stride), 1, k = 1)",
    );
    let out = shapes(&text, &[2, 3, 32, 64]).unwrap();
    assert_eq!(out, [("same".to_string(), vec![2, 1, 8, 16])]);
}

#[test]
fn a_size_expression_in_the_first_input_or_below_one_is_an_error() {
    let first = "network n { input image: f32[N, 3, H / 2, W]; output o = relu(image); }";
    let e = shapes(first, &[1, 3, 8, 8]).unwrap_err();
    assert!(
        e.contains("the sizes of `image`, the first input, come from --input"),
        "{e}"
    );
    assert!(e.contains("main.rfn"), "{e}");
    let zero = "network n { input image: f32[N, 3, H, W]; input x: f32[N, 1, H - 8, W];
                            output o = relu(x); }";
    let e = shapes(zero, &[1, 3, 8, 8]).unwrap_err();
    assert!(e.contains("this size is 0"), "{e}");
    let not_int = "network n { input image: f32[N, 3, H, W]; input x: f32[N, 1, H * 0.5, W];
                               output o = relu(x); }";
    let e = shapes(not_int, &[1, 3, 8, 8]).unwrap_err();
    assert!(e.contains("expected an int for a size"), "{e}");
}

/// `as shared NAME` reuses the parameters an earlier call under that name made: one copy
/// in the graph; shapes must agree.
#[test]
fn shared_calls_reuse_parameters() {
    let params = |text: &str| -> Result<Vec<String>, String> {
        let program =
            load_source("main.rfn", text.to_string(), None).map_err(|(d, s)| d.render(&s))?;
        let options = Options {
            input: vec![1, 3, 8, 8],
            defines: Vec::new(),
        };
        let graph = elaborate(&program, &options).map_err(|d| d.render(&program.sources))?;
        let mut names: Vec<String> = graph
            .node_ids()
            .filter_map(|id| match &graph.node(id).op {
                rfnc_compiler::ir::Op::Param { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        Ok(names)
    };
    let shared = "network n { input image: f32[N, 3, H, W];
        let a = conv(image, 4) as c;
        let b = conv(relu(image), 4) as shared c;
        output o = a + b; }";
    assert_eq!(params(shared).unwrap(), ["c.weight"]);
    let twice = shared.replace("as shared c", "as c");
    let e = params(&twice).unwrap_err();
    assert!(e.contains("parameter `c.weight` is defined twice"), "{e}");
    assert!(e.contains("as shared NAME"), "{e}");
    let other = shared.replace(
        "conv(relu(image), 4) as shared c",
        "conv(relu(image), 8) as shared c",
    );
    let e = params(&other).unwrap_err();
    assert!(
        e.contains("shared parameter `c.weight` is [8, 3, 3, 3] here but [4, 3, 3, 3]"),
        "{e}"
    );
    // A scope may still be called `shared`.
    let named = shared.replace("as shared c", "as shared");
    assert!(params(&named)
        .unwrap()
        .contains(&"shared.weight".to_string()));
}
