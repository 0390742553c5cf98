//! `cargo run --release -p rfnc-codegen --example emit -- FILE.mlir [gpu|host] [sm_XX]`
//!
//! One module: prints the optimised LLVM IR and the PTX (GPU form) or the host LLVM IR
//! (host form). Several modules separated by `// -----` (what `rfnc compile --emit mlir`
//! and `--emit mlir-host` write): compiles each and prints one line per kernel with the
//! time taken and, for the GPU form when ptxas is found, its registers and spills.

use std::time::Instant;

use rfnc_codegen::{compile_gpu, compile_host, ptxas_report, GpuTarget};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: emit FILE.mlir [gpu|host] [sm_XX]");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let host = args.get(2).is_some_and(|f| f == "host");
    let sm = args.get(3).map_or("sm_80", String::as_str);
    let target = GpuTarget::from_env(sm);
    let chunks: Vec<&str> = text.split("\n// -----\n").collect();
    let single = chunks.len() == 1;
    let (mut failed, total) = (0, Instant::now());
    for chunk in chunks {
        let start = Instant::now();
        let result = if host {
            compile_host(chunk).map(|a| (a.llvm_ir, None))
        } else {
            compile_gpu(chunk, &target).map(|a| (format!("{}\n{}", a.llvm_ir, a.ptx), Some(a.ptx)))
        };
        let took = start.elapsed();
        match result {
            Ok((out, _)) if single => {
                println!("{out}");
                eprintln!("compiled in {took:?}");
            }
            Ok((_, ptx)) => {
                let report = match ptx.map(|p| ptxas_report(&p, sm)) {
                    Some(Ok(r)) => r
                        .iter()
                        .map(|k| {
                            format!(
                                "{}: {} regs, {} B smem, {} B stack, spills {}/{}",
                                k.name,
                                k.registers,
                                k.shared_bytes,
                                k.stack_bytes,
                                k.spill_stores_bytes,
                                k.spill_loads_bytes
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    Some(Err(e)) => format!("ptxas: {e}"),
                    None => first_symbol(chunk),
                };
                println!("{took:>10.1?}  {report}");
            }
            Err(e) => {
                failed += 1;
                println!("error: {e}");
            }
        }
    }
    if !single {
        eprintln!("total {:?}, {failed} failed", total.elapsed());
    }
    if failed > 0 {
        std::process::exit(1);
    }
}

fn first_symbol(chunk: &str) -> String {
    chunk
        .split('@')
        .nth(1)
        .and_then(|s| s.split('(').next())
        .unwrap_or("?")
        .to_string()
}
