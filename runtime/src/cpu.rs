//! The CPU executor: the bundle's host kernels (`host.bc`, as a native library for this CPU
//! or JIT-compiled) over host regions, in the CPU's schedule (convolutions as packed GEMMs
//! run by the `gemm` crate between gather and epilogue kernels) or, to prove the GPU
//! kernels, in the GPU's. The CPU's schedule of an inference bundle also holds the packed
//! region, which its pack launches fill when the session asks ([`Executor::pack`]: after the
//! weights change), and every run reads.
//!
//! Parallelism: one persistent rayon pool of `threads` workers per executor. A kernel
//! launch's grid is split into `threads` contiguous block ranges run as tasks of the pool
//! (blocks are independent, so any split gives the same result); a batch of GEMMs with
//! apart results and at least `threads` of them (Winograd's) is split by GEMM, one whole
//! product per task; any other GEMM splits its own work over the same pool.

use std::time::Instant;

use rfnc_bundle::{Bundle, Gemm, HostLaunch, HostProgram, Launch, Matrix, Program, Region, Slot};

use crate::bundle_io::LoadedBundle;
use crate::error::RuntimeError;
use crate::executor::{check_range, region_index, region_sizes, Executor, LaunchTime, ProgramId};
use crate::host_memory::HostBuffer;
use crate::jit::{call_kernel, MAX_HOST_ARGS};
use crate::native::{load_host, HostCode, HostOrigin};

/// Runs bundles on the host.
pub(crate) struct CpuExecutor {
    bundle: Bundle,
    kernels: HostCode,
    origin: HostOrigin,
    /// Arena, scratch, leaves, packed weights.
    regions: [HostBuffer; 4],
    threads: usize,
    pool: rayon::ThreadPool,
    schedule: CpuSchedule,
}

/// Which launches the CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSchedule {
    /// The CPU's own schedule where the bundle has one (convolutions as packed GEMMs).
    Host,
    /// The GPU's launches, the GPU kernels run with thread-loop fission: a proof of the
    /// GPU kernels on a machine without a GPU.
    GpuKernels,
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
    pub(crate) fn new(
        loaded: &LoadedBundle,
        threads: usize,
        schedule: CpuSchedule,
    ) -> Result<Self, RuntimeError> {
        let bundle = loaded.bundle.clone();
        for kernel in &bundle.kernels {
            if kernel.params as usize > MAX_HOST_ARGS {
                return Err(RuntimeError::Unsupported(format!(
                    "kernel `{}` takes {} pointer arguments; the CPU executor supports at most {MAX_HOST_ARGS}",
                    kernel.name, kernel.params
                )));
            }
        }
        let names = scheduled_kernels(&bundle, schedule);
        let (kernels, origin) = load_host(&loaded.host_bitcode(), &names)?;
        let alloc = |(region, bytes): (Region, u64)| {
            HostBuffer::zeroed(bytes).ok_or_else(|| {
                RuntimeError::Unsupported(format!(
                    "cannot allocate the {region:?} region ({bytes} bytes) in host memory"
                ))
            })
        };
        let [a, s, l, p] = region_sizes(&bundle, schedule == CpuSchedule::Host);
        let regions = [alloc(a)?, alloc(s)?, alloc(l)?, alloc(p)?];
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("rfnc-cpu-{i}"))
            .build()
            .map_err(|e| {
                RuntimeError::Unsupported(format!("cannot start {threads} worker threads: {e}"))
            })?;
        Ok(CpuExecutor {
            bundle,
            kernels,
            origin,
            regions,
            threads,
            pool,
            schedule,
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
        let results: Vec<std::sync::Mutex<Result<(), RuntimeError>>> =
            (0..chunks).map(|_| std::sync::Mutex::new(Ok(()))).collect();
        self.pool.scope(|scope| {
            for (i, slot) in results.iter().enumerate() {
                let (first, end) = range(i as i64);
                scope.spawn(move |_| {
                    // SAFETY: as above; the block ranges are disjoint.
                    let result = unsafe { call_kernel(address, args.get(), first, end) };
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = result;
                });
            }
        });
        results
            .into_iter()
            .try_for_each(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// The f32 pointer to the start of `matrix`'s slot.
    fn matrix_base(&self, matrix: &Matrix) -> Result<*mut f32, RuntimeError> {
        let slot = &matrix.slot;
        let buffer = self.region(slot.region);
        let (start, _) = check_range(slot.region, buffer.len() as u64, slot.offset, slot.bytes)?;
        // SAFETY: `start` is inside the buffer (checked above).
        Ok(unsafe { buffer.as_mut_ptr().add(start) }.cast::<f32>())
    }

    /// Runs one GEMM of the CPU's schedule on the pool. A batch of at least as many
    /// products as workers, each with its own C (the Winograd GEMMs), is split over the
    /// workers by product, each multiplied whole on one worker (no synchronisation
    /// inside a product); otherwise each product splits its own work over the pool.
    fn gemm(&self, g: &Gemm) -> Result<(), RuntimeError> {
        // The bundle was validated: every element each batch touches lies in its slot.
        // Addresses (not pointers) cross into the pool.
        let [a, b, c] = [&g.a, &g.b, &g.c].map(|m| self.matrix_base(m).map(|p| p as usize));
        let (a, b, c) = (a?, b?, c?);
        let at = |base: usize, m: &Matrix, p: u64, q: u64| {
            (base as *mut f32).wrapping_add((p * m.batch[0] + q * m.batch[1]) as usize)
        };
        // Product (p, q); at a level whose C stride is 0 the products sum into one C.
        let product = |p: u64, q: u64, parallelism: gemm::Parallelism| {
            let sum = (g.c.batch[0] == 0 && p > 0) || (g.c.batch[1] == 0 && q > 0);
            // SAFETY: in bounds (validated), A and B are only read, and C's elements are
            // written by this product alone: products run one after the other unless
            // their Cs do not overlap (`by_product`), and no other launch runs meanwhile.
            unsafe {
                gemm::gemm(
                    g.m as usize,
                    g.n as usize,
                    g.k as usize,
                    at(c, &g.c, p, q),
                    g.c.cols as isize,
                    g.c.rows as isize,
                    sum,
                    at(a, &g.a, p, q),
                    g.a.cols as isize,
                    g.a.rows as isize,
                    at(b, &g.b, p, q),
                    g.b.cols as isize,
                    g.b.rows as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        };
        let threads = self.threads;
        let by_product = split_by_product(g, threads);
        self.pool.install(|| {
            if by_product {
                use rayon::prelude::*;
                (0..g.batch[0]).into_par_iter().for_each(|p| {
                    for q in 0..g.batch[1] {
                        product(p, q, gemm::Parallelism::None);
                    }
                });
                return;
            }
            let parallelism = match threads {
                1 => gemm::Parallelism::None,
                n => gemm::Parallelism::Rayon(n),
            };
            for p in 0..g.batch[0] {
                for q in 0..g.batch[1] {
                    product(p, q, parallelism);
                }
            }
        });
        Ok(())
    }

    /// The steps of the schedule this executor runs for `program`.
    fn steps<'p>(&self, program: &'p Program) -> Vec<Step<'p>> {
        match host_of(program, self.schedule) {
            Some(host) => host.launches.iter().map(Step::of).collect(),
            None => program.launches.iter().map(Step::Kernel).collect(),
        }
    }

    /// Runs `steps` in order; with `per_launch`, returns the time of each.
    fn run_steps(
        &self,
        steps: &[Step],
        per_launch: bool,
    ) -> Result<Option<Vec<LaunchTime>>, RuntimeError> {
        let mut times = Vec::new();
        for &step in steps {
            let start = Instant::now();
            let what = match step {
                Step::Kernel(l) => {
                    self.launch(l)?;
                    per_launch.then(|| l.kernel.clone())
                }
                Step::Gemm(g) => {
                    self.gemm(g)?;
                    per_launch.then(|| {
                        format!("gemm {}x{}x{} x{}", g.m, g.n, g.k, g.batch[0] * g.batch[1])
                    })
                }
            };
            if let Some(what) = what {
                times.push(LaunchTime {
                    what,
                    time: start.elapsed(),
                });
            }
        }
        Ok(per_launch.then_some(times))
    }
}

/// The kernels `schedule` launches, each once, in bundle order: only these are compiled
/// (the CPU's schedule leaves out the host forms of the GPU's convolutions, most of the
/// host code; the GPU's schedule leaves out the CPU's own kernels).
fn scheduled_kernels(bundle: &Bundle, schedule: CpuSchedule) -> Vec<&str> {
    let mut used = std::collections::HashSet::new();
    for program in [bundle.prepare.as_ref(), Some(&bundle.main)]
        .into_iter()
        .flatten()
    {
        match host_of(program, schedule) {
            Some(host) => {
                for launch in host.pack.iter().chain(&host.launches) {
                    if let HostLaunch::Kernel(l) = launch {
                        used.insert(l.kernel.as_str());
                    }
                }
            }
            None => used.extend(program.launches.iter().map(|l| l.kernel.as_str())),
        }
    }
    bundle
        .kernels
        .iter()
        .map(|k| k.name.as_str())
        .filter(|name| used.contains(name))
        .collect()
}

/// The CPU's own schedule of `program`, where it has one and `schedule` runs it.
fn host_of(program: &Program, schedule: CpuSchedule) -> Option<&HostProgram> {
    program
        .host
        .as_ref()
        .filter(|_| schedule == CpuSchedule::Host)
}

/// One step of a schedule.
#[derive(Clone, Copy)]
enum Step<'a> {
    Kernel(&'a Launch),
    Gemm(&'a Gemm),
}

impl<'a> Step<'a> {
    fn of(launch: &'a HostLaunch) -> Self {
        match launch {
            HostLaunch::Kernel(l) => Step::Kernel(l),
            HostLaunch::Gemm(g) => Step::Gemm(g),
        }
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

    fn host_origin(&self) -> Option<HostOrigin> {
        Some(self.origin)
    }

    fn run(
        &mut self,
        program: ProgramId,
        per_launch: bool,
    ) -> Result<Option<Vec<LaunchTime>>, RuntimeError> {
        let Some(p) = program.of(&self.bundle) else {
            return Ok(per_launch.then(Vec::new));
        };
        self.run_steps(&self.steps(p), per_launch)
    }

    fn pack(&mut self, per_launch: bool) -> Result<Option<Vec<LaunchTime>>, RuntimeError> {
        let steps: Vec<Step> = match host_of(&self.bundle.main, self.schedule) {
            Some(host) => host.pack.iter().map(Step::of).collect(),
            None => Vec::new(),
        };
        self.run_steps(&steps, per_launch)
    }
}

/// Whether `threads` workers run GEMM `g`'s batch one whole product (one `p`, all its
/// `q`) per task: at least as many `p` as workers, and their Cs apart. The elements one
/// `p`'s products write lie within `span` of its C's start, so Cs `span` or more apart
/// never overlap, whatever the bundle says.
fn split_by_product(g: &Gemm, threads: usize) -> bool {
    let last = |count: u64, stride: u64| count.saturating_sub(1).saturating_mul(stride);
    let span = [(g.m, g.c.rows), (g.n, g.c.cols), (g.batch[1], g.c.batch[1])]
        .into_iter()
        .fold(1u64, |sum, (count, stride)| {
            sum.saturating_add(last(count, stride))
        });
    threads > 1 && g.c.batch[0] >= span && g.batch[0] >= threads as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rfnc_bundle::Slot;

    fn matrix(rows: u64, cols: u64, batch: [u64; 2]) -> Matrix {
        Matrix {
            slot: Slot {
                region: Region::Scratch,
                offset: 0,
                bytes: 1 << 30,
            },
            rows,
            cols,
            batch,
        }
    }

    /// Winograd's products (16 of `[Co, tiles]` per image, blocks apart) split by
    /// product; Cs that overlap, a summed C, or fewer products than workers do not.
    #[test]
    fn only_products_with_apart_results_split_by_product() {
        let (co, ci, tiles, nb) = (8, 4, 10, 2);
        let forward = |c_apart: u64| Gemm {
            m: co,
            n: tiles,
            k: ci,
            batch: [16, nb],
            a: matrix(ci, 1, [co * ci, 0]),
            b: matrix(tiles, 1, [nb * ci * tiles, ci * tiles]),
            c: matrix(tiles, 1, [c_apart, co * tiles]),
        };
        assert!(split_by_product(&forward(nb * co * tiles), 2));
        assert!(split_by_product(&forward(nb * co * tiles + 16), 16));
        assert!(!split_by_product(&forward(nb * co * tiles), 1));
        assert!(!split_by_product(&forward(nb * co * tiles), 17));
        assert!(!split_by_product(&forward(nb * co * tiles - 1), 2));
        assert!(!split_by_product(&forward(0), 2));
    }
}
