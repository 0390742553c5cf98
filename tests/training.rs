//! The training step: whole-network gradients against finite differences (f64), the SGD
//! update rule, learning-rate groups and frozen parameters, overfitting one batch, and the
//! snapshot of the training graph of tiny.rfn.

mod common;

use std::collections::HashMap;

use common::*;
use rfnc_compiler::interp::{run, Tensor, Value};
use rfnc_compiler::ir::{print_graph, verify, NodeId, Output};
use rfnc_compiler::passes::autodiff::gradients;
use rfnc_compiler::passes::train::{train_step, with_active_dropout, TrainConfig};
use rfnc_compiler::rng::splitmix64;

fn scalar<T: rfnc_compiler::interp::Real>(v: &Value<T>) -> f64 {
    v.real().data[0].f64()
}

/// Checks d loss / d params of the whole network (dropout active) against central
/// differences on a deterministic sample of parameter elements. The bound on the relative
/// error is 1e-5: a wrong or missing gradient contribution is an error of order 1, while a
/// central difference whose step crosses a ReLU or max-pool kink of the sampled element is
/// off by about 1e-6 (seen with some initial weights).
fn check_network_gradient(example: &str, defines: &[(&str, &str)], input: &[u64]) {
    let bound = 1e-5;
    let forward = graph(example, input, defines);
    let mut g = with_active_dropout(&forward, 1);
    let loss = g.output(g.objective.as_deref().unwrap()).unwrap();
    let params = trainable(&g);
    let ids: Vec<NodeId> = params.iter().map(|(_, id)| *id).collect();
    let grads = gradients(&mut g, loss, &ids).unwrap();
    let mut with_grads = g.clone();
    with_grads.outputs = params
        .iter()
        .zip(&grads)
        .map(|((n, _), d)| Output {
            name: n.clone(),
            value: d.expect("every parameter reaches the loss"),
        })
        .collect();
    with_grads.objective = None;
    assert_eq!(verify(&with_grads), vec![]);
    let base: HashMap<String, Value<f64>> = feeds(&g, 3);
    let analytic: HashMap<String, Tensor<f64>> = run(&with_grads, &base)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.real().clone()))
        .collect();

    let mut loss_graph = g.clone();
    loss_graph.outputs = vec![Output {
        name: "loss".into(),
        value: loss,
    }];
    loss_graph.objective = None;
    let loss_at =
        |feeds: &HashMap<String, Value<f64>>| scalar(&run(&loss_graph, feeds).unwrap()[0].1);
    // Every fourth parameter tensor, one element each, chosen by hash.
    let (mut err2, mut norm2, mut checked) = (0.0f64, 0.0f64, 0);
    for (k, (name, _)) in params.iter().enumerate().filter(|(k, _)| k % 4 == 0) {
        let tensor = base[name].real().clone();
        let i = (splitmix64(k as u64) % tensor.data.len() as u64) as usize;
        let h = 1e-6;
        let mut feeds = base.clone();
        let mut plus = tensor.clone();
        plus.data[i] += h;
        feeds.insert(name.clone(), Value::Real(plus));
        let lp = loss_at(&feeds);
        let mut minus = tensor.clone();
        minus.data[i] -= h;
        feeds.insert(name.clone(), Value::Real(minus));
        let lm = loss_at(&feeds);
        let numeric = (lp - lm) / (2.0 * h);
        err2 += (numeric - analytic[name].data[i]).powi(2);
        norm2 += numeric.powi(2);
        checked += 1;
    }
    let rel = err2.sqrt() / norm2.sqrt();
    assert!(
        norm2 > 0.0 && checked >= 10,
        "{example}: {checked} elements checked"
    );
    assert!(
        rel < bound,
        "{example}: training-step gradient relative error {rel:e} over {checked} elements"
    );
}

const TINY_WIDTHS: &[(&str, &str)] = &[
    ("depth", "50"),
    ("base_width", "2"),
    ("refine_width", "4"),
    ("classes", "3"),
];

#[test]
fn tiny_training_gradient_matches_finite_differences() {
    check_network_gradient("tiny", &[], &[1, 3, 32, 32]);
}

#[test]
fn cascade_variants_training_gradients_match_finite_differences() {
    for example in [
        "refinenet1",
        "refinenet2",
        "refinenet4",
        "refinenet4_2scale",
    ] {
        check_network_gradient(example, TINY_WIDTHS, &[1, 3, 32, 32]);
    }
}

/// One backbone applied to both scales (`as shared`): the gradients of its parameters
/// accumulate over both uses.
#[test]
fn a_shared_backbone_accumulates_gradients_from_both_uses() {
    let mut defines = TINY_WIDTHS.to_vec();
    defines.push(("share_backbone", "true"));
    check_network_gradient("refinenet4_2scale", &defines, &[1, 3, 32, 32]);
}

#[test]
fn depth_regression_training_gradient_matches_finite_differences() {
    let defines: Vec<(&str, &str)> = TINY_WIDTHS
        .iter()
        .copied()
        .filter(|(k, _)| *k != "classes")
        .collect();
    check_network_gradient("refinenet4_depth", &defines, &[1, 3, 32, 32]);
}

#[test]
fn sgd_update_follows_the_rule_with_groups_and_frozen_parameters() {
    let forward = graph("tiny", &[1, 3, 32, 32], &[]);
    let config = TrainConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.01,
        seed: 1,
        lr_scales: vec![("backbone".into(), 0.5), ("backbone.layer1".into(), 0.25)],
        frozen: vec!["head.classifier.bias".into()],
    };
    let step = train_step(&forward, &config).unwrap();
    assert!(verify(&step).is_empty());
    assert!(
        step.output("head.classifier.bias").is_none(),
        "frozen: not updated"
    );
    assert!(step.output("head.classifier.weight").is_some());

    // The gradients at the same point, from autodiff on the active-dropout graph.
    let mut g = with_active_dropout(&forward, 1);
    let loss = g.output("loss").unwrap();
    let params = trainable(&g);
    let grads = gradients(
        &mut g,
        loss,
        &params.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
    )
    .unwrap();
    g.outputs = params
        .iter()
        .zip(&grads)
        .map(|((n, _), d)| Output {
            name: n.clone(),
            value: d.unwrap(),
        })
        .collect();
    g.objective = None;
    let mut feeds: HashMap<String, Value<f64>> = feeds(&g, 5);
    let grad: HashMap<String, Tensor<f64>> = run(&g, &feeds)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.real().clone()))
        .collect();

    for (name, _) in &params {
        let dims = feeds[name].dims().to_vec();
        // A non-zero starting momentum, to see it decay.
        feeds.insert(
            format!("{name}.momentum"),
            Value::Real(Tensor::filled(dims, 0.5)),
        );
    }
    // The schedule's factor scales every update.
    feeds.insert("lr_factor".into(), Value::Real(Tensor::scalar(0.75)));
    let out: HashMap<String, Tensor<f64>> = run(&step, &feeds)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (n, v.real().clone()))
        .collect();
    for (name, scale) in [
        ("backbone.conv1.weight", 0.5),
        ("backbone.layer1.unit0.conv1.weight", 0.25),
        ("refine1.crp.conv1.weight", 1.0),
        ("head.classifier.weight", 1.0),
    ] {
        let p = feeds[name].real();
        for i in [0, p.data.len() / 2, p.data.len() - 1] {
            let v = 0.9 * 0.5 + grad[name].data[i] + 0.01 * p.data[i];
            let expected = p.data[i] - 0.1 * scale * 0.75 * v;
            assert!(
                (out[&format!("{name}.momentum")].data[i] - v).abs() < 1e-12,
                "{name}: momentum"
            );
            assert!(
                (out[name].data[i] - expected).abs() < 1e-12,
                "{name}[{i}]: {} vs {expected}",
                out[name].data[i]
            );
        }
    }
}

#[test]
fn unknown_patterns_are_errors() {
    let forward = graph("tiny", &[1, 3, 32, 32], &[]);
    let config = TrainConfig {
        frozen: vec!["bakcbone".into()],
        ..TrainConfig::default()
    };
    let e = train_step(&forward, &config).unwrap_err();
    assert_eq!(e.0, "the pattern `bakcbone` matches no trainable parameter");
}

#[test]
fn tiny_overfits_one_batch() {
    let forward = graph("tiny", &[1, 3, 32, 32], &[("dropout", "0.0")]);
    let config = TrainConfig {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 0.0,
        seed: 1,
        ..TrainConfig::default()
    };
    let step = train_step(&forward, &config).unwrap();
    let mut feeds: HashMap<String, Value<f32>> = feeds(&step, 11);
    // A synthetic batch: one class per 8x8 patch (the scores are at 1/4 resolution), and an
    // image whose colour says the class, plus noise.
    let class = |i: usize| (((i / 32) / 8 * 4 + (i % 32) / 8) * 7 % 3) as i32;
    let labels = Tensor::new(vec![1, 32, 32], (0..1024).map(class).collect());
    feeds.insert("labels".into(), Value::Int(labels));
    let noise = feeds["image"].real().clone();
    let image = (0..3 * 1024).map(|i| {
        let (c, p) = (i / 1024, i % 1024);
        let colour = if class(p) == c as i32 { 1.0 } else { -1.0 };
        colour + 0.3 * noise.data[i]
    });
    feeds.insert(
        "image".into(),
        Value::Real(Tensor::new(vec![1, 3, 32, 32], image.collect())),
    );
    let mut losses = Vec::new();
    for k in 0..100 {
        feeds.insert("step".into(), Value::Int(Tensor::scalar(k)));
        let outputs = run(&step, &feeds).unwrap();
        losses.push(scalar(&outputs[0].1));
        for (name, value) in outputs.into_iter().skip(1) {
            feeds.insert(name, value);
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("tiny overfits one batch: loss {first:.4} at step 0, {:.4} at step 50, {last:.4} at step 99", losses[50]);
    eprintln!(
        "{:?}",
        losses
            .iter()
            .step_by(5)
            .map(|l| format!("{l:.3}"))
            .collect::<Vec<_>>()
    );
    assert!(last <= 0.1 * first, "loss {first} -> {last}: {losses:?}");
}

#[test]
fn training_graph_snapshot() {
    let forward = graph("tiny", &[1, 3, 32, 32], &[]);
    let step = train_step(&forward, &TrainConfig::default()).unwrap();
    insta::assert_snapshot!("train_tiny", print_graph(&step));
}

#[test]
fn training_graphs_round_trip_and_pass_mlir_opt() {
    for example in EXAMPLES {
        let forward = graph(example, &[1, 3, 32, 32], &[]);
        let step = train_step(&forward, &TrainConfig::default()).unwrap();
        let text = print_graph(&step);
        let parsed =
            rfnc_compiler::ir::parse_graph(&text).unwrap_or_else(|e| panic!("{example}: {e}"));
        assert!(verify(&parsed).is_empty());
        assert_eq!(print_graph(&parsed), text, "{example}: round trip");
        assert_mlir_opt_accepts(&text, &["--allow-unregistered-dialect"], example);
    }
}

#[test]
fn a_training_run_is_reproducible_and_the_seed_matters() {
    let forward = graph("tiny", &[1, 3, 32, 32], &[]);
    let run_twice = |seed: u64| {
        let step = train_step(
            &forward,
            &TrainConfig {
                seed,
                ..TrainConfig::default()
            },
        )
        .unwrap();
        let feeds: HashMap<String, Value<f32>> = feeds(&step, 2);
        run(&step, &feeds).unwrap()
    };
    assert_eq!(
        run_twice(4),
        run_twice(4),
        "same seed, same step: identical results"
    );
    assert_ne!(
        run_twice(4)[0],
        run_twice(5)[0],
        "another seed draws other dropout masks"
    );
}

/// Random initial weights keep a ResNet-152 RefineNet sane: logits with a standard deviation
/// between 0.1 and 10, and three training steps with finite losses that fall or stay flat
/// (the residual branches' last convs start scaled by 1/sqrt(branches), compiler/src/init.rs).
#[test]
fn random_weights_stay_sane_at_resnet_152() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("scores.safetensors");
    let net = [
        "run",
        "examples/refinenet4.rfn",
        "-D",
        "depth=152",
        "--input",
        "1x3x64x64",
    ];
    let run = rfnc(&[&net[..], &["-o", out.to_str().unwrap()]].concat());
    assert!(run.status.success(), "{}", stderr(&run));
    let scores = &rfnc_runtime::load_weights(&out).unwrap().tensors["scores"].1;
    let mean = scores.iter().map(|&v| v as f64).sum::<f64>() / scores.len() as f64;
    let var = scores
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / scores.len() as f64;
    let std = var.sqrt();
    eprintln!("ResNet-152 RefineNet, random weights: logits std {std:.4}");
    assert!((0.1..=10.0).contains(&std), "logits std {std}");

    let train = rfnc(&[&net[..], &["--train", "--steps", "3"]].concat());
    assert!(train.status.success(), "{}", stderr(&train));
    let losses: Vec<f64> = stdout(&train)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .collect();
    assert_eq!(losses.len(), 3, "{}", stdout(&train));
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[2] <= losses[0] * 1.01, "losses {losses:?} rise");
}
