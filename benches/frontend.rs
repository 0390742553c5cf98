//! Front-end benchmark: load (parse + imports), elaborate (with shape inference), verify,
//! print, and build the training step (autodiff + SGD update, then verify it) for
//! `examples/refinenet4.rfn` at 512x512 for ResNet-50/101/152.
//!
//! Run: `cargo bench --bench frontend`. Prints a Markdown table of the median and minimum
//! over 30 runs of each stage; copy it into docs/benchmarks.md with the machine and date.

use std::path::Path;
use std::time::{Duration, Instant};

use rfnc_compiler::ir::{print_graph, verify};
use rfnc_compiler::passes::train::train_step;
use rfnc_dsl::{elaborate_with_training, load_file, Options};

const RUNS: usize = 30;

fn summary(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(times[times.len() / 2]), ms(times[0]))
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/refinenet4.rfn");
    println!("| depth | ops | load ms (median / min) | elaborate + shapes ms | verify ms | print ms | training step ms | training ops |");
    println!("|---|---|---|---|---|---|---|---|");
    for depth in ["50", "101", "152"] {
        let options = Options {
            input: vec![1, 3, 512, 512],
            defines: vec![("depth".into(), depth.into())],
        };
        let (mut load, mut elab, mut check, mut print, mut train) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut ops, mut train_ops) = (0, 0);
        for _ in 0..RUNS {
            let t0 = Instant::now();
            let program = load_file(&path)
                .map_err(|(d, s)| d.render(&s))
                .expect("example loads");
            let t1 = Instant::now();
            let (graph, config) = elaborate_with_training(&program, &options)
                .map_err(|d| d.render(&program.sources))
                .expect("elaborates");
            let t2 = Instant::now();
            assert!(verify(&graph).is_empty());
            let t3 = Instant::now();
            let text = print_graph(&graph);
            let t4 = Instant::now();
            assert!(!text.is_empty());
            let step = train_step(&graph, &config).expect("training step");
            assert!(verify(&step).is_empty());
            let t5 = Instant::now();
            train.push(t5 - t4);
            train_ops = step.len();
            ops = graph.len();
            load.push(t1 - t0);
            elab.push(t2 - t1);
            check.push(t3 - t2);
            print.push(t4 - t3);
        }
        let cell = |t: Vec<Duration>| {
            let (median, min) = summary(t);
            format!("{median:.2} / {min:.2}")
        };
        println!(
            "| {depth} | {ops} | {} | {} | {} | {} | {} | {train_ops} |",
            cell(load),
            cell(elab),
            cell(check),
            cell(print),
            cell(train)
        );
    }
}
