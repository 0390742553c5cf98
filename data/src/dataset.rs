//! Dataset layouts on disk: which files make up a split, for each `DatasetKind`, and the
//! `Dataset` that lists them (checked to exist when opened; decoded by `Dataset::load`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::DataError;

/// The label value that the loss ignores, in every layout.
pub const IGNORE_LABEL: u8 = 255;

/// The supported layouts (see the crate documentation for each one's files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// PASCAL VOC 2012 segmentation: palette PNG labels, 21 classes.
    Voc,
    /// VOC 2012 with the SBD augmentation (`SegmentationClassAug`), 21 classes.
    VocAug,
    /// Cityscapes fine annotations as train ids, 19 classes.
    Cityscapes,
    /// NYU Depth v2, depth in millimetres (this crate's layout).
    NyudDepth,
    /// NYU Depth v2, 40-class segmentation (this crate's layout).
    NyudSeg,
    /// A list of `image<TAB>label` pairs.
    List,
}

/// What a dataset's targets are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// Class indices per pixel (`labels: i32[N, H, W]`).
    Segmentation,
    /// Depth in metres per pixel (`depth_gt: f32[N, 1, H, W]`), 0 = no measurement.
    Depth,
}

/// How the values stored in a label PNG become training labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LabelEncoding {
    /// The stored value is the class; 255 is ignored.
    Direct,
    /// 0 is unlabelled (ignored), `v >= 1` is class `v - 1` (NYUD's 40 classes).
    ShiftedZeroIgnored,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Voc,
        DatasetKind::VocAug,
        DatasetKind::Cityscapes,
        DatasetKind::NyudDepth,
        DatasetKind::NyudSeg,
        DatasetKind::List,
    ];

    /// The name used on command lines: `voc`, `voc_aug`, `cityscapes`, `nyud_depth`,
    /// `nyud_seg`, `list`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Voc => "voc",
            DatasetKind::VocAug => "voc_aug",
            DatasetKind::Cityscapes => "cityscapes",
            DatasetKind::NyudDepth => "nyud_depth",
            DatasetKind::NyudSeg => "nyud_seg",
            DatasetKind::List => "list",
        }
    }

    pub fn task(self) -> Task {
        match self {
            DatasetKind::NyudDepth => Task::Depth,
            _ => Task::Segmentation,
        }
    }

    /// The layout's number of classes; `None` for depth and for `List` (whose classes
    /// the caller gives with [`Dataset::with_classes`]).
    pub fn default_classes(self) -> Option<u32> {
        match self {
            DatasetKind::Voc | DatasetKind::VocAug => Some(21),
            DatasetKind::Cityscapes => Some(19),
            DatasetKind::NyudSeg => Some(40),
            DatasetKind::NyudDepth | DatasetKind::List => None,
        }
    }

    pub(crate) fn label_encoding(self) -> LabelEncoding {
        match self {
            DatasetKind::NyudSeg => LabelEncoding::ShiftedZeroIgnored,
            _ => LabelEncoding::Direct,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s.replace('-', "_"))
            .ok_or_else(|| {
                let names: Vec<_> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                DataError::Invalid(format!(
                    "unknown dataset kind `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// The files of one sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplePaths {
    /// The id in the split list (`List`: the image path as written; Cityscapes:
    /// `<city>/<stem>`).
    pub id: String,
    pub image: PathBuf,
    /// The label PNG, or the depth PNG for `NyudDepth`.
    pub target: PathBuf,
}

/// One split of a dataset: its sample files, all checked to exist when opened.
#[derive(Clone, Debug)]
pub struct Dataset {
    kind: DatasetKind,
    root: PathBuf,
    split: String,
    source: PathBuf,
    classes: Option<u32>,
    samples: Vec<SamplePaths>,
}

impl Dataset {
    /// Lists split `split` of the dataset of layout `kind` under `root` and checks that
    /// every file it names exists and that it is not empty.
    pub fn open(kind: DatasetKind, root: &Path, split: &str) -> Result<Dataset, DataError> {
        check_split_name(split)?;
        let (source, samples) = match kind {
            DatasetKind::Voc | DatasetKind::VocAug => voc_samples(kind, root, split)?,
            DatasetKind::Cityscapes => cityscapes_samples(root, split)?,
            DatasetKind::NyudDepth | DatasetKind::NyudSeg => nyud_samples(kind, root, split)?,
            DatasetKind::List => list_samples(root, split)?,
        };
        if samples.is_empty() {
            return Err(DataError::EmptySplit { path: source });
        }
        if kind != DatasetKind::Cityscapes {
            check_exist(&samples, &source)?;
        }
        Ok(Dataset {
            kind,
            root: root.to_path_buf(),
            split: split.to_string(),
            source,
            classes: kind.default_classes(),
            samples,
        })
    }

    /// The same dataset with `classes` classes: labels must then be below `classes` (or
    /// the ignore label). For `List` datasets, and to train on fewer classes than the
    /// layout has. `classes` must be in 1..=255; refused for depth datasets.
    pub fn with_classes(mut self, classes: u32) -> Result<Dataset, DataError> {
        if self.task() == Task::Depth {
            return Err(DataError::Invalid(format!(
                "dataset kind `{}` has depth targets, not classes",
                self.kind
            )));
        }
        if !(1..=IGNORE_LABEL as u32).contains(&classes) {
            return Err(DataError::Invalid(format!(
                "number of classes {classes} is outside 1..=255 (255 is the ignore label)"
            )));
        }
        self.classes = Some(classes);
        Ok(self)
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    pub fn task(&self) -> Task {
        self.kind.task()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn split(&self) -> &str {
        &self.split
    }

    /// The split list the samples came from (Cityscapes: the split's image directory).
    pub fn split_source(&self) -> &Path {
        &self.source
    }

    /// The number of classes (labels `0..classes`); `None` for depth, and for `List`
    /// until [`Dataset::with_classes`].
    pub fn num_classes(&self) -> Option<u32> {
        self.classes
    }

    /// The label that marks pixels the loss ignores: always [`IGNORE_LABEL`] (255).
    pub fn ignore_label(&self) -> u8 {
        IGNORE_LABEL
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Always false for an opened dataset (empty splits are refused).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn sample(&self, index: usize) -> Option<&SamplePaths> {
        self.samples.get(index)
    }

    pub fn samples(&self) -> &[SamplePaths] {
        &self.samples
    }

    /// Number of full batches of `batch` samples in one epoch (the last partial batch is
    /// dropped); 0 when `batch` is 0 or larger than the dataset.
    pub fn iters_per_epoch(&self, batch: usize) -> usize {
        iters_per_epoch(self.len(), batch)
    }
}

/// Number of full batches of `batch` among `len` samples (the partial one is dropped).
pub fn iters_per_epoch(len: usize, batch: usize) -> usize {
    len.checked_div(batch).unwrap_or(0)
}

fn check_split_name(split: &str) -> Result<(), DataError> {
    let bad = split.is_empty()
        || split == "."
        || split == ".."
        || split.contains(['/', '\\'])
        || split.chars().any(char::is_control);
    if bad {
        return Err(DataError::Invalid(format!(
            "bad split name `{}` (a plain name such as `train` or `val` is expected)",
            split.escape_debug()
        )));
    }
    Ok(())
}

fn check_exist(samples: &[SamplePaths], listed_by: &Path) -> Result<(), DataError> {
    for s in samples {
        for path in [&s.image, &s.target] {
            if !path.is_file() {
                return Err(DataError::MissingFile {
                    path: path.clone(),
                    listed_by: listed_by.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))
}

/// The ids of a list with one id per line; blank lines and `#` comments are skipped, a
/// line with more than one word is an error.
fn read_id_list(path: &Path) -> Result<Vec<String>, DataError> {
    let text = read_text(path)?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.split_whitespace().count() > 1 {
            return Err(DataError::BadListLine {
                path: path.to_path_buf(),
                line: n + 1,
                message: format!("expected one sample id, found `{line}`"),
            });
        }
        ids.push(line.to_string());
    }
    Ok(ids)
}

type Listing = (PathBuf, Vec<SamplePaths>);

fn voc_samples(kind: DatasetKind, root: &Path, split: &str) -> Result<Listing, DataError> {
    let sets = root.join("ImageSets").join("Segmentation");
    let (list, labels) = if kind == DatasetKind::VocAug {
        let name = if split == "train" { "train_aug" } else { split };
        (
            sets.join(format!("{name}.txt")),
            root.join("SegmentationClassAug"),
        )
    } else {
        (
            sets.join(format!("{split}.txt")),
            root.join("SegmentationClass"),
        )
    };
    let images = root.join("JPEGImages");
    let samples = read_id_list(&list)?
        .into_iter()
        .map(|id| SamplePaths {
            image: images.join(format!("{id}.jpg")),
            target: labels.join(format!("{id}.png")),
            id,
        })
        .collect();
    Ok((list, samples))
}

fn nyud_samples(kind: DatasetKind, root: &Path, split: &str) -> Result<Listing, DataError> {
    let list = root.join(format!("{split}.txt"));
    let targets = root.join(if kind == DatasetKind::NyudDepth {
        "depth"
    } else {
        "labels40"
    });
    let samples = read_id_list(&list)?
        .into_iter()
        .map(|id| {
            let jpg = root.join("images").join(format!("{id}.jpg"));
            let png = root.join("images").join(format!("{id}.png"));
            SamplePaths {
                image: if !png.is_file() && jpg.is_file() {
                    jpg
                } else {
                    png
                },
                target: targets.join(format!("{id}.png")),
                id,
            }
        })
        .collect();
    Ok((list, samples))
}

fn list_samples(root: &Path, split: &str) -> Result<Listing, DataError> {
    let list = root.join(format!("{split}.txt"));
    let text = read_text(&list)?;
    let mut samples = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let bad = |message: String| DataError::BadListLine {
            path: list.clone(),
            line: n + 1,
            message,
        };
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        match fields[..] {
            [image, label] if !image.is_empty() && !label.is_empty() => samples.push(SamplePaths {
                id: image.to_string(),
                image: root.join(image),
                target: root.join(label),
            }),
            [_] => {
                return Err(bad(format!(
                    "expected `image<TAB>label`, found no tab in `{}`",
                    line.escape_debug()
                )))
            }
            _ => {
                return Err(bad(format!(
                    "expected `image<TAB>label` (two non-empty fields), found `{}`",
                    line.escape_debug()
                )))
            }
        }
    }
    Ok((list, samples))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    paths.sort();
    Ok(paths)
}

const CITYSCAPES_IMAGE: &str = "_leftImg8bit.png";
const CITYSCAPES_LABEL: &str = "_gtFine_labelTrainIds.png";

fn cityscapes_samples(root: &Path, split: &str) -> Result<Listing, DataError> {
    let dir = root.join("leftImg8bit").join(split);
    let labels = root.join("gtFine").join(split);
    let mut samples = Vec::new();
    for city_dir in sorted_entries(&dir)?.into_iter().filter(|p| p.is_dir()) {
        let city = file_name(&city_dir);
        for image in sorted_entries(&city_dir)? {
            let Some(stem) = file_name(&image)
                .strip_suffix(CITYSCAPES_IMAGE)
                .map(String::from)
            else {
                continue;
            };
            let target = labels.join(&city).join(format!("{stem}{CITYSCAPES_LABEL}"));
            if !target.is_file() {
                return Err(DataError::MissingFile {
                    path: target,
                    listed_by: dir,
                });
            }
            samples.push(SamplePaths {
                id: format!("{city}/{stem}"),
                image,
                target,
            });
        }
    }
    Ok((dir, samples))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
