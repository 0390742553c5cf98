//! `rfnc train`: the options handed to the driver's trainer, a progress bar (indicatif) or
//! plain lines when standard error is not a terminal, Ctrl-C turned into a checkpoint and a
//! clean stop, and the summary.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rfnc_driver::train::{
    train, BatchSize, Length, Observer, RunPlan, StepReport, TrainOptions, TrainSummary, Validation,
};
use rfnc_driver::Error;

use crate::cli::TrainCmdArgs;
use crate::commands::device;
use crate::print::print_stdout;

pub fn run(args: &TrainCmdArgs) -> Result<ExitCode, Error> {
    let options = options(args)?;
    let mut progress = Progress::new();
    let summary = train(&options, &mut progress)?;
    print_stdout(&describe(&summary, &options.work_dir))?;
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn options(args: &TrainCmdArgs) -> Result<TrainOptions, Error> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batch = match args.batch.as_deref() {
        None => BatchSize::FromInput,
        Some("auto") => BatchSize::Auto,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n > 0 => BatchSize::Fixed(n),
            _ => {
                return Err(Error::message(format!(
                    "--batch {text}: give a positive number or `auto`"
                )))
            }
        },
    };
    let length = match (args.iters, args.epochs) {
        (Some(n), _) => Length::Iters(n),
        (None, Some(e)) => Length::Epochs(e),
        (None, None) => return Err(Error::message("give --iters N or --epochs N")),
    };
    Ok(TrainOptions {
        source: args.common.source(),
        settings: args.step.settings(),
        memory_budget: args.step.memory_budget.clone(),
        device: device(&args.device),
        gpu: args.device.gpu.clone(),
        precision: args.device.precision.into(),
        use_cache: !args.device.no_cache,
        dataset: args.dataset,
        data_root: args.data_root.clone(),
        train_split: args.train_split.clone(),
        val_split: (!args.no_val).then(|| args.val_split.clone()),
        work_dir: args.work_dir.clone(),
        length,
        schedule: args.schedule,
        batch,
        init: args.init.clone(),
        resume: args.resume,
        checkpoint_every: args.checkpoint_every,
        keep: args.keep as usize,
        val_every: args.val_every,
        val_images: args.val_images,
        seed: args.step.seed,
        workers: args.workers.unwrap_or(cores).max(1),
        scale: args.scale,
        flip: !args.no_flip,
        interrupt: Some(interrupt_flag()),
        timings: args.common.timings,
    })
}

/// Set by the first Ctrl-C (the run then writes a checkpoint and stops); a second one ends
/// the process at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    // A handler can be installed once per process; without one Ctrl-C just ends the process.
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: writing a checkpoint after this step (Ctrl-C again to quit now)");
    });
    flag
}

fn describe(s: &TrainSummary, work_dir: &Path) -> String {
    let total = s.data_secs + s.step_secs;
    let share = if total > 0.0 {
        100.0 * s.data_secs / total
    } else {
        0.0
    };
    let mut text = format!(
        "{} after {} iterations: {:.1} s in steps, {:.1} s waiting for data ({share:.0}%); work dir {}\n",
        if s.interrupted { "interrupted" } else { "finished" },
        s.iterations,
        s.step_secs,
        s.data_secs,
        work_dir.display()
    );
    if let Some(p) = &s.last_checkpoint {
        text.push_str(&format!("last checkpoint: {}\n", p.display()));
    }
    if let Some(b) = &s.best {
        text.push_str(&format!(
            "best {} {:.4} at iteration {}: {}\n",
            b.metric,
            b.value,
            b.iteration,
            work_dir.join("checkpoints/best.safetensors").display()
        ));
    }
    if s.interrupted {
        text.push_str("continue with the same command and --resume\n");
    }
    text
}

/// The progress display: a bar on a terminal, otherwise a plain line about every 5% of the
/// run or every 30 s.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_line: Instant,
    last_iteration: u64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bar: None,
            total: 0,
            last_line: Instant::now(),
            last_iteration: 0,
        }
    }

    fn say(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Observer for Progress {
    fn note(&mut self, text: &str) {
        self.say(text);
    }

    fn begin(&mut self, plan: &RunPlan) {
        self.total = plan.total;
        self.last_iteration = plan.start;
        let validation = match plan.val_images {
            0 => "no validation".to_string(),
            n => format!("validation on {n} images"),
        };
        self.say(&format!(
            "training {}: batch {} of {}x{} crops, iterations {}..{} ({} per epoch of {} images), {validation}",
            plan.network, plan.batch, plan.crop.0, plan.crop.1, plan.start + 1, plan.total,
            plan.iters_per_epoch, plan.train_images
        ));
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(plan.total).with_position(plan.start);
            let style = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta_precise}]",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            self.bar = Some(bar);
        }
    }

    fn step(&mut self, s: &StepReport) {
        let data_share = 100.0 * s.data_secs / (s.data_secs + s.step_secs).max(1e-12);
        let text = format!(
            "loss {:.4} lr {:.2e} {:.1} img/s data {data_share:.0}% epoch {}",
            s.loss, s.lr, s.images_per_sec, s.epoch
        );
        if let Some(bar) = &self.bar {
            bar.set_position(s.iteration);
            bar.set_message(text);
            return;
        }
        let every = (self.total / 20).max(1);
        let due = s.iteration - self.last_iteration >= every
            || self.last_line.elapsed() >= Duration::from_secs(30);
        if due || s.iteration == self.total {
            eprintln!("iteration {}/{}: {text}", s.iteration, self.total);
            self.last_line = Instant::now();
            self.last_iteration = s.iteration;
        }
    }

    fn validating(&mut self, images: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("validating on {images} images"));
        }
    }

    fn validated(&mut self, iteration: u64, result: &Validation) {
        let text = match result {
            Validation::Segmentation(m) => format!(
                "mean IoU {} (pixel accuracy {}, mean accuracy {})",
                figure(m.mean_iou),
                figure(m.pixel_accuracy),
                figure(m.mean_accuracy)
            ),
            Validation::Depth(r) => format!(
                "rms {:.4} m (rel {:.4}, log10 {:.4}, delta1 {:.4})",
                r.rms, r.rel, r.log10, r.delta1
            ),
        };
        self.say(&format!("validation after iteration {iteration}: {text}"));
    }

    fn checkpoint(&mut self, path: &Path) {
        if self.bar.is_none() {
            eprintln!("checkpoint: {}", path.display());
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn figure(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"))
}
