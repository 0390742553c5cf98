//! Fusion, scheduling and memory planning: the planned program run over one real arena
//! agrees with the unplanned graph, plans pass the plan verifier, and the paper's model is
//! planned close to the lower bound.

mod common;

use std::collections::HashMap;

use common::*;
use rfnc_compiler::interp::{run, run_planned, Tensor, Value};
use rfnc_compiler::ir::{verify, Graph};
use rfnc_compiler::passes::canonical::{
    common_subexpressions, dead_code, fold_batch_norm, inference,
};
use rfnc_compiler::passes::fusion::{fuse, report};
use rfnc_compiler::passes::memory::{plan, schedule, verify_plan, Plan};
use rfnc_compiler::passes::train::{train_step, TrainConfig};

fn planned(graph: &Graph) -> (rfnc_compiler::passes::fusion::Fused, Plan) {
    let fused = fuse(graph);
    let order = schedule(graph, &fused);
    let p = plan(graph, &fused, order);
    verify_plan(graph, &fused, &p).unwrap_or_else(|e| panic!("{}: plan verifier: {e}", graph.name));
    (fused, p)
}

#[test]
fn paper_model_plans_near_the_lower_bound() {
    use rfnc_compiler::passes::pipeline::{plan_inference, plan_training};
    let forward = graph("refinenet4", &[1, 3, 512, 512], &[("depth", "101")]);
    let c = plan_inference(&forward).unwrap();
    let p = &c.plan;
    eprintln!(
        "inference: arena {} lower bound {} naive {} ({})",
        p.arena_bytes, p.lower_bound, p.naive_bytes, p.placement
    );
    assert!(p.arena_bytes as f64 <= 1.05 * p.lower_bound as f64);
    let step = train_step(&forward, &TrainConfig::default()).unwrap();
    let c = plan_training(&step).unwrap();
    let p = &c.plan;
    eprintln!(
        "training: arena {} lower bound {} naive {} ({})",
        p.arena_bytes, p.lower_bound, p.naive_bytes, p.placement
    );
    assert!(p.arena_bytes as f64 <= 1.05 * p.lower_bound as f64);
}

const SMALL: &[u64] = &[1, 3, 32, 32];
const NARROW: &[(&str, &str)] = &[("depth", "50"), ("base_width", "2"), ("refine_width", "4")];

fn defines(example: &str) -> Vec<(&'static str, &'static str)> {
    if example == "tiny" {
        Vec::new()
    } else {
        NARROW.to_vec()
    }
}

/// Largest difference relative to the largest magnitude, over all outputs.
fn agree(name: &str, a: &[(String, Value<f64>)], b: &[(String, Value<f64>)]) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let error = relative_error(&va.real().data, &vb.real().data, 1e-30);
        assert!(error < 1e-10, "{name}: output `{na}` differs by {error:e}");
    }
}

#[test]
fn planned_inference_matches_the_unplanned_graph() {
    for example in EXAMPLES {
        let forward = graph(example, SMALL, &defines(example));
        let unplanned = inference(&forward);
        let feeds: HashMap<String, Value<f64>> = feeds(&unplanned, 9);
        // Frozen statistics that are not the identity, so folding has something to fold.
        let mut feeds = feeds;
        for (k, v) in feeds.iter_mut() {
            if k.ends_with("running_var")
                || k.ends_with("running_mean")
                || k.ends_with("bn1.weight")
            {
                let Value::Real(t) = v else { continue };
                for (i, x) in t.data.iter_mut().enumerate() {
                    *x += 0.1 + (i % 7) as f64 * 0.05;
                }
            }
        }
        let expected = run(&unplanned, &feeds).unwrap();

        let mut folded = fold_batch_norm(&unplanned);
        assert!(folded.folded > 0, "{example}: batch norms folded");
        common_subexpressions(&mut folded.graph);
        dead_code(&mut folded.graph);
        assert_eq!(verify(&folded.graph), vec![]);
        assert_eq!(verify(&folded.prepare), vec![]);
        let mut main_feeds = feeds.clone();
        for (name, value) in run(&folded.prepare, &feeds).unwrap() {
            main_feeds.insert(name, value);
        }
        let (fused, p) = planned(&folded.graph);
        let actual = run_planned(&folded.graph, &fused, &p, &main_feeds).unwrap();
        agree(example, &actual, &expected);
        let r = report(&folded.graph, &fused);
        assert!(
            r.kernels < r.ops,
            "{example}: fusion merged something ({} ops, {} kernels)",
            r.ops,
            r.kernels
        );
    }
}

#[test]
fn planned_training_step_matches_the_unplanned_graph() {
    for example in EXAMPLES {
        let forward = graph(example, SMALL, &defines(example));
        let step = train_step(&forward, &TrainConfig::default()).unwrap();
        let feeds: HashMap<String, Value<f64>> = feeds(&step, 4);
        let mut feeds = feeds;
        for (name, _) in trainable(&step) {
            let dims = feeds[&name].dims().to_vec();
            feeds.insert(
                format!("{name}.momentum"),
                Value::Real(Tensor::filled(dims, 0.01)),
            );
        }
        let expected = run(&step, &feeds).unwrap();
        let (fused, p) = planned(&step);
        let actual = run_planned(&step, &fused, &p, &feeds).unwrap();
        agree(example, &actual, &expected);
    }
}

#[test]
fn the_plan_verifier_catches_overlapping_storages() {
    let forward = graph("tiny", SMALL, &[]);
    let g = inference(&forward);
    let (fused, mut p) = planned(&g);
    // Put every storage at offset 0: values live at the same time now collide.
    for s in p.storages.iter_mut() {
        s.offset = 0;
    }
    let e = verify_plan(&g, &fused, &p).unwrap_err();
    assert!(e.contains("are live together and overlap"), "{e}");
    // And a reordered schedule that reads before writing.
    let (fused, mut p) = planned(&g);
    p.order.reverse();
    assert!(verify_plan(&g, &fused, &p)
        .unwrap_err()
        .contains("runs before kernel"));
}

#[test]
fn fused_and_plan_snapshots() {
    for example in ["tiny", "refinenet2"] {
        let args = |emit: &str| -> Vec<String> {
            let mut a: Vec<String> = vec![
                "compile".into(),
                format!("examples/{example}.rfn"),
                "--input".into(),
                "1x3x32x32".into(),
                "--emit".into(),
                emit.into(),
            ];
            if example != "tiny" {
                for (k, v) in NARROW {
                    a.push("-D".into());
                    a.push(format!("{k}={v}"));
                }
            }
            a
        };
        for emit in ["fused", "plan"] {
            let a = args(emit);
            let out = rfnc(&a.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{}", stderr(&out));
            insta::assert_snapshot!(format!("{emit}_{example}"), stdout(&out));
            let mut train = a.clone();
            train.push("--train".into());
            let out = rfnc(&train.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{}", stderr(&out));
            insta::assert_snapshot!(format!("{emit}_{example}_train"), stdout(&out));
        }
    }
}

#[test]
fn mlir_opt_accepts_the_fused_program() {
    for train in [false, true] {
        let mut args = vec![
            "compile",
            "examples/tiny.rfn",
            "--input",
            "1x3x32x32",
            "--emit",
            "fused",
        ];
        if train {
            args.push("--train");
        }
        let out = rfnc(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let what = format!("--emit fused (train: {train})");
        assert_mlir_opt_accepts(&stdout(&out), &["--allow-unregistered-dialect"], &what);
    }
}

#[test]
fn stats_memory_json_reports_the_plan() {
    let out = rfnc(&[
        "stats",
        "examples/tiny.rfn",
        "--input",
        "1x3x32x32",
        "--memory",
        "--train",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let m = &v["memory"];
    assert_eq!(m["mode"], "training step");
    let (arena, bound, naive) = (
        m["arena_bytes"].as_u64().unwrap(),
        m["lower_bound_bytes"].as_u64().unwrap(),
        m["naive_bytes"].as_u64().unwrap(),
    );
    assert!(bound <= arena && arena < naive, "{arena} {bound} {naive}");
    assert!(m["in_place_update_bytes"].as_u64().unwrap() > 0);
    let live: u64 = m["peak_live"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        live, bound,
        "the live set at the peak adds up to the lower bound"
    );
    assert!(m["peak_live"][0]["location"]
        .as_str()
        .unwrap()
        .contains(".rfn:"));
}

#[test]
fn recomputation_fits_a_budget_and_keeps_the_results() {
    use rfnc_compiler::passes::pipeline::{plan_training, plan_training_within, BudgetError};
    for example in ["tiny", "refinenet4"] {
        let forward = graph(example, SMALL, &defines(example));
        let step = train_step(&forward, &TrainConfig::default()).unwrap();
        let full = plan_training(&step).unwrap().plan.arena_bytes;
        // Any budget below the plain plan forces recomputation.
        let budget = full - 1;
        match plan_training_within(&step, budget) {
            Ok((c, report)) => {
                eprintln!(
                    "{example}: {} -> {} bytes ({}, {} values, {} extra MACs)",
                    report.arena_without_recompute,
                    report.arena_bytes,
                    report.stage,
                    report.recomputed_values,
                    report.extra_macs
                );
                assert!(c.plan.arena_bytes <= budget && report.recomputed_values > 0);
                let mut feeds: HashMap<String, Value<f64>> = feeds(&step, 6);
                for (name, _) in trainable(&step) {
                    let dims = feeds[&name].dims().to_vec();
                    feeds.insert(
                        format!("{name}.momentum"),
                        Value::Real(Tensor::filled(dims, 0.0)),
                    );
                }
                let expected = run(&step, &feeds).unwrap();
                let actual = run_planned(&c.graph, &c.fused, &c.plan, &feeds).unwrap();
                agree(example, &actual, &expected);
            }
            Err(e) => panic!("{example}: {e:?} (plain plan {full})"),
        }
        // An impossible budget names the smallest one that works.
        match plan_training_within(&step, 1024) {
            Err(BudgetError::TooSmall { smallest, .. }) => {
                assert!(smallest < full && smallest > 1024)
            }
            other => panic!(
                "{example}: expected a budget error, got {:?}",
                other.map(|(_, r)| r)
            ),
        }
    }
}

#[test]
fn the_plan_verifier_catches_a_stale_read() {
    // Shorten one storage's recorded lifetime so that a later storage may legally (as far
    // as the overlap check can see) take its place: the simulation must see the stale read.
    let g = inference(&graph("tiny", SMALL, &[]));
    let (fused, base) = planned(&g);
    let mut found = false;
    'search: for a in 0..base.storages.len() {
        for b in 0..base.storages.len() {
            let (sa, sb) = (&base.storages[a], &base.storages[b]);
            if sb.start <= sa.start || sb.start > sa.end || sb.bytes > sa.bytes {
                continue;
            }
            let mut p = base.clone();
            p.storages[a].end = sb.start - 1;
            p.storages[b].offset = sa.offset;
            if let Err(e) = verify_plan(&g, &fused, &p) {
                if e.contains("after it was overwritten") {
                    found = true;
                    break 'search;
                }
            }
        }
    }
    assert!(
        found,
        "some shortened lifetime must be caught as a stale read"
    );
}
