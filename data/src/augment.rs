//! Augmentation as RefineNet trains: random scale, random crop (padding when the scaled
//! image is smaller than the crop), random horizontal flip, normalisation to CHW; and the
//! evaluation variant (no randomness, full image). The random choices are drawn from a
//! key, so they are a pure function of (seed, epoch, position).

use crate::dataset::IGNORE_LABEL;
use crate::decode::Plane;
use crate::error::DataError;
use crate::rng::{key, Rng, TAG_AUGMENT};
use crate::sample::{Sample, Target};

/// ImageNet's channel means on the [0, 255] scale (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0];
/// ImageNet's channel standard deviations on the [0, 255] scale (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0];

/// How training samples are augmented.
#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Output (height, width).
    pub crop: (usize, usize),
    /// Scale factor range, drawn uniformly (default 0.7..1.3).
    pub scale: (f32, f32),
    /// Flip horizontally with probability 1/2 (default true).
    pub flip: bool,
    /// Subtracted per channel, on the [0, 255] scale (default [`IMAGENET_MEAN`]).
    pub mean: [f32; 3],
    /// Divided per channel, on the [0, 255] scale (default [`IMAGENET_STD`]).
    pub std: [f32; 3],
}

impl AugmentConfig {
    /// The defaults with crop (height, width).
    pub fn new(crop: (usize, usize)) -> AugmentConfig {
        AugmentConfig {
            crop,
            scale: (0.7, 1.3),
            flip: true,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Refuses a zero crop, a scale range that is not `0 < lo <= hi` (finite), and a
    /// non-positive or non-finite std.
    pub fn validate(&self) -> Result<(), DataError> {
        let (lo, hi) = self.scale;
        let bad = if self.crop.0 == 0 || self.crop.1 == 0 {
            Some(format!(
                "crop {}x{} (HxW) has a zero side",
                self.crop.0, self.crop.1
            ))
        } else if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            Some(format!("scale range ({lo}, {hi}) is not 0 < low <= high"))
        } else if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            Some(format!(
                "std {:?} has a value that is not positive and finite",
                self.std
            ))
        } else if !self.mean.iter().all(|m| m.is_finite()) {
            Some(format!("mean {:?} is not finite", self.mean))
        } else {
            None
        };
        bad.map_or(Ok(()), |m| {
            Err(DataError::Invalid(format!("augmentation: {m}")))
        })
    }
}

/// The random choices for one training sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugmentParams {
    /// (height, width) of the scaled image.
    pub scaled: (usize, usize),
    /// (y, x) of the crop's top-left corner in the scaled image padded at the bottom and
    /// right to at least the crop size.
    pub offset: (usize, usize),
    pub flip: bool,
}

impl AugmentParams {
    /// Draws, in this order from the stream `key`: the scale factor `s` (uniform in the
    /// range; the scaled size is `round(h * s) x round(w * s)`, at least 1), the crop's y
    /// then x offset (uniform over the valid positions), then the flip (a fair coin, drawn
    /// even when flipping is off).
    pub fn draw(cfg: &AugmentConfig, image: (usize, usize), key: u64) -> AugmentParams {
        let mut rng = Rng::new(key);
        let s = rng.range_f64(cfg.scale.0 as f64, cfg.scale.1 as f64);
        let side = |n: usize| ((n as f64 * s).round() as usize).max(1);
        let scaled = (side(image.0), side(image.1));
        let room_y = scaled.0.saturating_sub(cfg.crop.0) as i64;
        let room_x = scaled.1.saturating_sub(cfg.crop.1) as i64;
        let offset = (
            rng.between(0, room_y) as usize,
            rng.between(0, room_x) as usize,
        );
        let flip = rng.coin() && cfg.flip;
        AugmentParams {
            scaled,
            offset,
            flip,
        }
    }
}

/// One sample ready for batching: the normalised image in CHW and its target, both
/// `height x width`.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The sample's index in the dataset.
    pub index: usize,
    pub height: usize,
    pub width: usize,
    /// `3 * height * width`, CHW, `(x - mean) / std`.
    pub image: Vec<f32>,
    /// `height * width` training labels (segmentation).
    pub labels: Option<Vec<i32>>,
    /// `height * width` depth in metres, 0 = invalid (depth).
    pub depth: Option<Vec<f32>>,
}

/// The training example of the sample at `position` of epoch `epoch` under `seed`: its
/// parameters are drawn from `key(seed, "augm", epoch, position)`.
pub fn train_example(
    sample: &Sample,
    cfg: &AugmentConfig,
    seed: u64,
    epoch: u64,
    position: u64,
) -> Example {
    let k = key(&[seed, TAG_AUGMENT, epoch, position]);
    let params = AugmentParams::draw(cfg, (sample.image.height, sample.image.width), k);
    augment(sample, cfg, &params)
}

/// Where each output coordinate along one axis reads from: bilinear taps for the image,
/// the nearest source for targets, `None` in the padding.
#[derive(Clone, Copy)]
struct Tap {
    lo: usize,
    hi: usize,
    frac: f32,
    nearest: usize,
}

/// Taps for `out` outputs that read scaled coordinates `first..` (reversed when
/// `reverse`) of a source of `src` samples scaled to `scaled`, with half-pixel centres.
fn taps(out: usize, first: usize, reverse: bool, src: usize, scaled: usize) -> Vec<Option<Tap>> {
    let ratio = src as f64 / scaled as f64;
    (0..out)
        .map(|i| {
            let p = first + if reverse { out - 1 - i } else { i };
            if p >= scaled || src == 0 {
                return None;
            }
            let centre = (p as f64 + 0.5) * ratio;
            let f = (centre - 0.5).clamp(0.0, (src - 1) as f64);
            let lo = f.floor() as usize;
            Some(Tap {
                lo,
                hi: (lo + 1).min(src - 1),
                frac: (f - lo as f64) as f32,
                nearest: (centre.floor() as usize).min(src - 1),
            })
        })
        .collect()
}

/// Applies `params` to `sample`: scale (image bilinear, targets nearest), crop with
/// padding (image: the mean colour, i.e. 0 after normalisation; labels: the ignore label;
/// depth: 0), flip, normalise. A greyscale image plane (1 channel) is replicated to RGB.
pub fn augment(sample: &Sample, cfg: &AugmentConfig, params: &AugmentParams) -> Example {
    let (ch, cw) = cfg.crop;
    let img = &sample.image;
    let rows = taps(ch, params.offset.0, false, img.height, params.scaled.0);
    let cols = taps(cw, params.offset.1, params.flip, img.width, params.scaled.1);
    let mut image = vec![0.0f32; 3 * ch * cw];
    let last = img.channels.saturating_sub(1);
    for (y, ty) in rows.iter().enumerate() {
        let Some(ty) = ty else { continue };
        for (x, tx) in cols.iter().enumerate() {
            let Some(tx) = tx else { continue };
            for c in 0..3 {
                let at = |yy: usize, xx: usize| {
                    img.data[(yy * img.width + xx) * img.channels + c.min(last)]
                };
                let top = at(ty.lo, tx.lo) + (at(ty.lo, tx.hi) - at(ty.lo, tx.lo)) * tx.frac;
                let bot = at(ty.hi, tx.lo) + (at(ty.hi, tx.hi) - at(ty.hi, tx.lo)) * tx.frac;
                let v = top + (bot - top) * ty.frac;
                image[(c * ch + y) * cw + x] = (v - cfg.mean[c]) / cfg.std[c];
            }
        }
    }
    let (labels, depth) = match &sample.target {
        Target::Labels(p) => {
            let pick = |i: Option<usize>| i.map_or(IGNORE_LABEL as i32, |i| p.data[i] as i32);
            let index = nearest_indices(p.size(), cfg.crop, params);
            (Some(index.into_iter().map(pick).collect()), None)
        }
        Target::Depth(p) => {
            let pick = |i: Option<usize>| i.map_or(0.0, |i| p.data[i]);
            (
                None,
                Some(
                    nearest_indices(p.size(), cfg.crop, params)
                        .into_iter()
                        .map(pick)
                        .collect(),
                ),
            )
        }
    };
    Example {
        index: sample.index,
        height: ch,
        width: cw,
        image,
        labels,
        depth,
    }
}

/// For each output pixel of the crop, the index of the nearest pixel of a 1-channel plane
/// of `(width, height)`, or `None` in the padding.
fn nearest_indices(
    (width, height): (usize, usize),
    (ch, cw): (usize, usize),
    params: &AugmentParams,
) -> Vec<Option<usize>> {
    let rows = taps(ch, params.offset.0, false, height, params.scaled.0);
    let cols = taps(cw, params.offset.1, params.flip, width, params.scaled.1);
    let mut index = Vec::with_capacity(ch * cw);
    for ty in &rows {
        for tx in &cols {
            index.push(ty.zip(*tx).map(|(ty, tx)| ty.nearest * width + tx.nearest));
        }
    }
    index
}

/// The evaluation example: the whole image normalised (CHW; a greyscale plane replicated)
/// and its target, at the original size; no randomness. `cfg.crop`, `scale` and `flip` are not used.
pub fn eval_example(sample: &Sample, cfg: &AugmentConfig) -> Example {
    let img = &sample.image;
    let (h, w) = (img.height, img.width);
    let image = normalised(img, cfg);
    let (labels, depth) = match &sample.target {
        Target::Labels(p) => (Some(p.data.iter().map(|&v| v as i32).collect()), None),
        Target::Depth(p) => (None, Some(p.data.clone())),
    };
    Example {
        index: sample.index,
        height: h,
        width: w,
        image,
        labels,
        depth,
    }
}

/// An image (HWC, [0, 255]) normalised with `cfg`'s mean and std into CHW (a greyscale
/// plane replicated to three channels).
pub fn normalised(img: &Plane<f32>, cfg: &AugmentConfig) -> Vec<f32> {
    let (h, w) = (img.height, img.width);
    let mut image = vec![0.0f32; 3 * h * w];
    let last = img.channels.saturating_sub(1);
    for (i, px) in img.data.chunks_exact(img.channels.max(1)).enumerate() {
        for c in 0..3 {
            image[c * h * w + i] = (px[c.min(last)] - cfg.mean[c]) / cfg.std[c];
        }
    }
    image
}

impl Example {
    /// The example padded at the bottom and right to `height x width` (image 0, i.e. the
    /// mean colour; labels the ignore label; depth 0), so that evaluation images of
    /// different sizes fit one static input shape. An example larger than that is an
    /// error.
    pub fn padded(&self, height: usize, width: usize) -> Result<Example, DataError> {
        if self.height > height || self.width > width {
            return Err(DataError::Invalid(format!(
                "sample {} is {}x{} (HxW), larger than the padded size {height}x{width}",
                self.index, self.height, self.width
            )));
        }
        let (from, to) = ((self.height, self.width), (height, width));
        Ok(Example {
            index: self.index,
            height,
            width,
            image: pad_planes(&self.image, 3, from, to, 0.0),
            labels: self
                .labels
                .as_ref()
                .map(|l| pad_planes(l, 1, from, to, IGNORE_LABEL as i32)),
            depth: self.depth.as_ref().map(|d| pad_planes(d, 1, from, to, 0.0)),
        })
    }
}

/// `planes` planes of `from` (h, w) copied to the top-left of planes of `to`, the rest
/// `fill`.
fn pad_planes<T: Copy>(
    src: &[T],
    planes: usize,
    from: (usize, usize),
    to: (usize, usize),
    fill: T,
) -> Vec<T> {
    let mut out = vec![fill; planes * to.0 * to.1];
    for p in 0..planes {
        for y in 0..from.0 {
            let a = (p * from.0 + y) * from.1;
            let b = (p * to.0 + y) * to.1;
            out[b..b + from.1].copy_from_slice(&src[a..a + from.1]);
        }
    }
    out
}
