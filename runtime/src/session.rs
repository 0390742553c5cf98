//! A session: one bundle on one device. It owns the device's regions and keeps track of the
//! leaves: which were set, from where, and whether the prepare program must run again.
//!
//! Order of use: [`Session::load_weights`] (or set each parameter leaf), set the inputs,
//! [`Session::run`] (which runs the prepare program first when the parameters changed since
//! it last ran), then read [`Session::output`]s. In training mode each `run` is one step that
//! updates the parameter and momentum leaves in place; [`Session::weights`] reads them back.

use std::time::{Duration, Instant};

use rfnc_bundle::{Bundle, DType, Leaf, LeafRole, Region, Slot};

use crate::bundle_io::LoadedBundle;
use crate::cpu::{CpuExecutor, CpuSchedule};
use crate::error::RuntimeError;
use crate::executor::{Executor, LaunchTime, ProgramId};
use crate::gpu::CudaExecutor;
use crate::tensor::HostTensor;
use crate::weights::Weights;

/// Where a session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The host kernels in the CPU's schedule (convolutions as packed GEMMs), each launch
    /// split over `threads` threads (0 means 1).
    Cpu { threads: usize },
    /// The GPU's launches run by the CPU (the GPU kernels with thread-loop fission, in the
    /// host code): slow, a proof of the GPU kernels on a machine without a GPU.
    CpuGpuKernels { threads: usize },
    /// The PTX kernels on CUDA device `ordinal`.
    Cuda { ordinal: usize },
}

impl Device {
    /// The CPU with one thread per available core.
    pub fn cpu_all_cores() -> Device {
        Device::Cpu {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
    /// The memory a session could still use, in bytes: the GPU's free memory, or the
    /// host's available memory (`MemAvailable` of /proc/meminfo).
    pub fn available_memory(self) -> Result<u64, RuntimeError> {
        match self {
            Device::Cuda { ordinal } => crate::gpu::free_memory(ordinal),
            Device::Cpu { .. } | Device::CpuGpuKernels { .. } => {
                let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
                meminfo
                    .lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|kib| kib * 1024)
                    .ok_or_else(|| {
                        RuntimeError::Unsupported(
                            "cannot tell how much memory this machine has available (no MemAvailable in /proc/meminfo); give a budget".to_string(),
                        )
                    })
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu { threads } => write!(f, "cpu ({threads} threads)"),
            Device::CpuGpuKernels { threads } => {
                write!(f, "cpu running the GPU kernels ({threads} threads)")
            }
            Device::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// How long the last program took.
#[derive(Clone, Debug, PartialEq)]
pub struct Timings {
    pub program: ProgramId,
    /// Wall time of the whole program, including waiting for the device.
    pub total: Duration,
    /// Per launch, in order (only with [`Session::set_profiling`]).
    pub launches: Option<Vec<LaunchTime>>,
}

/// One bundle loaded on one device.
pub struct Session {
    bundle: Bundle,
    device: Device,
    executor: Box<dyn Executor>,
    /// Per leaf (same index as `bundle.leaves`): holds data given by the caller or computed.
    set: Vec<bool>,
    /// The folded leaves or packed weights are out of date (parameters changed since
    /// prepare ran).
    prepare_due: bool,
    profiling: bool,
    timings: Option<Timings>,
}

impl Session {
    /// Opens the device, compiles or loads the kernels and allocates the regions.
    pub fn new(loaded: &LoadedBundle, device: Device) -> Result<Session, RuntimeError> {
        let executor: Box<dyn Executor> = match device {
            Device::Cpu { threads } => {
                loaded.require_code(false)?;
                Box::new(CpuExecutor::new(loaded, threads, CpuSchedule::Host)?)
            }
            Device::CpuGpuKernels { threads } => {
                loaded.require_code(false)?;
                Box::new(CpuExecutor::new(loaded, threads, CpuSchedule::GpuKernels)?)
            }
            Device::Cuda { ordinal } => {
                loaded.require_code(true)?;
                Box::new(CudaExecutor::new(loaded, ordinal)?)
            }
        };
        let bundle = loaded.bundle.clone();
        // Momentum starts at zero (the regions are zeroed): it counts as set.
        let set = bundle
            .leaves
            .iter()
            .map(|l| l.role == LeafRole::Momentum || l.elements() == 0)
            .collect();
        Ok(Session {
            prepare_due: derives_from_parameters(&bundle),
            bundle,
            device,
            executor,
            set,
            profiling: false,
            timings: None,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// On the CPU, where the host kernels came from: the cache, compiled now, or the JIT.
    pub fn host_origin(&self) -> Option<crate::HostOrigin> {
        self.executor.host_origin()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// With `true`, each later program reports the time of every launch (on a GPU this
    /// synchronises after every launch and does not use the CUDA graph).
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    /// Timings of the last program run, if any.
    pub fn last_timings(&self) -> Option<&Timings> {
        self.timings.as_ref()
    }

    fn leaf_index(&self, name: &str) -> Result<usize, RuntimeError> {
        self.bundle
            .leaves
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| {
                let inputs: Vec<String> = self
                    .bundle
                    .leaves
                    .iter()
                    .filter(|l| l.role == LeafRole::Input)
                    .map(|l| l.name.clone())
                    .collect();
                RuntimeError::Leaf {
                    name: name.to_string(),
                    message: format!(
                        "the bundle has no leaf of this name (its inputs: {})",
                        crate::error::list(&inputs)
                    ),
                }
            })
    }

    /// Checks that `len` elements of `dtype` fit the leaf.
    fn check_leaf(&self, index: usize, dtype: DType, len: usize) -> Result<(), RuntimeError> {
        let leaf = &self.bundle.leaves[index];
        let error = |message: String| RuntimeError::Leaf {
            name: leaf.name.clone(),
            message,
        };
        if leaf.dtype != dtype {
            return Err(error(format!(
                "it holds {} values, {} were given",
                leaf.dtype.name(),
                dtype.name()
            )));
        }
        if len as u64 != leaf.elements() {
            return Err(error(format!(
                "expected {} values (shape {}), {len} were given",
                leaf.elements(),
                shape_text(&leaf.shape)
            )));
        }
        if leaf.role == LeafRole::Folded {
            return Err(error(
                "it is computed by the prepare program and cannot be set".to_string(),
            ));
        }
        Ok(())
    }

    fn write_leaf(&mut self, index: usize, bytes: &[u8]) -> Result<(), RuntimeError> {
        let leaf = &self.bundle.leaves[index];
        self.executor.write(Region::Leaves, leaf.offset, bytes)?;
        if leaf.role == LeafRole::Param {
            self.prepare_due = derives_from_parameters(&self.bundle);
        }
        self.set[index] = true;
        Ok(())
    }

    /// Sets an f32 leaf (an input, or a parameter or momentum buffer) from row-major data.
    pub fn set_leaf_f32(&mut self, name: &str, data: &[f32]) -> Result<(), RuntimeError> {
        let index = self.leaf_index(name)?;
        self.check_leaf(index, DType::F32, data.len())?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_leaf(index, &bytes)
    }

    /// Sets an i32 leaf (labels, the training step counter) from row-major data.
    pub fn set_leaf_i32(&mut self, name: &str, data: &[i32]) -> Result<(), RuntimeError> {
        let index = self.leaf_index(name)?;
        self.check_leaf(index, DType::I32, data.len())?;
        // Class labels must name a class or be the ignored label (the compiled loss would
        // otherwise compute nonsense instead of failing).
        let leaf = &self.bundle.leaves[index];
        if let Some(classes) = leaf.classes {
            let valid = |v: i32| {
                (0..classes as i64).contains(&(v as i64)) || Some(v as i64) == leaf.ignore_label
            };
            if let Some((i, v)) = data.iter().enumerate().find(|(_, &v)| !valid(v)) {
                return Err(RuntimeError::Leaf {
                    name: leaf.name.clone(),
                    message: format!(
                        "element {i} is label {v}, but labels must be 0..{classes}{}",
                        leaf.ignore_label
                            .map(|l| format!(" or the ignored label {l}"))
                            .unwrap_or_default()
                    ),
                });
            }
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_leaf(index, &bytes)
    }

    /// Loads every parameter leaf from `weights` (each must be there, with its shape) and
    /// every momentum leaf (from `weights` when there, else zeros). A tensor that is neither
    /// is an error, except `NAME.momentum` for a parameter `NAME` of a bundle without
    /// momentum (a training checkpoint used for inference). All problems are reported at
    /// once, and nothing is written unless there are none.
    pub fn load_weights(&mut self, weights: &Weights) -> Result<(), RuntimeError> {
        let mut problems = Vec::new();
        for leaf in &self.bundle.leaves {
            let tensor = weights.tensors.get(&leaf.name);
            match (leaf.role, tensor) {
                (LeafRole::Param, None) => problems.push(format!(
                    "missing tensor `{}` of shape {}",
                    leaf.name,
                    shape_text(&leaf.shape)
                )),
                (LeafRole::Param | LeafRole::Momentum, Some((shape, data))) => {
                    if shape != &leaf.shape {
                        problems.push(format!(
                            "tensor `{}` has shape {}, the bundle needs {}",
                            leaf.name,
                            shape_text(shape),
                            shape_text(&leaf.shape)
                        ));
                    } else if data.len() as u64 != leaf.elements() {
                        problems.push(format!(
                            "tensor `{}` holds {} values, its shape {} needs {}",
                            leaf.name,
                            data.len(),
                            shape_text(shape),
                            leaf.elements()
                        ));
                    } else if leaf.dtype != DType::F32 {
                        problems.push(format!(
                            "tensor `{}` is f32, the bundle's leaf is {}",
                            leaf.name,
                            leaf.dtype.name()
                        ));
                    }
                }
                _ => {}
            }
        }
        let param = |name: &str| {
            self.bundle
                .leaves
                .iter()
                .any(|l| l.name == name && l.role == LeafRole::Param)
        };
        let has_momentum = self
            .bundle
            .leaves
            .iter()
            .any(|l| l.role == LeafRole::Momentum);
        for name in weights.tensors.keys() {
            let known =
                self.bundle.leaves.iter().any(|l| {
                    l.name == *name && matches!(l.role, LeafRole::Param | LeafRole::Momentum)
                });
            let spare_momentum =
                !has_momentum && name.strip_suffix(".momentum").is_some_and(&param);
            if !known && !spare_momentum {
                problems.push(format!(
                    "extra tensor `{name}` is not a parameter of the bundle"
                ));
            }
        }
        if !problems.is_empty() {
            return Err(RuntimeError::Weights { problems });
        }
        for index in 0..self.bundle.leaves.len() {
            let leaf = &self.bundle.leaves[index];
            if !matches!(leaf.role, LeafRole::Param | LeafRole::Momentum) {
                continue;
            }
            let bytes: Vec<u8> = match weights.tensors.get(&leaf.name) {
                Some((_, data)) => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                None => vec![0; leaf.bytes() as usize],
            };
            self.write_leaf(index, &bytes)?;
        }
        Ok(())
    }

    /// Computes what derives from the parameters alone, once per change of them: runs the
    /// prepare program, if the bundle has one, and copies each of its outputs into the leaf
    /// of the same name; then, on the CPU, the pack launches (weights transformed once).
    /// Every parameter must be set.
    pub fn prepare(&mut self) -> Result<(), RuntimeError> {
        if !derives_from_parameters(&self.bundle) {
            return Ok(());
        }
        self.check_set(|role| role == LeafRole::Param)?;
        let start = Instant::now();
        let mut launches = self.executor.run(ProgramId::Prepare, self.profiling)?;
        self.copy_folded()?;
        let packing = self.executor.pack(self.profiling)?;
        if let (Some(all), Some(packing)) = (&mut launches, packing) {
            all.extend(packing);
        }
        self.timings = Some(Timings {
            program: ProgramId::Prepare,
            total: start.elapsed(),
            launches,
        });
        self.prepare_due = false;
        Ok(())
    }

    /// Copies each output of the prepare program (which just ran) into its folded leaf.
    fn copy_folded(&mut self) -> Result<(), RuntimeError> {
        let Some(prepare) = self.bundle.prepare.clone() else {
            return Ok(());
        };
        for output in &prepare.outputs {
            let index = self
                .bundle
                .leaves
                .iter()
                .position(|l| l.name == output.name)
                .ok_or_else(|| RuntimeError::Leaf {
                    name: output.name.clone(),
                    message: "the prepare program computes it, but the bundle has no such leaf"
                        .to_string(),
                })?;
            let leaf = &self.bundle.leaves[index];
            if leaf.bytes() != output.slot.bytes || leaf.dtype != output.dtype {
                return Err(RuntimeError::Leaf {
                    name: leaf.name.clone(),
                    message: format!(
                        "the prepare program's output is {} bytes of {}, the leaf {} bytes of {}",
                        output.slot.bytes,
                        output.dtype.name(),
                        leaf.bytes(),
                        leaf.dtype.name()
                    ),
                });
            }
            let to = Slot {
                region: Region::Leaves,
                offset: leaf.offset,
                bytes: leaf.bytes(),
            };
            self.executor.copy(output.slot, to)?;
            self.set[index] = true;
        }
        Ok(())
    }

    /// Errors naming the first leaf of a role accepted by `roles` that was never set.
    fn check_set(&self, roles: impl Fn(LeafRole) -> bool) -> Result<(), RuntimeError> {
        let unset: Vec<&Leaf> = self
            .bundle
            .leaves
            .iter()
            .zip(&self.set)
            .filter(|(l, set)| !**set && roles(l.role))
            .map(|(l, _)| l)
            .collect();
        let Some(first) = unset.first() else {
            return Ok(());
        };
        let how = match first.role {
            LeafRole::Input => "set it before running",
            _ => "load the weights before running",
        };
        let more = match unset.len() {
            1 => String::new(),
            n => format!(" ({} more leaves are unset too)", n - 1),
        };
        Err(RuntimeError::Leaf {
            name: first.name.clone(),
            message: format!(
                "{} {} of shape {} was never given a value: {how}{more}",
                role_name(first.role),
                first.dtype.name(),
                shape_text(&first.shape)
            ),
        })
    }

    /// Runs the main program (the network, or one training step); runs the prepare program
    /// first if the parameters changed since it last ran. Every input and parameter must be set.
    pub fn run(&mut self) -> Result<(), RuntimeError> {
        self.check_set(|role| matches!(role, LeafRole::Input | LeafRole::Param))?;
        if self.prepare_due {
            self.prepare()?;
        }
        let start = Instant::now();
        let launches = self.executor.run(ProgramId::Main, self.profiling)?;
        self.timings = Some(Timings {
            program: ProgramId::Main,
            total: start.elapsed(),
            launches,
        });
        Ok(())
    }

    /// An output of the main program (as of the last run).
    pub fn output(&self, name: &str) -> Result<HostTensor, RuntimeError> {
        let output = self
            .bundle
            .main
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| RuntimeError::UnknownOutput {
                name: name.to_string(),
                known: self.output_names(),
            })?;
        let bytes =
            self.executor
                .read(output.slot.region, output.slot.offset, output.slot.bytes)?;
        Ok(HostTensor::from_bytes(
            output.dtype,
            output.shape.clone(),
            &bytes,
        ))
    }

    /// Names of the main program's outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.bundle
            .main
            .outputs
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }

    /// Every output of the main program, in order.
    pub fn outputs(&self) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        self.output_names()
            .into_iter()
            .map(|name| self.output(&name).map(|t| (name, t)))
            .collect()
    }

    /// The current contents of a leaf (e.g. a parameter after training steps).
    pub fn leaf(&self, name: &str) -> Result<HostTensor, RuntimeError> {
        let leaf = &self.bundle.leaves[self.leaf_index(name)?];
        let bytes = self
            .executor
            .read(Region::Leaves, leaf.offset, leaf.bytes())?;
        Ok(HostTensor::from_bytes(
            leaf.dtype,
            leaf.shape.clone(),
            &bytes,
        ))
    }

    /// The parameters and momentum buffers as they are now, to save as a weights file.
    pub fn weights(&self) -> Result<Weights, RuntimeError> {
        let mut weights = Weights::default();
        for leaf in &self.bundle.leaves {
            if !matches!(leaf.role, LeafRole::Param | LeafRole::Momentum) {
                continue;
            }
            if let Some(data) = self.leaf(&leaf.name)?.as_f32() {
                weights
                    .tensors
                    .insert(leaf.name.clone(), (leaf.shape.clone(), data.to_vec()));
            }
        }
        Ok(weights)
    }
}

fn role_name(role: LeafRole) -> &'static str {
    match role {
        LeafRole::Input => "input",
        LeafRole::Param => "parameter",
        LeafRole::Momentum => "momentum buffer",
        LeafRole::Folded => "folded parameter",
    }
}

/// `[1, 3, 8, 8]`.
fn shape_text(shape: &[u64]) -> String {
    format!("{shape:?}")
}

/// Whether anything is computed from the parameters alone before a run: the prepare
/// program (folded batch norm) or the CPU schedule's packed weights.
fn derives_from_parameters(bundle: &Bundle) -> bool {
    bundle.prepare.is_some()
        || bundle
            .main
            .host
            .as_ref()
            .is_some_and(|h| !h.pack.is_empty())
}
