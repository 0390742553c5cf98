//! The pass pipeline from a verified graph to a planned program, for inference and for the
//! training step, with the time of each pass. Every stage's result is verified.

use std::time::{Duration, Instant};

use super::canonical::{common_subexpressions, dead_code, fold_batch_norm, inference};
use super::fusion::{fuse, report, Fused, FusionReport};
use super::memory::{plan, schedule_with, verify_plan, Plan};
use super::remat::{rematerialize, Stage};
use crate::ir::{verify, Graph};

/// A graph after the passes: canonical, fused into kernels, scheduled, with a memory plan.
pub struct Planned {
    pub graph: Graph,
    /// Inference only: computes the folded conv parameters once, when weights are loaded
    /// (`None` when there is no batch norm to fold).
    pub prepare: Option<Graph>,
    pub fused: Fused,
    pub plan: Plan,
    pub fusion: FusionReport,
    /// Each pass and how long it took.
    pub timings: Vec<(&'static str, Duration)>,
}

fn timed<T>(
    timings: &mut Vec<(&'static str, Duration)>,
    name: &'static str,
    f: impl FnOnce() -> T,
) -> T {
    let start = Instant::now();
    let out = f();
    timings.push((name, start.elapsed()));
    out
}

fn checked(stage: &str, graph: &Graph) -> Result<(), String> {
    match verify(graph).first() {
        None => Ok(()),
        Some(e) => Err(format!("after {stage}: {} at {}", e.message, e.loc)),
    }
}

/// Inference: drop the objective, fold batch norm into the convs, CSE, DCE, fuse, plan.
pub fn plan_inference(forward: &Graph) -> Result<Planned, String> {
    let mut timings = Vec::new();
    let g = timed(&mut timings, "inference graph", || inference(forward));
    let folded = timed(&mut timings, "fold batch norm", || fold_batch_norm(&g));
    let (mut g, prepare) = (folded.graph, folded.prepare);
    timed(&mut timings, "cse + dce", || {
        common_subexpressions(&mut g);
        dead_code(&mut g);
    });
    checked("canonicalisation", &g)?;
    // A network without conv + batch norm has nothing to fold: no prepare program.
    let prepare = if prepare.outputs.is_empty() {
        None
    } else {
        checked("the prepare program", &prepare)?;
        Some(prepare)
    };
    finish(g, prepare, timings, &[])
}

/// The training step graph (already built): CSE, DCE, fuse, plan.
pub fn plan_training(step: &Graph) -> Result<Planned, String> {
    let mut timings = Vec::new();
    let mut g = step.clone();
    timed(&mut timings, "cse + dce", || {
        common_subexpressions(&mut g);
        dead_code(&mut g);
    });
    checked("canonicalisation", &g)?;
    finish(g, None, timings, &[])
}

/// A graph as it is (the prepare program): fuse and plan only.
pub fn plan_program(graph: &Graph) -> Result<Planned, String> {
    checked("the program", graph)?;
    finish(graph.clone(), None, Vec::new(), &[])
}

/// What fitting a memory budget did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BudgetReport {
    pub budget_bytes: u64,
    /// The arena with nothing recomputed.
    pub arena_without_recompute: u64,
    pub arena_bytes: u64,
    pub stage: &'static str,
    pub recomputed_values: usize,
    pub extra_macs: u64,
}

/// The training step planned to fit `budget` arena bytes, recomputing more and more forward
/// values (see [`super::remat`]) until it does. When no stage fits, the error names the
/// smallest arena that any stage reached.
pub fn plan_training_within(
    step: &Graph,
    budget: u64,
) -> Result<(Planned, BudgetReport), BudgetError> {
    let mut base = step.clone();
    common_subexpressions(&mut base);
    dead_code(&mut base);
    let mut without = None;
    let mut smallest = u64::MAX;
    for stage in Stage::ALL {
        let mut timings = Vec::new();
        let r = timed(&mut timings, "recompute", || rematerialize(&base, stage));
        checked("recomputation", &r.graph).map_err(BudgetError::Internal)?;
        let compiled = finish(r.graph, None, timings, &r.after).map_err(BudgetError::Internal)?;
        let arena = compiled.plan.arena_bytes;
        let without_recompute = *without.get_or_insert(arena);
        smallest = smallest.min(arena);
        if arena <= budget {
            let report = BudgetReport {
                budget_bytes: budget,
                arena_without_recompute: without_recompute,
                arena_bytes: arena,
                stage: stage.describe(),
                recomputed_values: r.recomputed,
                extra_macs: r.extra_macs,
            };
            return Ok((compiled, report));
        }
    }
    Err(BudgetError::TooSmall { budget, smallest })
}

#[derive(Clone, Debug, PartialEq)]
pub enum BudgetError {
    /// Even recomputing everything it can, the plan needs `smallest` bytes.
    TooSmall {
        budget: u64,
        smallest: u64,
    },
    Internal(String),
}

fn finish(
    graph: Graph,
    prepare: Option<Graph>,
    mut timings: Vec<(&'static str, Duration)>,
    after: &[(crate::ir::NodeId, crate::ir::NodeId)],
) -> Result<Planned, String> {
    let fused = timed(&mut timings, "fusion", || fuse(&graph));
    let order = timed(&mut timings, "schedule", || {
        schedule_with(&graph, &fused, after)
    });
    let plan = timed(&mut timings, "memory plan", || plan(&graph, &fused, order));
    timed(&mut timings, "plan verifier", || {
        verify_plan(&graph, &fused, &plan)
    })?;
    let fusion = report(&graph, &fused);
    Ok(Planned {
        graph,
        prepare,
        fused,
        plan,
        fusion,
        timings,
    })
}
