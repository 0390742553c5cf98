//! `rfnc export`: a network and its weights as an ONNX model that ONNX Runtime and
//! TensorRT run with rfnc's results: the inference graph (no objective, no dropout) with
//! frozen batch norm folded into the convs (or kept as `BatchNormalization`), parameters
//! as initializers, inputs and outputs under the program's names, the `.rfn` location of
//! every op in its node's doc string. See docs/export.md.
//!
//! - [`params`]: the lowered graph and its parameter values (folding included);
//! - [`dynamic`]: which of N, H, W may stay symbolic (`--dynamic-size`);
//! - [`nodes`]: the ONNX graph, op by op; [`proto`]: the ONNX messages (prost);
//! - [`file`]: the protobuf file, with external data beyond 2 GiB.

mod dynamic;
mod file;
mod nodes;
mod params;
pub mod proto;

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Instant;

use rfnc_compiler::ir::{Graph, Loc, NodeId, SourcePos};
use rfnc_dsl::ast::Span;
use rfnc_dsl::{Diagnostic, SourceMap};

use crate::error::{Error, Result};
use crate::frontend::Network;
use crate::log::Log;
use crate::weights::{init_weights, load_for};
use proto::{entry, ModelProto, OperatorSetIdProto};

/// The opset written unless `--opset` says otherwise: Resize, Conv and MaxPool have their
/// current meaning from 13 on, and TensorRT 8.6 and later read 17.
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets `--opset` accepts.
pub const OPSETS: RangeInclusive<i64> = 13..=21;

/// Where the weights come from.
#[derive(Clone, Debug)]
pub enum WeightsFrom {
    /// A safetensors file, checked against the network (momentum buffers ignored).
    File(PathBuf),
    /// The deterministic random weights of `rfnc weights --seed N`.
    Random(u64),
}

/// What to export, and how.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub weights: WeightsFrom,
    pub output: PathBuf,
    pub opset: i64,
    /// Leave N, H and W symbolic where the network allows it.
    pub dynamic_size: bool,
    /// Append `NAME_argmax`, the class index of each pixel, for each score output.
    pub argmax: bool,
    /// Emit `BatchNormalization` instead of folding it into the convs.
    pub keep_batch_norm: bool,
    /// Put the weights in `MODEL.data` even below 2 GiB.
    pub external_data: bool,
}

/// What was written, for the command to print.
#[derive(Clone, Debug)]
pub struct Report {
    /// A summary, one fact a line.
    pub summary: String,
    /// Sizes that `--dynamic-size` had to leave fixed, and why.
    pub notes: Vec<String>,
}

/// An op the ONNX graph cannot hold, with where the program made it.
#[derive(Debug)]
pub struct Unsupported {
    pub op: String,
    pub loc: Loc,
    pub why: String,
}

/// Exports `network` as `options` say.
pub fn export(network: &Network, options: &ExportOptions, log: &Log) -> Result<Report> {
    if !OPSETS.contains(&options.opset) {
        return Err(Error::message(format!(
            "--opset {}: rfnc writes opsets {} to {}",
            options.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let start = Instant::now();
    let lowered = params::lower(&network.forward, options.keep_batch_norm);
    let weights = match &options.weights {
        WeightsFrom::File(path) => load_for(&network.forward, path)?,
        WeightsFrom::Random(seed) => init_weights(&network.forward, *seed),
    };
    let values = params::values(&lowered, &weights)?;
    log.since("export: weights and folding", start);
    let start = Instant::now();
    let shapes = if options.dynamic_size {
        dynamic::analyse(network, &lowered.graph, options.keep_batch_norm)
    } else {
        dynamic::Shapes::fixed()
    };
    log.since("export: symbolic sizes", start);
    let argmax = match options.argmax {
        true => nodes::score_outputs(&lowered.graph)
            .map_err(|why| Error::message(format!("--argmax: {why}")))?,
        false => Vec::new(),
    };
    let parts = nodes::Parts {
        graph: &lowered.graph,
        params: &values,
        shapes: &shapes,
        argmax,
    };
    let graph = nodes::build(&parts).map_err(|u| unsupported(network, u))?;
    let contents = contents(options, &lowered, &graph);
    let model = model(network, options, &lowered, graph);
    let start = Instant::now();
    let written = file::write(model, &options.output, options.external_data)?;
    log.since("export: write", start);
    Ok(Report {
        summary: summary(network, options, &written, &contents),
        notes: shapes.notes,
    })
}

/// The IR version that goes with `opset` (ONNX's own table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn model(
    network: &Network,
    options: &ExportOptions,
    lowered: &params::Lowered,
    mut graph: proto::GraphProto,
) -> ModelProto {
    let source = &network.source;
    let mut defines = source.defines.join(" ");
    if defines.is_empty() {
        defines = "(none)".into();
    }
    graph.doc_string = format!(
        "network `{}` from {} at input {}; -D {defines}",
        network.forward.name,
        source.file.display(),
        source.input
    );
    let batch_norm = if options.keep_batch_norm {
        "kept as BatchNormalization".to_string()
    } else {
        format!("folded into {} convs", lowered.folded)
    };
    ModelProto {
        ir_version: ir_version(options.opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: options.opset,
        }],
        producer_name: "rfnc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} exported by rfnc {} from {}",
            network.forward.name,
            env!("CARGO_PKG_VERSION"),
            source.file.display()
        ),
        graph: Some(graph),
        metadata_props: vec![
            entry("rfnc.source", source.file.display().to_string()),
            entry("rfnc.input", source.input.clone()),
            entry("rfnc.defines", source.defines.join(" ")),
            entry("rfnc.batch_norm", batch_norm),
        ],
        ..Default::default()
    }
}

/// `wrote PATH (SIZE): ...`, then the external data file, then `contents`.
fn summary(
    network: &Network,
    options: &ExportOptions,
    written: &file::Written,
    contents: &str,
) -> String {
    let mut text = format!(
        "wrote {} ({}): network `{}`, opset {}\n",
        options.output.display(),
        crate::plan::mib(written.model_bytes),
        network.forward.name,
        options.opset,
    );
    if let Some((path, bytes)) = &written.data {
        text += &format!(
            "  external data: {} ({})\n",
            path.display(),
            crate::plan::mib(*bytes)
        );
    }
    text + contents
}

/// The graph's nodes, initializers, inputs, outputs and batch norm, a line each.
fn contents(
    options: &ExportOptions,
    lowered: &params::Lowered,
    graph: &proto::GraphProto,
) -> String {
    let bytes: usize = graph.initializer.iter().map(|t| t.raw_data.len()).sum();
    let mut text = format!(
        "  {} nodes, {} initializers ({})\n",
        graph.node.len(),
        graph.initializer.len(),
        crate::plan::mib(bytes as u64)
    );
    for (kind, infos) in [("input", &graph.input), ("output", &graph.output)] {
        for info in infos {
            text += &format!("  {kind:<6} {}\n", describe_value(info));
        }
    }
    let kept = graph
        .node
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .count();
    text += &match (options.keep_batch_norm, kept) {
        (true, _) => format!("  batch norm: {kept} kept as BatchNormalization (--keep-batch-norm)\n"),
        (false, 0) => format!("  batch norm: folded into {} convs\n", lowered.folded),
        (false, _) => format!(
            "  batch norm: folded into {} convs; {kept} kept as BatchNormalization (not right after a conv of their own)\n",
            lowered.folded
        ),
    };
    text
}

/// `image: float32[N, 3, H, W]`.
fn describe_value(info: &proto::ValueInfoProto) -> String {
    use proto::{dimension, type_proto};
    let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref().and_then(|t| t.value.clone())
    else {
        return info.name.clone();
    };
    let elem = match t.elem_type {
        proto::FLOAT => "float32",
        proto::INT32 => "int32",
        proto::INT64 => "int64",
        _ => "?",
    };
    let dims: Vec<String> = t
        .shape
        .map(|s| s.dim)
        .unwrap_or_default()
        .into_iter()
        .map(|d| match d.value {
            Some(dimension::Value::DimValue(v)) => v.to_string(),
            Some(dimension::Value::DimParam(p)) => p,
            None => "?".into(),
        })
        .collect();
    format!("{}: {elem}[{}]", info.name, dims.join(", "))
}

/// The silent log of the elaborations `--dynamic-size` runs.
fn export_log() -> Log {
    Log::default()
}

/// `std/rcu.rfn:6:9 to 6:41 in refine4.adapt0.rcu1.conv2`, for doc strings and messages.
pub(crate) fn loc_text(loc: &Loc) -> String {
    let pos = loc.pos.as_ref().map(|p| {
        format!(
            "{}:{}:{} to {}:{}",
            p.file, p.line, p.col, p.end_line, p.end_col
        )
    });
    match (pos, loc.scope.is_empty()) {
        (Some(p), true) => p,
        (Some(p), false) => format!("{p} in {}", loc.scope),
        (None, false) => loc.scope.clone(),
        (None, true) => String::new(),
    }
}

/// `` `rfn.add` at FILE:L:C in SCOPE ``, for messages.
pub(crate) fn describe(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    match loc_text(&node.loc) {
        l if l.is_empty() => format!("`rfn.{}`", node.op.mnemonic()),
        l => format!("`rfn.{}` at {l}", node.op.mnemonic()),
    }
}

/// The error for an op ONNX cannot hold: the op, and a label at its `.rfn` source.
fn unsupported(network: &Network, u: Unsupported) -> Error {
    let at = match loc_text(&u.loc) {
        l if l.is_empty() => String::new(),
        l => format!(" (at {l})"),
    };
    let d = Diagnostic::new(format!("`{}`{at} cannot be exported to ONNX", u.op))
        .note(format!("`{}`: {}", u.op, u.why));
    let sources = network.source.load(&export_log()).ok().map(|p| p.sources);
    match (u.loc.pos.as_ref(), sources) {
        (Some(pos), Some(sources)) => match span_of(&sources, pos) {
            Some(span) => {
                let d = d.label(span, format!("`{}` is made here", u.op));
                Error::User(Box::new(d), sources)
            }
            None => Error::user(d),
        },
        _ => Error::user(d),
    }
}

/// The byte span of a source position (1-based lines and columns in characters).
fn span_of(sources: &SourceMap, pos: &SourcePos) -> Option<Span> {
    let (file, source) = sources.files().find(|(_, f)| f.name == pos.file)?;
    let offset = |line: u32, col: u32| -> Option<u32> {
        let start: usize = source
            .text
            .split_inclusive('\n')
            .take(line as usize - 1)
            .map(str::len)
            .sum();
        let rest = source.text.get(start..)?;
        let within: usize = rest
            .chars()
            .take(col as usize - 1)
            .map(char::len_utf8)
            .sum();
        u32::try_from(start + within).ok()
    };
    Some(Span {
        file,
        start: offset(pos.line, pos.col)?,
        end: offset(pos.end_line, pos.end_col)?,
    })
}
