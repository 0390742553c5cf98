//! Checkpoints of a training run: one safetensors file per checkpoint holding every
//! parameter and momentum buffer, with the run's state in its metadata (iteration, data
//! order, seed, a hash of the compiled program, the best validation so far), so that
//! `--resume` continues exactly where the run stopped and `--weights` can use any checkpoint.
//!
//! Invariants: a checkpoint is written atomically (temporary file, flush, rename) before
//! any older one is deleted, so a crash or a full disk leaves the previous checkpoint
//! intact; the last `keep` periodic checkpoints are kept, and `best.safetensors` beside
//! them; a run only writes into a work dir whose checkpoints are of the same program.

use std::path::{Path, PathBuf};

use rfnc_data::LoaderState;
use rfnc_dsl::Diagnostic;
use rfnc_runtime::{load_weights, save_weights, Weights};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::weights_failure;

/// The metadata key of a checkpoint's state.
const KEY: &str = "rfnc.checkpoint";
/// `format` of the state this rfnc writes.
const FORMAT: &str = "rfnc-checkpoint-1";
const BEST: &str = "best.safetensors";

/// The best validation result of a run so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub iteration: u64,
    /// `mean_iou` (higher is better) or `rms` (lower is better).
    pub metric: String,
    pub value: f64,
}

/// Where a run stands, saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    /// The program's file name, for messages.
    pub network: String,
    /// SHA-256 of the training step's graph IR: a checkpoint resumes only the same program.
    pub program: String,
    /// Iterations done.
    pub iteration: u64,
    /// Iterations the run was asked for.
    pub total: u64,
    /// Where the next batch starts in the data order.
    pub loader: LoaderState,
    pub seed: u64,
    pub best: Option<Best>,
}

impl RunState {
    pub fn new(network: &str, program: &str, total: u64, seed: u64) -> Self {
        RunState {
            format: FORMAT.to_string(),
            network: network.to_string(),
            program: program.to_string(),
            iteration: 0,
            total,
            loader: LoaderState::default(),
            seed,
            best: None,
        }
    }
}

/// A run's checkpoint directory, `WORK/checkpoints`.
pub struct Checkpoints {
    pub dir: PathBuf,
    /// How many periodic checkpoints to keep (at least 1).
    pub keep: usize,
}

impl Checkpoints {
    pub fn new(work_dir: &Path, keep: usize) -> Self {
        Checkpoints {
            dir: work_dir.join("checkpoints"),
            keep: keep.max(1),
        }
    }

    pub fn path(&self, iteration: u64) -> PathBuf {
        self.dir.join(format!("iter-{iteration:08}.safetensors"))
    }

    pub fn best_path(&self) -> PathBuf {
        self.dir.join(BEST)
    }

    /// The periodic checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.dir, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io_error(&self.dir, e))?.path();
            let iteration = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("iter-")?.strip_suffix(".safetensors"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(i) = iteration {
                found.push((i, path));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Writes the checkpoint of `state.iteration` (atomically), then deletes periodic
    /// checkpoints beyond the last `keep`. Returns its path.
    pub fn save(&self, weights: &Weights, state: &RunState) -> Result<PathBuf> {
        let path = self.path(state.iteration);
        write(&path, weights, state)?;
        let all = self.list()?;
        let excess = all.len().saturating_sub(self.keep);
        for (_, old) in all.iter().take(excess).filter(|(_, p)| *p != path) {
            std::fs::remove_file(old).map_err(|e| io_error(old, e))?;
        }
        Ok(path)
    }

    /// Writes `best.safetensors` (atomically).
    pub fn save_best(&self, weights: &Weights, state: &RunState) -> Result<PathBuf> {
        let path = self.best_path();
        write(&path, weights, state)?;
        Ok(path)
    }

    /// The checkpoint to resume from (the latest), checked against the program.
    pub fn latest_for(
        &self,
        network: &str,
        program: &str,
    ) -> Result<Option<(PathBuf, Weights, RunState)>> {
        let Some((_, path)) = self.list()?.pop() else {
            return Ok(None);
        };
        let (weights, state) = load(&path)?;
        check_program(&path, &state, network, program)?;
        Ok(Some((path, weights, state)))
    }

    /// A new run must not write over another run's checkpoints.
    pub fn refuse_existing(&self, program: &str) -> Result<()> {
        let Some((_, path)) = self.list()?.pop() else {
            return Ok(());
        };
        let (_, state) = load(&path)?;
        let d = if state.program == program {
            Diagnostic::new(format!(
                "`{}` already holds checkpoints of this run (up to iteration {})",
                self.dir.display(),
                state.iteration
            ))
            .hint("continue it with --resume, or give another --work-dir")
        } else {
            Diagnostic::new(format!(
                "`{}` holds checkpoints of another program (`{}`, up to iteration {})",
                self.dir.display(),
                state.network,
                state.iteration
            ))
            .hint("give another --work-dir; a run's checkpoints stay with its program")
        };
        Err(d.into())
    }
}

/// Reads a checkpoint: its tensors and its run state.
pub fn load(path: &Path) -> Result<(Weights, RunState)> {
    let weights = load_weights(path).map_err(weights_failure)?;
    let state = weights
        .metadata
        .get(KEY)
        .ok_or_else(|| {
            Error::message(format!(
                "`{}` is not an rfnc training checkpoint (it has no `{KEY}` metadata)",
                path.display()
            ))
        })
        .and_then(|text| {
            serde_json::from_str::<RunState>(text).map_err(|e| {
                Error::message(format!(
                    "`{}`: the checkpoint's state cannot be read: {e}",
                    path.display()
                ))
            })
        })?;
    if state.format != FORMAT {
        return Err(Error::message(format!(
            "`{}` is a checkpoint of format `{}`; this rfnc reads `{FORMAT}`",
            path.display(),
            state.format
        )));
    }
    Ok((weights, state))
}

fn check_program(path: &Path, state: &RunState, network: &str, program: &str) -> Result<()> {
    if state.program == program {
        return Ok(());
    }
    Err(Diagnostic::new(format!(
        "`{}` is a checkpoint of another program (`{}`), not of this `{network}` with these settings",
        path.display(),
        state.network
    ))
    .note("the training step's graph differs: another network, input size, -D value or training setting (lr, momentum, weight decay, lr scales, frozen parameters, seed)")
    .hint("resume with the same command line, or start a new run in another --work-dir with --init CHECKPOINT")
    .into())
}

fn write(path: &Path, weights: &Weights, state: &RunState) -> Result<()> {
    let mut w = weights.clone();
    let json = serde_json::to_string(state)
        .map_err(|e| Error::internal(format!("cannot serialise the run state: {e}")))?;
    w.metadata.insert(KEY.to_string(), json);
    save_weights(path, &w).map_err(|e| {
        Error::user(
            Diagnostic::new(format!("cannot write the checkpoint: {e}"))
                .note("the previous checkpoint, if any, is intact")
                .hint("free some disk space, then continue with --resume"),
        )
    })
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::message(format!("`{}`: {e}", path.display()))
}
