//! Validation during training: the network's inference bundle (batch 1, the training crop)
//! predicts every image of the validation split whole, by non-overlapping windows at scale
//! 1 ([`crate::eval`]), with the weights of the training session; the result is the mean
//! IoU (segmentation) or the rms error (depth) with the task's other figures.

use std::path::Path;

use rfnc_data::Dataset;
use rfnc_runtime::Weights;

use super::inputs::{StepInputs, TargetInput};
use super::TrainOptions;
use crate::error::Result;
use crate::eval::{evaluate_split, Metrics, Predictor};
use crate::evaluate::{Protocol, Task};

/// The inference session and the validation images.
pub struct Validator {
    predictor: Predictor,
    dataset: Dataset,
    protocol: Protocol,
    limit: usize,
}

impl Validator {
    pub fn new(
        dir: &Path,
        options: &TrainOptions,
        dataset: Dataset,
        inputs: &StepInputs,
    ) -> Result<Validator> {
        let task = match inputs.target {
            TargetInput::Labels { .. } => Task::Segmentation,
            TargetInput::Depth { .. } => Task::Depth,
        };
        let predictor = Predictor::open(dir, options.device, task)?;
        let protocol = Protocol::single(predictor.input_size, predictor.channels, task);
        let limit = match options.val_images {
            0 => dataset.len(),
            n => n.min(dataset.len()),
        };
        Ok(Validator {
            predictor,
            dataset,
            protocol,
            limit,
        })
    }

    pub fn images(&self) -> usize {
        self.limit
    }

    /// Validates `weights` (the training session's parameters; momentum is ignored).
    pub fn run(&mut self, weights: &Weights) -> Result<Metrics> {
        self.predictor.load_weights(weights)?;
        evaluate_split(
            &mut self.predictor,
            &self.dataset,
            &self.protocol,
            self.limit,
            &mut |_| {},
        )
    }
}
