//! `--dynamic-size`: which sizes of the exported model may stay symbolic, found by
//! elaborating the network again at other input sizes and comparing.
//!
//! The batch N is symbolic when the network elaborated with N + 1 is the same graph (same
//! ops, attributes and parameters). H and W are symbolic when the network elaborated at two
//! other sizes has the same ops, and every bilinear resize's target size can be read at run
//! time from a value computed before it (the same axis of an earlier value that has that
//! size at all three input sizes), or is the same at all three. A size that only
//! elaboration computes (e.g. `rescale`'s `floor(H * factor)`) pins H and W, with a note
//! naming the resize; the model then keeps H and W fixed.

use std::collections::HashMap;

use rfnc_compiler::ir::{Graph, NodeId, Op};

use super::params::lower;
use super::proto::Dim;
use super::{describe, export_log};
use crate::frontend::{parse_input, Network, Source};

/// Where a resize finds one of its target sizes when the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeFrom {
    /// A constant.
    Fixed(u64),
    /// The same axis (2 for the height, 3 for the width) of this value.
    DimOf(NodeId),
}

/// The network elaborated at another input size, node for node against the base graph.
struct Probe {
    /// The first input's dims.
    input: Vec<u64>,
    graph: Graph,
    /// Base node -> the same node of this probe.
    map: HashMap<NodeId, NodeId>,
}

/// The symbolic sizes of an exported graph.
pub struct Shapes {
    pub batch: bool,
    pub spatial: bool,
    /// For every resize when H and W are symbolic: where its height and width come from.
    pub resize: HashMap<NodeId, [SizeFrom; 2]>,
    /// Why a size stays fixed.
    pub notes: Vec<String>,
    base_input: Vec<u64>,
    probes: Vec<Probe>,
}

impl Shapes {
    /// Every size fixed (no `--dynamic-size`).
    pub fn fixed() -> Shapes {
        Shapes {
            batch: false,
            spatial: false,
            resize: HashMap::new(),
            notes: Vec::new(),
            base_input: Vec::new(),
            probes: Vec::new(),
        }
    }

    /// The declared dims of `id`'s value in the base graph: known where every probe agrees,
    /// else `N`, `H` or `W` when it varies as that size of the first input does, else a
    /// symbol `PREFIX_H`, `PREFIX_W` or `PREFIX_dI` of its own.
    pub fn dims(&self, base: &Graph, id: NodeId, prefix: &str) -> Vec<Dim> {
        let dims = &base.node(id).ty.dims;
        (0..dims.len())
            .map(|axis| {
                let sig = self.signature(base, id, axis);
                if sig.iter().all(|&v| v == sig[0]) {
                    return Dim::Known(sig[0]);
                }
                let input_axes = [(0, "N"), (2, "H"), (3, "W")];
                for (a, symbol) in input_axes {
                    let named = a == 0 || self.base_input.len() == 4;
                    if named && a < self.base_input.len() && sig == self.input_signature(a) {
                        return Dim::Symbol(symbol.into());
                    }
                }
                Dim::Symbol(match (dims.len(), axis) {
                    (4, 2) => format!("{prefix}_H"),
                    (4, 3) => format!("{prefix}_W"),
                    _ => format!("{prefix}_d{axis}"),
                })
            })
            .collect()
    }

    /// Axis `axis` of `id` at the base size and at each probe.
    fn signature(&self, base: &Graph, id: NodeId, axis: usize) -> Vec<u64> {
        let mut sig = vec![base.node(id).ty.dims[axis]];
        sig.extend(
            self.probes
                .iter()
                .map(|p| p.graph.node(p.map[&id]).ty.dims[axis]),
        );
        sig
    }

    fn input_signature(&self, axis: usize) -> Vec<u64> {
        let mut sig = vec![self.base_input[axis]];
        sig.extend(self.probes.iter().map(|p| p.input[axis]));
        sig
    }
}

/// Finds which of N, H and W can be symbolic in `base`, the lowered graph of `network`.
pub fn analyse(network: &Network, base: &Graph, keep_batch_norm: bool) -> Shapes {
    let mut shapes = Shapes::fixed();
    let Ok(input) = parse_input(&network.source.input) else {
        return shapes;
    };
    shapes.base_input = input.clone();
    let probe_at =
        |dims: Vec<u64>, strict: bool| probe(network, dims, base, keep_batch_norm, strict);
    let mut batch_input = input.clone();
    batch_input[0] += 1;
    match probe_at(batch_input, true) {
        Ok(p) => {
            shapes.batch = true;
            shapes.probes.push(p);
        }
        Err(why) => shapes.notes.push(format!("N stays {}: {why}", input[0])),
    }
    if input.len() != 4 {
        shapes.notes.push(format!(
            "H and W stay fixed: the first input is not NxCxHxW (--input {})",
            network.source.input
        ));
        return shapes;
    }
    let (h, w) = (input[2], input[3]);
    let others = [[h + 7, w + 13], [2 * h + 3, 2 * w + 1]];
    let spatial: Result<Vec<Probe>, String> = others
        .iter()
        .map(|hw| probe_at(vec![input[0], input[1], hw[0], hw[1]], false))
        .collect();
    let fixed = |why: String| format!("H and W stay {h}x{w}: {why}");
    match spatial {
        Err(why) => shapes.notes.push(fixed(why)),
        Ok(probes) => match resize_sources(base, &probes) {
            Ok(resize) => {
                shapes.spatial = true;
                shapes.resize = resize;
                shapes.probes.extend(probes);
            }
            Err(why) => shapes.notes.push(fixed(why)),
        },
    }
    shapes
}

/// The network elaborated and lowered with the first input of size `dims`, matched node
/// for node with `base`; `strict` also requires equal resize sizes.
fn probe(
    network: &Network,
    dims: Vec<u64>,
    base: &Graph,
    keep_batch_norm: bool,
    strict: bool,
) -> Result<Probe, String> {
    let text: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    let source = Source {
        input: text.join("x"),
        ..network.source.clone()
    };
    let other = Network::elaborate(&source, &export_log()).map_err(|e| {
        let why = match e {
            crate::Error::User(d, _) => d.title,
            crate::Error::Internal(m) => m,
        };
        format!(
            "the network does not elaborate at input {}: {why}",
            source.input
        )
    })?;
    let graph = lower(&other.forward, keep_batch_norm).graph;
    let map = correspond(base, &graph, strict)
        .map_err(|why| format!("at input {} {why}", source.input))?;
    Ok(Probe {
        input: dims,
        graph,
        map,
    })
}

/// Matches two lowerings of the same network node for node (both are built in the same
/// order, so their topological orders correspond) and checks that they are the same graph
/// up to sizes (and, unless `strict`, resize targets).
fn correspond(
    base: &Graph,
    other: &Graph,
    strict: bool,
) -> Result<HashMap<NodeId, NodeId>, String> {
    let a = base.topo_order().expect("verified graphs are acyclic");
    let b = other.topo_order().expect("verified graphs are acyclic");
    if a.len() != b.len() {
        return Err(format!(
            "the network has {} ops instead of {}",
            b.len(),
            a.len()
        ));
    }
    let mut map = HashMap::new();
    for (&x, &y) in a.iter().zip(&b) {
        let (nx, ny) = (base.node(x), other.node(y));
        let same_op = match (&nx.op, &ny.op) {
            (
                Op::ResizeBilinear {
                    align_corners: p, ..
                },
                Op::ResizeBilinear {
                    align_corners: q, ..
                },
            ) if !strict => p == q,
            (p, q) => p == q,
        };
        let operands: Vec<NodeId> = base.operands(x).iter().map(|o| map[o]).collect();
        let same_param = !matches!(nx.op, Op::Param { .. }) || nx.ty == ny.ty;
        if !same_op || !same_param || operands != other.operands(y) {
            return Err(format!("{} is not the same", describe(base, x)));
        }
        map.insert(x, y);
    }
    let outputs = |g: &Graph, m: &dyn Fn(NodeId) -> NodeId| -> Vec<(String, NodeId)> {
        g.outputs
            .iter()
            .map(|o| (o.name.clone(), m(o.value)))
            .collect()
    };
    if outputs(base, &|id| map[&id]) != outputs(other, &|id| id) {
        return Err("the network's outputs differ".into());
    }
    Ok(map)
}

/// For every resize of `base`: where each target size comes from at run time.
fn resize_sources(
    base: &Graph,
    probes: &[Probe],
) -> Result<HashMap<NodeId, [SizeFrom; 2]>, String> {
    let order = base.topo_order().expect("verified graphs are acyclic");
    let signature = |id: NodeId, axis: usize| -> Vec<u64> {
        let mut sig = vec![base.node(id).ty.dims[axis]];
        sig.extend(
            probes
                .iter()
                .map(|p| p.graph.node(p.map[&id]).ty.dims[axis]),
        );
        sig
    };
    let mut sources = HashMap::new();
    for (at, &r) in order.iter().enumerate() {
        if !matches!(base.node(r).op, Op::ResizeBilinear { .. }) {
            continue;
        }
        let mut from = [SizeFrom::Fixed(0); 2];
        for (k, slot) in from.iter_mut().enumerate() {
            let target = signature(r, 2 + k);
            *slot = if target.iter().all(|&v| v == target[0]) {
                SizeFrom::Fixed(target[0])
            } else {
                order[..at]
                    .iter()
                    .find(|&&v| base.node(v).ty.rank() == 4 && signature(v, 2 + k) == target)
                    .map(|&v| SizeFrom::DimOf(v))
                    .ok_or_else(|| {
                        format!(
                            "{} resizes to a size that no earlier value has at other input sizes (a size computed from the input, as by `rescale`, is fixed at elaboration)",
                            describe(base, r)
                        )
                    })?
            };
        }
        sources.insert(r, from);
    }
    Ok(sources)
}
