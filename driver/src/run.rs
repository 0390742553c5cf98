//! Running a bundle: a session on the CPU or a GPU with given weights or the bundle's own
//! random ones, random inputs, inference runs or training steps, and their outputs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rfnc_bundle::rng::splitmix64;
use rfnc_bundle::{DType, LeafRole, Mode, LR_FACTOR_INPUT, STEP_INPUT};
use rfnc_compiler::ir::Graph;
use rfnc_dsl::Diagnostic;
use rfnc_runtime::weights::bundle_init_weights;
use rfnc_runtime::{
    load_weights, save_weights, Device, HostOrigin, HostTensor, LoadedBundle, RuntimeError,
    Session, TensorData, Weights,
};

use crate::error::Error;
use crate::log::Log;
use crate::weights::{load_for, weights_failure};

/// A runtime failure as the user's error (a missing GPU with what to do instead).
pub fn runtime_failure(e: RuntimeError) -> Error {
    match e {
        RuntimeError::NoGpu(message) => Error::user(Diagnostic::new(message).hint(
            "run on the CPU with --device cpu, or on a machine with an NVIDIA GPU and driver",
        )),
        other => Error::message(other.to_string()),
    }
}

/// How to start a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub device: Device,
    /// A weights file; without it, random weights from `init_seed`.
    pub weights: Option<PathBuf>,
    /// Seed of the random weights and of the random inputs.
    pub init_seed: u64,
    /// Whether a training-step bundle is expected (else inference).
    pub train: bool,
    /// The inputs from this safetensors file instead of random ones.
    pub inputs: Option<PathBuf>,
}

/// Checks the bundle's mode against `--train`.
fn check_mode(loaded: &LoadedBundle, train: bool) -> Result<(), Error> {
    let is_train = loaded.bundle.mode == Mode::Train;
    if train == is_train {
        return Ok(());
    }
    Err(Error::message(format!(
        "`{}` is a compiled {} bundle; --train {} it",
        loaded.dir.display(),
        if is_train {
            "training-step"
        } else {
            "inference"
        },
        if train {
            "does not match"
        } else {
            "is needed to run"
        }
    )))
}

/// A session over `loaded` with weights and random inputs, prepared (batch norm folded),
/// and the weights of the network's parameters that the compiled program does not use
/// (noted; [`crate::weights::split_unused`]). `forward`, when the program is at hand,
/// checks a weights file against its parameters.
pub fn start_session(
    loaded: &LoadedBundle,
    forward: Option<&Graph>,
    options: &SessionOptions,
    log: &Log,
) -> Result<(Session, Weights), Error> {
    check_mode(loaded, options.train)?;
    let weights = match (&options.weights, forward) {
        (Some(path), Some(graph)) => load_for(graph, path)?,
        (Some(path), None) => load_weights(path).map_err(weights_failure)?,
        (None, _) => bundle_init_weights(&loaded.bundle, options.init_seed).map_err(|e| {
            Error::user(
                Diagnostic::new(format!("`{}`: {e}", loaded.dir.display()))
                    .hint("recompile the network with this rfnc, or give --weights W.safetensors"),
            )
        })?,
    };
    let (weights, unused) = match forward {
        Some(_) => crate::weights::split_unused(weights, &loaded.bundle),
        None => (weights, Weights::default()),
    };
    if !unused.tensors.is_empty() {
        let why = match loaded.bundle.mode {
            Mode::Train => "the training step does not use them: they do not reach the objective and are not trained",
            Mode::Inference => "the compiled program does not use them: they reach no output",
        };
        log.note(&format!(
            "{} parameters are set aside ({why}): {}",
            unused
                .tensors
                .keys()
                .filter(|n| !n.ends_with(".momentum"))
                .count(),
            crate::weights::scopes(unused.tensors.keys())
        ));
    }
    let start = Instant::now();
    let (mut session, note) = open_session(loaded, options.device)?;
    log.since("load bundle (host code or PTX modules)", start);
    if let Some(note) = note {
        log.note(&note);
    }
    session.load_weights(&weights).map_err(runtime_failure)?;
    random_inputs(&mut session, options.init_seed).map_err(runtime_failure)?;
    if let Some(path) = &options.inputs {
        file_inputs(&mut session, path)?;
    }
    let start = Instant::now();
    session.prepare().map_err(runtime_failure)?;
    log.since("prepare (fold batch norm, pack weights)", start);
    Ok((session, unused))
}

/// A session over `loaded` on `device`, and a note for the user when its host code was
/// compiled for this CPU now (the first run of a bundle here; later runs open it cached) or
/// JIT-compiled because it could not be cached.
pub fn open_session(
    loaded: &LoadedBundle,
    device: Device,
) -> Result<(Session, Option<String>), Error> {
    let start = Instant::now();
    let session = Session::new(loaded, device).map_err(runtime_failure)?;
    let seconds = start.elapsed().as_secs_f64();
    let note = match session.host_origin() {
        Some(HostOrigin::Compiled) => Some(format!(
            "compiled the host code of `{}` for this CPU in {seconds:.1} s; later runs on this kind of CPU open it from the cache",
            loaded.dir.display()
        )),
        Some(HostOrigin::Jit) => Some(format!(
            "JIT-compiled the host code of `{}` in {seconds:.1} s: no cache directory (RFNC_CACHE_DIR, XDG_CACHE_HOME or HOME) or no C compiler (CC, else cc) to keep it",
            loaded.dir.display()
        )),
        Some(HostOrigin::Cached) | None => None,
    };
    Ok((session, note))
}

/// Deterministic random inputs for every input leaf except the training step's counter and
/// learning-rate factor: images uniform in [-1, 1), depth targets in [1, 3), labels uniform
/// over the classes.
pub fn random_inputs(session: &mut Session, seed: u64) -> Result<(), RuntimeError> {
    let leaves = session.bundle().leaves.clone();
    for (k, leaf) in leaves.iter().enumerate() {
        if leaf.role != LeafRole::Input
            || [STEP_INPUT, LR_FACTOR_INPUT].contains(&leaf.name.as_str())
        {
            continue;
        }
        let n = leaf.elements() as usize;
        let key = splitmix64(seed ^ splitmix64(k as u64 + 1));
        let uniform = |i: usize| (splitmix64(key ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32;
        match leaf.dtype {
            DType::I32 => {
                let classes = leaf.classes.unwrap_or(2).max(1);
                let data: Vec<i32> = (0..n)
                    .map(|i| (uniform(i) * classes as f32) as i32 % classes as i32)
                    .collect();
                session.set_leaf_i32(&leaf.name, &data)?;
            }
            DType::F32 => {
                let depth = leaf.name.contains("depth");
                let data: Vec<f32> = (0..n)
                    .map(|i| {
                        if depth {
                            1.0 + 2.0 * uniform(i)
                        } else {
                            2.0 * uniform(i) - 1.0
                        }
                    })
                    .collect();
                session.set_leaf_f32(&leaf.name, &data)?;
            }
        }
    }
    Ok(())
}

/// Sets every data input from a safetensors file: each tensor must name an input of the
/// bundle with its shape and dtype, and every input (but the training step's counter and
/// learning-rate factor, which the run sets) must be there; every problem is listed.
pub fn file_inputs(session: &mut Session, path: &Path) -> Result<(), Error> {
    let tensors = rfnc_runtime::load_tensors(path).map_err(weights_failure)?;
    let leaves = session.bundle().leaves.clone();
    let is_input = |name: &str| {
        leaves
            .iter()
            .find(|l| l.role == LeafRole::Input && l.name == name)
    };
    let mut problems = Vec::new();
    for (name, t) in &tensors {
        match is_input(name) {
            None => problems.push(format!("`{name}` is not an input of the network")),
            Some(leaf) if leaf.shape != t.shape || leaf.dtype != t.dtype => problems.push(format!(
                "`{name}` is {}{:?}, the network's input is {}{:?}",
                t.dtype.name(),
                t.shape,
                leaf.dtype.name(),
                leaf.shape
            )),
            Some(_) => {}
        }
    }
    for leaf in leaves.iter().filter(|l| l.role == LeafRole::Input) {
        let control = [STEP_INPUT, LR_FACTOR_INPUT].contains(&leaf.name.as_str());
        if !control && !tensors.contains_key(&leaf.name) {
            problems.push(format!(
                "input `{}` ({}{:?}) is missing",
                leaf.name,
                leaf.dtype.name(),
                leaf.shape
            ));
        }
    }
    if !problems.is_empty() {
        let mut d = Diagnostic::new(format!(
            "`{}` does not fit the network's inputs",
            path.display()
        ));
        for p in problems {
            d = d.note(p);
        }
        return Err(Error::user(d.hint("name each tensor after an input of the program, with its shape and dtype (f32, or i32 for labels)")));
    }
    for (name, t) in tensors {
        let set = match &t.data {
            TensorData::F32(v) => session.set_leaf_f32(&name, v),
            TensorData::I32(v) => session.set_leaf_i32(&name, v),
        };
        set.map_err(runtime_failure)?;
    }
    Ok(())
}

/// Sets the training step's counter and learning-rate factor (when the program has them).
pub fn set_step(session: &mut Session, step: i32, lr_factor: f32) -> Result<(), RuntimeError> {
    let has = |s: &Session, name: &str| s.bundle().leaves.iter().any(|l| l.name == name);
    if has(session, STEP_INPUT) {
        session.set_leaf_i32(STEP_INPUT, &[step])?;
    }
    if has(session, LR_FACTOR_INPUT) {
        session.set_leaf_f32(LR_FACTOR_INPUT, &[lr_factor])?;
    }
    Ok(())
}

/// `name  shape  mean min max` (or the value of a scalar).
pub fn summary(name: &str, t: &HostTensor) -> String {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.is_empty() {
        "scalar".to_string()
    } else {
        shape.join("x")
    };
    let values: Vec<f64> = match &t.data {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
    };
    if values.len() == 1 {
        return format!("{name:<24} {shape:<16} {}", values[0]);
    }
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{name:<24} {shape:<16} mean {mean:.6} min {min:.6} max {max:.6}")
}

/// The steps of the CPU's schedule (`host_<step>_<kernel>`), as the profile groups them.
const HOST_STEPS: [(&str, &str); 13] = [
    ("host_winograd_filter_", "Winograd filter transforms"),
    ("host_winograd_", "Winograd data transforms"),
    ("host_im2col_", "im2col"),
    ("host_epilogue_", "conv epilogues"),
    ("host_operand_", "fused operands stored"),
    ("host_pool_rows_", "pool row maxima"),
    ("host_pool_winners_", "pool winners"),
    ("host_pool_scatter_", "pool gradients scattered"),
    ("host_resize_cols_", "resize gradient columns"),
    ("host_softmax_stats_", "softmax statistics"),
    ("host_loss_", "losses"),
    ("host_channel_sum_", "channel sums"),
    ("host_", "other CPU steps"),
];

/// The kind of a profiled launch: its GEMM, the step of the CPU's schedule it is, or its
/// kernel's ops (the anchor comes first).
fn launch_kind(what: &str) -> &'static str {
    if what.starts_with("gemm ") {
        "GEMMs"
    } else if let Some((_, kind)) = HOST_STEPS.iter().find(|(p, _)| what.starts_with(p)) {
        kind
    } else if what.starts_with("conv2d_grad_input") {
        "conv data gradients"
    } else if what.starts_with("conv2d_grad_weight") {
        "conv weight gradients"
    } else if what.starts_with("conv2d") {
        "conv forward"
    } else {
        "other kernels"
    }
}

/// The launches of the last run that took the most time, summed by what they ran (a
/// kernel, or a GEMM's shape), at most `top` lines, and all of them summed by kind
/// (convolutions forward, data and weight gradients, the CPU's GEMMs and other steps,
/// other kernels);
/// `None` unless profiling was on.
pub fn profile_report(session: &Session, top: usize) -> Option<String> {
    let launches = session.last_timings()?.launches.as_ref()?;
    let total: f64 = launches.iter().map(|l| l.time.as_secs_f64()).sum();
    let mut sums: std::collections::HashMap<&str, (f64, usize)> = Default::default();
    for l in launches {
        let entry = sums.entry(l.what.as_str()).or_default();
        entry.0 += l.time.as_secs_f64();
        entry.1 += 1;
    }
    let mut by_what: Vec<(&str, f64, usize)> =
        sums.into_iter().map(|(w, (t, n))| (w, t, n)).collect();
    by_what.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out = format!(
        "profile of the last run: {} launches, {:.1} ms (each launch timed on its own)\n{:>10} {:>6} {:>8}  launch\n",
        launches.len(),
        total * 1e3,
        "ms",
        "share",
        "launches"
    );
    for (what, time, count) in by_what.iter().take(top) {
        let _ = writeln!(
            out,
            "{:>10.2} {:>5.1}% {:>8}  {what}",
            time * 1e3,
            100.0 * time / total.max(f64::MIN_POSITIVE),
            count
        );
    }
    let mut kinds: Vec<(&str, f64)> = Vec::new();
    for (what, time, _) in &by_what {
        let kind = launch_kind(what);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 += time,
            None => kinds.push((kind, *time)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(kind, time)| {
            format!(
                "{kind} {:.2} ms ({:.1}%)",
                time * 1e3,
                100.0 * time / total.max(f64::MIN_POSITIVE)
            )
        })
        .collect();
    let _ = writeln!(out, "by kind: {}", kinds.join(", "));
    if by_what.len() > top {
        let rest: f64 = by_what[top..].iter().map(|e| e.1).sum();
        let _ = writeln!(
            out,
            "{:>10.2} {:>5.1}% {:>8}  ({} others)",
            rest * 1e3,
            100.0 * rest / total.max(f64::MIN_POSITIVE),
            by_what[top..].iter().map(|e| e.2).sum::<usize>(),
            by_what.len() - top
        );
    }
    Some(out)
}

/// Runs the main program `steps` times (training: the step counter counts up) and
/// describes the outputs; returns the text to print.
pub fn run_steps(session: &mut Session, steps: u32, train: bool) -> Result<String, RuntimeError> {
    let mut out = String::new();
    // The training step's scalar outputs: the objective first, then a weighted objective's
    // terms.
    let scalars: Vec<String> = session
        .bundle()
        .main
        .outputs
        .iter()
        .filter(|o| o.shape.is_empty())
        .map(|o| o.name.clone())
        .collect();
    let objective = scalars.first().cloned();
    for step in 0..steps {
        set_step(session, step as i32, 1.0)?;
        let start = Instant::now();
        session.run()?;
        let elapsed = start.elapsed();
        if train {
            let mut loss = match &objective {
                Some(name) => summary(name, &session.output(name)?),
                None => String::new(),
            };
            let mut terms = Vec::new();
            for name in scalars.iter().skip(1) {
                let value = session.output(name)?;
                let v = value
                    .as_f32()
                    .and_then(|v| v.first())
                    .copied()
                    .unwrap_or(f32::NAN);
                terms.push(format!("{name} {v}"));
            }
            if !terms.is_empty() {
                loss.push_str(&format!(" ({})", terms.join(", ")));
            }
            let _ = writeln!(
                out,
                "step {step}: {loss} ({:.1} ms)",
                elapsed.as_secs_f64() * 1e3
            );
        } else {
            let _ = writeln!(
                out,
                "ran {} on {} in {:.1} ms",
                session.bundle().network,
                session.device(),
                elapsed.as_secs_f64() * 1e3
            );
        }
    }
    if !train {
        for (name, t) in session.outputs()? {
            let _ = writeln!(out, "{}", summary(&name, &t));
        }
    }
    Ok(out)
}

/// Writes the f32 outputs as safetensors (atomically).
pub fn save_outputs(session: &Session, path: &Path) -> Result<(), Error> {
    let mut outputs = Weights::default();
    for (name, t) in session.outputs().map_err(runtime_failure)? {
        if let Some(data) = t.as_f32() {
            outputs
                .tensors
                .insert(name, (t.shape.clone(), data.to_vec()));
        }
    }
    save_weights(path, &outputs).map_err(weights_failure)
}
