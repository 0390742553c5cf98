//! `rfnc train`: the RefineNet paper's training protocol on an image dataset: the training
//! step compiled once for the batch and crop size, batches from worker threads
//! (`rfnc-data`), a learning-rate schedule through the step's `lr_factor` input, periodic
//! checkpoints that `--resume` continues exactly, validation with the best checkpoint kept,
//! a JSON-lines log and curves in the work dir.
//!
//! Work dir: `bundles/{train,val}/` (compiled; reused while the program is unchanged),
//! `checkpoints/iter-NNNNNNNN.safetensors` (the last `keep`) and `best.safetensors`,
//! `log.jsonl`, `loss.png`, `val.png`.
//!
//! Invariants: everything a run does is a function of its options and seed (data order,
//! augmentation, dropout masks keyed by the step), so a resumed run computes the same
//! losses as an uninterrupted one; a non-finite loss stops the run before anything is
//! written for that step.

pub mod batch;
pub mod checkpoint;
pub(crate) mod inputs;
mod report;
pub mod schedule;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rfnc_bundle::Precision;
use rfnc_data::augment::AugmentConfig;
use rfnc_data::{Dataset, DatasetKind, Loader};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::{load_bundle, Device, Session, Weights};

use crate::codegen::{ensure_bundle, program_hash, CodegenOptions};
use crate::error::{Error, Result};
pub use crate::eval::Metrics as Validation;
use crate::frontend::{parse_input, Network, Source, TrainSettings};
use crate::log::Log;
use crate::plan::{graph, parse_size, Target};
use crate::run::{runtime_failure, set_step};
use crate::weights::{init_from_file, init_weights};
use checkpoint::{Best, Checkpoints, RunState};
use inputs::StepInputs;
use report::{Record, RunLog};
use schedule::Schedule;

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    Iters(u64),
    Epochs(u64),
}

/// The batch size: the N of `--input`, a given one, or the largest that fits the memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchSize {
    FromInput,
    Fixed(u64),
    Auto,
}

/// Everything `rfnc train` is asked.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The program; `--input` gives the crop (and N unless `batch` says otherwise).
    pub source: Source,
    pub settings: TrainSettings,
    pub memory_budget: Option<String>,
    pub device: Device,
    /// GPU architecture when `device` is CUDA.
    pub gpu: String,
    /// How the GPU's convolutions multiply.
    pub precision: Precision,
    pub use_cache: bool,
    pub dataset: DatasetKind,
    pub data_root: PathBuf,
    pub train_split: String,
    /// `None`: no validation.
    pub val_split: Option<String>,
    pub work_dir: PathBuf,
    pub length: Length,
    pub schedule: Schedule,
    pub batch: BatchSize,
    /// Weights to start from (a pretrained backbone, a checkpoint); the rest from the rules.
    pub init: Option<PathBuf>,
    pub resume: bool,
    pub checkpoint_every: u64,
    pub keep: usize,
    /// Validate every this many iterations (0: only at the end).
    pub val_every: u64,
    /// Validate on at most this many images (0: all).
    pub val_images: usize,
    /// Seed of the data order, the augmentation, the dropout masks and the initial weights.
    pub seed: u64,
    pub workers: usize,
    pub scale: (f32, f32),
    pub flip: bool,
    /// Set from outside (Ctrl-C): write a checkpoint and stop.
    pub interrupt: Option<Arc<AtomicBool>>,
    pub timings: bool,
}

/// What the run is about to do, for the progress display.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub network: String,
    pub batch: u64,
    pub crop: (u64, u64),
    pub total: u64,
    /// Iterations already done (a resumed run).
    pub start: u64,
    pub iters_per_epoch: u64,
    pub train_images: usize,
    pub val_images: usize,
}

/// One training step as the log and the progress display see it.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub iteration: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub data_secs: f64,
    pub step_secs: f64,
    pub images_per_sec: f64,
}

/// Receives what a run does as it happens (the binary shows it).
pub trait Observer {
    fn note(&mut self, text: &str);
    fn begin(&mut self, plan: &RunPlan);
    fn step(&mut self, step: &StepReport);
    /// A validation is running over `images` images.
    fn validating(&mut self, images: usize);
    fn validated(&mut self, iteration: u64, result: &Validation);
    fn checkpoint(&mut self, path: &Path);
    fn end(&mut self);
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub iterations: u64,
    pub interrupted: bool,
    pub last_checkpoint: Option<PathBuf>,
    pub best: Option<Best>,
    pub data_secs: f64,
    pub step_secs: f64,
}

/// Trains as `options` say; see the module documentation.
pub fn train(options: &TrainOptions, observer: &mut dyn Observer) -> Result<TrainSummary> {
    let log = Log::new(options.timings);
    let train_set = open_dataset(options, &options.train_split)?;
    let (batch, arena_budget) = choose_batch(options, train_set.len(), observer)?;
    let mut source = options.source.clone();
    source.input = batch::with_batch(&source.input, batch);
    let network = Network::elaborate(&source, &log)?;
    let mut inputs = StepInputs::find(&network.forward, source.file.as_path())?;
    inputs.check_dataset(options.dataset, &source.file)?;
    inputs.base_lr = options.settings.merge(network.training.clone())?.lr;
    let train_set = fit(&inputs, train_set, observer)?;
    let target = Target::Train {
        settings: options.settings.clone(),
        budget: arena_budget,
    };
    let step_graph = graph(&network, &target, &log)?;
    let program = program_hash(&step_graph);
    let name = source.name();

    let checkpoints = Checkpoints::new(&options.work_dir, options.keep);
    let resumed = if options.resume {
        let found = checkpoints.latest_for(&name, &program)?;
        Some(found.ok_or_else(|| {
            Error::user(
                Diagnostic::new(format!(
                    "--resume: `{}` holds no checkpoint to resume",
                    checkpoints.dir.display()
                ))
                .hint("start the run without --resume"),
            )
        })?)
    } else {
        checkpoints.refuse_existing(&program)?;
        None
    };

    let codegen = CodegenOptions::new(&options.gpu, options.precision, options.use_cache)
        .for_device(matches!(options.device, Device::Cuda { .. }));
    let bundles = options.work_dir.join("bundles");
    let train_dir = bundles.join("train");
    if ensure_bundle(&network, &target, &codegen, &train_dir, &log)? {
        observer.note(&format!(
            "compiled the training step into {}",
            train_dir.display()
        ));
    }
    let total = total_iterations(options.length, train_set.len(), batch as usize);
    let (weights, state) = match resumed {
        Some((path, weights, mut state)) => {
            observer.note(&format!(
                "resuming from {} (iteration {} of {})",
                path.display(),
                state.iteration,
                state.total
            ));
            if state.total != total {
                observer.note(&format!(
                    "the run now ends at iteration {total} (it was to end at {}): the learning-rate schedule changes from here",
                    state.total
                ));
                state.total = total;
            }
            (weights, state)
        }
        None => {
            let weights = initial_weights(options, &network, observer)?;
            (weights, RunState::new(&name, &program, total, options.seed))
        }
    };
    let validator = match &options.val_split {
        Some(split) => {
            let val_set = fit(&inputs, open_dataset(options, split)?, observer)?;
            let mut val_source = source.clone();
            val_source.input = batch::with_batch(&source.input, 1);
            let val_network = Network::elaborate(&val_source, &log)?;
            let dir = bundles.join("val");
            if ensure_bundle(&val_network, &Target::Inference, &codegen, &dir, &log)? {
                observer.note(&format!("compiled the inference into {}", dir.display()));
            }
            Some(validate::Validator::new(&dir, options, val_set, &inputs)?)
        }
        None => None,
    };
    let (mut session, aside) = open_session(&train_dir, options.device, weights, observer)?;
    let log = RunLog::open(&options.work_dir, options.resume.then_some(state.iteration))?;
    let mut run = Run {
        options,
        checkpoints,
        aside,
        inputs,
        state,
        log,
        validator,
        batch,
        data_secs: 0.0,
        step_secs: 0.0,
        last_checkpoint: None,
    };
    let train_set = Arc::new(train_set);
    let crop = run.inputs.crop;
    let mut augment = AugmentConfig::new((crop.0 as usize, crop.1 as usize));
    augment.scale = options.scale;
    augment.flip = options.flip;
    let mut loader = Loader::new(
        train_set.clone(),
        augment,
        batch as usize,
        options.seed,
        options.workers,
        run.state.loader,
    )
    .map_err(data_failure)?;
    observer.begin(&RunPlan {
        network: name,
        batch,
        crop,
        total: run.state.total,
        start: run.state.iteration,
        iters_per_epoch: loader.iters_per_epoch() as u64,
        train_images: train_set.len(),
        val_images: run.validator.as_ref().map_or(0, |v| v.images()),
    });
    run.train(&mut session, &mut loader, observer)
}

/// The state of a run in progress.
struct Run<'a> {
    options: &'a TrainOptions,
    checkpoints: Checkpoints,
    /// Parameters the training step does not use, saved with every checkpoint.
    aside: Weights,
    inputs: StepInputs,
    state: RunState,
    log: RunLog,
    validator: Option<validate::Validator>,
    batch: u64,
    data_secs: f64,
    step_secs: f64,
    last_checkpoint: Option<PathBuf>,
}

impl Run<'_> {
    fn train(
        &mut self,
        session: &mut Session,
        loader: &mut Loader,
        observer: &mut dyn Observer,
    ) -> Result<TrainSummary> {
        let interrupted = || {
            self.options
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst))
        };
        let mut stopped = false;
        while self.state.iteration < self.state.total {
            if interrupted() {
                stopped = true;
                break;
            }
            self.step(session, loader, observer)?;
            let i = self.state.iteration;
            let last = i == self.state.total;
            if i.is_multiple_of(self.options.checkpoint_every.max(1)) || last {
                self.save(session, observer)?;
            }
            let every = self.options.val_every;
            if self.validator.is_some() && ((every > 0 && i.is_multiple_of(every)) || last) {
                self.validate(session, observer)?;
            }
        }
        if stopped && self.last_saved() != Some(self.state.iteration) {
            self.save(session, observer)?;
        }
        self.log.plot(&self.options.work_dir)?;
        observer.end();
        Ok(TrainSummary {
            iterations: self.state.iteration,
            interrupted: stopped,
            last_checkpoint: self.last_checkpoint.clone(),
            best: self.state.best.clone(),
            data_secs: self.data_secs,
            step_secs: self.step_secs,
        })
    }

    fn last_saved(&self) -> Option<u64> {
        self.checkpoints.list().ok()?.last().map(|(i, _)| *i)
    }

    /// One step: a batch in, the loss out (refused when not finite), the log appended.
    fn step(
        &mut self,
        session: &mut Session,
        loader: &mut Loader,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let options = self.options;
        let epoch = self.state.loader.epoch;
        let (batch, waited) = loader.next().map_err(data_failure)?;
        let start = Instant::now();
        self.inputs.feed(session, &batch).map_err(runtime_failure)?;
        let i = self.state.iteration;
        let factor = options.schedule.factor(i, self.state.total);
        set_step(session, i as i32, factor as f32).map_err(runtime_failure)?;
        session.run().map_err(runtime_failure)?;
        let loss = self.inputs.loss(session).map_err(runtime_failure)?;
        let step_secs = start.elapsed().as_secs_f64();
        if !loss.is_finite() {
            return Err(self.diverged(i + 1, loss));
        }
        let data_secs = waited.as_secs_f64();
        self.data_secs += data_secs;
        self.step_secs += step_secs;
        self.state.iteration = i + 1;
        self.state.loader = loader.state();
        let report = StepReport {
            iteration: i + 1,
            epoch,
            loss,
            lr: self.inputs.base_lr * factor,
            data_secs,
            step_secs,
            images_per_sec: self.batch as f64 / (data_secs + step_secs).max(1e-9),
        };
        self.log.push(Record::Train {
            iter: report.iteration,
            epoch,
            loss,
            lr: report.lr,
            data_s: data_secs,
            step_s: step_secs,
            images_per_s: report.images_per_sec,
            terms: self.inputs.terms(session).map_err(runtime_failure)?,
        })?;
        observer.step(&report);
        Ok(())
    }

    fn diverged(&self, iteration: u64, loss: f64) -> Error {
        let last = match &self.last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written before it".to_string(),
        };
        Error::user(
            Diagnostic::new(format!("the loss is {loss} at iteration {iteration}: training diverged"))
                .note(last)
                .hint("lower the learning rate (--lr), or check the data; resume from the checkpoint with --resume"),
        )
    }

    /// Every parameter and momentum buffer: the session's and those kept aside.
    fn weights(&self, session: &Session) -> Result<Weights> {
        let mut weights = session.weights().map_err(runtime_failure)?;
        weights.tensors.extend(self.aside.tensors.clone());
        Ok(weights)
    }

    fn save(&mut self, session: &Session, observer: &mut dyn Observer) -> Result<()> {
        let weights = self.weights(session)?;
        let path = self.checkpoints.save(&weights, &self.state)?;
        observer.checkpoint(&path);
        self.last_checkpoint = Some(path);
        self.log.plot(&self.options.work_dir)
    }

    fn validate(&mut self, session: &Session, observer: &mut dyn Observer) -> Result<()> {
        if self.validator.is_none() {
            return Ok(());
        }
        let weights = self.weights(session)?;
        let Some(validator) = self.validator.as_mut() else {
            return Ok(());
        };
        observer.validating(validator.images());
        let result = validator.run(&weights)?;
        let (metric, value, higher_better) = result.headline();
        let i = self.state.iteration;
        observer.validated(i, &result);
        self.log.push(Record::Val {
            iter: i,
            metric: metric.to_string(),
            value,
            figures: result.figures(),
        })?;
        let better = match &self.state.best {
            None => true,
            Some(b) if higher_better => value > b.value,
            Some(b) => value < b.value,
        };
        if better && value.is_finite() {
            self.state.best = Some(Best {
                iteration: i,
                metric: metric.to_string(),
                value,
            });
            let path = self.checkpoints.save_best(&weights, &self.state)?;
            observer.note(&format!("new best {metric} {value:.4}: {}", path.display()));
        }
        self.log.plot(&self.options.work_dir)
    }
}

fn fit(inputs: &StepInputs, dataset: Dataset, observer: &mut dyn Observer) -> Result<Dataset> {
    let (dataset, note) = inputs.fit_dataset(dataset)?;
    if let Some(note) = note {
        observer.note(&note);
    }
    Ok(dataset)
}

fn open_dataset(options: &TrainOptions, split: &str) -> Result<Dataset> {
    Dataset::open(options.dataset, &options.data_root, split).map_err(data_failure)
}

/// A data problem as the user's error (it names the file).
pub fn data_failure(e: rfnc_data::DataError) -> Error {
    Error::message(e.to_string())
}

/// The batch size and the arena's budget: `--memory-budget` itself for a given batch (as
/// for `rfnc compile`); with `--batch auto` it is the budget of the whole step, and the
/// arena gets what the chosen batch's leaves leave of it, when it needs recomputation.
fn choose_batch(
    options: &TrainOptions,
    images: usize,
    observer: &mut dyn Observer,
) -> Result<(u64, Option<String>)> {
    let input = parse_input(&options.source.input)?;
    let given = options.memory_budget.clone();
    match options.batch {
        BatchSize::FromInput => Ok((input[0], given)),
        BatchSize::Fixed(n) => Ok((n, given)),
        BatchSize::Auto => {
            let budget = match &options.memory_budget {
                Some(text) => parse_size(text)?,
                None => options.device.available_memory().map_err(runtime_failure)?,
            };
            let choice = batch::choose_batch(
                &options.source,
                &options.settings,
                budget,
                images.clamp(1, 256) as u64,
            )?;
            observer.note(&choice.describe());
            let arena = choice
                .recomputes
                .then(|| (budget - choice.leaves_bytes).to_string());
            Ok((choice.batch, arena))
        }
    }
}

fn total_iterations(length: Length, images: usize, batch: usize) -> u64 {
    match length {
        Length::Iters(n) => n,
        Length::Epochs(e) => e * rfnc_data::iters_per_epoch(images, batch) as u64,
    }
}

fn initial_weights(
    options: &TrainOptions,
    network: &Network,
    observer: &mut dyn Observer,
) -> Result<Weights> {
    let Some(path) = &options.init else {
        return Ok(init_weights(&network.forward, options.seed));
    };
    let (weights, initialised) = init_from_file(&network.forward, path, options.seed)?;
    if !initialised.is_empty() {
        observer.note(&format!(
            "{} parameters are not in {} and start from the network's rules: {}",
            initialised.len(),
            path.display(),
            components(&initialised)
        ));
    }
    Ok(weights)
}

/// `refine4.*, head.*`: the scopes of some parameter names, in order, each once.
fn components(names: &[String]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for n in names {
        let scope = n.split('.').next().unwrap_or(n);
        if !seen.contains(&scope) {
            seen.push(scope);
        }
    }
    seen.iter()
        .map(|s| format!("{s}.*"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The training session with `weights`, and the weights of parameters the step does not
/// use (noted): they are kept aside and saved with every checkpoint.
fn open_session(
    dir: &Path,
    device: Device,
    weights: Weights,
    observer: &mut dyn Observer,
) -> Result<(Session, Weights)> {
    let loaded = load_bundle(dir).map_err(runtime_failure)?;
    let (weights, aside) = crate::weights::split_unused(weights, &loaded.bundle);
    if !aside.tensors.is_empty() {
        observer.note(&format!(
            "parameters that do not reach the objective are not trained (kept as they are in checkpoints): {}",
            crate::weights::scopes(aside.tensors.keys())
        ));
    }
    let (mut session, note) = crate::run::open_session(&loaded, device)?;
    if let Some(note) = note {
        observer.note(&note);
    }
    session.load_weights(&weights).map_err(runtime_failure)?;
    Ok((session, aside))
}
