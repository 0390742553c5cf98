//! The subcommands, one per file: each calls the driver and prints.

pub mod check;
pub mod compile;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod predict;
pub mod run;
pub mod stats;
pub mod train;
pub mod weights;

use rfnc_runtime::Device;

use crate::cli::{DeviceArg, DeviceArgs};

/// The device of `--device` (GPU 0) with `--threads` (default: every core).
pub fn device(args: &DeviceArgs) -> Device {
    device_of(args.device, args.threads)
}

/// `device` with `threads` (default: every core).
pub fn device_of(device: DeviceArg, threads: Option<usize>) -> Device {
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    match device {
        DeviceArg::Cpu => Device::Cpu { threads },
        DeviceArg::CpuGpuKernels => Device::CpuGpuKernels { threads },
        DeviceArg::Cuda => Device::Cuda { ordinal: 0 },
    }
}
