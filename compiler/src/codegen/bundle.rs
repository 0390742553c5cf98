//! The bundle: what `rfnc compile -o DIR` writes and the runtime executes.
//!
//! `DIR/bundle.json` holds a [`Bundle`]; next to it, `kernels/<name>.ptx` holds each unique
//! kernel's PTX and `host.bc` the same kernels compiled for the host (LLVM bitcode, one
//! function per kernel, named like the kernel). The format is documented in docs/runtime.md.
//!
//! Memory model: the runtime allocates three regions once: the *arena* (every intermediate
//! value at its planned offset, the largest `arena_bytes` of the programs), the *scratch*
//! region (small per-launch temporaries such as partial sums, reused by every launch) and
//! the *leaves* region (inputs, parameters, optimizer state, folded parameters, each at its
//! own offset). A kernel argument is a pointer into one of them: region base + offset.

use serde::{Deserialize, Serialize};

/// `format` of every bundle.
pub const BUNDLE_FORMAT: &str = "rfnc-bundle";
/// Bumped whenever the format changes incompatibly.
pub const BUNDLE_VERSION: u32 = 1;
/// Alignment of every slot in every region, in bytes.
pub const SLOT_ALIGN: u64 = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub version: u32,
    /// The source program's file name, for messages.
    pub network: String,
    pub mode: Mode,
    /// The GPU architecture the PTX was generated for, e.g. `sm_80`.
    pub gpu_target: String,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I32,
}

impl DType {
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
}

impl Leaf {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        self.elements() * self.dtype.bytes()
    }
}

/// One unique kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Symbol of the kernel in its PTX module and of the host function in `host.bc`.
    pub name: String,
    /// PTX file, relative to the bundle directory.
    pub ptx: String,
    /// Threads per block.
    pub block: u32,
    /// Number of pointer parameters.
    pub params: u32,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u64,
    /// The ops it computes, e.g. `conv2d+add+relu`.
    pub ops: String,
}

/// A program: launches in order over the regions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub arena_bytes: u64,
    pub scratch_bytes: u64,
    pub launches: Vec<Launch>,
    pub outputs: Vec<Output>,
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
pub struct Output {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub slot: Slot,
}

impl Bundle {
    /// Checks what the runtime relies on: the format and version, every launch naming a
    /// known kernel with the right number of arguments, every slot inside its region.
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
        for leaf in &self.leaves {
            if leaf.offset + leaf.bytes() > self.leaves_bytes {
                return Err(format!(
                    "leaf `{}` lies outside the leaves region",
                    leaf.name
                ));
            }
        }
        let programs = [
            ("prepare", self.prepare.as_ref()),
            ("main", Some(&self.main)),
        ];
        for (name, program) in programs {
            let Some(program) = program else { continue };
            let within = |slot: &Slot, what: &str| -> Result<(), String> {
                let size = match slot.region {
                    Region::Arena => program.arena_bytes,
                    Region::Scratch => program.scratch_bytes,
                    Region::Leaves => self.leaves_bytes,
                };
                if slot.offset + slot.bytes > size {
                    return Err(format!(
                        "{name} program: {what} lies outside the {:?} region",
                        slot.region
                    ));
                }
                Ok(())
            };
            for (i, launch) in program.launches.iter().enumerate() {
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
                if kernel.params as usize != launch.args.len() {
                    return Err(format!(
                        "{name} program: launch {i} passes {} arguments to `{}`, which takes {}",
                        launch.args.len(),
                        kernel.name,
                        kernel.params
                    ));
                }
                for slot in &launch.args {
                    within(slot, &format!("an argument of launch {i}"))?;
                }
            }
            for output in &program.outputs {
                within(&output.slot, &format!("output `{}`", output.name))?;
            }
        }
        Ok(())
    }
}
