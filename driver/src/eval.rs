//! A network evaluated on images and datasets: the [`Predictor`] runs an inference bundle
//! over the windows, scales and flips of the evaluation protocol ([`crate::evaluate`]) for
//! images of any size, and [`evaluate_split`] turns a dataset split into the paper's metrics.
//! `rfnc eval`, `rfnc predict` and the trainer's validation all go through here.
//!
//! Invariant: a window is at most the bundle's compiled size; a smaller one is padded to it
//! (with 0, the mean colour after normalisation) and the output cut back, so one bundle
//! serves every scale and window.

use std::path::Path;

use rfnc_bundle::Precision;
use rfnc_data::augment::{eval_example, AugmentConfig, Example};
use rfnc_data::Dataset;
use rfnc_dsl::Diagnostic;
use rfnc_runtime::{load_bundle, Device, Session, Weights};

use crate::error::{Error, Result};
use crate::evaluate::{
    argmax, predict_multiscale, resize_bilinear, Confusion, DepthMetrics, DepthReport, Protocol,
    SegMetrics, Task,
};
use crate::run::runtime_failure;

/// The metrics of a split.
#[derive(Clone, Debug)]
pub enum Metrics {
    Segmentation(SegMetrics),
    Depth(DepthReport),
}

impl Metrics {
    /// The figure that ranks checkpoints: its name, value and whether higher is better.
    pub fn headline(&self) -> (&'static str, f64, bool) {
        match self {
            Metrics::Segmentation(m) => ("mean_iou", m.mean_iou.unwrap_or(f64::NAN), true),
            Metrics::Depth(r) => ("rms", r.rms, false),
        }
    }

    /// Every figure as JSON.
    pub fn figures(&self) -> serde_json::Map<String, serde_json::Value> {
        let value = match self {
            Metrics::Segmentation(m) => serde_json::to_value(m),
            Metrics::Depth(r) => serde_json::to_value(r),
        };
        match value {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// An inference bundle in a session, ready to predict images of any size.
pub struct Predictor {
    session: Session,
    image: String,
    output: String,
    /// Classes (segmentation) or 1 (depth).
    pub channels: usize,
    pub task: Task,
    /// The compiled input size (H, W) and the output's size (1/4 of it for RefineNet).
    pub input_size: (usize, usize),
    output_size: (usize, usize),
}

impl Predictor {
    /// Opens the inference bundle in `dir` on `device`; `task` says how outputs combine.
    pub fn open(dir: &Path, device: Device, task: Task) -> Result<Predictor> {
        let loaded = load_bundle(dir).map_err(runtime_failure)?;
        let bundle = &loaded.bundle;
        let image = bundle
            .leaves
            .iter()
            .find(|l| {
                l.role == rfnc_bundle::LeafRole::Input && l.shape.len() == 4 && l.shape[1] == 3
            })
            .ok_or_else(|| {
                Error::message("the network has no image input f32[1, 3, H, W] to predict from")
            })?;
        if image.shape[0] != 1 {
            return Err(Error::internal(
                "a predictor's bundle is compiled for batch 1",
            ));
        }
        let output = bundle
            .main
            .outputs
            .iter()
            .find(|o| o.shape.len() == 4)
            .ok_or_else(|| {
                Error::message("the network has no 4-D output ([1, C, h, w]) to predict")
            })?;
        let predictor = Predictor {
            image: image.name.clone(),
            output: output.name.clone(),
            channels: output.shape[1] as usize,
            task,
            input_size: (image.shape[2] as usize, image.shape[3] as usize),
            output_size: (output.shape[2] as usize, output.shape[3] as usize),
            session: crate::run::open_session(&loaded, device)?.0,
        };
        Ok(predictor)
    }

    /// Loads weights (momentum buffers ignored) and folds batch norm.
    pub fn load_weights(&mut self, weights: &Weights) -> Result<()> {
        self.session
            .load_weights(weights)
            .map_err(runtime_failure)?;
        self.session.prepare().map_err(runtime_failure)
    }

    /// Checks that windows of `crop` fit the compiled size.
    pub fn check_crop(&self, crop: (usize, usize)) -> Result<()> {
        let (h, w) = self.input_size;
        if crop.0 > h || crop.1 > w || crop.0 == 0 || crop.1 == 0 {
            return Err(Diagnostic::new(format!(
                "the crop {}x{} does not fit the network compiled for {h}x{w}",
                crop.0, crop.1
            ))
            .hint(format!(
                "use a crop of at most {h}x{w}, or compile a larger one with --input 1x3xHxW"
            ))
            .into());
        }
        Ok(())
    }

    /// The prediction for a normalised `3 x h x w` image: class probabilities or depth,
    /// `channels x h x w`.
    pub fn predict(
        &mut self,
        image: &[f32],
        size: (usize, usize),
        protocol: &Protocol,
    ) -> Result<Vec<f32>> {
        self.check_crop(protocol.crop)?;
        let crop = protocol.crop;
        let mut run = |window: &[f32]| self.run_window(window, crop);
        predict_multiscale(image, size, protocol, &mut run)
    }

    /// One window of `crop`: padded to the compiled size, run, the output upsampled to the
    /// compiled size and cut back to the window.
    fn run_window(&mut self, window: &[f32], crop: (usize, usize)) -> Result<Vec<f32>> {
        let full = self.input_size;
        let padded = if crop == full {
            window.to_vec()
        } else {
            place(window, 3, crop, full)
        };
        self.session
            .set_leaf_f32(&self.image, &padded)
            .map_err(runtime_failure)?;
        self.session.run().map_err(runtime_failure)?;
        let out = self.session.output(&self.output).map_err(runtime_failure)?;
        let scores = out.as_f32().unwrap_or_default();
        let up = resize_bilinear(scores, self.channels, self.output_size, full)?;
        Ok(if crop == full {
            up
        } else {
            cut(&up, self.channels, full, crop)
        })
    }
}

/// `planes` planes of `from` copied into the top-left of zero planes of `to`.
fn place(src: &[f32], planes: usize, from: (usize, usize), to: (usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; planes * to.0 * to.1];
    for p in 0..planes {
        for y in 0..from.0 {
            let s = (p * from.0 + y) * from.1;
            let d = (p * to.0 + y) * to.1;
            out[d..d + from.1].copy_from_slice(&src[s..s + from.1]);
        }
    }
    out
}

/// The top-left `to` of each of `planes` planes of `from`.
fn cut(src: &[f32], planes: usize, from: (usize, usize), to: (usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(planes * to.0 * to.1);
    for p in 0..planes {
        for y in 0..to.0 {
            let s = (p * from.0 + y) * from.1;
            out.extend_from_slice(&src[s..s + to.1]);
        }
    }
    out
}

/// The dataset's example `i` for evaluation: the whole image normalised and its target.
pub fn example(dataset: &Dataset, i: usize, classes: Option<u32>) -> Result<Example> {
    let sample = dataset
        .load(i, classes)
        .map_err(crate::train::data_failure)?;
    Ok(eval_example(&sample, &AugmentConfig::new((1, 1))))
}

/// Accumulates the metrics of predictions against targets.
pub struct Scorer {
    confusion: Option<Confusion>,
    depth: DepthMetrics,
}

impl Scorer {
    pub fn new(task: Task, classes: usize) -> Scorer {
        Scorer {
            confusion: (task == Task::Segmentation).then(|| Confusion::new(classes)),
            depth: DepthMetrics::new(),
        }
    }

    /// Adds one image: its prediction (`channels x pixels` probabilities, or depth) and its
    /// example's target.
    pub fn add(&mut self, prediction: &[f32], channels: usize, example: &Example) -> Result<()> {
        let pixels = example.height * example.width;
        match (&mut self.confusion, &example.labels, &example.depth) {
            (Some(c), Some(labels), _) => {
                let classes = argmax(prediction, channels, pixels)?;
                Ok(c.add(&classes, labels, rfnc_data::IGNORE_LABEL as i32)?)
            }
            (None, _, Some(gt)) => Ok(self.depth.add(prediction, gt)?),
            _ => Err(Error::message("the dataset's targets do not fit the network's task (labels for segmentation, depth for depth)")),
        }
    }

    /// Adds one image whose predicted classes are given (e.g. read from a prediction PNG).
    pub fn add_classes(&mut self, classes: &[i32], example: &Example) -> Result<()> {
        match (&mut self.confusion, &example.labels) {
            (Some(c), Some(labels)) => {
                Ok(c.add(classes, labels, rfnc_data::IGNORE_LABEL as i32)?)
            }
            _ => Err(Error::message(
                "class predictions need a segmentation dataset",
            )),
        }
    }

    pub fn finish(self) -> Result<Metrics> {
        Ok(match self.confusion {
            Some(c) => Metrics::Segmentation(c.metrics()),
            None => Metrics::Depth(self.depth.finish().ok_or_else(|| {
                Error::message("the split has no valid depth pixel (all ground truth is 0)")
            })?),
        })
    }
}

/// The metrics of `predictor` on the first `limit` images of `dataset`, each predicted by
/// `protocol`; `progress` hears of every image done.
pub fn evaluate_split(
    predictor: &mut Predictor,
    dataset: &Dataset,
    protocol: &Protocol,
    limit: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Metrics> {
    let classes = (predictor.task == Task::Segmentation).then_some(predictor.channels as u32);
    let mut scorer = Scorer::new(predictor.task, predictor.channels);
    for i in 0..limit.min(dataset.len()) {
        let example = example(dataset, i, classes)?;
        let prediction =
            predictor.predict(&example.image, (example.height, example.width), protocol)?;
        scorer.add(&prediction, predictor.channels, &example)?;
        progress(i + 1);
    }
    scorer.finish()
}

/// How `rfnc eval` and `rfnc predict` predict an image.
#[derive(Clone, Debug)]
pub struct ProtocolOptions {
    /// Windows of this size (at most the compiled size); `None`: the compiled size, one
    /// window per image where it fits.
    pub crop: Option<(usize, usize)>,
    /// Window steps; `None`: two thirds of the crop.
    pub stride: Option<(usize, usize)>,
    pub scales: Vec<f64>,
    pub flip: bool,
}

impl ProtocolOptions {
    /// The protocol for `predictor`: windows of the crop (the compiled size by default,
    /// stepping by the crop, so one window per image that fits).
    pub fn protocol(&self, predictor: &Predictor) -> Result<Protocol> {
        let crop = self.crop.unwrap_or(predictor.input_size);
        predictor.check_crop(crop)?;
        let stride = match (self.stride, self.crop) {
            (Some(s), _) => s,
            (None, Some(_)) => crate::evaluate::stride_for(crop, 2.0 / 3.0)?,
            (None, None) => crop,
        };
        if stride.0 == 0 || stride.1 == 0 || stride.0 > crop.0 || stride.1 > crop.1 {
            return Err(Error::message(format!(
                "the stride {}x{} must be between 1 and the crop {}x{}",
                stride.0, stride.1, crop.0, crop.1
            )));
        }
        Ok(Protocol {
            crop,
            stride,
            scales: self.scales.clone(),
            flip: self.flip,
            channels: predictor.channels,
            task: predictor.task,
        })
    }
}

/// An evaluation's result.
#[derive(Clone, Debug)]
pub struct EvalReport {
    pub metrics: Metrics,
    pub images: usize,
    pub protocol: Protocol,
}

/// The metrics of predictions already written as class-index PNGs (`rfnc predict`), one
/// `DIR/<id>.png` per sample of `dataset`.
pub fn evaluate_predictions(
    dir: &Path,
    dataset: &Dataset,
    classes: u32,
    limit: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Metrics> {
    let mut scorer = Scorer::new(Task::Segmentation, classes as usize);
    for i in 0..limit.min(dataset.len()) {
        let example = example(dataset, i, Some(classes))?;
        let id = &dataset.samples()[i].id;
        let path = dir.join(format!("{id}.png"));
        let bytes = rfnc_data::decode::read_file(&path).map_err(crate::train::data_failure)?;
        let plane =
            rfnc_data::decode::decode_indices(&path, &bytes).map_err(crate::train::data_failure)?;
        if (plane.height, plane.width) != (example.height, example.width) {
            return Err(Error::message(format!(
                "`{}` is {}x{}, its image {}x{}",
                path.display(),
                plane.width,
                plane.height,
                example.width,
                example.height
            )));
        }
        let predicted: Vec<i32> = plane.data.iter().map(|&v| v as i32).collect();
        scorer.add_classes(&predicted, &example)?;
        progress(i + 1);
    }
    scorer.finish()
}

/// Everything `rfnc eval` is asked.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The program; `--input` gives the compiled size (its N is taken as 1).
    pub source: crate::Source,
    /// Weights or a checkpoint; not needed with `predictions`.
    pub weights: Option<std::path::PathBuf>,
    pub dataset: rfnc_data::DatasetKind,
    pub data_root: std::path::PathBuf,
    pub split: String,
    /// At most this many images (0: all).
    pub limit: usize,
    pub protocol: ProtocolOptions,
    /// Score class-index PNGs written by `rfnc predict` instead of running the network.
    pub predictions: Option<std::path::PathBuf>,
    pub device: Device,
    pub gpu: String,
    /// How the GPU's convolutions multiply.
    pub precision: Precision,
    pub use_cache: bool,
    pub timings: bool,
}

/// Notes and progress of a long evaluation or prediction.
pub trait Progress {
    fn note(&mut self, text: &str);
    /// `done` of `total` images.
    fn image(&mut self, done: usize, total: usize);
}

/// The network of `source` at batch 1, and what it predicts.
pub fn open_network(
    source: &crate::Source,
    log: &crate::Log,
) -> Result<(crate::Network, crate::train::inputs::StepInputs)> {
    let mut source = source.clone();
    source.input = crate::train::batch::with_batch(&source.input, 1);
    let network = crate::Network::elaborate(&source, log)?;
    let inputs = crate::train::inputs::StepInputs::find(&network.forward, &source.file)?;
    Ok((network, inputs))
}

/// The inference bundle of `network` for `device`, compiled once into the kernel cache's
/// `bundles/` (or a temporary directory without a cache) and opened with `weights`.
pub fn open_predictor(
    network: &crate::Network,
    task: Task,
    weights: &Path,
    device: Device,
    (gpu, precision): (&str, Precision),
    use_cache: bool,
    log: &crate::Log,
) -> Result<(Predictor, Option<tempfile::TempDir>)> {
    use crate::codegen::{ensure_bundle, program_hash, CodegenOptions};
    let codegen = CodegenOptions::new(gpu, precision, use_cache)
        .for_device(matches!(device, Device::Cuda { .. }));
    let (dir, temp) = match &codegen.cache {
        Some(cache) => (
            cache.join("bundles").join(program_hash(&network.forward)),
            None,
        ),
        None => {
            let temp = tempfile::tempdir()
                .map_err(|e| Error::message(format!("cannot create a temporary directory: {e}")))?;
            (temp.path().join("bundle"), Some(temp))
        }
    };
    ensure_bundle(network, &crate::Target::Inference, &codegen, &dir, log)?;
    let mut predictor = Predictor::open(&dir, device, task)?;
    let weights = crate::weights::load_for(&network.forward, weights)?;
    predictor.load_weights(&weights)?;
    Ok((predictor, temp))
}

/// `rfnc eval`: the metrics of a network (or of written predictions) on a dataset split.
pub fn run_eval(options: &EvalOptions, progress: &mut dyn Progress) -> Result<EvalReport> {
    let log = crate::Log::new(options.timings);
    let (network, inputs) = open_network(&options.source, &log)?;
    inputs.check_dataset(options.dataset, &options.source.file)?;
    let dataset = Dataset::open(options.dataset, &options.data_root, &options.split)
        .map_err(crate::train::data_failure)?;
    let (dataset, note) = inputs.fit_dataset(dataset)?;
    if let Some(note) = note {
        progress.note(&note);
    }
    let total = match options.limit {
        0 => dataset.len(),
        n => n.min(dataset.len()),
    };
    let task = inputs.task();
    if let Some(dir) = &options.predictions {
        let crate::train::inputs::TargetInput::Labels { classes, .. } = inputs.target else {
            return Err(Error::message(
                "--predictions reads class-index PNGs: it is for segmentation",
            ));
        };
        let metrics = evaluate_predictions(dir, &dataset, classes, total, &mut |done| {
            progress.image(done, total)
        })?;
        let protocol = Protocol::single((0, 0), classes as usize, task);
        return Ok(EvalReport {
            metrics,
            images: total,
            protocol,
        });
    }
    let weights = options.weights.as_deref().ok_or_else(|| {
        Error::message(
            "give the weights to evaluate with --weights W.safetensors (a checkpoint is fine)",
        )
    })?;
    let (mut predictor, _temp) = open_predictor(
        &network,
        task,
        weights,
        options.device,
        (&options.gpu, options.precision),
        options.use_cache,
        &log,
    )?;
    let protocol = options.protocol.protocol(&predictor)?;
    let metrics = evaluate_split(&mut predictor, &dataset, &protocol, total, &mut |done| {
        progress.image(done, total)
    })?;
    Ok(EvalReport {
        metrics,
        images: total,
        protocol,
    })
}
