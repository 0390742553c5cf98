//! Runs a fused, scheduled and planned program over one real arena buffer: every kernel
//! reads its computed inputs from the arena at their planned offsets and writes its outputs
//! back there. Agreeing with [`super::run`] on the unplanned graph proves the plan correct
//! (a wrong offset or lifetime would overwrite a value that is still needed).

use std::collections::HashMap;

use super::{eval, feed, InterpError, Real, Tensor, Value};
use crate::ir::{Graph, NodeId};
use crate::passes::fusion::Fused;
use crate::passes::memory::Plan;

pub fn run_planned<T: Real>(
    graph: &Graph,
    fused: &Fused,
    plan: &Plan,
    feeds: &HashMap<String, Value<T>>,
) -> Result<Vec<(String, Value<T>)>, InterpError> {
    let elem = 4u64; // every computed value is f32 in the IR; the arena counts f32 slots
    let mut arena: Vec<T> = vec![T::nan(); (plan.arena_bytes / elem) as usize];
    let slot = |v: NodeId| -> Result<(usize, usize), InterpError> {
        let s = plan
            .storage_of
            .get(&v)
            .ok_or_else(|| InterpError(format!("value {} has no storage", v.index())))?;
        let offset = (plan.storages[*s].offset / elem) as usize;
        Ok((offset, graph.node(v).ty.elements() as usize))
    };
    let read = |arena: &Vec<T>, v: NodeId| -> Result<Value<T>, InterpError> {
        let (offset, n) = slot(v)?;
        Ok(Value::Real(Tensor::new(
            graph.node(v).ty.dims.clone(),
            arena[offset..offset + n].to_vec(),
        )))
    };
    let leaf = |v: NodeId| -> Result<Value<T>, InterpError> {
        match &graph.node(v).op {
            crate::ir::Op::Input { name } | crate::ir::Op::Param { name, .. } => {
                feed(graph, v, name, feeds)
            }
            op => eval(op, &[], &graph.node(v).ty.dims),
        }
    };
    // Leaves updated in place (parameters, momentum): their current contents.
    let mut updated: HashMap<NodeId, Value<T>> = HashMap::new();
    for &k in &plan.order {
        let kernel = &fused.kernels[k];
        let mut local: HashMap<NodeId, Value<T>> = HashMap::new();
        for &i in &kernel.inputs {
            // A value written over a leaf is read back from the leaf's storage.
            let storage = plan.leaf_updates.get(&i).copied().unwrap_or(i);
            let value = match updated.get(&storage) {
                Some(v) => v.clone(),
                None if graph.node(i).op.is_leaf() => leaf(i)?,
                None => read(&arena, i)?,
            };
            local.insert(i, value);
        }
        for &n in &kernel.nodes {
            let operands = graph.operands(n);
            let args: Vec<&Value<T>> = operands.iter().map(|o| &local[o]).collect();
            let value = eval(&graph.node(n).op, &args, &graph.node(n).ty.dims)?;
            local.insert(n, value);
        }
        for &o in &kernel.outputs {
            if let Some(&leaf) = plan.leaf_updates.get(&o) {
                updated.insert(leaf, local[&o].clone());
                continue;
            }
            let (offset, n) = slot(o)?;
            arena[offset..offset + n].copy_from_slice(&local[&o].real().data);
        }
    }
    graph
        .outputs
        .iter()
        .map(|o| {
            let value = match plan.leaf_updates.get(&o.value) {
                Some(leaf_id) => updated[leaf_id].clone(),
                None if graph.node(o.value).op.is_leaf() => leaf(o.value)?,
                None => read(&arena, o.value)?,
            };
            Ok((o.name.clone(), value))
        })
        .collect()
}
