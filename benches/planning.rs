//! Lowering benchmark: canonicalisation, fusion, scheduling, memory planning and the plan
//! verifier for `examples/refinenet4.rfn` at 512x512, inference and training step, for
//! ResNet-50/101/152. Also prints the plan figures (arena, lower bound, naive).
//!
//! Run: `cargo bench --bench planning`. Copy the table into docs/benchmarks.md.

use std::path::Path;
use std::time::{Duration, Instant};

use rfnc_compiler::passes::pipeline::{plan_inference, plan_training};
use rfnc_compiler::passes::train::train_step;
use rfnc_dsl::{elaborate_with_training, load_file, Options};

const RUNS: usize = 5;
const MIB: f64 = (1u64 << 20) as f64;

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/refinenet4.rfn");
    println!("| depth | mode | kernels (ops) | lowering ms (median of {RUNS}) | arena MiB | lower bound MiB | plan / bound | naive MiB | naive / plan |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for depth in ["50", "101", "152"] {
        let options = Options {
            input: vec![1, 3, 512, 512],
            defines: vec![("depth".into(), depth.into())],
        };
        let program = load_file(&path)
            .map_err(|(d, s)| d.render(&s))
            .expect("example loads");
        let (forward, config) = elaborate_with_training(&program, &options)
            .map_err(|d| d.render(&program.sources))
            .expect("elaborates");
        let step = train_step(&forward, &config).expect("training step");
        for (mode, graph) in [("inference", &forward), ("training", &step)] {
            let mut times: Vec<Duration> = Vec::new();
            let mut last = None;
            for _ in 0..RUNS {
                let t = Instant::now();
                let c = if mode == "inference" {
                    plan_inference(graph)
                } else {
                    plan_training(graph)
                };
                times.push(t.elapsed());
                last = Some(c.expect("lowers"));
            }
            times.sort();
            let c = last.expect("ran");
            let p = &c.plan;
            println!(
                "| {depth} | {mode} | {} ({}) | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1}x |",
                c.fusion.kernels,
                c.fusion.ops,
                times[RUNS / 2].as_secs_f64() * 1e3,
                p.arena_bytes as f64 / MIB,
                p.lower_bound as f64 / MIB,
                p.arena_bytes as f64 / p.lower_bound as f64,
                p.naive_bytes as f64 / MIB,
                p.naive_bytes as f64 / p.arena_bytes as f64
            );
        }
    }
}
