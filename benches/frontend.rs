//! Front-end benchmark: load (parse + imports), elaborate (with shape inference) and verify
//! `examples/refinenet4.rfn` at 512x512 for ResNet-50/101/152.
//!
//! Run: `cargo bench --bench frontend`. Prints a Markdown table of the median and minimum
//! over 30 runs of each stage; copy it into docs/benchmarks.md with the machine and date.

use std::path::Path;
use std::time::{Duration, Instant};

use rfnc_compiler::ir::{print_graph, verify};
use rfnc_dsl::{elaborate, load_file, Options};

const RUNS: usize = 30;

fn summary(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(times[times.len() / 2]), ms(times[0]))
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/refinenet4.rfn");
    println!("| depth | ops | load ms (median / min) | elaborate + shapes ms | verify ms | print ms |");
    println!("|---|---|---|---|---|---|");
    for depth in ["50", "101", "152"] {
        let options = Options { input: vec![1, 3, 512, 512], defines: vec![("depth".into(), depth.into())] };
        let (mut load, mut elab, mut check, mut print) = (vec![], vec![], vec![], vec![]);
        let mut ops = 0;
        for _ in 0..RUNS {
            let t0 = Instant::now();
            let program = load_file(&path).map_err(|(d, s)| d.render(&s)).expect("example loads");
            let t1 = Instant::now();
            let graph = elaborate(&program, &options).map_err(|d| d.render(&program.sources)).expect("elaborates");
            let t2 = Instant::now();
            assert!(verify(&graph).is_empty());
            let t3 = Instant::now();
            let text = print_graph(&graph);
            let t4 = Instant::now();
            assert!(!text.is_empty());
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
        println!("| {depth} | {ops} | {} | {} | {} | {} |", cell(load), cell(elab), cell(check), cell(print));
    }
}
