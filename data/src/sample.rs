//! One decoded sample (`Dataset::load`): the RGB image and its target, labels mapped to
//! training labels and checked against the classes, depth converted to metres, and the
//! target's size checked against the image's.

use std::path::Path;

use crate::dataset::{Dataset, LabelEncoding, Task, IGNORE_LABEL};
use crate::decode::{decode_gray16, decode_indices, decode_rgb, read_file, Plane};
use crate::error::DataError;

/// A sample's target, at the image's size.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Training labels (1 channel): `0..classes`, or [`IGNORE_LABEL`].
    Labels(Plane<u8>),
    /// Depth in metres (1 channel); 0 = no measurement.
    Depth(Plane<f32>),
}

impl Target {
    /// (width, height).
    pub fn size(&self) -> (usize, usize) {
        match self {
            Target::Labels(p) => p.size(),
            Target::Depth(p) => p.size(),
        }
    }
}

/// A decoded, unaugmented sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its index in the dataset.
    pub index: usize,
    /// RGB in [0, 255], HWC (3 channels).
    pub image: Plane<f32>,
    pub target: Target,
}

impl Dataset {
    /// Decodes sample `index`. Labels are checked against `classes_override`, else
    /// against [`Dataset::num_classes`] (when neither is known, every stored value is
    /// accepted).
    pub fn load(&self, index: usize, classes_override: Option<u32>) -> Result<Sample, DataError> {
        let paths = self.sample(index).ok_or_else(|| {
            DataError::Invalid(format!(
                "sample index {index} out of range (split `{}` has {} samples)",
                self.split(),
                self.len()
            ))
        })?;
        if let Some(c) = classes_override {
            if !(1..=IGNORE_LABEL as u32).contains(&c) {
                return Err(DataError::Invalid(format!(
                    "number of classes {c} is outside 1..=255 (255 is the ignore label)"
                )));
            }
        }
        let image = decode_rgb(&paths.image, &read_file(&paths.image)?)?;
        let target = match self.task() {
            Task::Depth => Target::Depth(load_depth(&paths.target)?),
            Task::Segmentation => {
                let classes = classes_override.or(self.num_classes());
                let encoding = self.kind().label_encoding();
                Target::Labels(load_labels(&paths.target, encoding, classes)?)
            }
        };
        if target.size() != image.size() {
            return Err(DataError::SizeMismatch {
                path: paths.target.clone(),
                size: target.size(),
                image: paths.image.clone(),
                image_size: image.size(),
            });
        }
        Ok(Sample {
            index,
            image,
            target,
        })
    }
}

/// Reads a depth PNG (16-bit greyscale, millimetres) as metres; 0 stays 0 (invalid).
pub fn load_depth(path: &Path) -> Result<Plane<f32>, DataError> {
    let mm = decode_gray16(path, &read_file(path)?)?;
    let data = mm.data.iter().map(|&v| v as f32 / 1000.0).collect();
    Ok(Plane {
        width: mm.width,
        height: mm.height,
        channels: 1,
        data,
    })
}

/// Reads a label PNG's indices and maps them to training labels.
pub(crate) fn load_labels(
    path: &Path,
    encoding: LabelEncoding,
    classes: Option<u32>,
) -> Result<Plane<u8>, DataError> {
    let mut plane = decode_indices(path, &read_file(path)?)?;
    let mut bad: Option<(u8, usize)> = None;
    let mut count = 0;
    for (i, v) in plane.data.iter_mut().enumerate() {
        match map_label(*v, encoding, classes) {
            Some(label) => *v = label,
            None => {
                count += 1;
                bad.get_or_insert((*v, i));
            }
        }
    }
    if let Some((value, i)) = bad {
        return Err(DataError::BadLabels {
            path: path.to_path_buf(),
            value: value as u32,
            count,
            first: (i % plane.width, i / plane.width),
            accepted: accepted_values(encoding, classes),
        });
    }
    Ok(plane)
}

fn map_label(stored: u8, encoding: LabelEncoding, classes: Option<u32>) -> Option<u8> {
    let is_class = |label: u8| classes.is_none_or(|c| (label as u32) < c);
    match encoding {
        LabelEncoding::Direct if stored == IGNORE_LABEL || is_class(stored) => Some(stored),
        LabelEncoding::ShiftedZeroIgnored if stored == 0 => Some(IGNORE_LABEL),
        LabelEncoding::ShiftedZeroIgnored if stored != IGNORE_LABEL && is_class(stored - 1) => {
            Some(stored - 1)
        }
        _ => None,
    }
}

fn accepted_values(encoding: LabelEncoding, classes: Option<u32>) -> String {
    let c = classes.unwrap_or(IGNORE_LABEL as u32);
    match encoding {
        LabelEncoding::Direct => format!("classes 0..={}, ignore {IGNORE_LABEL}", c - 1),
        LabelEncoding::ShiftedZeroIgnored => {
            format!("0 = unlabelled, 1..={c} = classes 0..={}", c - 1)
        }
    }
}
