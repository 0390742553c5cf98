//! Every example: loads, elaborates for ResNet-50/101/152, verifies, round-trips through the
//! IR text form, is accepted by mlir-opt, and matches its AST and graph snapshots.

mod common;

use common::*;
use rfnc_compiler::ir::{parse_graph, print_graph, verify, Op};
use rfnc_dsl::ast_print::print_modules;

const SMALL: [u64; 4] = [1, 3, 64, 64];

#[test]
fn every_example_elaborates_for_every_depth() {
    for name in EXAMPLES {
        for depth in ["50", "101", "152"] {
            let g = graph(name, &[1, 3, 512, 512], &[("depth", depth)]);
            assert!(!g.outputs.is_empty());
            assert!(g.objective.is_some(), "{name}: has a training objective");
        }
    }
}

#[test]
fn deeper_backbones_have_more_bottlenecks() {
    let convs = |depth: &str| {
        let g = graph("refinenet4", &SMALL, &[("depth", depth)]);
        g.node_ids()
            .filter(|&id| {
                matches!(g.node(id).op, Op::Conv2d { .. })
                    && g.node(id).loc.component() == "backbone"
            })
            .count()
    };
    // 1 stem conv + 3 convs per bottleneck + 4 projection shortcuts.
    assert_eq!(convs("50"), 1 + 3 * 16 + 4);
    assert_eq!(convs("101"), 1 + 3 * 33 + 4);
    assert_eq!(convs("152"), 1 + 3 * 50 + 4);
}

#[test]
fn two_scale_model_has_two_backbones() {
    let g = graph("refinenet4_2scale", &SMALL, &[]);
    let mut components: Vec<&str> = g.node_ids().map(|id| g.node(id).loc.component()).collect();
    components.sort_unstable();
    components.dedup();
    assert!(components.contains(&"backbone_large") && components.contains(&"backbone_small"));
    let stems: Vec<_> = g
        .node_ids()
        .filter_map(|id| match &g.node(id).op {
            Op::Param { name, .. }
                if name.starts_with("backbone")
                    && name.ends_with(".conv1.weight")
                    && !name.contains("layer") =>
            {
                Some(name.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(stems.len(), 2, "two independent stems: {stems:?}");
    // The two backbones see the image at 1.2x and 0.6x: 64 -> floor(76.8) and floor(38.4).
    let image = g
        .node_ids()
        .find(|&id| matches!(&g.node(id).op, Op::Input { name } if name == "image"))
        .unwrap();
    let mut sizes: Vec<Vec<u64>> = g
        .users(image)
        .iter()
        .map(|&u| g.node(u).ty.dims.clone())
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![vec![1, 3, 38, 38], vec![1, 3, 76, 76]]);
}

#[test]
fn print_parse_print_is_identity_for_every_example() {
    for name in EXAMPLES {
        let g = graph(name, &SMALL, &[]);
        let text = print_graph(&g);
        let parsed = parse_graph(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(verify(&parsed).is_empty(), "{name}: parsed graph verifies");
        assert_eq!(print_graph(&parsed), text, "{name}: round trip");
    }
}

#[test]
fn mlir_opt_accepts_every_graph_dump() {
    for name in EXAMPLES {
        for depth in ["50", "152"] {
            let text = print_graph(&graph(name, &SMALL, &[("depth", depth)]));
            let what = format!("{name} (depth {depth})");
            assert_mlir_opt_accepts(&text, &["--allow-unregistered-dialect"], &what);
        }
    }
}

#[test]
fn ast_snapshots() {
    for name in EXAMPLES {
        let program = load(&example_path(name));
        let text = print_modules(
            std::slice::from_ref(program.main_module()),
            &program.sources,
        );
        insta::assert_snapshot!(format!("ast_{name}"), text);
    }
}

#[test]
fn standard_library_ast_snapshot() {
    let program = load(&example_path("refinenet4"));
    let std_modules: Vec<_> = program
        .modules
        .iter()
        .filter(|m| m.file != program.main)
        .cloned()
        .collect();
    insta::assert_snapshot!("ast_std", print_modules(&std_modules, &program.sources));
}

#[test]
fn graph_snapshots() {
    for name in EXAMPLES {
        // tiny keeps its one-bottleneck-per-stage default; the paper's models use ResNet-50.
        let defines: &[(&str, &str)] = if *name == "tiny" {
            &[]
        } else {
            &[("depth", "50")]
        };
        let g = graph(name, &SMALL, defines);
        insta::assert_snapshot!(format!("graph_{name}"), print_graph(&g));
    }
}
