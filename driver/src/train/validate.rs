//! Validation during training: the network's inference bundle (batch 1, the training crop)
//! predicts every image of the validation split whole, by non-overlapping windows at scale
//! 1 (the protocol of `evaluate`), with the weights of the training session; the result is
//! the mean IoU (segmentation) or the rms error (depth) with the task's other figures.

use std::path::Path;

use rfnc_data::augment::{eval_example, AugmentConfig};
use rfnc_data::Dataset;
use rfnc_runtime::{load_bundle, Session, Weights};

use super::inputs::{StepInputs, TargetInput};
use super::TrainOptions;
use crate::error::{Error, Result};
use crate::evaluate::{
    argmax, predict_multiscale, upsampling, Confusion, DepthMetrics, DepthReport, Protocol,
    SegMetrics, Task,
};
use crate::run::runtime_failure;

/// A validation's result.
#[derive(Clone, Debug)]
pub enum Validation {
    Segmentation(SegMetrics),
    Depth(DepthReport),
}

impl Validation {
    /// The figure that picks the best checkpoint: its name, value and whether higher is
    /// better.
    pub fn headline(&self) -> (&'static str, f64, bool) {
        match self {
            Validation::Segmentation(m) => ("mean_iou", m.mean_iou.unwrap_or(f64::NAN), true),
            Validation::Depth(r) => ("rms", r.rms, false),
        }
    }

    /// Every figure, for the log.
    pub fn figures(&self) -> serde_json::Map<String, serde_json::Value> {
        let value = match self {
            Validation::Segmentation(m) => serde_json::json!({
                "pixel_accuracy": m.pixel_accuracy,
                "mean_accuracy": m.mean_accuracy,
                "mean_iou": m.mean_iou,
                "iou": m.per_class.iter().map(|c| c.iou).collect::<Vec<_>>(),
            }),
            Validation::Depth(r) => serde_json::to_value(r).unwrap_or_default(),
        };
        match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// The inference session and the validation images.
pub struct Validator {
    session: Session,
    dataset: Dataset,
    image: String,
    output: String,
    /// The output's channels and size (1/4 of the crop for the RefineNet heads).
    channels: usize,
    output_size: (usize, usize),
    protocol: Protocol,
    normalise: AugmentConfig,
    limit: usize,
    /// The network's ignore label, to map the data's 255 to.
    classes: Option<u32>,
}

impl Validator {
    pub fn new(
        dir: &Path,
        options: &TrainOptions,
        dataset: Dataset,
        inputs: &StepInputs,
    ) -> Result<Validator> {
        let loaded = load_bundle(dir).map_err(runtime_failure)?;
        let session = Session::new(&loaded, options.device).map_err(runtime_failure)?;
        let output = loaded
            .bundle
            .main
            .outputs
            .iter()
            .find(|o| o.shape.len() == 4)
            .ok_or_else(|| Error::internal("the inference bundle has no 4-D output to validate"))?;
        let (channels, output_size) = (
            output.shape[1] as usize,
            (output.shape[2] as usize, output.shape[3] as usize),
        );
        let crop = (inputs.crop.0 as usize, inputs.crop.1 as usize);
        let (task, classes) = match inputs.target {
            TargetInput::Labels { classes, .. } => (Task::Segmentation, Some(classes)),
            TargetInput::Depth { .. } => (Task::Depth, None),
        };
        let limit = match options.val_images {
            0 => dataset.len(),
            n => n.min(dataset.len()),
        };
        Ok(Validator {
            session,
            image: inputs.image.clone(),
            output: output.name.clone(),
            channels,
            output_size,
            protocol: Protocol::single(crop, channels, task),
            normalise: AugmentConfig::new(crop),
            limit,
            classes,
            dataset,
        })
    }

    pub fn images(&self) -> usize {
        self.limit
    }

    /// Validates `weights` (the training session's parameters; momentum is ignored).
    pub fn run(&mut self, weights: &Weights) -> Result<Validation> {
        self.session
            .load_weights(weights)
            .map_err(runtime_failure)?;
        self.session.prepare().map_err(runtime_failure)?;
        let mut confusion = self.classes.map(|c| Confusion::new(c as usize));
        let mut depth = DepthMetrics::new();
        for i in 0..self.limit {
            let sample = self
                .dataset
                .load(i, self.classes)
                .map_err(super::data_failure)?;
            let example = eval_example(&sample, &self.normalise);
            let size = (example.height, example.width);
            let prediction = self.predict(&example.image, size)?;
            let pixels = size.0 * size.1;
            match (&mut confusion, &example.labels, &example.depth) {
                (Some(c), Some(labels), _) => {
                    let classes = argmax(&prediction, self.channels, pixels)?;
                    c.add(&classes, labels, rfnc_data::IGNORE_LABEL as i32)?;
                }
                (None, _, Some(gt)) => depth.add(&prediction, gt)?,
                _ => return Err(Error::internal("a validation example without its target")),
            }
        }
        Ok(match confusion {
            Some(c) => Validation::Segmentation(c.metrics()),
            None => Validation::Depth(depth.finish().ok_or_else(|| {
                Error::message(
                    "the validation split has no valid depth pixel (all ground truth is 0)",
                )
            })?),
        })
    }

    fn predict(&mut self, image: &[f32], size: (usize, usize)) -> Result<Vec<f32>> {
        let (session, leaf, output) = (&mut self.session, &self.image, &self.output);
        let net = |window: &[f32]| -> Result<Vec<f32>> {
            session
                .set_leaf_f32(leaf, window)
                .map_err(runtime_failure)?;
            session.run().map_err(runtime_failure)?;
            let out = session.output(output).map_err(runtime_failure)?;
            Ok(out.as_f32().unwrap_or_default().to_vec())
        };
        let mut run = upsampling(self.channels, self.output_size, self.protocol.crop, net);
        predict_multiscale(image, size, &self.protocol, &mut run)
    }
}
