//! Whole programs: every fused kernel of a planned program lowered in schedule order,
//! identical kernels kept once, and the [`Bundle`] describing leaves, launches and outputs.
//!
//! Invariants: a kernel's name is its ops and a hash of its whole KIR, so two launches share
//! a kernel exactly when their code is identical; every launch argument is a slot of the
//! arena (a planned storage), the scratch region or the leaves region (inputs, parameters,
//! values updated in place over a parameter); leaves are laid out once for both programs.

use std::collections::{BTreeMap, HashMap};

use super::check::CheckedKernel;
use super::kir::KernelFn;
use super::lower::{
    lower_kernel, lower_kernel_host, Arg, HostStep, LowerError, LoweredLaunch, LoweredMatrix,
};
use crate::ir::{Graph, NodeId, Op, ParamKind};
use crate::passes::pipeline::Planned;
use rfnc_bundle::{
    Bundle, BundleOutput, Gemm, HostLaunch, HostProgram, KernelInfo, Launch, Leaf, LeafRole,
    Matrix, Mode, Precision, Program, Region, Slot, BUNDLE_FORMAT, BUNDLE_VERSION, SLOT_ALIGN,
};

/// A unique kernel and the name launches call it by.
#[derive(Clone, Debug)]
pub struct NamedKernel {
    pub name: String,
    pub kernel: CheckedKernel,
    /// Only the CPU's schedule launches it (no PTX).
    pub host_only: bool,
}

/// The unique kernels of a bundle, by name.
#[derive(Default)]
struct Kernels {
    list: Vec<NamedKernel>,
    known: HashMap<String, usize>,
}

impl Kernels {
    /// The name of `kernel`, added when new; a kernel both devices launch is not host-only.
    fn intern(&mut self, kernel: CheckedKernel, host_only: bool) -> String {
        let name = kernel_name(&kernel);
        match self.known.get(&name) {
            Some(&i) => self.list[i].host_only &= host_only,
            None => {
                self.known.insert(name.clone(), self.list.len());
                self.list.push(NamedKernel {
                    name: name.clone(),
                    kernel,
                    host_only,
                });
            }
        }
        name
    }
}

/// FNV-1a, 64-bit: a stable content hash for kernel names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `conv2d_add_relu_1f2e3d4c5b6a7988`: the ops (at most four) and the content hash.
pub fn kernel_name(kernel: &KernelFn) -> String {
    let hash = fnv1a(format!("{kernel:?}").as_bytes());
    let mut stem: Vec<&str> = kernel.ops.split('+').take(4).collect();
    if stem.is_empty() {
        stem.push("kernel");
    }
    let stem = stem.join("_").replace('.', "_");
    format!("{stem}_{hash:016x}")
}

fn aligned(bytes: u64) -> u64 {
    bytes.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

/// For labels read by softmax cross-entropy: the number of classes and the ignored label.
fn classes_of(graph: &Graph, leaf: NodeId) -> Option<(u64, i64)> {
    graph.node_ids().find_map(|id| match graph.node(id).op {
        Op::SoftmaxCrossEntropy { ignore_index, .. }
        | Op::SoftmaxCrossEntropyGrad { ignore_index, .. } => {
            let ops = graph.operands(id);
            (ops.get(1) == Some(&leaf)).then(|| (graph.node(ops[0]).ty.dims[1], ignore_index))
        }
        _ => None,
    })
}

/// The leaves of both programs, each at its own offset.
fn layout_leaves(main: &Graph, prepare: Option<&Graph>) -> (Vec<Leaf>, u64) {
    let folded: Vec<&str> = prepare
        .map(|p| p.outputs.iter().map(|o| o.name.as_str()).collect())
        .unwrap_or_default();
    let mut leaves: BTreeMap<String, Leaf> = BTreeMap::new();
    for graph in prepare.into_iter().chain([main]) {
        for id in graph.node_ids() {
            let node = graph.node(id);
            let (name, role) = match &node.op {
                Op::Input { name } => (name, LeafRole::Input),
                Op::Param { name, kind } => {
                    let role = if *kind == ParamKind::Momentum {
                        LeafRole::Momentum
                    } else if folded.contains(&name.as_str()) {
                        LeafRole::Folded
                    } else {
                        LeafRole::Param
                    };
                    (name, role)
                }
                _ => continue,
            };
            let labels = classes_of(graph, id);
            leaves.entry(name.clone()).or_insert(Leaf {
                name: name.clone(),
                role,
                dtype: graph.node(id).ty.dtype,
                shape: node.ty.dims.clone(),
                offset: 0,
                classes: labels.map(|c| c.0),
                ignore_label: labels.map(|c| c.1),
                init: None,
            });
        }
    }
    // Inputs first, then parameters by name: a stable, readable layout.
    let mut ordered: Vec<Leaf> = leaves.into_values().collect();
    ordered.sort_by_key(|l| (l.role != LeafRole::Input, l.name.clone()));
    let mut offset = 0;
    for leaf in &mut ordered {
        leaf.offset = offset;
        offset += aligned(leaf.bytes().max(1));
    }
    (ordered, offset)
}

/// Lowers one planned program; new kernels are added to `kernels`. With `pack` (the main
/// program of an inference bundle: the parameters do not change between runs), the CPU's
/// schedule transforms weights once, into the packed region, in its `pack` launches.
fn lower_program(
    compiled: &Planned,
    leaves: &[Leaf],
    precision: Precision,
    kernels: &mut Kernels,
    pack: bool,
) -> Result<Program, LowerError> {
    let graph = &compiled.graph;
    let plan = &compiled.plan;
    let leaf_slot = |name: &str| -> Result<Slot, LowerError> {
        let leaf = leaves
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| LowerError(format!("no leaf named `{name}`")))?;
        Ok(Slot {
            region: Region::Leaves,
            offset: leaf.offset,
            bytes: leaf.bytes(),
        })
    };
    let value_slot = |n: NodeId| -> Result<Slot, LowerError> {
        let node = graph.node(n);
        match &node.op {
            Op::Input { name } | Op::Param { name, .. } => return leaf_slot(name),
            _ => {}
        }
        if let Some(&leaf) = plan.leaf_updates.get(&n) {
            if let Op::Param { name, .. } | Op::Input { name } = &graph.node(leaf).op {
                return leaf_slot(name);
            }
        }
        let storage = plan.storage_of.get(&n).ok_or_else(|| {
            LowerError(format!(
                "value of rfn.{} has no storage in the plan",
                node.op.mnemonic()
            ))
        })?;
        Ok(Slot {
            region: Region::Arena,
            offset: plan.storages[*storage].offset,
            bytes: node.ty.bytes(),
        })
    };
    // Each schedule's slots and the scratch it needs.
    let slot = |arg: Arg, scratch_bytes: &mut u64| -> Result<Slot, LowerError> {
        Ok(match arg {
            Arg::Value(n) => value_slot(n)?,
            Arg::Scratch { offset, bytes } => {
                *scratch_bytes = (*scratch_bytes).max(aligned(offset + bytes));
                Slot {
                    region: Region::Scratch,
                    offset,
                    bytes,
                }
            }
            // Its size is the end of the last packed slot handed out (`packed` below).
            Arg::Packed { offset, bytes } => Slot {
                region: Region::Packed,
                offset,
                bytes,
            },
        })
    };
    let mut launch = |lowered: LoweredLaunch,
                      host_only: bool,
                      scratch_bytes: &mut u64|
     -> Result<Option<Launch>, LowerError> {
        let args = lowered
            .args
            .into_iter()
            .map(|a| slot(a, scratch_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let kernel = kernels.intern(lowered.kernel, host_only);
        // An empty tensor needs no work (and a GPU refuses an empty grid).
        Ok((lowered.grid > 0).then_some(Launch {
            kernel,
            grid: lowered.grid,
            args,
        }))
    };
    let mut launches = Vec::new();
    let mut scratch_bytes = 0;
    let mut host = Vec::new();
    let mut host_scratch = 0;
    let mut host_differs = false;
    let mut host_pack = Vec::new();
    let pack = pack && plan.leaf_updates.is_empty();
    let mut packed = 0;
    for &k in &plan.order {
        let kernel = &compiled.fused.kernels[k];
        let steps = lower_kernel_host(graph, kernel, pack.then_some(&mut packed))?;
        for lowered in lower_kernel(graph, kernel, precision)? {
            let gpu = launch(lowered, false, &mut scratch_bytes)?;
            if let (None, Some(l)) = (&steps, &gpu) {
                // The CPU runs the same launch, with the same scratch.
                for a in l.args.iter().filter(|a| a.region == Region::Scratch) {
                    host_scratch = host_scratch.max(aligned(a.offset + a.bytes));
                }
                host.push(HostLaunch::Kernel(l.clone()));
            }
            launches.extend(gpu);
        }
        for step in steps.into_iter().flatten() {
            host_differs = true;
            match step {
                HostStep::Kernel(lowered) => {
                    host.extend(launch(lowered, true, &mut host_scratch)?.map(HostLaunch::Kernel));
                }
                HostStep::Pack(lowered) => {
                    let l = launch(lowered, true, &mut host_scratch)?;
                    host_pack.extend(l.map(HostLaunch::Kernel));
                }
                HostStep::Gemm(g) => {
                    let mut matrix = |m: LoweredMatrix| -> Result<Matrix, LowerError> {
                        Ok(Matrix {
                            slot: slot(m.arg, &mut host_scratch)?,
                            rows: m.rows,
                            cols: m.cols,
                            batch: m.batch,
                        })
                    };
                    let gemm = Gemm {
                        m: g.m,
                        n: g.n,
                        k: g.k,
                        batch: g.batch,
                        a: matrix(g.a)?,
                        b: matrix(g.b)?,
                        c: matrix(g.c)?,
                    };
                    if gemm.batch.iter().all(|&b| b > 0) && gemm.m * gemm.n * gemm.k > 0 {
                        host.push(HostLaunch::Gemm(gemm));
                    }
                }
            }
        }
    }
    let outputs = graph
        .outputs
        .iter()
        .map(|o| {
            Ok(BundleOutput {
                name: o.name.clone(),
                dtype: graph.node(o.value).ty.dtype,
                shape: graph.node(o.value).ty.dims.clone(),
                slot: value_slot(o.value)?,
            })
        })
        .collect::<Result<Vec<_>, LowerError>>()?;
    Ok(Program {
        arena_bytes: plan.arena_bytes,
        scratch_bytes,
        launches,
        outputs,
        host: host_differs.then_some(HostProgram {
            scratch_bytes: host_scratch,
            packed_bytes: packed,
            pack: host_pack,
            launches: host,
        }),
    })
}

/// Everything code generation needs: the bundle (without compiled code: no GPU target, no
/// PTX files, no host code until code generation records what it wrote) and its kernels.
pub struct Lowered {
    pub bundle: Bundle,
    pub kernels: Vec<NamedKernel>,
}

/// Lowers the main program (and the prepare program, when inference folds batch norm), the
/// GPU's convolutions multiplying in `precision`.
pub fn lower_programs(
    network: &str,
    mode: Mode,
    precision: Precision,
    main: &Planned,
    prepare: Option<&Planned>,
) -> Result<Lowered, LowerError> {
    let (leaves, leaves_bytes) = layout_leaves(&main.graph, prepare.map(|p| &p.graph));
    let mut kernels = Kernels::default();
    let prepare = prepare
        .map(|p| lower_program(p, &leaves, precision, &mut kernels, false))
        .transpose()?;
    let pack = mode == Mode::Inference;
    let main = lower_program(main, &leaves, precision, &mut kernels, pack)?;
    let kernels = kernels.list;
    let infos = kernels
        .iter()
        .map(|k| KernelInfo {
            name: k.name.clone(),
            ptx: None,
            block: k.kernel.block,
            params: k.kernel.params.len() as u32,
            shared_bytes: k.kernel.shared.iter().map(|s| s.len * 4).sum(),
            ops: k.kernel.ops.clone(),
            schedule: k.kernel.schedule.clone(),
            host_only: k.host_only,
        })
        .collect();
    let bundle = Bundle {
        format: BUNDLE_FORMAT.into(),
        version: BUNDLE_VERSION,
        network: network.into(),
        mode,
        gpu_target: None,
        host_code: false,
        precision,
        leaves,
        leaves_bytes,
        kernels: infos,
        prepare,
        main,
    };
    bundle.validate().map_err(LowerError)?;
    Ok(Lowered { bundle, kernels })
}
