//! The CUDA executor: the bundle's PTX kernels run through the CUDA driver API (cudarc, with
//! the driver library loaded at run time, so nothing of CUDA is needed to build).
//!
//! Before cudarc is touched, [`probe_driver`] loads `libcuda` itself: cudarc panics when the
//! library is missing, the runtime reports [`RuntimeError::NoGpu`] instead. The three regions
//! are allocated once (zeroed) on a dedicated stream; each launch passes region base + slot
//! offset as 64-bit pointers, grid `(grid, 1, 1)`, block `(kernel.block, 1, 1)` and no dynamic
//! shared memory (the kernels declare theirs statically).
//!
//! CUDA graphs: the first run of the main program is captured into a CUDA graph (stream
//! capture), which that run and every later one replays with a single `cuGraphLaunch`. If
//! capture or instantiation fails, the executor falls back to plain launches for good. The
//! prepare program (run once) and runs with per-launch timings use plain launches; the
//! latter are timed by CUDA events recorded between them.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::{
    result as cu, sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr,
    DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use rfnc_bundle::{Bundle, Launch, Region, Slot};

use crate::bundle_io::LoadedBundle;
use crate::error::RuntimeError;
use crate::executor::{check_range, region_index, region_sizes, Executor, LaunchTime, ProgramId};

#[cfg(windows)]
const DRIVER_LIBRARIES: &[&str] = &["nvcuda.dll"];
#[cfg(not(windows))]
const DRIVER_LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];

/// Checks that the CUDA driver library can be loaded, without cudarc (which would panic).
pub fn probe_driver() -> Result<(), RuntimeError> {
    let mut first_error = None;
    for name in DRIVER_LIBRARIES {
        // SAFETY: loading the NVIDIA driver runs its initialisers, which is what using it
        // through cudarc does anyway.
        match unsafe { libloading::Library::new(name) } {
            Ok(_) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(RuntimeError::NoGpu(format!(
        "no NVIDIA driver: {} could not be loaded ({}); run on a machine with an NVIDIA GPU and its driver, or use the CPU",
        DRIVER_LIBRARIES[0],
        first_error.unwrap_or_default()
    )))
}

/// A context on CUDA device `ordinal`; no device, or no device of that number, is
/// [`RuntimeError::NoGpu`]. The driver must have been probed.
fn open_context(ordinal: usize) -> Result<Arc<CudaContext>, RuntimeError> {
    let count = CudaContext::device_count().map_err(|e| {
        RuntimeError::NoGpu(format!(
            "the NVIDIA driver is installed but reports no usable GPU ({})",
            describe(&e)
        ))
    })?;
    if count <= 0 {
        return Err(RuntimeError::NoGpu(
            "the NVIDIA driver is installed but this machine has no CUDA device".to_string(),
        ));
    }
    if ordinal >= count as usize {
        return Err(RuntimeError::NoGpu(format!(
            "there is no CUDA device {ordinal}: this machine has {count} (0..{})",
            count - 1
        )));
    }
    CudaContext::new(ordinal).map_err(cuda(format!("opening CUDA device {ordinal}")))
}

/// The free memory of CUDA device `ordinal`, in bytes (for choosing a batch size).
pub fn free_memory(ordinal: usize) -> Result<u64, RuntimeError> {
    probe_driver()?;
    guarded("asking the GPU for its free memory", || {
        let ctx = open_context(ordinal)?;
        ctx.bind_to_thread()
            .map_err(cuda(format!("using CUDA device {ordinal}")))?;
        let (free, _total) =
            cu::mem_get_info().map_err(cuda("querying free memory".to_string()))?;
        Ok(free as u64)
    })
}

/// A driver error as text: its name and description.
fn describe(e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(n), Ok(t)) => format!("{n}: {t}"),
        _ => format!("{:?}", e.0),
    }
}

fn cuda(during: impl Into<String>) -> impl FnOnce(DriverError) -> RuntimeError {
    let during = during.into();
    move |e| RuntimeError::Cuda {
        during,
        message: describe(&e),
    }
}

/// Runs `f`, turning a panic inside cudarc into an error (cudarc panics on a few driver
/// problems, e.g. a symbol missing from an old driver).
fn guarded<T>(
    during: &str,
    f: impl FnOnce() -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA bindings panicked".to_string());
        Err(RuntimeError::Cuda {
            during: during.to_string(),
            message,
        })
    })
}

/// Runs bundles on one NVIDIA GPU.
pub(crate) struct CudaExecutor {
    bundle: Bundle,
    // Field order is drop order: the graph and memory go before the stream and context.
    graph: Option<CudaGraph>,
    /// Capture failed once: plain launches from now on.
    graph_failed: bool,
    functions: HashMap<String, (CudaFunction, u32)>,
    /// Arena, scratch, leaves (kept alive; launches use `bases`, which adds an empty packed
    /// region).
    regions: [CudaSlice<u8>; 3],
    /// Device address and size of each region.
    bases: [(u64, u64); 4],
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

// SAFETY: the CUDA objects are used from one thread at a time (`&mut self` for everything that
// launches); cudarc binds the context to the calling thread before each driver call. The
// graph is not shared with anything outside this struct.
unsafe impl Send for CudaExecutor {}

impl CudaExecutor {
    pub(crate) fn new(loaded: &LoadedBundle, ordinal: usize) -> Result<Self, RuntimeError> {
        probe_driver()?;
        guarded("opening the GPU", || Self::open(loaded, ordinal))
    }

    fn open(loaded: &LoadedBundle, ordinal: usize) -> Result<Self, RuntimeError> {
        let bundle = loaded.bundle.clone();
        let ctx = open_context(ordinal)?;
        // One stream orders everything; cudarc's per-allocation events are not needed (and
        // would be recorded into the captured graph).
        // SAFETY: all work goes to `stream`, in order.
        unsafe { ctx.disable_event_tracking() };
        // Stream capture needs a stream other than the legacy default stream.
        let stream = ctx.new_stream().map_err(cuda("creating a CUDA stream"))?;

        let mut functions = HashMap::new();
        let gpu_target = bundle.gpu_target.as_deref().unwrap_or("no GPU");
        for kernel in &bundle.kernels {
            let path = loaded.dir.join(kernel.ptx.as_deref().unwrap_or_default());
            let src = std::fs::read_to_string(&path).map_err(|e| RuntimeError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if src.contains('\0') {
                return Err(RuntimeError::File {
                    path,
                    message: "contains a NUL byte; not PTX text".to_string(),
                });
            }
            let module = ctx
                .load_module(Ptx::from_src(src))
                .map_err(|e| RuntimeError::Cuda {
                    during: format!(
                        "loading `{}` (kernel `{}`, generated for {})",
                        path.display(),
                        kernel.name,
                        gpu_target
                    ),
                    message: describe(&e),
                })?;
            let function = module.load_function(&kernel.name).map_err(cuda(format!(
                "finding kernel `{}` in `{}`",
                kernel.name,
                path.display()
            )))?;
            functions.insert(kernel.name.clone(), (function, kernel.block));
        }

        let alloc = |(region, bytes): (Region, u64)| {
            stream
                .alloc_zeros::<u8>(bytes as usize)
                .map_err(cuda(format!(
                    "allocating the {region:?} region ({bytes} bytes)"
                )))
        };
        let [a, s, l, _] = region_sizes(&bundle, false);
        let regions = [alloc(a)?, alloc(s)?, alloc(l)?];
        let base = |slice: &CudaSlice<u8>| slice.device_ptr(&stream).0;
        let bases = [
            (base(&regions[0]), a.1),
            (base(&regions[1]), s.1),
            (base(&regions[2]), l.1),
            // The packed region is the CPU's alone: no bytes of it lie on the GPU.
            (0, 0),
        ];
        stream
            .synchronize()
            .map_err(cuda("allocating device memory"))?;
        Ok(CudaExecutor {
            bundle,
            graph: None,
            graph_failed: false,
            functions,
            regions,
            bases,
            stream,
            ctx,
        })
    }

    /// Device address of `len` bytes at `offset` in `region`.
    fn address(&self, region: Region, offset: u64, len: u64) -> Result<u64, RuntimeError> {
        let (base, size) = self.bases[region_index(region)];
        let (start, _) = check_range(region, size, offset, len)?;
        Ok(base + start as u64)
    }

    /// Enqueues one launch on the stream.
    fn enqueue(&self, launch: &Launch) -> Result<(), RuntimeError> {
        let (function, block) = self.functions.get(&launch.kernel).ok_or_else(|| {
            RuntimeError::Unsupported(format!("kernel `{}` was not loaded", launch.kernel))
        })?;
        let pointers = launch
            .args
            .iter()
            .map(|slot| self.address(slot.region, slot.offset, slot.bytes))
            .collect::<Result<Vec<u64>, _>>()?;
        let grid = u32::try_from(launch.grid)
            .ok()
            .filter(|&g| g > 0 && g < (1 << 31))
            .ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "launch of `{}` has a grid of {} blocks; CUDA allows 1 to 2^31-1",
                    launch.kernel, launch.grid
                ))
            })?;
        let config = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (*block, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = self.stream.launch_builder(function);
        for pointer in &pointers {
            builder.arg(pointer);
        }
        // SAFETY: the kernel takes one pointer per argument (validated arity); each pointer
        // lies inside a live region.
        unsafe { builder.launch(config) }
            .map_err(cuda(format!("launching kernel `{}`", launch.kernel)))?;
        Ok(())
    }

    fn synchronize(&self, during: &str) -> Result<(), RuntimeError> {
        self.stream
            .synchronize()
            .map_err(cuda(during.to_string()))?;
        self.ctx.check_err().map_err(cuda(during.to_string()))
    }

    /// Runs `launches` one by one with a CUDA event recorded before the first and after each,
    /// and returns each launch's time between its two events (the GPU's own clock: no host
    /// overhead between launches is counted). An error is reported after the last launch.
    fn timed_launches(
        &mut self,
        launches: &[Launch],
        what: &str,
    ) -> Result<Vec<LaunchTime>, RuntimeError> {
        let record = |stream: &Arc<CudaStream>| {
            stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda("recording a timing event".to_string()))
        };
        let mut marks = Vec::with_capacity(launches.len() + 1);
        marks.push(record(&self.stream)?);
        for launch in launches {
            self.enqueue(launch)?;
            marks.push(record(&self.stream)?);
        }
        self.synchronize(what)?;
        launches
            .iter()
            .zip(marks.windows(2))
            .map(|(launch, pair)| {
                let ms = pair[0]
                    .elapsed_ms(&pair[1])
                    .map_err(cuda("reading a timing event".to_string()))?;
                Ok(LaunchTime {
                    what: launch.kernel.clone(),
                    time: std::time::Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3),
                })
            })
            .collect()
    }

    /// Captures the main program into a graph; `None` if capture is not possible (the stream
    /// is left out of capture mode either way).
    fn capture_main(&self) -> Option<CudaGraph> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ok()?;
        let enqueued = self
            .bundle
            .main
            .launches
            .iter()
            .try_for_each(|launch| self.enqueue(launch));
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .ok()
            .flatten();
        enqueued.ok()?;
        graph
    }

    fn run_program(
        &mut self,
        program: ProgramId,
        per_launch: bool,
    ) -> Result<Option<Vec<LaunchTime>>, RuntimeError> {
        let what = match program {
            ProgramId::Prepare => "running the prepare program",
            ProgramId::Main => "running the main program",
        };
        let launches = match program.of(&self.bundle) {
            Some(p) => p.launches.clone(),
            None => return Ok(per_launch.then(Vec::new)),
        };
        if per_launch {
            return self.timed_launches(&launches, what).map(Some);
        }
        if program == ProgramId::Main && !self.graph_failed && self.graph.is_none() {
            // Nothing from before must be pending while capturing.
            self.synchronize("preparing to capture a CUDA graph")?;
            self.graph = self.capture_main();
            self.graph_failed = self.graph.is_none();
            // Clear an error a failed capture may have left behind.
            let _ = self.ctx.check_err();
        }
        match (&self.graph, program) {
            (Some(graph), ProgramId::Main) => graph.launch().map_err(cuda(what))?,
            _ => {
                for launch in &launches {
                    self.enqueue(launch)?;
                }
            }
        }
        self.synchronize(what)?;
        Ok(None)
    }
}

impl Executor for CudaExecutor {
    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), RuntimeError> {
        let (_, size) = self.bases[region_index(region)];
        let (start, end) = check_range(region, size, offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let stream = self.stream.clone();
        let slice = &mut self.regions[region_index(region)];
        guarded("copying to the GPU", || {
            let mut view = slice.try_slice_mut(start..end).ok_or_else(|| {
                RuntimeError::Unsupported(format!("bytes {start}..{end} outside {region:?}"))
            })?;
            stream
                .memcpy_htod(data, &mut view)
                .map_err(cuda("copying to the GPU"))?;
            stream.synchronize().map_err(cuda("copying to the GPU"))
        })
    }

    fn read(&self, region: Region, offset: u64, len: u64) -> Result<Vec<u8>, RuntimeError> {
        let (_, size) = self.bases[region_index(region)];
        let (start, end) = check_range(region, size, offset, len)?;
        let mut out = vec![0u8; end - start];
        if out.is_empty() {
            return Ok(out);
        }
        let slice = &self.regions[region_index(region)];
        guarded("copying from the GPU", || {
            let view = slice.try_slice(start..end).ok_or_else(|| {
                RuntimeError::Unsupported(format!("bytes {start}..{end} outside {region:?}"))
            })?;
            self.stream
                .memcpy_dtoh(&view, &mut out)
                .map_err(cuda("copying from the GPU"))?;
            self.stream
                .synchronize()
                .map_err(cuda("copying from the GPU"))?;
            Ok(out)
        })
    }

    fn copy(&mut self, from: Slot, to: Slot) -> Result<(), RuntimeError> {
        if from.bytes != to.bytes {
            return Err(RuntimeError::Unsupported(format!(
                "internal error: copying {} bytes into a slot of {}",
                from.bytes, to.bytes
            )));
        }
        let src = self.address(from.region, from.offset, from.bytes)?;
        let dst = self.address(to.region, to.offset, to.bytes)?;
        if from.bytes == 0 {
            return Ok(());
        }
        guarded("copying on the GPU", || {
            self.ctx
                .bind_to_thread()
                .map_err(cuda("copying on the GPU"))?;
            // SAFETY: both ranges lie inside live regions (checked by `address`).
            unsafe {
                cu::memcpy_dtod_async(dst, src, from.bytes as usize, self.stream.cu_stream())
            }
            .map_err(cuda("copying on the GPU"))?;
            self.synchronize("copying on the GPU")
        })
    }

    fn run(
        &mut self,
        program: ProgramId,
        per_launch: bool,
    ) -> Result<Option<Vec<LaunchTime>>, RuntimeError> {
        guarded("running kernels", || self.run_program(program, per_launch))
    }
}
