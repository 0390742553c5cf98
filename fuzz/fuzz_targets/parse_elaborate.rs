//! Fuzz target: arbitrary bytes through the whole front end.
//!
//! For UTF-8 input: load (parse + resolve `std` imports), elaborate at a small input size,
//! and render any diagnostic (rendering must not panic on any span). When elaboration
//! succeeds the graph must verify cleanly and its text form must round-trip:
//! print -> parse -> print gives the same text. Any panic, or a run longer than
//! libFuzzer's `-timeout`, is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rfnc_compiler::ir::{parse_graph, print_graph, verify};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let program = match rfnc_dsl::load_source("fuzz.rfn", text.to_owned(), None) {
        Ok(program) => program,
        Err((diag, sources)) => {
            let _ = diag.render(&sources);
            return;
        }
    };
    let options = rfnc_dsl::Options { input: vec![1, 3, 32, 32], defines: vec![] };
    let graph = match rfnc_dsl::elaborate(&program, &options) {
        Ok(graph) => graph,
        Err(diag) => {
            let _ = diag.render(&program.sources);
            return;
        }
    };
    let errors = verify(&graph);
    assert!(errors.is_empty(), "elaborated graph fails the verifier: {errors:?}");
    let printed = print_graph(&graph);
    let reparsed = parse_graph(&printed)
        .unwrap_or_else(|e| panic!("printed graph does not parse back: {e}\n{printed}"));
    let reprinted = print_graph(&reparsed);
    assert!(printed == reprinted, "print -> parse -> print changed the text");
});
