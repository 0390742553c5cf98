//! Scheduling and memory planning over fused kernels.
//!
//! Stages: (1) *schedule*: a topological order of the kernels; a greedy order that runs
//! first the ready kernel freeing the most memory is compared with the plain order, and
//! the one with the lower peak is kept; (2) *liveness*: every kernel output is a value
//! that lives from the step that writes it to the last step that reads it (graph outputs
//! to the end); (3) *in-place reuse*: an output may take over the storage of an input of
//! the same size that dies in the same kernel and that only elementwise ops of the kernel
//! read (so each element is read before it is overwritten at the same index); (4)
//! *placement*: every storage gets an offset in one arena, greedily with best fit, trying
//! several orderings (by size, by lifetime, by start) and keeping the smallest arena.
//!
//! Invariants (checked by [`verify_plan`]): two storages live at the same step never
//! overlap in the arena; every read sees the value last written for it. Offsets and sizes
//! are multiples of [`ALIGN`] bytes.

use std::collections::{HashMap, HashSet};

use super::fusion::Fused;
use crate::ir::{Graph, NodeId};

/// Alignment of every buffer in the arena, in bytes.
pub const ALIGN: u64 = 256;

fn aligned(bytes: u64) -> u64 {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// One region of the arena, holding one value or a chain of values computed in place.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Storage {
    /// The values it holds, in the order they are written.
    #[serde(skip)]
    pub values: Vec<NodeId>,
    /// The step at which each of `values` is written.
    pub written: Vec<usize>,
    pub bytes: u64,
    /// First and last schedule step (inclusive) at which it is live.
    pub start: usize,
    pub end: usize,
    pub offset: u64,
}

/// Graph outputs that replace a leaf of the same name and type (a training step's updated
/// parameters and momentum buffers): they are written over the leaf's own storage, outside
/// the arena, after every other read of the leaf.
pub fn leaf_updates(graph: &Graph) -> HashMap<NodeId, NodeId> {
    let leaves: HashMap<&str, NodeId> = graph
        .node_ids()
        .filter_map(|id| match &graph.node(id).op {
            crate::ir::Op::Param { name, .. } | crate::ir::Op::Input { name } => {
                Some((name.as_str(), id))
            }
            _ => None,
        })
        .collect();
    graph
        .outputs
        .iter()
        .filter_map(|o| {
            let leaf = *leaves.get(o.name.as_str())?;
            (graph.node(leaf).ty == graph.node(o.value).ty && !graph.node(o.value).op.is_leaf())
                .then_some((o.value, leaf))
        })
        .collect()
}

/// For each kernel, the kernels that must run before it because it overwrites a leaf they
/// read (write-after-read ordering for in-place updates).
fn anti_dependencies(graph: &Graph, fused: &Fused) -> Vec<HashSet<usize>> {
    let mut before: Vec<HashSet<usize>> = vec![HashSet::new(); fused.kernels.len()];
    for (value, leaf) in leaf_updates(graph) {
        let writer = fused.kernel_of[&value];
        for (k, kernel) in fused.kernels.iter().enumerate() {
            if k != writer && kernel.inputs.contains(&leaf) {
                before[writer].insert(k);
            }
        }
    }
    before
}

/// A memory plan: the kernel order, the storages and the arena size.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Kernel indices (into [`Fused::kernels`]) in execution order.
    pub order: Vec<usize>,
    pub storages: Vec<Storage>,
    pub storage_of: HashMap<NodeId, usize>,
    pub arena_bytes: u64,
    /// The largest total of bytes live at one step: no placement can use less.
    pub lower_bound: u64,
    /// The step where the lower bound is reached.
    pub peak_step: usize,
    /// Every computed op's output in its own buffer, no reuse.
    pub naive_bytes: u64,
    /// Which placement ordering won.
    pub placement: &'static str,
    /// Outputs written in place over a leaf (outside the arena): value -> leaf.
    pub leaf_updates: HashMap<NodeId, NodeId>,
    /// Bytes of those in-place updates (parameters and optimizer state).
    pub in_place_bytes: u64,
}

impl Plan {
    /// The value a storage holds at `step`: the last one written by then.
    pub fn value_at(&self, storage: usize, step: usize) -> NodeId {
        let s = &self.storages[storage];
        let i = s.written.iter().rposition(|&w| w <= step).unwrap_or(0);
        s.values[i]
    }

    /// Storages live at the peak step, largest first.
    pub fn peak_live_set(&self) -> Vec<usize> {
        let mut live: Vec<usize> = (0..self.storages.len())
            .filter(|&s| {
                self.storages[s].start <= self.peak_step && self.peak_step <= self.storages[s].end
            })
            .collect();
        live.sort_by_key(|&s| std::cmp::Reverse(self.storages[s].bytes));
        live
    }
}

/// Values each kernel writes that need memory: its outputs (all computed, never leaves).
fn uses_by_kernel(graph: &Graph, fused: &Fused) -> HashMap<NodeId, Vec<usize>> {
    let mut readers: HashMap<NodeId, Vec<usize>> = HashMap::new();
    for (k, kernel) in fused.kernels.iter().enumerate() {
        for &i in &kernel.inputs {
            if !graph.node(i).op.is_leaf() {
                readers.entry(i).or_default().push(k);
            }
        }
    }
    readers
}

/// Peak of live bytes for a kernel order, without in-place reuse (for choosing an order).
fn peak_of_order(graph: &Graph, fused: &Fused, order: &[usize]) -> u64 {
    let updates = leaf_updates(graph);
    let readers = uses_by_kernel(graph, fused);
    let outputs: HashSet<NodeId> = graph.outputs.iter().map(|o| o.value).collect();
    let step_of: HashMap<usize, usize> = order.iter().enumerate().map(|(s, &k)| (k, s)).collect();
    let mut delta = vec![0i128; order.len() + 1];
    for (k, kernel) in fused.kernels.iter().enumerate() {
        for &v in kernel.outputs.iter().filter(|v| !updates.contains_key(v)) {
            let bytes = aligned(graph.node(v).ty.bytes()) as i128;
            let start = step_of[&k];
            let end = if outputs.contains(&v) {
                order.len() - 1
            } else {
                readers.get(&v).map_or(start, |r| {
                    r.iter().map(|k| step_of[k]).max().unwrap_or(start)
                })
            };
            delta[start] += bytes;
            delta[end + 1] -= bytes;
        }
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in &delta[..order.len()] {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

/// A memory-aware topological order of the kernels.
pub fn schedule(graph: &Graph, fused: &Fused) -> Vec<usize> {
    schedule_with(graph, fused, &[])
}

/// Kernel-level "run after" hints from value pairs `(later, earlier)`, dropping any that
/// would put a kernel after itself or close a cycle.
fn hints(fused: &Fused, after: &[(NodeId, NodeId)]) -> Vec<HashSet<usize>> {
    let n = fused.kernels.len();
    let mut succ: Vec<HashSet<usize>> = vec![HashSet::new(); n];
    for (k, kernel) in fused.kernels.iter().enumerate() {
        for i in &kernel.inputs {
            if let Some(&p) = fused.kernel_of.get(i) {
                succ[p].insert(k);
            }
        }
    }
    let mut extra: Vec<HashSet<usize>> = vec![HashSet::new(); n];
    for (later, earlier) in after {
        let (Some(&l), Some(&e)) = (fused.kernel_of.get(later), fused.kernel_of.get(earlier))
        else {
            continue;
        };
        if l == e {
            continue;
        }
        // Adding e -> l closes a cycle if e is reachable from l.
        let mut stack = vec![l];
        let mut seen = HashSet::new();
        let mut cycle = false;
        while let Some(k) = stack.pop() {
            if k == e {
                cycle = true;
                break;
            }
            if seen.insert(k) {
                stack.extend(succ[k].iter().copied());
            }
        }
        if !cycle {
            extra[l].insert(e);
            succ[e].insert(l);
        }
    }
    extra
}

/// A memory-aware topological order that also runs each `later` value's kernel after the
/// `earlier` one's, where that is possible (recomputed values placed near their use).
pub fn schedule_with(graph: &Graph, fused: &Fused, after: &[(NodeId, NodeId)]) -> Vec<usize> {
    let plain: Vec<usize> = (0..fused.kernels.len()).collect();
    let mut anti = anti_dependencies(graph, fused);
    for (k, extra) in hints(fused, after).into_iter().enumerate() {
        anti[k].extend(extra);
    }
    let greedy = greedy_order(graph, fused, &anti);
    let plain_ok = anti
        .iter()
        .enumerate()
        .all(|(k, before)| before.iter().all(|&b| b < k));
    if !plain_ok || peak_of_order(graph, fused, &greedy) < peak_of_order(graph, fused, &plain) {
        greedy
    } else {
        plain
    }
}

fn greedy_order(graph: &Graph, fused: &Fused, anti: &[HashSet<usize>]) -> Vec<usize> {
    let updates = leaf_updates(graph);
    let n = fused.kernels.len();
    let readers = uses_by_kernel(graph, fused);
    let outputs: HashSet<NodeId> = graph.outputs.iter().map(|o| o.value).collect();
    let mut waiting: Vec<usize> = vec![0; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, kernel) in fused.kernels.iter().enumerate() {
        let mut producers: HashSet<usize> = kernel
            .inputs
            .iter()
            .filter_map(|i| fused.kernel_of.get(i).copied())
            .collect();
        producers.extend(anti[k].iter().copied());
        waiting[k] = producers.len();
        for p in producers {
            dependents[p].push(k);
        }
    }
    let mut remaining: HashMap<NodeId, usize> =
        readers.iter().map(|(v, r)| (*v, r.len())).collect();
    let mut ready: Vec<usize> = (0..n).filter(|&k| waiting[k] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while !ready.is_empty() {
        // Net bytes: what the kernel frees minus what it allocates; lowest index on ties.
        let score = |k: usize| -> i128 {
            let kernel = &fused.kernels[k];
            let allocated: u64 = kernel
                .outputs
                .iter()
                .filter(|v| !updates.contains_key(v))
                .map(|&v| aligned(graph.node(v).ty.bytes()))
                .sum();
            let freed: u64 = kernel
                .inputs
                .iter()
                .filter(|i| remaining.get(i) == Some(&1) && !outputs.contains(i))
                .map(|&i| aligned(graph.node(i).ty.bytes()))
                .sum();
            freed as i128 - allocated as i128
        };
        let (pos, _) = ready
            .iter()
            .enumerate()
            .max_by(|(_, &a), (_, &b)| score(a).cmp(&score(b)).then(b.cmp(&a)))
            .expect("non-empty");
        let k = ready.swap_remove(pos);
        order.push(k);
        for i in &fused.kernels[k].inputs {
            if let Some(r) = remaining.get_mut(i) {
                *r -= 1;
            }
        }
        for &d in &dependents[k] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    order
}

/// Whether kernel `k` reads input `i` only element by element, at the position it writes:
/// every reader of `i` in the kernel is elementwise and lies after the kernel's anchor (an
/// epilogue), or the kernel has no anchor. A prologue feeding an anchor (a relu before a
/// conv) reads around each point, so writing over `i` there is not safe.
fn reads_are_pointwise(graph: &Graph, fused: &Fused, k: usize, i: NodeId) -> bool {
    let kernel = &fused.kernels[k];
    let after_anchor: HashSet<NodeId> = match kernel.anchor {
        None => kernel.nodes.iter().copied().collect(),
        Some(anchor) => {
            let mut downstream = HashSet::from([anchor]);
            for &n in &kernel.nodes {
                if graph.operands(n).iter().any(|o| downstream.contains(o)) {
                    downstream.insert(n);
                }
            }
            downstream.remove(&anchor);
            downstream
        }
    };
    graph
        .users(i)
        .iter()
        .filter(|u| fused.kernel_of.get(u) == Some(&k))
        .all(|u| graph.node(*u).op.kind().is_elementwise() && after_anchor.contains(u))
}

/// Plans the memory of `fused` executed in `order`.
pub fn plan(graph: &Graph, fused: &Fused, order: Vec<usize>) -> Plan {
    let updates = leaf_updates(graph);
    let in_place_bytes = updates.keys().map(|&v| graph.node(v).ty.bytes()).sum();
    let readers = uses_by_kernel(graph, fused);
    let outputs: HashSet<NodeId> = graph.outputs.iter().map(|o| o.value).collect();
    let step_of: HashMap<usize, usize> = order.iter().enumerate().map(|(s, &k)| (k, s)).collect();
    let last = order.len().saturating_sub(1);
    let end_of = |v: NodeId, start: usize| {
        if outputs.contains(&v) {
            last
        } else {
            readers.get(&v).map_or(start, |r| {
                r.iter().map(|k| step_of[k]).max().unwrap_or(start)
            })
        }
    };
    let mut storages: Vec<Storage> = Vec::new();
    let mut storage_of: HashMap<NodeId, usize> = HashMap::new();
    for (step, &k) in order.iter().enumerate() {
        let kernel = &fused.kernels[k];
        let mut taken: HashSet<usize> = HashSet::new();
        for &v in kernel.outputs.iter().filter(|v| !updates.contains_key(v)) {
            let bytes = aligned(graph.node(v).ty.bytes());
            let end = end_of(v, step);
            // In-place: an input storage that dies here, of the same size, read only by
            // elementwise ops of this kernel.
            let reuse = kernel.inputs.iter().find_map(|&i| {
                let s = *storage_of.get(&i)?;
                let dies_here = storages[s].end == step && !outputs.contains(&i);
                let same_shape = graph.node(i).ty == graph.node(v).ty;
                let pointwise = reads_are_pointwise(graph, fused, k, i);
                (dies_here
                    && same_shape
                    && pointwise
                    && storages[s].bytes == bytes
                    && !taken.contains(&s))
                .then_some(s)
            });
            let s = match reuse {
                Some(s) => {
                    storages[s].values.push(v);
                    storages[s].written.push(step);
                    storages[s].end = end;
                    s
                }
                None => {
                    storages.push(Storage {
                        values: vec![v],
                        written: vec![step],
                        bytes,
                        start: step,
                        end,
                        offset: 0,
                    });
                    storages.len() - 1
                }
            };
            taken.insert(s);
            storage_of.insert(v, s);
        }
    }
    // The lower bound: the most bytes live at one step.
    let mut delta = vec![0i128; order.len() + 1];
    for s in &storages {
        delta[s.start] += s.bytes as i128;
        delta[s.end + 1] -= s.bytes as i128;
    }
    let (mut live, mut lower_bound, mut peak_step) = (0i128, 0u64, 0usize);
    for (step, d) in delta[..order.len()].iter().enumerate() {
        live += d;
        if live as u64 > lower_bound {
            lower_bound = live as u64;
            peak_step = step;
        }
    }
    type Key = fn(&Storage) -> (i128, i128);
    let orderings: [(&'static str, Key); 3] = [
        ("largest first", |s| (-(s.bytes as i128), s.start as i128)),
        ("longest-lived first", |s| {
            (-((s.end - s.start) as i128), -(s.bytes as i128))
        }),
        ("earliest first", |s| (s.start as i128, -(s.bytes as i128))),
    ];
    let mut best: Option<(u64, &'static str, Vec<u64>)> = None;
    for (name, key) in orderings {
        let offsets = place(&storages, key);
        let arena = storages
            .iter()
            .zip(&offsets)
            .map(|(s, o)| o + s.bytes)
            .max()
            .unwrap_or(0);
        if best.as_ref().is_none_or(|(a, _, _)| arena < *a) {
            best = Some((arena, name, offsets));
        }
    }
    let (arena_bytes, placement, offsets) = best.unwrap_or((0, "none", Vec::new()));
    for (s, o) in storages.iter_mut().zip(offsets) {
        s.offset = o;
    }
    // Every computed value in its own buffer; in-place parameter updates are not features.
    let naive_bytes = fused
        .kernels
        .iter()
        .flat_map(|k| &k.nodes)
        .filter(|n| !updates.contains_key(n))
        .map(|&n| graph.node(n).ty.bytes())
        .sum();
    Plan {
        order,
        storages,
        storage_of,
        arena_bytes,
        lower_bound,
        peak_step,
        naive_bytes,
        placement,
        leaf_updates: updates,
        in_place_bytes,
    }
}

/// Best-fit placement of storages in the order given by `key`.
fn place(storages: &[Storage], key: fn(&Storage) -> (i128, i128)) -> Vec<u64> {
    let mut indices: Vec<usize> = (0..storages.len()).collect();
    indices.sort_by_key(|&i| (key(&storages[i]), i));
    let mut offsets: Vec<Option<u64>> = vec![None; storages.len()];
    for &i in &indices {
        let s = &storages[i];
        let mut busy: Vec<(u64, u64)> = indices
            .iter()
            .filter_map(|&j| {
                let o = offsets[j]?;
                let t = &storages[j];
                (t.start <= s.end && s.start <= t.end).then_some((o, o + t.bytes))
            })
            .collect();
        busy.sort_unstable();
        // Gaps between busy regions; the smallest that fits wins, else the end.
        let mut best: Option<(u64, u64)> = None; // (gap size, offset)
        let mut cursor = 0u64;
        for (lo, hi) in &busy {
            if *lo > cursor {
                let gap = lo - cursor;
                if gap >= s.bytes && best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, cursor));
                }
            }
            cursor = cursor.max(*hi);
        }
        offsets[i] = Some(best.map_or(cursor, |(_, o)| o));
    }
    offsets.into_iter().map(|o| o.unwrap_or(0)).collect()
}

/// Checks a plan independently of how it was made: kernels run after what they read, no
/// two storages live at the same step overlap, and every read sees the last write of its
/// value (nothing else wrote over it in between).
pub fn verify_plan(graph: &Graph, fused: &Fused, plan: &Plan) -> Result<(), String> {
    let mut seen: HashSet<usize> = HashSet::new();
    let anti = anti_dependencies(graph, fused);
    for &k in &plan.order {
        if let Some(reader) = anti[k].iter().find(|r| !seen.contains(r)) {
            return Err(format!(
                "kernel {k} overwrites a parameter that kernel {reader} still has to read"
            ));
        }
        for i in &fused.kernels[k].inputs {
            if let Some(p) = fused.kernel_of.get(i) {
                if !seen.contains(p) {
                    return Err(format!(
                        "kernel {k} runs before kernel {p}, whose output it reads"
                    ));
                }
            }
        }
        if !seen.insert(k) {
            return Err(format!("kernel {k} is scheduled twice"));
        }
    }
    if seen.len() != fused.kernels.len() {
        return Err("some kernels are not scheduled".into());
    }
    let s = &plan.storages;
    for a in 0..s.len() {
        if !s[a].offset.is_multiple_of(ALIGN)
            || !s[a].bytes.is_multiple_of(ALIGN)
            || s[a].offset + s[a].bytes > plan.arena_bytes
        {
            return Err(format!("storage {a} is misaligned or outside the arena"));
        }
        if let Some(v) = s[a]
            .values
            .iter()
            .find(|&&v| graph.node(v).ty.bytes() > s[a].bytes)
        {
            return Err(format!("storage {a} is too small for value {}", v.index()));
        }
        for b in a + 1..s.len() {
            let time = s[a].start <= s[b].end && s[b].start <= s[a].end;
            let space =
                s[a].offset < s[b].offset + s[b].bytes && s[b].offset < s[a].offset + s[a].bytes;
            if time && space {
                return Err(format!(
                    "storages {a} and {b} are live together and overlap"
                ));
            }
        }
    }
    // Simulate: which value each storage holds, and when another storage last wrote over it.
    let mut holds: HashMap<usize, NodeId> = HashMap::new();
    let mut written_at: HashMap<NodeId, usize> = HashMap::new();
    let mut clobbered_at: HashMap<usize, usize> = HashMap::new();
    for (step, &k) in plan.order.iter().enumerate() {
        for &i in &fused.kernels[k].inputs {
            if graph.node(i).op.is_leaf() || plan.leaf_updates.contains_key(&i) {
                continue;
            }
            let st = *plan
                .storage_of
                .get(&i)
                .ok_or_else(|| format!("value {} has no storage", i.index()))?;
            let fresh = clobbered_at.get(&st).is_none_or(|&c| c < written_at[&i]);
            if holds.get(&st) != Some(&i) || !fresh {
                return Err(format!(
                    "step {step} reads value {} after it was overwritten",
                    i.index()
                ));
            }
        }
        for &v in fused.kernels[k]
            .outputs
            .iter()
            .filter(|v| !plan.leaf_updates.contains_key(v))
        {
            let st = *plan
                .storage_of
                .get(&v)
                .ok_or_else(|| format!("value {} has no storage", v.index()))?;
            holds.insert(st, v);
            written_at.insert(v, step);
            for (other, t) in s.iter().enumerate() {
                if other != st
                    && t.offset < s[st].offset + s[st].bytes
                    && s[st].offset < t.offset + t.bytes
                {
                    clobbered_at.insert(other, step);
                }
            }
        }
    }
    for o in graph
        .outputs
        .iter()
        .filter(|o| !plan.leaf_updates.contains_key(&o.value))
    {
        let st = plan.storage_of.get(&o.value);
        if let Some(&st) = st {
            if holds.get(&st) != Some(&o.value)
                || clobbered_at
                    .get(&st)
                    .is_some_and(|&c| c > written_at[&o.value])
            {
                return Err(format!("output `{}` is overwritten before the end", o.name));
            }
        }
    }
    Ok(())
}
