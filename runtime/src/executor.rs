//! What a device must do to run a bundle: hold the regions, copy bytes in and out of
//! them, and run a program's launches in order. The CPU and CUDA executors implement it;
//! [`crate::Session`] does everything else (leaves, weights, outputs) once for both.

use std::time::Duration;

use rfnc_bundle::{Bundle, Program, Region, Slot, SLOT_ALIGN};

use crate::error::RuntimeError;

/// Which program of the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramId {
    Prepare,
    Main,
}

impl ProgramId {
    pub(crate) fn of(self, bundle: &Bundle) -> Option<&Program> {
        match self {
            ProgramId::Prepare => bundle.prepare.as_ref(),
            ProgramId::Main => Some(&bundle.main),
        }
    }
}

/// The time one launch took, and what it ran: a kernel's name, or `gemm MxNxK` (with
/// `xB` batches).
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchTime {
    pub what: String,
    pub time: Duration,
}

/// A device that runs bundles. Offsets and lengths passed in lie inside their region
/// (the bundle was validated and the session checks leaf sizes); executors still check.
pub(crate) trait Executor: Send {
    /// Copies `data` to `region` at `offset`.
    fn write(&mut self, region: Region, offset: u64, data: &[u8]) -> Result<(), RuntimeError>;
    /// Reads `len` bytes of `region` at `offset`.
    fn read(&self, region: Region, offset: u64, len: u64) -> Result<Vec<u8>, RuntimeError>;
    /// Copies the bytes of `from` to `to` (equal lengths) on the device.
    fn copy(&mut self, from: Slot, to: Slot) -> Result<(), RuntimeError>;
    /// Runs the program's launches in order and waits for them. With `per_launch`, returns
    /// the time of each launch (the device is synchronised after each one).
    fn run(
        &mut self,
        program: ProgramId,
        per_launch: bool,
    ) -> Result<Option<Vec<LaunchTime>>, RuntimeError>;
    /// Runs the main program's `pack` launches, which transform the parameters into the
    /// packed region (the CPU's schedule of an inference bundle; elsewhere nothing). With
    /// `per_launch`, returns the time of each launch.
    fn pack(&mut self, per_launch: bool) -> Result<Option<Vec<LaunchTime>>, RuntimeError> {
        Ok(per_launch.then(Vec::new))
    }
    /// Where the host kernels came from (the CPU executor only).
    fn host_origin(&self) -> Option<crate::native::HostOrigin> {
        None
    }
}

/// The sizes of the four regions: the arena and scratch region serve both programs, so each
/// is the larger of the two (the scratch of the CPU's schedules with `host`); the packed
/// region is the CPU's schedules' alone (empty without `host`); never 0 (some allocators
/// refuse empty allocations), and rounded up to [`SLOT_ALIGN`].
pub(crate) fn region_sizes(bundle: &Bundle, host: bool) -> [(Region, u64); 4] {
    let programs = || bundle.prepare.iter().chain([&bundle.main]);
    let arena = programs().map(|p| p.arena_bytes).max().unwrap_or(0);
    let scratch = programs()
        .map(|p| match (&p.host, host) {
            (Some(h), true) => h.scratch_bytes,
            _ => p.scratch_bytes,
        })
        .max()
        .unwrap_or(0);
    let packed = programs()
        .filter_map(|p| p.host.as_ref().filter(|_| host))
        .map(|h| h.packed_bytes)
        .max()
        .unwrap_or(0);
    let round = |b: u64| b.max(1).div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
    [
        (Region::Arena, round(arena)),
        (Region::Scratch, round(scratch)),
        (Region::Leaves, round(bundle.leaves_bytes)),
        (Region::Packed, round(packed)),
    ]
}

/// Index of a region in `[arena, scratch, leaves, packed]` (a GPU has no packed region:
/// its size there is 0).
pub(crate) fn region_index(region: Region) -> usize {
    match region {
        Region::Arena => 0,
        Region::Scratch => 1,
        Region::Leaves => 2,
        Region::Packed => 3,
    }
}

/// Checks that `offset..offset+len` lies inside a region of `size` bytes.
pub(crate) fn check_range(
    region: Region,
    size: u64,
    offset: u64,
    len: u64,
) -> Result<(usize, usize), RuntimeError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok((offset as usize, end as usize)),
        _ => Err(RuntimeError::Unsupported(format!(
            "internal error: bytes {offset}..{} lie outside the {region:?} region of {size} bytes",
            offset.saturating_add(len)
        ))),
    }
}
