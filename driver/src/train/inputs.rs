//! Which inputs of a network `rfnc train` feeds, found from the forward graph: the image
//! (`f32[N, 3, H, W]`) and the target, class labels (`i32[N, H, W]` read by the softmax
//! cross-entropy) or a depth map (`f32[N, 1, H, W]` read by the least-squares loss); and the
//! dataset checked against them.

use std::path::Path;

use rfnc_compiler::ir::{DType, Graph, NodeId, Op};
use rfnc_data::loader::Batch;
use rfnc_data::{Dataset, DatasetKind};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::{RuntimeError, Session};

use crate::error::{Error, Result};
use crate::evaluate::Task;

/// What the loss reads as its target.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetInput {
    Labels {
        name: String,
        classes: u32,
        /// The network's ignore label (the data's 255 is mapped to it).
        ignore: i32,
    },
    Depth {
        name: String,
    },
}

/// The inputs of the training step that data fills, and where its loss is.
#[derive(Clone, Debug)]
pub struct StepInputs {
    pub image: String,
    pub target: TargetInput,
    /// H, W of the image input.
    pub crop: (u64, u64),
    pub objective: String,
    /// The compiled learning rate (the schedule scales it), for the log.
    pub base_lr: f64,
}

impl StepInputs {
    /// Finds the image and target inputs of `forward`, whose objective must be one loss.
    pub fn find(forward: &Graph, file: &Path) -> Result<StepInputs> {
        let objective = forward.objective.clone().ok_or_else(|| {
            Error::user(
                Diagnostic::new(format!("`{}` has no objective to train", file.display())).hint(
                    "add `objective loss = softmax_cross_entropy(...);` or `least_squares(...)`",
                ),
            )
        })?;
        let inputs: Vec<(NodeId, String)> = forward
            .node_ids()
            .filter_map(|n| match &forward.node(n).op {
                Op::Input { name } => Some((n, name.clone())),
                _ => None,
            })
            .collect();
        let image = inputs.iter().find(|(n, _)| {
            let t = &forward.node(*n).ty;
            t.dtype == DType::F32 && t.rank() == 4 && t.dims[1] == 3
        });
        let Some((image_id, image)) = image else {
            return Err(unfit(file, "it has no image input `f32[N, 3, H, W]`"));
        };
        let dims = &forward.node(*image_id).ty.dims;
        let target = target_of(forward, &inputs, *image_id, file)?;
        for (_, name) in &inputs {
            let known = name == image
                || matches!(&target, TargetInput::Labels { name: t, .. } | TargetInput::Depth { name: t } if t == name);
            if !known {
                return Err(unfit(file, &format!("input `{name}` is neither the image nor the loss's target, and rfnc train does not know what to feed it")));
            }
        }
        Ok(StepInputs {
            image: image.clone(),
            target,
            crop: (dims[2], dims[3]),
            objective,
            base_lr: 0.0,
        })
    }

    /// What the network predicts.
    pub fn task(&self) -> Task {
        match self.target {
            TargetInput::Labels { .. } => Task::Segmentation,
            TargetInput::Depth { .. } => Task::Depth,
        }
    }

    /// Refuses a dataset of the other task.
    pub fn check_dataset(&self, dataset: DatasetKind, file: &Path) -> Result<()> {
        let wants_depth = self.task() == Task::Depth;
        if wants_depth == (dataset.task() == rfnc_data::Task::Depth) {
            return Ok(());
        }
        let (net, data) = if wants_depth {
            ("depth", "segmentation")
        } else {
            ("segmentation", "depth")
        };
        Err(Diagnostic::new(format!(
            "`{}` predicts {net}, but the dataset `{dataset}` is a {data} dataset",
            file.display()
        ))
        .hint(if wants_depth { "use --dataset nyud_depth, or a segmentation network" } else { "use a segmentation dataset (voc, voc_aug, cityscapes, nyud_seg, list), or a depth network" })
        .into())
    }

    /// The dataset with the network's number of classes (its labels are checked against
    /// them as they are read), and a note when the layout's nominal count differs.
    pub fn fit_dataset(&self, dataset: Dataset) -> Result<(Dataset, Option<String>)> {
        let TargetInput::Labels { classes, .. } = self.target else {
            return Ok((dataset, None));
        };
        let note = dataset.num_classes().filter(|&n| n != classes).map(|nominal| {
            format!(
                "the network has {classes} classes and the `{}` layout {nominal}; labels are checked against {classes}",
                dataset.kind()
            )
        });
        let dataset = dataset.with_classes(classes).map_err(super::data_failure)?;
        Ok((dataset, note))
    }

    /// Sets the image and target leaves from a batch.
    pub fn feed(
        &self,
        session: &mut Session,
        batch: &Batch,
    ) -> std::result::Result<(), RuntimeError> {
        session.set_leaf_f32(&self.image, &batch.images)?;
        match (&self.target, &batch.labels, &batch.depth) {
            (TargetInput::Labels { name, ignore, .. }, Some(labels), _) => {
                let data = rfnc_data::IGNORE_LABEL as i32;
                if *ignore == data {
                    session.set_leaf_i32(name, labels)
                } else {
                    let mapped: Vec<i32> = labels
                        .iter()
                        .map(|&l| if l == data { *ignore } else { l })
                        .collect();
                    session.set_leaf_i32(name, &mapped)
                }
            }
            (TargetInput::Depth { name }, _, Some(depth)) => session.set_leaf_f32(name, depth),
            _ => Err(RuntimeError::Unsupported(
                "the batch does not carry the target the network's loss reads".to_string(),
            )),
        }
    }

    /// The terms of a weighted objective after a step (the step's other scalar outputs).
    pub fn terms(
        &self,
        session: &Session,
    ) -> std::result::Result<std::collections::BTreeMap<String, f64>, RuntimeError> {
        let names: Vec<String> = session
            .bundle()
            .main
            .outputs
            .iter()
            .filter(|o| o.shape.is_empty() && o.name != self.objective)
            .map(|o| o.name.clone())
            .collect();
        let mut terms = std::collections::BTreeMap::new();
        for name in names {
            let out = session.output(&name)?;
            terms.insert(
                name,
                out.as_f32()
                    .and_then(|v| v.first())
                    .map_or(f64::NAN, |&v| v as f64),
            );
        }
        Ok(terms)
    }

    /// The objective's value after a step.
    pub fn loss(&self, session: &Session) -> std::result::Result<f64, RuntimeError> {
        let out = session.output(&self.objective)?;
        Ok(out
            .as_f32()
            .and_then(|v| v.first())
            .map_or(f64::NAN, |&v| v as f64))
    }
}

/// The input the objective's loss reads as its target.
fn target_of(
    forward: &Graph,
    inputs: &[(NodeId, String)],
    image: NodeId,
    file: &Path,
) -> Result<TargetInput> {
    let name_of = |n: NodeId| inputs.iter().find(|(i, _)| *i == n).map(|(_, s)| s.clone());
    for n in forward.node_ids() {
        let ops = forward.operands(n);
        match &forward.node(n).op {
            Op::SoftmaxCrossEntropy { ignore_index, .. } => {
                if let Some(name) = name_of(ops[1]) {
                    let classes = forward.node(ops[0]).ty.dims[1] as u32;
                    return Ok(TargetInput::Labels {
                        name,
                        classes,
                        ignore: *ignore_index as i32,
                    });
                }
            }
            Op::LeastSquares { .. } => {
                if let Some(name) = ops
                    .iter()
                    .filter(|&&o| o != image)
                    .find_map(|&o| name_of(o))
                {
                    return Ok(TargetInput::Depth { name });
                }
            }
            _ => {}
        }
    }
    Err(unfit(file, "its objective is not a softmax cross-entropy over labels or a least-squares loss on a depth input"))
}

fn unfit(file: &Path, why: &str) -> Error {
    Error::user(
        Diagnostic::new(format!("`{}` cannot be trained on a dataset: {why}", file.display()))
            .note("rfnc train feeds an image `f32[N, 3, H, W]` and the loss's target: labels `i32[N, H, W]` or depth `f32[N, 1, H, W]`"),
    )
}
