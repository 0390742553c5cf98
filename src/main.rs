//! `rfnc`: the command-line compiler for RefineNet-style `.rfn` programs. This crate parses
//! arguments and prints; every stage it runs is in the `rfnc-driver` library.

mod cli;
mod commands;
mod print;
mod progress;
mod stats_report;

use std::process::ExitCode;

/// The compiler recurses over the program's nesting; the language limits that nesting, and
/// a large stack keeps even the deepest allowed program far from overflowing.
const STACK_BYTES: usize = 256 << 20;

fn main() -> ExitCode {
    let worker = std::thread::Builder::new()
        .name("rfnc".into())
        .stack_size(STACK_BYTES)
        .spawn(cli::run);
    match worker.map(|handle| handle.join()) {
        Ok(Ok(code)) => code,
        _ => {
            eprintln!("internal compiler error: the compiler thread failed; please report this with the program that caused it");
            ExitCode::from(70)
        }
    }
}
