//! `rfnc`: the command-line compiler for RefineNet-style `.rfn` programs.

mod cli;
mod stats_report;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
