//! The CPU executor: the bundle's host kernels (`host.bc`, JIT-compiled) over host regions.
//! Each launch's grid is split into `threads` contiguous block ranges run on scoped threads
//! (blocks are independent, so any split gives the same result).

use std::time::{Duration, Instant};

use rfnc_bundle::{Bundle, Launch, Region, Slot};

use crate::bundle_io::LoadedBundle;
use crate::error::RuntimeError;
use crate::executor::{check_range, region_index, region_sizes, Executor, ProgramId};
use crate::host_memory::HostBuffer;
use crate::jit::{call_kernel, HostKernels, MAX_HOST_ARGS};

/// Runs bundles on the host.
pub(crate) struct CpuExecutor {
    bundle: Bundle,
    kernels: HostKernels,
    /// Arena, scratch, leaves.
    regions: [HostBuffer; 3],
    threads: usize,
}

/// Kernel argument pointers, shared with the threads of one launch.
#[derive(Clone, Copy)]
struct Args<'a>(&'a [*mut u8]);
// SAFETY: the pointers point into regions that outlive the scope of the launch; blocks of a
// launch write disjoint bytes (the bundle's contract), so threads never race.
unsafe impl Send for Args<'_> {}
unsafe impl Sync for Args<'_> {}

impl<'a> Args<'a> {
    /// The pointers (a method, so closures capture the whole `Args`, which is `Send`).
    fn get(self) -> &'a [*mut u8] {
        self.0
    }
}

impl CpuExecutor {
    pub(crate) fn new(loaded: &LoadedBundle, threads: usize) -> Result<Self, RuntimeError> {
        let bundle = loaded.bundle.clone();
        for kernel in &bundle.kernels {
            if kernel.params as usize > MAX_HOST_ARGS {
                return Err(RuntimeError::Unsupported(format!(
                    "kernel `{}` takes {} pointer arguments; the CPU executor supports at most {MAX_HOST_ARGS}",
                    kernel.name, kernel.params
                )));
            }
        }
        let names: Vec<&str> = bundle.kernels.iter().map(|k| k.name.as_str()).collect();
        let kernels = HostKernels::load(&loaded.host_bitcode(), &names)?;
        let alloc = |(region, bytes): (Region, u64)| {
            HostBuffer::zeroed(bytes).ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "cannot allocate the {region:?} region ({bytes} bytes) in host memory"
                ))
            })
        };
        let [a, s, l] = region_sizes(&bundle);
        let regions = [alloc(a)?, alloc(s)?, alloc(l)?];
        Ok(CpuExecutor {
            bundle,
            kernels,
            regions,
            threads: threads.max(1),
        })
    }

    fn region(&self, region: Region) -> &HostBuffer {
        &self.regions[region_index(region)]
    }

    /// Runs one launch over all its blocks.
    fn launch(&self, launch: &Launch) -> Result<(), RuntimeError> {
        let address = self.kernels.address(&launch.kernel).ok_or_else(|| {
            RuntimeError::Unsupported(format!("kernel `{}` was not compiled", launch.kernel))
        })?;
        let mut pointers = Vec::with_capacity(launch.args.len());
        for slot in &launch.args {
            let buffer = self.region(slot.region);
            let (start, _) =
                check_range(slot.region, buffer.len() as u64, slot.offset, slot.bytes)?;
            // SAFETY: `start` is inside the buffer (checked above).
            pointers.push(unsafe { buffer.as_mut_ptr().add(start) });
        }
        let grid = i64::try_from(launch.grid).map_err(|_| {
            RuntimeError::Unsupported(format!("launch of `{}`: grid too large", launch.kernel))
        })?;
        let chunks = (self.threads as i64).min(grid).max(1);
        let range = |i: i64| (grid * i / chunks, grid * (i + 1) / chunks);
        let args = Args(&pointers);
        if chunks == 1 {
            // SAFETY: the bundle was validated: arity matches, pointers lie in the regions.
            return unsafe { call_kernel(address, args.get(), 0, grid) };
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = (1..chunks)
                .map(|i| {
                    let (first, end) = range(i);
                    // SAFETY: as above; the block ranges are disjoint.
                    scope.spawn(move || unsafe { call_kernel(address, args.get(), first, end) })
                })
                .collect();
            let (first, end) = range(0);
            // SAFETY: as above.
            let mut result = unsafe { call_kernel(address, args.get(), first, end) };
            for handle in handles {
                let joined = handle.join().unwrap_or_else(|_| {
                    Err(RuntimeError::Unsupported(format!(
                        "a thread running kernel `{}` panicked",
                        launch.kernel
                    )))
                });
                result = result.and(joined);
            }
            result
        })
    }
}

impl Executor for CpuExecutor {
    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), RuntimeError> {
        let buffer = &mut self.regions[region_index(region)];
        let (start, end) = check_range(region, buffer.len() as u64, offset, data.len() as u64)?;
        buffer.as_mut_slice()[start..end].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, region: Region, offset: u64, len: u64) -> Result<Vec<u8>, RuntimeError> {
        let buffer = self.region(region);
        let (start, end) = check_range(region, buffer.len() as u64, offset, len)?;
        Ok(buffer.as_slice()[start..end].to_vec())
    }

    fn copy(&mut self, from: Slot, to: Slot) -> Result<(), RuntimeError> {
        let bytes = self.read(from.region, from.offset, from.bytes)?;
        self.write(to.region, to.offset, &bytes)
    }

    fn run(
        &mut self,
        program: ProgramId,
        per_launch: bool,
    ) -> Result<Option<Vec<Duration>>, RuntimeError> {
        let Some(p) = program.of(&self.bundle) else {
            return Ok(per_launch.then(Vec::new));
        };
        let mut times = Vec::new();
        for launch in &p.launches {
            let start = Instant::now();
            self.launch(launch)?;
            if per_launch {
                times.push(start.elapsed());
            }
        }
        Ok(per_launch.then_some(times))
    }
}
