//! `--batch auto`: the largest batch whose training step fits a memory budget: the planned
//! arena plus every leaf (parameters, momentum buffers, the batch itself). For each batch
//! size the plan without recomputation is tried first, then within what the leaves leave of
//! the budget by recomputation; only then a smaller batch.

use rfnc_compiler::ir::{Graph, Op};
use rfnc_compiler::passes::pipeline::{plan_training, plan_training_within};

use crate::error::{Error, Result};
use crate::frontend::{Network, Source, TrainSettings};
use crate::log::Log;
use crate::plan::mib;

/// What `--batch auto` chose and why.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchChoice {
    pub batch: u64,
    pub budget: u64,
    /// Leaves and arena of the chosen step.
    pub leaves_bytes: u64,
    pub arena_bytes: u64,
    /// The chosen step recomputes forward values to fit.
    pub recomputes: bool,
    /// Why not one more (None when `max` was reached).
    pub limit: Option<String>,
}

impl BatchChoice {
    pub fn describe(&self) -> String {
        let how = if self.recomputes {
            ", with recomputation"
        } else {
            ""
        };
        let why = match &self.limit {
            Some(limit) => format!("; {} would not fit ({limit})", self.batch + 1),
            None => " (the largest allowed)".to_string(),
        };
        format!(
            "--batch auto chose {} for a budget of {}: leaves {} + arena {}{how}{why}",
            self.batch,
            mib(self.budget),
            mib(self.leaves_bytes),
            mib(self.arena_bytes)
        )
    }
}

/// Bytes of every input and parameter of the training step (momentum included).
fn leaves_bytes(step: &Graph) -> u64 {
    step.node_ids()
        .filter(|&n| matches!(step.node(n).op, Op::Input { .. } | Op::Param { .. }))
        .map(|n| step.node(n).ty.bytes())
        .sum()
}

/// How a batch size fares: `Ok((leaves, arena, recomputes))` when it fits.
fn try_batch(
    source: &Source,
    settings: &TrainSettings,
    n: u64,
    budget: u64,
) -> Result<std::result::Result<(u64, u64, bool), String>> {
    let mut source = source.clone();
    source.input = with_batch(&source.input, n);
    let network = Network::elaborate(&source, &Log::default())?;
    let step = network.train_step(settings, &Log::default())?;
    let leaves = leaves_bytes(&step);
    if leaves >= budget {
        return Ok(Err(format!("its leaves alone take {}", mib(leaves))));
    }
    let room = budget - leaves;
    let plain =
        plan_training(&step).map_err(|e| Error::internal(format!("lowering failed: {e}")))?;
    if plain.plan.arena_bytes <= room {
        return Ok(Ok((leaves, plain.plan.arena_bytes, false)));
    }
    match plan_training_within(&step, room) {
        Ok((planned, _)) => Ok(Ok((leaves, planned.plan.arena_bytes, true))),
        Err(_) => Ok(Err(format!(
            "leaves {} + an arena of at least {} even with recomputation",
            mib(leaves),
            mib(plain.plan.lower_bound.min(plain.plan.arena_bytes))
        ))),
    }
}

/// `NxCxHxW` with N replaced.
pub fn with_batch(input: &str, n: u64) -> String {
    match input.split_once(['x', 'X']) {
        Some((_, rest)) => format!("{n}x{rest}"),
        None => n.to_string(),
    }
}

/// The largest batch in `1..=max` whose training step fits `budget` bytes.
pub fn choose_batch(
    source: &Source,
    settings: &TrainSettings,
    budget: u64,
    max: u64,
) -> Result<BatchChoice> {
    let fits = |n: u64| try_batch(source, settings, n, budget);
    let (leaves, arena, recomputes) = match fits(1)? {
        Ok(v) => v,
        Err(why) => {
            return Err(rfnc_dsl::Diagnostic::new(format!(
                "not even a batch of 1 fits the memory budget of {}: {why}",
                mib(budget)
            ))
            .hint("give a larger --memory-budget, or a smaller --input")
            .into())
        }
    };
    let mut best = BatchChoice {
        batch: 1,
        budget,
        leaves_bytes: leaves,
        arena_bytes: arena,
        recomputes,
        limit: None,
    };
    // Doubling, then bisection between the last fit and the first miss.
    let (mut lo, mut hi) = (1u64, None::<(u64, String)>);
    loop {
        let n = match &hi {
            None if lo < max => (lo * 2).min(max),
            None => break,
            Some((miss, why)) if miss - lo <= 1 => {
                best.limit = Some(why.clone());
                break;
            }
            Some((miss, _)) => lo + (miss - lo) / 2,
        };
        match fits(n)? {
            Ok((l, a, r)) => {
                lo = n;
                best = BatchChoice {
                    batch: n,
                    leaves_bytes: l,
                    arena_bytes: a,
                    recomputes: r,
                    ..best
                };
            }
            Err(why) => hi = Some((n, why)),
        }
    }
    Ok(best)
}
