//! Command-line interface: the arguments (clap) and their dispatch to `commands/`.
//!
//! Exit codes: 0 success; 1 a user error (bad program, bad flag, unreadable file), reported
//! as a diagnostic; 70 an internal compiler error (a bug: please report it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rfnc_driver::codegen::DEFAULT_GPU;
use rfnc_driver::frontend::DEFAULT_INPUT;
use rfnc_driver::{Error, Log, Source, Target, TrainSettings};

use crate::commands;
use crate::print::report;

const ABOUT: &str = "Compiler for RefineNet-style dense-prediction networks written in .rfn";

const LONG_ABOUT: &str = "\
Compiler for RefineNet-style dense-prediction networks written in .rfn.

A .rfn program imports building blocks from the standard library (std.resnet,
std.refinenet, ...) and declares one `network` with typed inputs, outputs and a training
objective. rfnc elaborates it into a verified graph IR with static shapes and prints any
stage of the lowering.

Examples:
  rfnc check examples/refinenet4.rfn -D depth=152
  rfnc compile examples/tiny.rfn --input 1x3x64x64 --emit graph -o build/tiny.mlir
  rfnc stats examples/refinenet4.rfn -D depth=101 --json

Exit status: 0 on success, 1 on a user error (reported with its source location),
70 on an internal compiler error.";

#[derive(Parser)]
#[command(name = "rfnc", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Parse, elaborate and verify a program; report errors or a one-line summary
    Check {
        #[command(flatten)]
        common: Common,
        /// Also check a safetensors weights file: every parameter present, with its shape,
        /// and nothing extra
        #[arg(long, value_name = "W.safetensors")]
        weights: Option<PathBuf>,
    },
    /// Write deterministic random initial weights for the program's parameters as safetensors
    /// (He-normal for convs followed by batch norm, the last conv of each of the L residual
    /// branches scaled by 1/sqrt(L), std 1/sqrt(3 fan_in) for other convs,
    /// zero biases, identity batch norm); with --from-torchvision, the ResNet backbones come
    /// from ImageNet-pretrained torchvision or timm weights instead
    Weights {
        #[command(flatten)]
        common: Common,
        /// The weights file to write (atomically)
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        /// Seed of the random generator; the same seed gives the same weights
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fill every ResNet backbone from ImageNet-pretrained torchvision/timm weights
        /// (safetensors); the network must use the torchvision style (-D style=torchvision)
        ///
        /// Every ResNet backbone of the network (each `resnet(...) as X`) is filled from a
        /// torchvision or timm ResNet state_dict saved as safetensors; the other parameters
        /// (RefineNet blocks, head) get the random weights of --seed. Make the file in
        /// Python with `safetensors.torch.save_file(model.state_dict(), "resnet101.safetensors")`,
        /// e.g. for `model = torchvision.models.resnet101(weights="IMAGENET1K_V2")`; a
        /// checkpoint saved with torch.save is first loaded with `torch.load("ckpt.pth",
        /// map_location="cpu")` and its state_dict saved the same way. Names map as
        /// `layer1.0.conv1.weight` -> `X.layer1.unit0.conv1.weight` and `downsample.0`/`.1`
        /// -> `downsample.conv`/`.bn`; `fc.*` and `num_batches_tracked` are dropped; F32,
        /// F64, F16 and BF16 tensors are read. The depth must match (-D depth=...), and the
        /// network must put the stride on the 3x3 conv as torchvision does: compile with
        /// -D style=torchvision (MSRA-style networks are refused). See docs/weights.md
        #[arg(long, value_name = "FILE.safetensors")]
        from_torchvision: Option<PathBuf>,
    },
    /// Compile a program and print a stage of the lowering
    Compile(CompileArgs),
    /// Compile a program (or take a bundle written by `rfnc compile -o DIR`) and run it on
    /// the CPU or an NVIDIA GPU, with weights from a file or random ones from a seed and
    /// random inputs; prints the outputs, or the loss of each training step
    Run(RunArgs),
    /// Report parameters, multiply-accumulates and naive feature memory per component
    Stats(StatsArgs),
    /// Train a network on an image dataset with the RefineNet paper's protocol: random
    /// scale, crop and flip, SGD with momentum under a learning-rate schedule, checkpoints
    /// that --resume continues exactly, validation with the best checkpoint kept, a log and
    /// curves in the work dir (see docs/training.md)
    #[command(after_help = TRAIN_EXAMPLES)]
    Train(TrainCmdArgs),
    /// Measure a network on a dataset split the way the RefineNet paper does: whole images
    /// or sliding windows, several scales and flips averaged; mean IoU, pixel and mean
    /// accuracy with a per-class table, or the depth errors (see docs/evaluation.md)
    Eval(EvalArgs),
    /// Predict images (files or directories): class-index palette PNGs (optionally blended
    /// over the photos), or depth as 16-bit PNGs in millimetres with a colour preview
    Predict(PredictArgs),
    /// Write a small synthetic dataset (coloured shapes with segmentation labels, or smooth
    /// depth scenes) in the VOC, list or NYUDv2 layout, to try `rfnc train` without a
    /// download
    Dataset(DatasetArgs),
    /// Export the network's inference graph with its weights as an ONNX model for ONNX
    /// Runtime and TensorRT: Conv (batch norm folded in), Relu, Add, MaxPool, Resize with
    /// rfnc's bilinear conventions; inputs and outputs named as in the program, dropout and
    /// the objective left out (see docs/export.md)
    #[command(after_help = EXPORT_EXAMPLES)]
    Export(ExportArgs),
}

const EXPORT_EXAMPLES: &str = "\
Examples:
  rfnc export examples/refinenet4.rfn --weights best.safetensors -o refinenet4.onnx
  rfnc export examples/tiny.rfn --init-seed 0 --input 1x3x64x64 --dynamic-size --argmax -o tiny.onnx

Check a model in Python with onnx.checker.check_model(\"tiny.onnx\", full_check=True) and
run it with onnxruntime.InferenceSession(\"tiny.onnx\").run(None, {\"image\": x}).";

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub common: Common,
    /// The ONNX file to write (atomically)
    #[arg(short, long, value_name = "MODEL.onnx")]
    pub output: PathBuf,
    /// Write ONNX (the default and, so far, the only format)
    #[arg(long)]
    pub onnx: bool,
    /// The weights (safetensors, named by the graph's parameter names, e.g. from `rfnc
    /// train` or `rfnc run --train --save-weights`); momentum buffers in it are ignored
    #[arg(
        long,
        value_name = "W.safetensors",
        required_unless_present = "init_seed",
        conflicts_with = "init_seed"
    )]
    pub weights: Option<PathBuf>,
    /// Export the deterministic random weights of `rfnc weights --seed N` instead of a file
    #[arg(long, value_name = "N")]
    pub init_seed: Option<u64>,
    /// The ONNX opset to write (13 to 21)
    #[arg(long, default_value_t = rfnc_driver::export::DEFAULT_OPSET, value_parser = clap::value_parser!(i64).range(13..=21))]
    pub opset: i64,
    /// Leave the batch N, and the height H and width W of the first input, symbolic where
    /// the network allows it (sizes the program computes from the input, as `rescale`
    /// does, keep H and W fixed, with a note)
    #[arg(long)]
    pub dynamic_size: bool,
    /// Append an output NAME_argmax (int64 NxHxW) with the class of each pixel for every
    /// output of class scores (f32 NxCxHxW, C >= 2)
    #[arg(long)]
    pub argmax: bool,
    /// Keep frozen batch norm as BatchNormalization nodes instead of folding it into the
    /// preceding convs
    #[arg(long)]
    pub keep_batch_norm: bool,
    /// Put the weights in MODEL.onnx.data beside the model (ONNX external data) even when
    /// the model is below protobuf's 2 GiB limit, above which this happens anyway
    #[arg(long)]
    pub external_data: bool,
}

const TRAIN_EXAMPLES: &str = "\
Examples:
  rfnc dataset voc -o data/shapes
  rfnc train examples/tiny.rfn --input 4x3x64x64 --dataset voc --data-root data/shapes \\
      --work-dir runs/tiny --iters 300 --lr 0.01
  rfnc train examples/refinenet4.rfn -D style=torchvision --input 8x3x512x512 \\
      --dataset voc_aug --data-root VOC2012 --val-split val --init init.safetensors \\
      --work-dir runs/r4 --epochs 40 --device cuda
  rfnc train ... --resume          (continue the run in --work-dir where it stopped)

Exit status: 0 when the run finished, 130 when it was interrupted (Ctrl-C; a checkpoint
was written), 1 on an error.";

#[derive(Args)]
pub struct TrainCmdArgs {
    #[command(flatten)]
    pub common: Common,
    /// The dataset's layout: voc (JPEGImages, SegmentationClass palette PNGs,
    /// ImageSets/Segmentation), voc_aug (SegmentationClassAug, train_aug.txt), cityscapes
    /// (leftImg8bit, gtFine labelTrainIds), nyud_depth, nyud_seg, or list (SPLIT.txt of
    /// `image<TAB>label` lines)
    #[arg(long, value_name = "KIND", value_parser = parse_dataset)]
    pub dataset: rfnc_data::DatasetKind,
    /// The dataset's root directory
    #[arg(long, value_name = "DIR")]
    pub data_root: PathBuf,
    /// Where the run keeps its bundles, checkpoints, log and curves
    #[arg(long, value_name = "DIR")]
    pub work_dir: PathBuf,
    /// Train for N iterations (steps of one batch)
    #[arg(long, value_name = "N", conflicts_with = "epochs", required_unless_present = "epochs", value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: Option<u64>,
    /// Train for N passes over the training split
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: Option<u64>,
    /// The batch size: a number, or `auto` for the largest whose training step fits
    /// --memory-budget (else the GPU's free memory, or the host's available memory), trying
    /// recomputation before a smaller batch (default: the N of --input)
    #[arg(long, value_name = "N|auto")]
    pub batch: Option<String>,
    /// Learning-rate schedule: poly (power 0.9), poly:POWER, step:EVERY[:GAMMA] (gamma 0.1),
    /// or const
    #[arg(long, value_name = "SCHEDULE", default_value = "poly")]
    pub schedule: rfnc_driver::train::schedule::Schedule,
    /// Start from these weights (e.g. from `rfnc weights --from-torchvision`, or another run's
    /// checkpoint); parameters not in the file start from the network's rules and are listed
    #[arg(long, value_name = "W.safetensors", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Continue the run in --work-dir from its latest checkpoint, exactly where it stopped
    #[arg(long)]
    pub resume: bool,
    /// Write a checkpoint every K iterations (and at the end)
    #[arg(long, value_name = "K", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Keep the last N periodic checkpoints (best.safetensors is kept as well)
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    /// The training split
    #[arg(long, value_name = "NAME", default_value = "train")]
    pub train_split: String,
    /// The validation split (mean IoU, or rms for depth)
    #[arg(
        long,
        value_name = "NAME",
        default_value = "val",
        conflicts_with = "no_val"
    )]
    pub val_split: String,
    /// Do not validate
    #[arg(long)]
    pub no_val: bool,
    /// Validate every K iterations (0: only at the end)
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub val_every: u64,
    /// Validate on the first N images of the split (0: all)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub val_images: usize,
    /// Random scaling range of the augmentation, MIN,MAX
    #[arg(long, value_name = "MIN,MAX", default_value = "0.7,1.3", value_parser = parse_scale)]
    pub scale: (f32, f32),
    /// No random horizontal flips
    #[arg(long)]
    pub no_flip: bool,
    /// Threads decoding and augmenting images ahead of the step (default: every core)
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Seed of the data order, the augmentation, the dropout masks and the initial weights
    /// (0 to 2^63 - 1), and the training step's settings
    #[command(flatten)]
    pub step: StepArgs,
}

/// How an image is predicted: windows, scales and flips.
#[derive(Args)]
pub struct ProtocolArgs {
    /// Predict windows of HxW (at most the compiled size of --input) instead of one window
    /// of the compiled size; images larger than a window are covered by overlapping windows
    #[arg(long, value_name = "HxW", value_parser = parse_pair)]
    pub crop: Option<(usize, usize)>,
    /// Step of the windows, HxW or one number (default: 2/3 of --crop, else the compiled size)
    #[arg(long, value_name = "HxW", value_parser = parse_pair)]
    pub stride: Option<(usize, usize)>,
    /// Scales to predict at, averaged (class probabilities, or depth), e.g. 0.5,0.75,1,1.25,1.5
    #[arg(long, value_name = "S,S,...", default_value = "1", value_parser = parse_scales)]
    pub scales: Scales,
    /// Also predict the mirrored image and average
    #[arg(long)]
    pub flip: bool,
}

/// Where a network runs.
#[derive(Args)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` (GPU 0), or `cpu-gpu-kernels` (the GPU's kernels on the CPU, to check
    /// them without a GPU)
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// CPU threads (default: every core)
    #[arg(long)]
    pub threads: Option<usize>,
    /// GPU architecture to compile for (with --device cuda)
    #[arg(long, value_name = "sm_XX", default_value = DEFAULT_GPU, value_parser = parse_gpu)]
    pub gpu: String,
    /// How the GPU's convolutions multiply (the CPU's own schedule always uses f32)
    #[arg(long, value_enum, default_value_t = PrecisionArg::Tf32)]
    pub precision: PrecisionArg,
    /// Compile every kernel afresh instead of using the cache
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub common: Common,
    /// The weights to evaluate (a checkpoint is fine: its momentum is ignored)
    #[arg(
        long,
        value_name = "W.safetensors",
        required_unless_present = "predictions"
    )]
    pub weights: Option<PathBuf>,
    /// The dataset's layout (as for `rfnc train`)
    #[arg(long, value_name = "KIND", value_parser = parse_dataset)]
    pub dataset: rfnc_data::DatasetKind,
    /// The dataset's root directory
    #[arg(long, value_name = "DIR")]
    pub data_root: PathBuf,
    /// The split to evaluate
    #[arg(long, value_name = "NAME", default_value = "val")]
    pub split: String,
    /// Evaluate the first N images only (0: all)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: usize,
    /// Score the class-index PNGs `rfnc predict` wrote into DIR (DIR/<id>.png) instead of
    /// running the network
    #[arg(long, value_name = "DIR", conflicts_with = "weights")]
    pub predictions: Option<PathBuf>,
    /// Also write every figure as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub common: Common,
    /// The weights (a checkpoint is fine)
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Images (.jpg, .jpeg, .png) or directories of them
    #[arg(value_name = "IMG|DIR", required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// The directory to write the predictions into (OUT/<stem>.png, ...)
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// The class colours: voc, cityscapes, or a file with one `R G B` or `#RRGGBB` per class
    #[arg(long, value_name = "voc|cityscapes|FILE", default_value = "voc")]
    pub palette: String,
    /// Also write OUT/<stem>_overlay.png: the class colours blended over the photo
    #[arg(long)]
    pub overlay: bool,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `HxW` or one number for both.
fn parse_pair(text: &str) -> Result<(usize, usize), String> {
    let parse = |s: &str| s.trim().parse::<usize>().ok().filter(|&v| v > 0);
    let pair = match text.split_once(['x', 'X']) {
        Some((h, w)) => parse(h).zip(parse(w)),
        None => parse(text).map(|v| (v, v)),
    };
    pair.ok_or_else(|| format!("`{text}` is not a size: give HxW or one positive number"))
}

/// The scales of `--scales`.
#[derive(Clone, Debug)]
pub struct Scales(pub Vec<f64>);

fn parse_scales(text: &str) -> Result<Scales, String> {
    let scales = text
        .split(',')
        .map(|s| match s.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 16.0 => Ok(v),
            _ => Err(format!("`{s}` is not a scale (a number in (0, 16])")),
        })
        .collect::<Result<_, _>>()?;
    Ok(Scales(scales))
}

#[derive(Args)]
pub struct DatasetArgs {
    /// The layout to write: voc (JPEG photos, palette PNG labels, 3 classes), list (the same
    /// photos as PNG with a train.txt/val.txt of `image<TAB>label` lines), or nyud (depth
    /// scenes: images, 16-bit depth PNGs in millimetres, 3-class labels)
    #[arg(value_name = "LAYOUT", value_parser = ["voc", "list", "nyud"])]
    pub layout: String,
    /// The directory to write (created; existing files are overwritten)
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Images in the training split
    #[arg(long, default_value_t = 64)]
    pub train: usize,
    /// Images in the validation split
    #[arg(long, default_value_t = 16)]
    pub val: usize,
    /// Seed of the scenes
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_dataset(text: &str) -> Result<rfnc_data::DatasetKind, String> {
    text.parse()
        .map_err(|e: rfnc_data::DataError| e.to_string())
}

fn parse_scale(text: &str) -> Result<(f32, f32), String> {
    let parsed = text
        .split_once(',')
        .and_then(|(a, b)| Some((a.trim().parse::<f32>().ok()?, b.trim().parse::<f32>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo > 0.0 && lo <= hi && hi.is_finite() => Ok((lo, hi)),
        _ => Err(format!(
            "`{text}` is not a scale range: give MIN,MAX with 0 < MIN <= MAX, e.g. 0.7,1.3"
        )),
    }
}

#[derive(Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub common: Common,
    /// What to produce. `bundle` (the default) writes the compiled network to the
    /// directory given by -o: bundle.json (arena, leaves, launches, outputs; see
    /// docs/runtime.md), kernels/NAME.ptx and host.bc, which `rfnc run` executes. The
    /// stages print instead: `ast` (syntax tree of every module), `graph` (the verified
    /// graph IR in MLIR generic syntax), `dot` (the graph for Graphviz), `fused` (the
    /// kernels after canonicalisation and fusion, in schedule order), `plan` (the memory
    /// plan: arena, lower bound, live set at the peak, every buffer's offset and lifetime),
    /// `prepare` (inference: the program run once at weight load that folds frozen batch
    /// norm into the convs), `mlir` (every unique kernel as MLIR for the GPU: gpu.func
    /// over arith, scf, memref, math), `mlir-host` (the same kernels as host functions,
    /// as the CPU executor runs them), `llvm` (each kernel's optimised NVPTX LLVM IR),
    /// `ptx` (each kernel's PTX)
    #[arg(long, value_enum, default_value_t = Emit::Bundle)]
    pub emit: Emit,
    /// Write to this file (atomically) instead of standard output; with the default
    /// `--emit bundle`, the bundle directory to write (never left half-written; an existing
    /// directory is replaced only if it holds a bundle)
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// GPU architecture of the PTX, e.g. sm_80 (A100), sm_90 (H100)
    #[arg(long, value_name = "sm_XX", default_value = DEFAULT_GPU, value_parser = parse_gpu)]
    pub gpu: String,
    /// How the GPU's convolutions multiply: `tf32` on tensor cores (operands rounded to 10
    /// mantissa bits, sums in f32: PyTorch's default for convolutions on Ampere and Hopper),
    /// `bf16` on tensor cores (7 mantissa bits, sums in f32; weights and momentum stay f32)
    /// or `f32` on the CUDA cores; the CPU's own schedule always uses f32
    #[arg(long, value_enum, default_value_t = PrecisionArg::Tf32)]
    pub precision: PrecisionArg,
    /// Report each kernel's registers, shared memory, stack and spills from `ptxas -v`
    #[arg(long)]
    pub ptx_report: bool,
    /// Compile every kernel afresh instead of reusing cached PTX and host code (the cache
    /// is $RFNC_CACHE_DIR, else $XDG_CACHE_HOME/rfnc, else ~/.cache/rfnc)
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Where to run: `cpu` (the CPU's schedule: convolutions as packed GEMMs, on every
    /// core), `cuda` (the PTX kernels on GPU 0 through the CUDA driver) or `cpu-gpu-kernels`
    /// (the GPU's kernels run on the CPU: slow, checks them without a GPU)
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Weights (safetensors, named by the graph's parameter names); without it, random
    /// weights from --init-seed as `rfnc weights` makes them
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    /// Seed of the random weights and of the random inputs
    #[arg(long, default_value_t = 0)]
    pub init_seed: u64,
    /// The inputs from a safetensors file (one tensor per input, named as in the program,
    /// with its shape and dtype: f32, or i32 for labels) instead of random ones, e.g. to
    /// compare with another framework on the same tensors
    #[arg(long, value_name = "IN.safetensors")]
    pub inputs: Option<PathBuf>,
    /// CPU threads (default: every core)
    #[arg(long)]
    pub threads: Option<usize>,
    /// How many times to run: training steps with --train, else repeated inference
    /// runs (each one timed)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// With --train: write the trained parameters and momentum buffers here (atomically)
    #[arg(long, value_name = "W.safetensors", requires = "train")]
    pub save_weights: Option<PathBuf>,
    /// Time every launch of the last run (the CPU waits after each one; the GPU times each
    /// between CUDA events, and reports an error only after the last launch) and print the
    /// 25 that took the most time, summed by kernel or GEMM shape, then the total by kind
    /// (convolutions forward, data and weight gradients; in the CPU's schedule its GEMMs,
    /// Winograd filter and data transforms, im2col, epilogues and other steps; other kernels)
    #[arg(long)]
    pub profile: bool,
    /// Write the outputs of the last run as safetensors (atomically)
    #[arg(short, long, value_name = "OUT.safetensors")]
    pub output: Option<PathBuf>,
    /// GPU architecture to compile for (a program, not a bundle)
    #[arg(long, value_name = "sm_XX", default_value = DEFAULT_GPU, value_parser = parse_gpu)]
    pub gpu: String,
    /// How the GPU's convolutions multiply (a program, not a bundle; the CPU's own schedule
    /// always uses f32)
    #[arg(long, value_enum, default_value_t = PrecisionArg::Tf32)]
    pub precision: PrecisionArg,
    /// Compile every kernel afresh instead of using the cache
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Also plan memory and report the arena, the lower bound, the naive figure and the
    /// values live at the peak (JSON: a `memory` object)
    #[arg(long)]
    pub memory: bool,
    /// Report the training step instead of inference
    #[arg(long)]
    pub train: bool,
    /// With --train: plan the training step within SIZE by recomputation (as for compile)
    #[arg(long, value_name = "SIZE", requires = "train")]
    pub memory_budget: Option<String>,
    /// Print one JSON object: {"network", "input", "components": {NAME: {params, macs,
    /// naive_feature_bytes}}, "total": {...}}
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct Common {
    /// The .rfn program (its `network` is compiled)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Shape of the network's first input, NxCxHxW; fixes the symbolic sizes (N, H, W)
    #[arg(long, value_name = "NxCxHxW", default_value = DEFAULT_INPUT)]
    pub input: String,
    /// Override a `config` value of the program, e.g. -D depth=152 (repeatable)
    #[arg(short = 'D', value_name = "NAME=VALUE")]
    pub define: Vec<String>,
    /// Print the time of each stage (load, elaborate, verify) on standard error
    #[arg(long)]
    pub timings: bool,
}

/// `--train`: compile the training step (one graph for forward, loss, gradients and the
/// SGD update) with the settings of [`StepArgs`].
#[derive(Args)]
pub struct TrainArgs {
    /// Compile the training step instead of inference: the graph takes parameters, momentum
    /// buffers, the batch, the step counter and the learning-rate factor, and returns the
    /// loss, the updated parameters and the updated momentum buffers
    #[arg(long)]
    pub train: bool,
    #[command(flatten)]
    pub step: StepArgs,
}

/// The training step's settings. Values given here override the network's `sgd(...)`;
/// patterns add to its `lr_scale`/`freeze`.
#[derive(Args)]
pub struct StepArgs {
    /// Learning rate (default 5e-4, or the network's `sgd(lr = ...)`)
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum (default 0.9)
    #[arg(long)]
    pub momentum: Option<f64>,
    /// L2 weight decay added to every gradient (default 5e-4)
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Train parameters matching PATTERN at lr * FACTOR, e.g. --lr-scale backbone=0.1
    /// (a pattern is a scope such as `backbone`, or uses `*`, such as `*.bias`; repeatable)
    #[arg(long, value_name = "PATTERN=FACTOR")]
    pub lr_scale: Vec<String>,
    /// Do not train parameters matching PATTERN (repeatable)
    #[arg(long, value_name = "PATTERN")]
    pub freeze: Vec<String>,
    /// Fit the training step's arena into SIZE (e.g. 700MiB, 3GiB) by recomputing cheap
    /// forward values in the backward pass; reports what was saved, or the smallest budget
    /// that can be met
    #[arg(long, value_name = "SIZE")]
    pub memory_budget: Option<String>,
    /// Seed of the dropout masks (0 to 2^63 - 1)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    pub seed: u64,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum DeviceArg {
    /// The CPU's own schedule: convolutions as packed GEMMs, every core
    Cpu,
    /// GPU 0, through the CUDA driver
    Cuda,
    /// The GPU's kernels run on the CPU (slow): checks the GPU kernels without a GPU
    CpuGpuKernels,
}

/// `--precision`.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum PrecisionArg {
    /// Tensor cores, operands rounded to TF32, sums in f32
    Tf32,
    /// Tensor cores, operands rounded to BF16, sums in f32 (weights stay f32)
    Bf16,
    /// f32 fused multiply-adds on the CUDA cores
    F32,
}

impl From<PrecisionArg> for rfnc_bundle::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Tf32 => rfnc_bundle::Precision::Tf32,
            PrecisionArg::Bf16 => rfnc_bundle::Precision::Bf16,
            PrecisionArg::F32 => rfnc_bundle::Precision::F32,
        }
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Emit {
    Bundle,
    Ast,
    Graph,
    Dot,
    Fused,
    Plan,
    Prepare,
    Mlir,
    MlirHost,
    Llvm,
    Ptx,
}

impl Emit {
    /// Whether this stage runs code generation (and so uses --gpu, --ptx-report, the cache).
    pub fn generates_code(self) -> bool {
        matches!(
            self,
            Emit::Bundle | Emit::Mlir | Emit::MlirHost | Emit::Llvm | Emit::Ptx
        )
    }
}

/// Accepts `sm_XX` GPU architecture names.
fn parse_gpu(text: &str) -> Result<String, String> {
    // sm_80, sm_90, sm_90a, sm_100: two or three digits and an optional feature letter.
    let ok = text.strip_prefix("sm_").is_some_and(|v| {
        let digits = v.trim_end_matches(|c: char| c.is_ascii_lowercase());
        (2..=3).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && v.len() - digits.len() <= 1
    });
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a GPU architecture; expected sm_XX, e.g. sm_80 or sm_90"
        ))
    }
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    report(execute(cli.command))
}

/// Runs a command; the exit status is 0 unless the command says otherwise (an interrupted
/// `rfnc train`: 130).
fn execute(command: Command) -> Result<ExitCode, Error> {
    let done = match command {
        Command::Check { common, weights } => commands::check::run(&common, weights.as_deref()),
        Command::Compile(args) => commands::compile::run(&args),
        Command::Run(args) => commands::run::run(&args),
        Command::Weights {
            common,
            output,
            seed,
            from_torchvision,
        } => commands::weights::run(&common, &output, seed, from_torchvision.as_deref()),
        Command::Stats(args) => commands::stats::run(&args),
        Command::Train(args) => return commands::train::run(&args),
        Command::Dataset(args) => commands::dataset::run(&args),
        Command::Eval(args) => commands::eval::run(&args),
        Command::Predict(args) => commands::predict::run(&args),
        Command::Export(args) => commands::export::run(&args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

impl Common {
    /// The program and its sizes, as the driver takes them.
    pub fn source(&self) -> Source {
        Source {
            file: self.file.clone(),
            input: self.input.clone(),
            defines: self.define.clone(),
        }
    }

    pub fn log(&self) -> Log {
        Log::new(self.timings)
    }
}

impl TrainArgs {
    /// The compilation target these flags ask for; a training setting without `--train` is
    /// an error.
    pub fn target(&self) -> Result<Target, Error> {
        if self.train {
            return Ok(Target::Train {
                settings: self.step.settings(),
                budget: self.step.memory_budget.clone(),
            });
        }
        let given = self.step.settings().given().or(self
            .step
            .memory_budget
            .as_ref()
            .map(|_| "--memory-budget"));
        match given {
            Some(flag) => Err(Error::message(format!(
                "{flag} is a setting of the training step: add --train"
            ))),
            None => Ok(Target::Inference),
        }
    }
}

impl StepArgs {
    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            lr_scale: self.lr_scale.clone(),
            freeze: self.freeze.clone(),
            seed: self.seed,
        }
    }
}
