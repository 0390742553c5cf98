//! Fusion: partitions the computed ops of a graph into kernels.
//!
//! Stages, over the ops in topological order: (1) *prologue*: a conv absorbs the relu or
//! max-pool that feeds its input when nothing else uses it (the RCU's pre-activation, CRP's
//! pool-then-conv), and a sum absorbs a bilinear resize that only it reads (the
//! multi-resolution fusion's upsample-and-sum); (2) *epilogue*: an elementwise op (relu,
//! add, mul, sigmoid, batch norm, dropout, their gradients, the SGD updates) joins the
//! kernel of an operand of its own shape that nothing else uses (conv, bias, folded BN,
//! residual add and relu become one kernel; chains of elementwise ops become one; a
//! broadcast operand, such as a channel gate, has another shape and stays in its own
//! kernel). Gradient ops follow the same rules.
//!
//! Invariants: every computed op is in exactly one kernel; a kernel holds at most one
//! *anchor* (a conv or conv gradient, max or average pooling or its gradient, a resize or
//! its gradient, a concatenation or channel slice, a global pooling or `sum_to`, a loss or
//! its gradient, a channel sum, a batch-norm folding op), not counting a pool or resize
//! absorbed as a prologue; kernels are convex (no
//! path leaves a kernel and comes back), so the kernels form an acyclic graph; a value is
//! written to memory only if it is a kernel output (used by another kernel or a graph
//! output). Leaves (inputs, parameters, constants) belong to no kernel.

use std::collections::{HashMap, HashSet};

use crate::ir::{ConvRole, Graph, NodeId, Op, OpKind};

/// One kernel: its ops in topological order, what it reads and what it writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub nodes: Vec<NodeId>,
    pub anchor: Option<NodeId>,
    /// Values read from outside the kernel (other kernels' outputs and leaves), in first-use order.
    pub inputs: Vec<NodeId>,
    /// Values written for later kernels or as graph outputs.
    pub outputs: Vec<NodeId>,
}

/// The partition of a graph into kernels, in a topological order of the kernels.
#[derive(Clone, Debug)]
pub struct Fused {
    pub kernels: Vec<Kernel>,
    pub kernel_of: HashMap<NodeId, usize>,
}

/// What fusion saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FusionReport {
    pub ops: usize,
    pub kernels: usize,
    /// Bytes of intermediate values that stay inside a kernel instead of going to memory.
    pub bytes_not_written: u64,
}

struct Partition<'g> {
    graph: &'g Graph,
    group: HashMap<NodeId, usize>,
    members: Vec<Vec<NodeId>>,
    position: HashMap<NodeId, usize>,
    /// Ops computed while their consumer reads (a pool or resize there is not an anchor).
    prologue: HashSet<NodeId>,
}

impl Partition<'_> {
    fn anchors(&self, g: usize) -> usize {
        self.members[g]
            .iter()
            .filter(|&&n| self.graph.node(n).op.kind().is_anchor() && !self.prologue.contains(&n))
            .count()
    }

    /// Absorbs the single-use producer `o` as a prologue of `n`'s kernel.
    fn absorb_prologue(&mut self, n: NodeId, o: NodeId, outputs: &HashSet<NodeId>) {
        if !self.only_feeds(o, n, outputs) || self.members[self.group[&o]].len() != 1 {
            return;
        }
        self.prologue.insert(o);
        let (gn, go) = (self.group[&n], self.group[&o]);
        if !self.try_merge(gn, go) {
            self.prologue.remove(&o);
        }
    }

    /// Whether merging groups `a` and `b` keeps every group convex: no value outside both
    /// that one depends on and that depends on the other.
    fn convex_after_merge(&self, a: usize, b: usize) -> bool {
        let merged: HashSet<NodeId> = self.members[a]
            .iter()
            .chain(&self.members[b])
            .copied()
            .collect();
        let lowest = merged.iter().map(|n| self.position[n]).min().unwrap_or(0);
        // Walk backwards from the operands of the merged set that lie outside it; reaching
        // the merged set again means a path leaves and re-enters.
        let mut stack: Vec<NodeId> = merged
            .iter()
            .flat_map(|&n| self.graph.operands(n))
            .filter(|o| !merged.contains(o) && !self.graph.node(*o).op.is_leaf())
            .collect();
        let mut seen: HashSet<NodeId> = HashSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) || self.position[&n] < lowest {
                continue;
            }
            for o in self.graph.operands(n) {
                if merged.contains(&o) {
                    return false;
                }
                if !self.graph.node(o).op.is_leaf() {
                    stack.push(o);
                }
            }
        }
        true
    }

    fn try_merge(&mut self, a: usize, b: usize) -> bool {
        if a == b {
            return true;
        }
        if self.anchors(a) + self.anchors(b) > 1 || !self.convex_after_merge(a, b) {
            return false;
        }
        let moved = std::mem::take(&mut self.members[b]);
        for &n in &moved {
            self.group.insert(n, a);
        }
        self.members[a].extend(moved);
        true
    }

    /// `producer` is used only by `consumer` (and is not a graph output).
    fn only_feeds(&self, producer: NodeId, consumer: NodeId, outputs: &HashSet<NodeId>) -> bool {
        !outputs.contains(&producer) && self.only_used_by(producer, consumer)
    }

    /// No other op uses `producer` (it may still be a graph output, written by the kernel).
    fn only_used_by(&self, producer: NodeId, consumer: NodeId) -> bool {
        self.graph.users(producer).iter().all(|&u| u == consumer)
    }
}

/// Partitions `graph` into kernels.
pub fn fuse(graph: &Graph) -> Fused {
    let order = graph.topo_order().expect("verified graphs are acyclic");
    let computed: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|&n| !graph.node(n).op.is_leaf())
        .collect();
    let outputs: HashSet<NodeId> = graph.outputs.iter().map(|o| o.value).collect();
    let mut p = Partition {
        graph,
        group: computed.iter().enumerate().map(|(i, &n)| (n, i)).collect(),
        members: computed.iter().map(|&n| vec![n]).collect(),
        position: order.iter().enumerate().map(|(i, &n)| (n, i)).collect(),
        prologue: HashSet::new(),
    };
    for &n in &computed {
        let op = &graph.node(n).op;
        let operands = graph.operands(n);
        // Prologues: a conv reads its input through a relu or a max-pool; a sum reads an
        // operand through a bilinear resize.
        if op.kind() == OpKind::Conv(ConvRole::Forward) {
            let o = operands[0];
            if matches!(graph.node(o).op, Op::Relu | Op::MaxPool2d { .. }) {
                p.absorb_prologue(n, o, &outputs);
            }
        }
        if matches!(op, Op::Add) {
            for &o in &operands {
                if graph.node(o).op.kind() == (OpKind::Resize { grad: false }) {
                    p.absorb_prologue(n, o, &outputs);
                }
            }
        }
        // Epilogues: join the kernel of a same-shaped operand that nothing else uses (it
        // may be a graph output too: the kernel then writes both).
        if op.kind().is_elementwise() {
            for &o in &operands {
                if graph.node(o).op.is_leaf() || graph.node(o).ty != graph.node(n).ty {
                    continue;
                }
                if p.only_used_by(o, n) {
                    let (go, gn) = (p.group[&o], p.group[&n]);
                    p.try_merge(go, gn);
                }
            }
        }
    }
    // Nodes in topological order within each kernel; kernels in a topological order of the
    // kernel graph (Kahn's algorithm, earliest first op first).
    let mut groups: Vec<Vec<NodeId>> = p.members.into_iter().filter(|m| !m.is_empty()).collect();
    for m in groups.iter_mut() {
        m.sort_by_key(|n| p.position[n]);
    }
    let groups = topological_kernels(graph, groups, &p.position);
    let prologue = p.prologue;
    let kernel_of: HashMap<NodeId, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(k, m)| m.iter().map(move |&n| (n, k)))
        .collect();
    let kernels = groups
        .into_iter()
        .enumerate()
        .map(|(k, nodes)| {
            let inside: HashSet<NodeId> = nodes.iter().copied().collect();
            let mut inputs = Vec::new();
            for &n in &nodes {
                for o in graph.operands(n) {
                    if !inside.contains(&o) && !inputs.contains(&o) {
                        inputs.push(o);
                    }
                }
            }
            let outputs_of_kernel = nodes
                .iter()
                .copied()
                .filter(|n| {
                    outputs.contains(n)
                        || graph.users(*n).iter().any(|u| kernel_of.get(u) != Some(&k))
                })
                .collect();
            let anchor = nodes
                .iter()
                .copied()
                .find(|&n| graph.node(n).op.kind().is_anchor() && !prologue.contains(&n));
            Kernel {
                nodes,
                anchor,
                inputs,
                outputs: outputs_of_kernel,
            }
        })
        .collect();
    let fused = Fused { kernels, kernel_of };
    debug_assert!(kernel_order_is_topological(graph, &fused));
    fused
}

fn topological_kernels(
    graph: &Graph,
    groups: Vec<Vec<NodeId>>,
    position: &HashMap<NodeId, usize>,
) -> Vec<Vec<NodeId>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let group_of: HashMap<NodeId, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, m)| m.iter().map(move |&n| (n, g)))
        .collect();
    let mut waiting = vec![0usize; groups.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    for (g, m) in groups.iter().enumerate() {
        let producers: HashSet<usize> = m
            .iter()
            .flat_map(|&n| graph.operands(n))
            .filter_map(|o| group_of.get(&o).copied())
            .filter(|&p| p != g)
            .collect();
        waiting[g] = producers.len();
        for p in producers {
            dependents[p].push(g);
        }
    }
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = (0..groups.len())
        .filter(|&g| waiting[g] == 0)
        .map(|g| Reverse((position[&groups[g][0]], g)))
        .collect();
    let mut order = Vec::with_capacity(groups.len());
    while let Some(Reverse((_, g))) = ready.pop() {
        order.push(g);
        for &d in &dependents[g] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(Reverse((position[&groups[d][0]], d)));
            }
        }
    }
    assert_eq!(
        order.len(),
        groups.len(),
        "convex kernels form an acyclic kernel graph"
    );
    let mut slots: Vec<Option<Vec<NodeId>>> = groups.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|g| slots[g].take().expect("each kernel once"))
        .collect()
}

fn kernel_order_is_topological(graph: &Graph, fused: &Fused) -> bool {
    fused.kernels.iter().enumerate().all(|(k, kernel)| {
        kernel
            .inputs
            .iter()
            .all(|i| fused.kernel_of.get(i).is_none_or(|&p| p < k) || graph.node(*i).op.is_leaf())
    })
}

/// Ops before, kernels after, and the bytes of values that no longer go to memory.
pub fn report(graph: &Graph, fused: &Fused) -> FusionReport {
    let ops = fused.kernels.iter().map(|k| k.nodes.len()).sum();
    let bytes_not_written = fused
        .kernels
        .iter()
        .flat_map(|k| k.nodes.iter().filter(|n| !k.outputs.contains(n)))
        .map(|&n| graph.node(n).ty.bytes())
        .sum();
    FusionReport {
        ops,
        kernels: fused.kernels.len(),
        bytes_not_written,
    }
}
