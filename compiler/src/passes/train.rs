//! The training step: one graph for a whole step of SGD with momentum.
//!
//! Stages: (1) copy the forward graph and add the `step` input (i32 scalar); every dropout
//! gets it as a second operand (so it is active, keyed by seed and step) and the configured
//! seed; add the `lr_factor` input (f32 scalar, the learning-rate schedule: 1 trains at the
//! configured rate); (2) choose the trainable parameters (conv weights and biases; frozen batch norm is
//! never trained) minus those matched by a `freeze` pattern; (3) differentiate the
//! objective with respect to them ([`super::autodiff`]); (4) for each, add a momentum
//! buffer `NAME.momentum` (a parameter of kind momentum) and the updates
//! `v' = momentum * v + g + weight_decay * p`, `p' = p - lr * scale * lr_factor * v'`.
//!
//! Invariants: the result takes the forward graph's inputs and parameters, the momentum
//! buffers, `step` and `lr_factor`; it returns the objective (under its own name) first,
//! then the terms of a weighted objective (the forward graph's outputs that it sums), then for each
//! trained parameter its new value under the parameter's name and its new momentum under
//! `NAME.momentum`. Parameters the objective does not depend on are left out (unchanged).
//! Every `freeze` and `lr_scale` pattern must match some trainable parameter, so that a
//! typo is an error rather than a silently different run.

use std::collections::HashMap;

use super::autodiff::{gradients, AutodiffError};
pub use crate::ir::train_config::{pattern_matches, TrainConfig};
use crate::ir::{objective_terms, DType, Graph, Loc, NodeId, Op, Output, ParamKind, TensorType};

/// The training step's input that scales every learning rate of the step: the schedule
/// (poly, step, ...) sets it for each step; 1 trains at the configured rates.
pub use rfnc_bundle::{LR_FACTOR_INPUT as LR_FACTOR, STEP_INPUT};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainError(pub String);

impl From<AutodiffError> for TrainError {
    fn from(e: AutodiffError) -> Self {
        TrainError(e.0)
    }
}

/// A copy of `forward` in training mode: it takes the `step` input (i32 scalar), and every
/// dropout takes it as its second operand, with the given seed.
pub fn with_active_dropout(forward: &Graph, seed: u64) -> Graph {
    let mut g = forward.clone();
    let step = g.add(
        Op::Input {
            name: STEP_INPUT.into(),
        },
        &[],
        TensorType::new(DType::I32, vec![]),
        Loc::default(),
    );
    let dropouts: Vec<NodeId> = g
        .node_ids()
        .filter(|&id| matches!(g.node(id).op, Op::Dropout { .. }))
        .collect();
    for id in dropouts {
        if let Op::Dropout { rate, stream, .. } = g.node(id).op {
            g.set_op(id, Op::Dropout { rate, seed, stream });
            g.push_operand(id, step);
        }
    }
    g
}

/// Builds the training-step graph of `forward`.
pub fn train_step(forward: &Graph, config: &TrainConfig) -> Result<Graph, TrainError> {
    let objective = forward.objective.clone().ok_or_else(|| {
        TrainError(format!(
            "network `{}` has no objective to train: add `objective NAME = LOSS;`",
            forward.name
        ))
    })?;
    let loss = forward
        .output(&objective)
        .ok_or_else(|| TrainError(format!("objective `{objective}` is not an output")))?;
    for (name, value) in [
        ("lr", config.lr),
        ("momentum", config.momentum),
        ("weight decay", config.weight_decay),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(TrainError(format!(
                "the {name} must be a finite non-negative number, not {value}"
            )));
        }
    }
    for (pattern, factor) in &config.lr_scales {
        if !factor.is_finite() || *factor < 0.0 {
            return Err(TrainError(format!("the learning-rate scale of `{pattern}` must be a finite non-negative number, not {factor}")));
        }
    }
    if config.seed > i64::MAX as u64 {
        return Err(TrainError(format!(
            "the seed must be below 2^63, not {}",
            config.seed
        )));
    }
    for (taken, what) in [
        (STEP_INPUT, "the step counter"),
        (LR_FACTOR, "the learning-rate schedule"),
    ] {
        let exists = forward.node_ids().any(|id| matches!(&forward.node(id).op, Op::Input { name } | Op::Param { name, .. } if name == taken));
        if exists {
            return Err(TrainError(format!(
                "the training step adds an input named `{taken}` ({what}), and the network already has a value named `{taken}`: rename it"
            )));
        }
    }
    let mut g = with_active_dropout(forward, config.seed);
    g.name = format!("{}_train", forward.name);
    let lr_factor = g.add(
        Op::Input {
            name: LR_FACTOR.into(),
        },
        &[],
        TensorType::scalar_f32(),
        Loc::default(),
    );

    let mut trainable: Vec<(String, NodeId)> = Vec::new();
    let mut used_patterns: HashMap<&str, bool> = config
        .frozen
        .iter()
        .chain(config.lr_scales.iter().map(|(p, _)| p))
        .map(|p| (p.as_str(), false))
        .collect();
    let order = g
        .topo_order()
        .ok_or_else(|| TrainError("the graph has a cycle".into()))?;
    for &id in &order {
        let Op::Param { name, kind } = &g.node(id).op else {
            continue;
        };
        if !kind.is_trainable() {
            continue;
        }
        for (p, _) in &config.lr_scales {
            if pattern_matches(p, name) {
                used_patterns.insert(p, true);
            }
        }
        let frozen = config
            .frozen
            .iter()
            .filter(|p| pattern_matches(p, name))
            .inspect(|p| {
                used_patterns.insert(p, true);
            })
            .count()
            > 0;
        if !frozen {
            trainable.push((name.clone(), id));
        }
    }
    let mut unused: Vec<&str> = used_patterns
        .iter()
        .filter(|(_, used)| !**used)
        .map(|(p, _)| *p)
        .collect();
    unused.sort_unstable();
    if let Some(p) = unused.first() {
        return Err(TrainError(format!(
            "the pattern `{p}` matches no trainable parameter"
        )));
    }

    let ids: Vec<NodeId> = trainable.iter().map(|(_, id)| *id).collect();
    let grads = gradients(&mut g, loss, &ids)?;
    let mut outputs = vec![Output {
        name: objective.clone(),
        value: loss,
    }];
    // The terms of a weighted objective, each reported under its output's name.
    let terms = objective_terms(&g, loss).unwrap_or_default();
    for o in &forward.outputs {
        if o.name != objective && terms.contains(&o.value) {
            outputs.push(o.clone());
        }
    }
    for ((name, p), grad) in trainable.iter().zip(grads) {
        let Some(grad) = grad else { continue };
        let scale = config
            .lr_scales
            .iter()
            .rev()
            .find(|(pat, _)| pattern_matches(pat, name))
            .map_or(1.0, |(_, f)| *f);
        let loc = g.node(*p).loc.clone();
        let ty = g.node(*p).ty.clone();
        let momentum_name = format!("{name}.momentum");
        let v = g.add(
            Op::Param {
                name: momentum_name.clone(),
                kind: ParamKind::Momentum,
            },
            &[],
            ty,
            loc.clone(),
        );
        let update = Op::SgdMomentum {
            momentum: config.momentum,
            weight_decay: config.weight_decay,
        };
        let v_new = g
            .add_inferred(update, &[v, grad, *p], loc.clone())
            .map_err(|e| TrainError(e.message))?;
        let p_new = g
            .add_inferred(
                Op::SgdStep {
                    lr: config.lr * scale,
                },
                &[*p, v_new, lr_factor],
                loc,
            )
            .map_err(|e| TrainError(e.message))?;
        outputs.push(Output {
            name: name.clone(),
            value: p_new,
        });
        outputs.push(Output {
            name: momentum_name,
            value: v_new,
        });
    }
    g.outputs = outputs;
    g.objective = Some(objective);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn patterns_match_scopes_and_globs() {
        assert!(pattern_matches("backbone", "backbone.conv1.weight"));
        assert!(!pattern_matches("backbone", "backbone_large.conv1.weight"));
        assert!(pattern_matches("backbone*", "backbone_large.conv1.weight"));
        assert!(pattern_matches("*.bias", "refine1.crp.conv1.bias"));
        assert!(!pattern_matches("*.bias", "refine1.crp.conv1.weight"));
        assert!(pattern_matches("refine?.x", "refine?.x"));
        assert!(pattern_matches("*a*b*", "xxaxxbxx"));
        assert!(!pattern_matches("*a*b", "xxaxxbxx"));
        // Many stars: no exponential backtracking.
        assert!(!pattern_matches(
            &format!("{}X", "*".repeat(40)),
            &"a".repeat(200)
        ));
    }
}
