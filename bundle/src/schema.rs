//! The bundle schema: what `rfnc compile -o DIR` writes to `bundle.json` and the runtime executes.
//!
//! `DIR/bundle.json` holds a [`Bundle`]; next to it, `kernels/<name>.ptx` holds each unique
//! kernel's PTX and `host.bc` the same kernels compiled for the host (LLVM bitcode, one
//! function per kernel, named like the kernel). A bundle may hold only one of the two (a
//! temporary bundle that `rfnc run FILE` compiles for one device): `gpu_target` is absent
//! without PTX, `host_code` false without `host.bc`. The format is documented in
//! docs/runtime.md.
//!
//! Memory model: the runtime allocates three regions once: the *arena* (every intermediate
//! value at its planned offset, the largest `arena_bytes` of the programs), the *scratch*
//! region (small per-launch temporaries such as partial sums, reused by every launch) and
//! the *leaves* region (inputs, parameters, optimizer state, folded parameters, each at its
//! own offset). A kernel argument is a pointer into one of them: region base + offset.
//! The CPU's schedule of an inference program adds a fourth, the *packed* region: weights
//! transformed once (Winograd filters) by the program's `pack` launches, each at its own
//! offset, run whenever the parameters change and read by every run.

use serde::{Deserialize, Serialize};

use crate::init::Init;

/// `format` of every bundle.
pub const BUNDLE_FORMAT: &str = "rfnc-bundle";
/// Bumped whenever the format changes incompatibly.
pub const BUNDLE_VERSION: u32 = 6;
/// The training step's step counter (i32 scalar input): keys the dropout masks.
pub const STEP_INPUT: &str = "step";
/// The training step's learning-rate schedule (f32 scalar input): every update is scaled
/// by it; 1 trains at the compiled rates.
pub const LR_FACTOR_INPUT: &str = "lr_factor";

/// Alignment of every slot in every region, in bytes.
pub const SLOT_ALIGN: u64 = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub version: u32,
    /// The source program's file name, for messages.
    pub network: String,
    pub mode: Mode,
    /// The GPU architecture the PTX was generated for, e.g. `sm_80`; `None`: no PTX (the
    /// bundle runs on the CPU only).
    pub gpu_target: Option<String>,
    /// Whether `host.bc` holds the kernels for the CPU executor.
    pub host_code: bool,
    /// How the GPU kernels' convolutions multiply (the CPU's own schedule always multiplies
    /// in f32). Absent in bundles of format 4 and older, which `validate` refuses by their
    /// version (the default only lets them parse that far).
    #[serde(default)]
    pub precision: Precision,
    /// Every leaf of both programs, each at its own offset in the leaves region.
    pub leaves: Vec<Leaf>,
    pub leaves_bytes: u64,
    /// The unique kernels, each compiled once; launches refer to them by name.
    pub kernels: Vec<KernelInfo>,
    /// Run once after the weights are loaded (inference: folds batch norm into the convs);
    /// each of its outputs is copied into the leaf of the same name.
    pub prepare: Option<Program>,
    /// The network (inference) or one training step.
    pub main: Program,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Inference,
    Train,
}

/// The arithmetic of the GPU kernels' convolutions (everything else is f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 fused multiply-adds on the CUDA cores.
    F32,
    /// Tensor cores: the operands rounded to TF32 (10 mantissa bits, as PyTorch's
    /// convolutions on Ampere and Hopper by default), products summed in f32.
    #[default]
    Tf32,
    /// Tensor cores: the operands rounded to BF16 (7 mantissa bits), products summed in
    /// f32; weights, momentum and everything else stay f32.
    Bf16,
}

impl Precision {
    /// The name on the command line and in messages: `f32`, `tf32`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Element type of a tensor: one definition for the graph IR, the bundle and the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I32,
}

impl DType {
    /// The name in `.rfn` types, the IR text and messages: `f32`, `i32`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I32 => "i32",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "i32" => Some(DType::I32),
            _ => None,
        }
    }

    /// Size of one element in bytes.
    pub fn bytes(self) -> u64 {
        4
    }
}

/// What a leaf holds and who provides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeafRole {
    /// Fed for every run (image, labels, the training step counter `step`).
    Input,
    /// A learned or frozen parameter: from the weights file.
    Param,
    /// SGD momentum buffer: from the weights file when present there, else zeros.
    Momentum,
    /// Computed by the prepare program (batch norm folded into a conv).
    Folded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leaf {
    pub name: String,
    pub role: LeafRole,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Byte offset in the leaves region (a multiple of [`SLOT_ALIGN`]).
    pub offset: u64,
    /// Class labels (an i32 input read by softmax cross-entropy): the number of classes;
    /// valid labels are `0..classes` and the loss's ignore label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<u64>,
    /// The label the loss ignores, for class labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_label: Option<i64>,
    /// Parameters: how random weights start (see [`crate::init`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
}

impl Leaf {
    /// Elements (saturating: a corrupt shape cannot overflow).
    pub fn elements(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
    pub fn bytes(&self) -> u64 {
        self.elements().saturating_mul(self.dtype.bytes())
    }
}

/// One unique kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Symbol of the kernel in its PTX module and of the host function in `host.bc`.
    pub name: String,
    /// PTX file, relative to the bundle directory; present exactly when the bundle has a
    /// `gpu_target`.
    pub ptx: Option<String>,
    /// Threads per block.
    pub block: u32,
    /// Number of pointer parameters.
    pub params: u32,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u64,
    /// The ops it computes, e.g. `conv2d+add+relu`.
    pub ops: String,
    /// How it computes them where there is a choice (a convolution's GEMM tile, its
    /// stages and copies); empty for most kernels (and omitted from the file).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schedule: String,
    /// Only the CPU's launches call it (a step of a host schedule): it has host code and
    /// no PTX.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_only: bool,
}

/// A program: launches in order over the regions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub arena_bytes: u64,
    /// The scratch the GPU's launches need.
    pub scratch_bytes: u64,
    /// The GPU's launches (and the CPU's where `host` is absent, or when the CPU runs the
    /// GPU kernels to prove them).
    pub launches: Vec<Launch>,
    pub outputs: Vec<BundleOutput>,
    /// The CPU's schedule, where it differs: convolutions as packed GEMMs between kernels
    /// that gather their operands and apply their epilogues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostProgram>,
}

/// The CPU's launches of a program, over the same arena and leaves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostProgram {
    pub scratch_bytes: u64,
    /// Bytes of the packed region (0 without `pack` launches).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packed_bytes: u64,
    /// Launches that transform the parameters into the packed region, each value at its own
    /// offset: run once before the first run and again whenever a parameter changes (after
    /// the prepare program). Only inference programs have them: training changes the
    /// parameters every step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pack: Vec<HostLaunch>,
    pub launches: Vec<HostLaunch>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One step of the CPU's schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostLaunch {
    /// A kernel over a grid of blocks, as on the GPU.
    Kernel(Launch),
    /// A matrix product run by the runtime's packed GEMM.
    Gemm(Gemm),
}

/// `C[i, j] (+)= sum_k A[i, k] * B[k, j]` over f32 matrices given by element strides,
/// repeated over two nested batch levels (`batch[0]` outer): operand `X` of batch `(p, q)`
/// starts `p * X.batch[0] + q * X.batch[1]` elements into its slot. At a level whose C
/// stride is 0 the products of that level's batches are summed into one C (the first one
/// overwrites it); elsewhere C is overwritten.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gemm {
    /// Rows of C, columns of C, and the summed dimension.
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub batch: [u64; 2],
    pub a: Matrix,
    pub b: Matrix,
    pub c: Matrix,
}

/// A strided f32 matrix in a slot: element `(i, j)` of batch `(p, q)` is element
/// `p * batch[0] + q * batch[1] + i * rows + j * cols` of the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    pub slot: Slot,
    pub rows: u64,
    pub cols: u64,
    pub batch: [u64; 2],
}

impl Gemm {
    /// Checks that every element the product touches lies inside its slot (no overflow).
    pub fn validate(&self) -> Result<(), String> {
        let span = |x: &Matrix, r: u64, c: u64| -> Option<u64> {
            let last = |count: u64, stride: u64| count.checked_sub(1)?.checked_mul(stride);
            let end = last(r, x.rows)?
                .checked_add(last(c, x.cols)?)?
                .checked_add(last(self.batch[0], x.batch[0])?)?
                .checked_add(last(self.batch[1], x.batch[1])?)?;
            end.checked_add(1)?.checked_mul(4)
        };
        if self.m == 0 || self.n == 0 || self.k == 0 || self.batch.contains(&0) {
            return Err("a GEMM with an empty dimension".into());
        }
        for (what, x, r, c) in [
            ("A", &self.a, self.m, self.k),
            ("B", &self.b, self.k, self.n),
            ("C", &self.c, self.m, self.n),
        ] {
            match span(x, r, c) {
                Some(bytes) if bytes <= x.slot.bytes => {}
                _ => return Err(format!("a GEMM reads or writes {what} outside its slot")),
            }
        }
        Ok(())
    }
}

/// One kernel launch: a 1-D grid of `grid` blocks of the kernel's block size; argument `i`
/// is the pointer to `args[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub kernel: String,
    pub grid: u64,
    pub args: Vec<Slot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Arena,
    Scratch,
    Leaves,
    /// The CPU schedule's packed weights (see [`HostProgram::pack`]).
    Packed,
}

/// A byte range in one region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub region: Region,
    pub offset: u64,
    pub bytes: u64,
}

/// A graph output and where it is after the program ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleOutput {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub slot: Slot,
}

/// Whether `offset .. offset + bytes` lies within `size` (without overflowing).
fn inside(offset: u64, bytes: u64, size: u64) -> bool {
    offset.checked_add(bytes).is_some_and(|end| end <= size)
}

impl Bundle {
    /// Checks what the runtime relies on: the format and version; leaves and slots inside
    /// their regions (no overflow); outputs as large as their shapes; unique names; kernel
    /// files inside the bundle, one per kernel exactly when there is a GPU target; block sizes
    /// a GPU accepts; every launch naming a known kernel with the right number of arguments.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != BUNDLE_FORMAT {
            return Err(format!(
                "format is `{}`, expected `{BUNDLE_FORMAT}`",
                self.format
            ));
        }
        if self.version != BUNDLE_VERSION {
            return Err(format!(
                "bundle version {} is not supported (this rfnc reads version {BUNDLE_VERSION}); recompile the network",
                self.version
            ));
        }
        let mut names = std::collections::HashSet::new();
        for leaf in &self.leaves {
            if !names.insert(leaf.name.as_str()) {
                return Err(format!("leaf `{}` appears twice", leaf.name));
            }
            if !inside(leaf.offset, leaf.bytes(), self.leaves_bytes) {
                return Err(format!(
                    "leaf `{}` lies outside the leaves region",
                    leaf.name
                ));
            }
        }
        let mut kernels = std::collections::HashSet::new();
        for k in &self.kernels {
            if !kernels.insert(k.name.as_str()) {
                return Err(format!("kernel `{}` appears twice", k.name));
            }
            if k.host_only && k.ptx.is_some() {
                return Err(format!(
                    "kernel `{}` runs only on the CPU but has a PTX file",
                    k.name
                ));
            }
            let gpu_target = if k.host_only { &None } else { &self.gpu_target };
            match (&k.ptx, gpu_target) {
                (Some(ptx), Some(_)) => {
                    let within = std::path::Path::new(ptx)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)));
                    if !within || ptx.is_empty() {
                        return Err(format!(
                            "kernel `{}`: its PTX file `{ptx}` is not a path inside the bundle",
                            k.name
                        ));
                    }
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(format!(
                        "kernel `{}` has a PTX file, but the bundle has no GPU target",
                        k.name
                    ))
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "kernel `{}` has no PTX file, but the bundle has a GPU target",
                        k.name
                    ))
                }
            }
            if !(1..=1024).contains(&k.block) {
                return Err(format!(
                    "kernel `{}`: {} threads per block (a GPU takes 1 to 1024)",
                    k.name, k.block
                ));
            }
        }
        let programs = [
            ("prepare", self.prepare.as_ref()),
            ("main", Some(&self.main)),
        ];
        for (name, program) in programs {
            let Some(program) = program else { continue };
            let gpu = Schedule {
                program: name,
                arena: program.arena_bytes,
                scratch: program.scratch_bytes,
                packed: None,
                device: "GPU",
            };
            for (i, launch) in program.launches.iter().enumerate() {
                self.check_launch(&gpu, i, launch)?;
            }
            if let Some(host) = &program.host {
                let cpu = Schedule {
                    scratch: host.scratch_bytes,
                    packed: Some(host.packed_bytes),
                    device: "CPU",
                    ..gpu
                };
                let launches = host.pack.iter().chain(&host.launches);
                for (i, launch) in launches.enumerate() {
                    match launch {
                        HostLaunch::Kernel(launch) => self.check_launch(&cpu, i, launch)?,
                        HostLaunch::Gemm(gemm) => {
                            for m in [&gemm.a, &gemm.b, &gemm.c] {
                                cpu.within(
                                    &m.slot,
                                    self.leaves_bytes,
                                    &format!("an operand of GEMM {i}"),
                                )?;
                            }
                            gemm.validate()
                                .map_err(|e| format!("{name} program, CPU launch {i}: {e}"))?;
                        }
                    }
                }
            }
            let within = |slot: &Slot, what: &str| gpu.within(slot, self.leaves_bytes, what);
            for output in &program.outputs {
                within(&output.slot, &format!("output `{}`", output.name))?;
                let elements = output
                    .shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d))
                    .and_then(|n| n.checked_mul(output.dtype.bytes()));
                if elements != Some(output.slot.bytes) {
                    return Err(format!(
                        "{name} program: output `{}` has {} bytes for shape {:?}",
                        output.name, output.slot.bytes, output.shape
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The regions one device's launches of one program see.
#[derive(Clone, Copy)]
struct Schedule<'a> {
    program: &'a str,
    arena: u64,
    scratch: u64,
    /// The packed region (the CPU's schedule only).
    packed: Option<u64>,
    device: &'a str,
}

impl Schedule<'_> {
    fn within(&self, slot: &Slot, leaves: u64, what: &str) -> Result<(), String> {
        let size = match slot.region {
            Region::Arena => self.arena,
            Region::Scratch => self.scratch,
            Region::Leaves => leaves,
            Region::Packed => self.packed.ok_or_else(|| {
                format!(
                    "{} program: {what} lies in the packed region, which only the CPU's schedule has",
                    self.program
                )
            })?,
        };
        if !inside(slot.offset, slot.bytes, size) {
            return Err(format!(
                "{} program: {what} lies outside the {:?} region",
                self.program, slot.region
            ));
        }
        Ok(())
    }
}

impl Bundle {
    /// Launch `i` of a schedule: a known kernel the device has, its arity, its slots.
    fn check_launch(&self, on: &Schedule, i: usize, launch: &Launch) -> Result<(), String> {
        let name = on.program;
        let kernel = self
            .kernels
            .iter()
            .find(|k| k.name == launch.kernel)
            .ok_or_else(|| {
                format!(
                    "{name} program: launch {i} names unknown kernel `{}`",
                    launch.kernel
                )
            })?;
        if kernel.host_only && on.device == "GPU" {
            return Err(format!(
                "{name} program: GPU launch {i} calls `{}`, which runs only on the CPU",
                kernel.name
            ));
        }
        if kernel.params as usize != launch.args.len() {
            return Err(format!(
                "{name} program: launch {i} passes {} arguments to `{}`, which takes {}",
                launch.args.len(),
                kernel.name,
                kernel.params
            ));
        }
        for slot in &launch.args {
            on.within(
                slot,
                self.leaves_bytes,
                &format!("an argument of {} launch {i}", on.device),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        let slot = Slot {
            region: Region::Arena,
            offset: 0,
            bytes: 16,
        };
        Bundle {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            network: "n.rfn".into(),
            mode: Mode::Inference,
            gpu_target: Some("sm_80".into()),
            host_code: true,
            precision: Precision::F32,
            leaves: vec![Leaf {
                name: "x".into(),
                role: LeafRole::Input,
                dtype: DType::F32,
                shape: vec![4],
                offset: 0,
                classes: None,
                ignore_label: None,
                init: None,
            }],
            leaves_bytes: 256,
            kernels: vec![KernelInfo {
                name: "k".into(),
                ptx: Some("kernels/k.ptx".into()),
                block: 256,
                params: 1,
                shared_bytes: 0,
                ops: "relu".into(),
                schedule: String::new(),
                host_only: false,
            }],
            prepare: None,
            main: Program {
                arena_bytes: 256,
                scratch_bytes: 0,
                launches: vec![Launch {
                    kernel: "k".into(),
                    grid: 1,
                    args: vec![slot],
                }],
                outputs: vec![BundleOutput {
                    name: "y".into(),
                    dtype: DType::F32,
                    shape: vec![4],
                    slot,
                }],
                host: None,
            },
        }
    }

    #[test]
    fn corrupt_bundles_are_refused_without_overflow() {
        assert_eq!(bundle().validate(), Ok(()));
        let refused = |change: &dyn Fn(&mut Bundle), needle: &str| {
            let mut b = bundle();
            change(&mut b);
            let e = b.validate().unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        refused(
            &|b| b.leaves[0].shape = vec![u64::MAX, 3],
            "outside the leaves",
        );
        refused(&|b| b.leaves[0].offset = u64::MAX, "outside the leaves");
        refused(
            &|b| b.main.launches[0].args[0].offset = u64::MAX - 4,
            "outside",
        );
        refused(
            &|b| b.kernels[0].ptx = Some("../../etc/passwd".into()),
            "inside the bundle",
        );
        refused(
            &|b| b.kernels[0].ptx = Some("/tmp/k.ptx".into()),
            "inside the bundle",
        );
        refused(&|b| b.kernels[0].block = 0, "threads per block");
        refused(&|b| b.main.outputs[0].shape = vec![5], "bytes for shape");
        refused(&|b| b.kernels.push(b.kernels[0].clone()), "appears twice");
        refused(&|b| b.main.launches[0].args.clear(), "passes 0 arguments");
        refused(&|b| b.version = 1, "recompile");
        refused(
            &|b| b.kernels[0].ptx = None,
            "has no PTX file, but the bundle has a GPU target",
        );
        refused(
            &|b| b.gpu_target = None,
            "has a PTX file, but the bundle has no GPU target",
        );
        let mut host_only = bundle();
        host_only.gpu_target = None;
        host_only.kernels[0].ptx = None;
        assert_eq!(host_only.validate(), Ok(()));
    }

    /// A CPU schedule with one GEMM: `[2, 2] x [2, 2]` in the 16 bytes of the slot.
    fn with_gemm() -> Bundle {
        let mut b = bundle();
        let slot = b.main.outputs[0].slot;
        let m = Matrix {
            slot,
            rows: 2,
            cols: 1,
            batch: [0, 0],
        };
        b.main.host = Some(HostProgram {
            scratch_bytes: 0,
            packed_bytes: 0,
            pack: Vec::new(),
            launches: vec![
                HostLaunch::Kernel(b.main.launches[0].clone()),
                HostLaunch::Gemm(Gemm {
                    m: 2,
                    n: 2,
                    k: 2,
                    batch: [1, 1],
                    a: m,
                    b: m,
                    c: m,
                }),
            ],
        });
        b
    }

    #[test]
    fn cpu_schedules_are_checked() {
        assert_eq!(with_gemm().validate(), Ok(()));
        let refused = |change: &dyn Fn(&mut Bundle), needle: &str| {
            let mut b = with_gemm();
            change(&mut b);
            let e = b.validate().unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        fn gemm(b: &mut Bundle) -> &mut Gemm {
            match &mut b.main.host.as_mut().unwrap().launches[1] {
                HostLaunch::Gemm(g) => g,
                HostLaunch::Kernel(_) => unreachable!(),
            }
        }
        refused(&|b| gemm(b).n = 3, "B outside its slot");
        refused(&|b| gemm(b).k = u64::MAX, "outside its slot");
        refused(
            &|b| {
                gemm(b).batch = [2, 1];
                gemm(b).c.batch = [4, 0];
            },
            "C outside its slot",
        );
        refused(&|b| gemm(b).a.cols = u64::MAX / 2, "A outside its slot");
        refused(&|b| gemm(b).m = 0, "empty dimension");
        refused(
            &|b| gemm(b).b.slot.offset = 1 << 40,
            "outside the Arena region",
        );
        refused(
            &|b| b.kernels[0].host_only = true,
            "runs only on the CPU but has a PTX file",
        );
        refused(
            &|b| {
                b.kernels[0].host_only = true;
                b.kernels[0].ptx = None;
            },
            "GPU launch 0 calls `k`, which runs only on the CPU",
        );
    }

    #[test]
    fn the_packed_region_is_the_cpus_alone() {
        let packed = Slot {
            region: Region::Packed,
            offset: 0,
            bytes: 16,
        };
        // A pack launch writing 16 bytes of a 256-byte packed region, read by the GEMM.
        let mut b = with_gemm();
        let host = b.main.host.as_mut().unwrap();
        host.packed_bytes = 256;
        let mut pack = b.main.launches[0].clone();
        pack.args = vec![packed];
        host.pack.push(HostLaunch::Kernel(pack));
        if let HostLaunch::Gemm(g) = &mut host.launches[1] {
            g.a.slot = packed;
        }
        assert_eq!(b.validate(), Ok(()));
        let mut small = b.clone();
        small.main.host.as_mut().unwrap().packed_bytes = 8;
        let e = small.validate().unwrap_err();
        assert!(e.contains("outside the Packed region"), "{e}");
        let mut gpu = b;
        gpu.main.launches[0].args = vec![packed];
        let e = gpu.validate().unwrap_err();
        assert!(e.contains("which only the CPU's schedule has"), "{e}");
    }
}
