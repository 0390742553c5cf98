//! From the verified graph to a planned program: the choice of the inference graph or the
//! training step, then canonicalisation, fusion, scheduling and memory planning (within a
//! budget by recomputing forward values in the backward pass).

use rfnc_compiler::ir::Graph;
use rfnc_compiler::passes::pipeline::{
    plan_inference, plan_training, plan_training_within, BudgetError, Planned,
};
use rfnc_dsl::Diagnostic;

use crate::error::{Error, Result};
use crate::frontend::{Network, TrainSettings};
use crate::log::Log;

/// What to compile: the network's inference, or its training step.
#[derive(Clone, Debug)]
pub enum Target {
    Inference,
    Train {
        settings: TrainSettings,
        /// `--memory-budget`: fit the arena in this size (e.g. `700MiB`).
        budget: Option<String>,
    },
}

impl Target {
    pub fn is_train(&self) -> bool {
        matches!(self, Target::Train { .. })
    }

    /// `inference` or `training step`, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Target::Inference => "inference",
            Target::Train { .. } => "training step",
        }
    }

    /// The training step as the program declares it, with no overrides.
    pub fn train_defaults() -> Self {
        Target::Train {
            settings: TrainSettings::default(),
            budget: None,
        }
    }
}

/// The graph to compile for `target`.
pub fn graph(network: &Network, target: &Target, log: &Log) -> Result<Graph> {
    match target {
        Target::Inference => Ok(network.forward.clone()),
        Target::Train { settings, .. } => network.train_step(settings, log),
    }
}

/// Canonicalisation, fusion, scheduling and memory planning of `graph` for `target`.
pub fn plan(graph: &Graph, target: &Target, log: &Log) -> Result<Planned> {
    let compiled = match target {
        Target::Train {
            budget: Some(text), ..
        } => plan_within(graph, parse_size(text)?, log)?,
        Target::Train { budget: None, .. } => plan_training(graph),
        Target::Inference => {
            let computed = graph
                .outputs
                .iter()
                .any(|o| Some(&o.name) != graph.objective.as_ref());
            if !computed {
                return Err(Diagnostic::new(format!(
                    "`{}` computes nothing at inference: its only output is the objective",
                    graph.name
                ))
                .hint("add `output NAME = ...;` for what inference should compute, or use --train")
                .into());
            }
            plan_inference(graph)
        }
    };
    let compiled = compiled.map_err(|e| Error::internal(format!("lowering failed: {e}")))?;
    for (pass, time) in &compiled.timings {
        log.time(pass, *time);
    }
    Ok(compiled)
}

/// A plan, or the pipeline's internal failure (a compiler bug).
type PlanOutcome = std::result::Result<Planned, String>;

/// The training step planned within `budget` bytes, with a note of what that cost; a budget
/// that cannot be met is the user's error.
fn plan_within(graph: &Graph, budget: u64, log: &Log) -> Result<PlanOutcome> {
    match plan_training_within(graph, budget) {
        Ok((compiled, r)) => {
            log.note(&format!(
                "memory budget {}: {}; arena {} -> {} (saved {}), {} values recomputed, {} extra multiply-accumulates",
                mib(r.budget_bytes),
                r.stage,
                mib(r.arena_without_recompute),
                mib(r.arena_bytes),
                mib(r.arena_without_recompute - r.arena_bytes),
                r.recomputed_values,
                r.extra_macs
            ));
            Ok(Ok(compiled))
        }
        Err(BudgetError::TooSmall { budget, smallest }) => Err(Diagnostic::new(format!(
            "the training step cannot fit a {} arena: the smallest it can be planned in is {} ({} bytes)",
            mib(budget),
            mib(smallest),
            smallest
        ))
        .note("recomputing relu, pooling, resize, dropout, sums, batch norm and convolutions was tried")
        .hint(format!("use --memory-budget {smallest} (bytes) or more, or a smaller --input"))
        .into()),
        Err(BudgetError::Internal(e)) => Ok(Err(e)),
    }
}

/// Parses a size such as `700MiB`, `3GiB`, `1.5GB` or `123456` (bytes).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "tb" => 1e12,
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        Ok(v) if scale.is_finite() && v.is_finite() && v * scale >= 1.0 && v * scale < 1e18 => Ok((v * scale) as u64),
        _ => Err(Diagnostic::new(format!("--memory-budget {text}: not a size"))
            .hint("give a positive size of at least 1 byte with a unit, e.g. 700MiB or 3GiB (KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB of 1000)").into()),
    }
}

/// A byte count in the largest unit that keeps it readable.
pub fn mib(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}
