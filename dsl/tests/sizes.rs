//! Sizes computed from the first input's symbols: in later inputs' declarations
//! (`f32[N, 1, H / 4, W / 4]`) and, as variables of the network body, in block arguments.

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
