//! The graph IR: single-result ops as petgraph nodes, operands as edges tagged with their
//! operand index, plus the named outputs. Value semantics, static shapes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;

use super::{infer, Op, ShapeError, TensorType};

pub type NodeId = NodeIndex<u32>;

/// A position range in a source file, 1-based lines and columns (end exclusive).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourcePos {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
    pub end_line: u32,
    pub end_col: u32,
}

/// Where a value comes from: the hierarchical scope of the block calls that made it
/// (`refine4.adapt0.rcu1`, empty at the top level) and the source range of the expression.
/// Printed as MLIR's `loc("scope"("file":l:c to l:c))`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Loc {
    pub scope: String,
    pub pos: Option<SourcePos>,
}

impl Loc {
    /// The first segment of the scope: the component (`backbone`, `refine4`, `head`).
    pub fn component(&self) -> &str {
        self.scope.split('.').next().unwrap_or("")
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pos = self.pos.as_ref().map(|p| {
            format!(
                "\"{}\":{}:{} to {}:{}",
                super::escape(&p.file),
                p.line,
                p.col,
                p.end_line,
                p.end_col
            )
        });
        match (self.scope.is_empty(), pos) {
            (true, None) => write!(f, "loc(unknown)"),
            (true, Some(p)) => write!(f, "loc({p})"),
            (false, None) => write!(f, "loc(\"{}\")", super::escape(&self.scope)),
            (false, Some(p)) => write!(f, "loc(\"{}\"({p}))", super::escape(&self.scope)),
        }
    }
}

/// One op with its result type and source location.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    pub loc: Loc,
}

/// A named result of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub value: NodeId,
}

/// A whole network as one graph.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    graph: StableDiGraph<Node, u32>,
    pub outputs: Vec<Output>,
    /// Name of the output that is the training objective, if any.
    pub objective: Option<String>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            graph: StableDiGraph::default(),
            outputs: Vec::new(),
            objective: None,
        }
    }

    /// Adds a node with a given type. The caller is responsible for the type being right;
    /// the verifier checks it. Use [`Graph::add_inferred`] to have it computed.
    pub fn add(&mut self, op: Op, operands: &[NodeId], ty: TensorType, loc: Loc) -> NodeId {
        let id = self.graph.add_node(Node { op, ty, loc });
        for (i, &src) in operands.iter().enumerate() {
            self.graph.add_edge(src, id, i as u32);
        }
        id
    }

    /// Adds a node whose type is inferred from its operands.
    pub fn add_inferred(
        &mut self,
        op: Op,
        operands: &[NodeId],
        loc: Loc,
    ) -> Result<NodeId, ShapeError> {
        let types: Vec<&TensorType> = operands.iter().map(|&o| &self.graph[o].ty).collect();
        let ty = infer(&op, &types)?;
        Ok(self.add(op, operands, ty, loc))
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }

    /// Replaces a node's op (a pass's rewrite); the verifier checks the result.
    pub fn set_op(&mut self, id: NodeId, op: Op) {
        self.graph[id].op = op;
    }

    /// Removes a node and its edges. Outputs that named it must be redirected first.
    pub fn remove(&mut self, id: NodeId) {
        self.graph.remove_node(id);
    }

    /// Makes every user of `old` (and every output naming it) use `new` instead.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, u32, petgraph::stable_graph::EdgeIndex<u32>)> = self
            .graph
            .edges_directed(old, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight(), e.id()))
            .collect();
        for (target, slot, edge) in uses {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new, target, slot);
        }
        for o in self.outputs.iter_mut().filter(|o| o.value == old) {
            o.value = new;
        }
    }

    /// Makes `user` read `new` wherever it read `old` (other users of `old` are unchanged).
    pub fn replace_use_in(&mut self, user: NodeId, old: NodeId, new: NodeId) {
        let edges: Vec<(u32, petgraph::stable_graph::EdgeIndex<u32>)> = self
            .graph
            .edges_directed(user, Direction::Incoming)
            .filter(|e| e.source() == old)
            .map(|e| (*e.weight(), e.id()))
            .collect();
        for (slot, edge) in edges {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new, user, slot);
        }
    }

    /// Appends an operand to a node, in the next operand slot.
    pub fn push_operand(&mut self, id: NodeId, operand: NodeId) {
        let slot = self.graph.edges_directed(id, Direction::Incoming).count() as u32;
        self.graph.add_edge(operand, id, slot);
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.graph.contains_node(id)
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Operands of a node, in operand order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Operand slots as the edges record them (index, source), unsorted; for the verifier.
    pub fn operand_slots(&self, id: NodeId) -> Vec<(u32, NodeId)> {
        self.graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| (*e.weight(), e.source()))
            .collect()
    }

    /// Nodes that use `id` as an operand (with repetition if used twice).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.graph
            .edges_directed(id, Direction::Outgoing)
            .map(|e| e.target())
            .collect()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices()
    }

    /// A deterministic topological order: among ready nodes, the lowest index first, so a
    /// graph built operands-first prints in creation order. `None` if there is a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let mut indegree: Vec<usize> = vec![0; self.graph.node_bound()];
        for id in self.graph.node_indices() {
            indegree[id.index()] = self.graph.edges_directed(id, Direction::Incoming).count();
        }
        let mut ready: BinaryHeap<Reverse<NodeId>> = self
            .graph
            .node_indices()
            .filter(|id| indegree[id.index()] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.graph.node_count());
        while let Some(Reverse(id)) = ready.pop() {
            order.push(id);
            for e in self.graph.edges_directed(id, Direction::Outgoing) {
                let t = e.target();
                indegree[t.index()] -= 1;
                if indegree[t.index()] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        (order.len() == self.graph.node_count()).then_some(order)
    }

    /// The underlying petgraph, read-only (for DOT output and graph algorithms).
    pub fn petgraph(&self) -> &StableDiGraph<Node, u32> {
        &self.graph
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.value)
    }
}
