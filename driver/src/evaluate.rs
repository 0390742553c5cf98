//! The evaluation protocol of the RefineNet paper as pure functions: a network callback on
//! fixed-size crops turned into a prediction for an image of any size (sliding windows,
//! several scales, horizontal flips), and predictions turned into metrics (the confusion
//! matrix and its IoU and accuracies for segmentation; rel, rms, log10 and the delta
//! thresholds for depth). No sessions, no files: the caller supplies the network as a
//! function and the data as slices.
//!
//! Conventions:
//! - images are CHW `f32` with [`IMAGE_CHANNELS`] channels, already normalised, so padding
//!   with 0 pads with the mean colour; predictions are `channels x h x w`;
//! - resizing is PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` without
//!   antialiasing, the same kernel as the reference interpreter's resize op;
//! - the window callback returns scores already at window resolution ([`upsampling`] wraps a
//!   network whose output is smaller); windows are averaged in score space;
//! - [`predict_multiscale`] returns class *probabilities* for segmentation (softmax per
//!   pixel of each scale's and flip's scores at image resolution, then averaged) and the
//!   averaged prediction for depth;
//! - every problem with the data (sizes, labels, strides, scales) is an [`EvalError`], never
//!   a panic; the callback's own errors pass through unchanged.

use std::fmt;

use rfnc_compiler::interp::kernels;
use rfnc_compiler::interp::Tensor;
use serde::Serialize;

/// Channels of an input image (RGB).
pub const IMAGE_CHANNELS: usize = 3;

/// The smallest depth prediction, in metres: predictions are clamped to it before they are
/// divided by or their logarithm is taken.
pub const MIN_DEPTH: f64 = 1e-3;

/// The largest side an image may have after scaling (a guard against absurd scales).
pub const MAX_SCALED_SIDE: usize = 1 << 16;

/// The network as the windows see it: a `3 x crop` window in, `channels x crop` scores (or
/// depth) out, or the caller's own error.
pub type WindowFn<'a, E> = dyn FnMut(&[f32]) -> Result<Vec<f32>, E> + 'a;

/// Why a prediction or a metric cannot be computed from the data given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

impl From<EvalError> for crate::Error {
    fn from(e: EvalError) -> Self {
        crate::Error::message(e.0)
    }
}

fn fail<T>(message: String) -> Result<T, EvalError> {
    Err(EvalError(message))
}

fn check_len(what: &str, len: usize, expected: usize) -> Result<(), EvalError> {
    if len != expected {
        return fail(format!(
            "{what} has {len} values where {expected} were expected"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Resizing, flipping, softmax

/// Resizes `channels` planes of `from = (h, w)` to `to = (out_h, out_w)` bilinearly with
/// PyTorch's `align_corners=False` semantics (half-pixel centres, source coordinate clamped
/// at 0, no antialiasing). The same size returns a copy.
pub fn resize_bilinear(
    src: &[f32],
    channels: usize,
    from: (usize, usize),
    to: (usize, usize),
) -> Result<Vec<f32>, EvalError> {
    check_len("the resize input", src.len(), channels * from.0 * from.1)?;
    if from == to {
        return Ok(src.to_vec());
    }
    if to.0 * to.1 * channels == 0 {
        return Ok(Vec::new());
    }
    if from.0 == 0 || from.1 == 0 {
        return fail(format!(
            "cannot resize an empty {}x{} image to {}x{}",
            from.0, from.1, to.0, to.1
        ));
    }
    let dims = |c: usize, (h, w): (usize, usize)| vec![1, c as u64, h as u64, w as u64];
    let x = Tensor::new(dims(channels, from), src.to_vec());
    let y = kernels::resize_bilinear(&x, [to.0 as u64, to.1 as u64], false);
    Ok(y.data)
}

/// Mirrors `channels` planes of `size` left to right.
fn flip_horizontal(data: &[f32], channels: usize, (h, w): (usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks_exact(w).take(channels * h) {
        out.extend(row.iter().rev());
    }
    out
}

/// Replaces `channels x pixels` scores by their softmax over the channels, per pixel.
pub fn softmax_channels(
    scores: &mut [f32],
    channels: usize,
    pixels: usize,
) -> Result<(), EvalError> {
    check_len("the scores", scores.len(), channels * pixels)?;
    for p in 0..pixels {
        let at = |c: usize| c * pixels + p;
        let max = (0..channels)
            .map(|c| scores[at(c)])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for c in 0..channels {
            let e = (scores[at(c)] - max).exp();
            scores[at(c)] = e;
            sum += e;
        }
        for c in 0..channels {
            scores[at(c)] /= sum;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sliding windows

/// The origins of windows of `crop` at steps of `stride` covering `0..size`, the last one
/// aligned to the end; one window at 0 when `size <= crop` (the image is then padded).
/// The stride must be in `1..=crop`.
pub fn window_origins(size: usize, crop: usize, stride: usize) -> Result<Vec<usize>, EvalError> {
    if crop == 0 {
        return fail("the crop must be at least 1 pixel".into());
    }
    if stride == 0 || stride > crop {
        return fail(format!(
            "the window stride {stride} must be between 1 and the crop {crop}"
        ));
    }
    if size <= crop {
        return Ok(vec![0]);
    }
    let mut origins = Vec::new();
    let mut origin = 0;
    while origin + crop < size {
        origins.push(origin);
        origin += stride;
    }
    origins.push(size - crop);
    Ok(origins)
}

/// The stride for windows of `crop` that step by `fraction` of the crop (e.g. 2/3 for a
/// third of overlap), rounded, at least 1 pixel. The fraction must be in `(0, 1]`.
pub fn stride_for(crop: (usize, usize), fraction: f64) -> Result<(usize, usize), EvalError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return fail(format!(
            "the window stride fraction {fraction} must be in (0, 1]"
        ));
    }
    let side = |c: usize| ((c as f64 * fraction).round() as usize).clamp(1, c.max(1));
    Ok((side(crop.0), side(crop.1)))
}

/// Wraps a network whose output for a window is `channels x output` (e.g. 1/4 of the crop)
/// into a window callback that returns `channels x window`, upsampled bilinearly.
pub fn upsampling<E, F>(
    channels: usize,
    output: (usize, usize),
    window: (usize, usize),
    mut net: F,
) -> impl FnMut(&[f32]) -> Result<Vec<f32>, E>
where
    E: From<EvalError>,
    F: FnMut(&[f32]) -> Result<Vec<f32>, E>,
{
    move |crop: &[f32]| {
        let y = net(crop)?;
        Ok(resize_bilinear(&y, channels, output, window)?)
    }
}

/// Cuts the `crop` window at `(oy, ox)` out of a `3 x h x w` image, 0 outside the image.
fn cut_window(
    image: &[f32],
    (h, w): (usize, usize),
    (ch, cw): (usize, usize),
    (oy, ox): (usize, usize),
) -> Vec<f32> {
    let mut window = vec![0.0f32; IMAGE_CHANNELS * ch * cw];
    let rows = h.saturating_sub(oy).min(ch);
    let cols = w.saturating_sub(ox).min(cw);
    for c in 0..IMAGE_CHANNELS {
        for y in 0..rows {
            let src = (c * h + oy + y) * w + ox;
            let dst = (c * ch + y) * cw;
            window[dst..dst + cols].copy_from_slice(&image[src..src + cols]);
        }
    }
    window
}

/// Adds the part of a `channels x crop` window result at `(oy, ox)` inside the image to
/// `sum` (`channels x h x w`).
fn add_window(
    sum: &mut [f32],
    result: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (ch, cw): (usize, usize),
    (oy, ox): (usize, usize),
) {
    let rows = h.saturating_sub(oy).min(ch);
    let cols = w.saturating_sub(ox).min(cw);
    for c in 0..channels {
        for y in 0..rows {
            let dst = (c * h + oy + y) * w + ox;
            let src = (c * ch + y) * cw;
            for (s, r) in sum[dst..dst + cols]
                .iter_mut()
                .zip(&result[src..src + cols])
            {
                *s += r;
            }
        }
    }
}

/// How many windows cover each position along one axis.
fn coverage(size: usize, crop: usize, origins: &[usize]) -> Vec<f32> {
    let mut count = vec![0.0f32; size];
    for &o in origins {
        for c in &mut count[o..(o + crop).min(size)] {
            *c += 1.0;
        }
    }
    count
}

fn check_image(image: &[f32], (h, w): (usize, usize)) -> Result<(), EvalError> {
    if h == 0 || w == 0 {
        return fail(format!("the image is empty ({h}x{w})"));
    }
    check_len(
        &format!("the {IMAGE_CHANNELS}x{h}x{w} image"),
        image.len(),
        IMAGE_CHANNELS * h * w,
    )
}

/// Predicts a `3 x h x w` image window by window: each `crop` window (padded with 0 where
/// the image is smaller) goes to `run`, which returns `channels x crop`; overlapping results
/// are averaged per pixel and the padding is cropped off. Returns `channels x h x w`.
pub fn predict_windows<E: From<EvalError>>(
    image: &[f32],
    size: (usize, usize),
    crop: (usize, usize),
    stride: (usize, usize),
    channels: usize,
    run: &mut WindowFn<'_, E>,
) -> Result<Vec<f32>, E> {
    check_image(image, size)?;
    if channels == 0 {
        return Err(EvalError("a prediction needs at least one channel".into()).into());
    }
    let rows = window_origins(size.0, crop.0, stride.0)?;
    let cols = window_origins(size.1, crop.1, stride.1)?;
    let (h, w) = size;
    let mut sum = vec![0.0f32; channels * h * w];
    for &oy in &rows {
        for &ox in &cols {
            let result = run(&cut_window(image, size, crop, (oy, ox)))?;
            check_len(
                &format!("the window result at ({oy}, {ox})"),
                result.len(),
                channels * crop.0 * crop.1,
            )?;
            add_window(&mut sum, &result, channels, size, crop, (oy, ox));
        }
    }
    let row_count = coverage(h, crop.0, &rows);
    let col_count = coverage(w, crop.1, &cols);
    for plane in sum.chunks_exact_mut(h * w) {
        for (y, row) in plane.chunks_exact_mut(w).enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v /= row_count[y] * col_count[x];
            }
        }
    }
    Ok(sum)
}

// ---------------------------------------------------------------------------------------
// Multi-scale and flip

/// What a network predicts, which decides how predictions are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Task {
    /// Per-class scores; combined as probabilities.
    Segmentation,
    /// Depth in metres; combined as is.
    Depth,
}

/// How a prediction for one image is made: windows of `crop` at steps of `stride`, at each
/// of `scales`, with and (when `flip`) without mirroring.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Protocol {
    pub crop: (usize, usize),
    pub stride: (usize, usize),
    pub scales: Vec<f64>,
    pub flip: bool,
    /// Output channels of the callback: the classes, or 1 for depth.
    pub channels: usize,
    pub task: Task,
}

impl Protocol {
    /// One scale (1.0), no flip, windows that do not overlap.
    pub fn single(crop: (usize, usize), channels: usize, task: Task) -> Self {
        Protocol {
            crop,
            stride: crop,
            scales: vec![1.0],
            flip: false,
            channels,
            task,
        }
    }
}

/// The size of `(h, w)` scaled by `scale`, rounded; an error for a scale that is not
/// positive and finite or that makes the image empty or absurdly large.
fn scaled_size((h, w): (usize, usize), scale: f64) -> Result<(usize, usize), EvalError> {
    if !(scale.is_finite() && scale > 0.0) {
        return fail(format!("the scale {scale} must be positive and finite"));
    }
    let side = |n: usize| (n as f64 * scale).round();
    let (sh, sw) = (side(h), side(w));
    if sh < 1.0 || sw < 1.0 || sh > MAX_SCALED_SIDE as f64 || sw > MAX_SCALED_SIDE as f64 {
        return fail(format!(
            "the scale {scale} makes the {h}x{w} image {sh}x{sw}, outside 1..={MAX_SCALED_SIDE} on a side"
        ));
    }
    Ok((sh as usize, sw as usize))
}

/// Predicts an image of `size` by `protocol`: per scale, the image resized to
/// `round(h*s) x round(w*s)` is predicted by windows (and mirrored, predicted and mirrored
/// back when `flip`), and each prediction is resized back to `size`. Segmentation returns
/// the mean over scales and flips of the per-pixel softmax of these scores (probabilities;
/// their argmax is the predicted class); depth returns the mean prediction.
pub fn predict_multiscale<E: From<EvalError>>(
    image: &[f32],
    size: (usize, usize),
    protocol: &Protocol,
    run: &mut WindowFn<'_, E>,
) -> Result<Vec<f32>, E> {
    check_image(image, size)?;
    if protocol.scales.is_empty() {
        return Err(EvalError("at least one scale is needed".into()).into());
    }
    let channels = protocol.channels;
    let mut total = vec![0.0f32; channels * size.0 * size.1];
    let mut views = 0usize;
    for &scale in &protocol.scales {
        let scaled = scaled_size(size, scale)?;
        let resized = resize_bilinear(image, IMAGE_CHANNELS, size, scaled)?;
        let flips: &[bool] = if protocol.flip {
            &[false, true]
        } else {
            &[false]
        };
        for &mirrored in flips {
            let view = predict_view(&resized, scaled, mirrored, protocol, run)?;
            let mut back = resize_bilinear(&view, channels, scaled, size)?;
            if protocol.task == Task::Segmentation {
                softmax_channels(&mut back, channels, size.0 * size.1)?;
            }
            for (t, v) in total.iter_mut().zip(&back) {
                *t += v;
            }
            views += 1;
        }
    }
    let views = views as f32;
    for t in &mut total {
        *t /= views;
    }
    Ok(total)
}

/// The window prediction of one scaled image, mirrored before and after when `mirrored`.
fn predict_view<E: From<EvalError>>(
    image: &[f32],
    size: (usize, usize),
    mirrored: bool,
    protocol: &Protocol,
    run: &mut WindowFn<'_, E>,
) -> Result<Vec<f32>, E> {
    let (crop, stride, channels) = (protocol.crop, protocol.stride, protocol.channels);
    if !mirrored {
        return predict_windows(image, size, crop, stride, channels, run);
    }
    let flipped = flip_horizontal(image, IMAGE_CHANNELS, size);
    let prediction = predict_windows(&flipped, size, crop, stride, channels, run)?;
    Ok(flip_horizontal(&prediction, channels, size))
}

// ---------------------------------------------------------------------------------------
// Segmentation metrics

/// The class of each of `pixels` pixels from `channels x pixels` scores: the channel with the
/// largest score, the first one on ties (NaN scores never win over a number).
pub fn argmax(scores: &[f32], channels: usize, pixels: usize) -> Result<Vec<i32>, EvalError> {
    check_len("the scores", scores.len(), channels * pixels)?;
    if channels == 0 || channels > i32::MAX as usize {
        return fail(format!("cannot take the argmax over {channels} channels"));
    }
    let labels = (0..pixels)
        .map(|p| {
            let mut best = 0;
            for c in 1..channels {
                let (v, b) = (scores[c * pixels + p], scores[best * pixels + p]);
                if v > b || (b.is_nan() && !v.is_nan()) {
                    best = c;
                }
            }
            best as i32
        })
        .collect();
    Ok(labels)
}

/// A confusion matrix over `classes`: `counts[truth * classes + prediction]` pixels (row =
/// ground truth, column = prediction); `counts` always has `classes * classes` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<u64>,
}

/// The metrics of one class. `iou` is `None` when the class is in neither the ground truth
/// nor the prediction; `accuracy` (recall) is `None` when it is not in the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub iou: Option<f64>,
    pub accuracy: Option<f64>,
    pub gt_pixels: u64,
    pub pred_pixels: u64,
}

/// The metrics of a confusion matrix. The means leave out the classes without a value:
/// `mean_iou` the classes in `absent` (in neither ground truth nor prediction),
/// `mean_accuracy` also the classes only predicted. Every mean is `None` when nothing is
/// left to average (no pixel counted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegMetrics {
    pub pixels: u64,
    pub pixel_accuracy: Option<f64>,
    pub mean_accuracy: Option<f64>,
    pub mean_iou: Option<f64>,
    pub per_class: Vec<ClassMetrics>,
    pub absent: Vec<usize>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// The pixels of class `truth` predicted as `prediction` (panics outside `0..classes`,
    /// like indexing).
    pub fn get(&self, truth: usize, prediction: usize) -> u64 {
        self.counts[truth * self.classes + prediction]
    }

    /// The class `value` stands for, if it is one.
    fn class_of(&self, value: i32) -> Option<usize> {
        usize::try_from(value).ok().filter(|&c| c < self.classes)
    }

    /// Counts the pixels of one image; pixels labelled `ignore` are skipped. A label or a
    /// prediction outside `0..classes` (other than an ignored pixel) is an error, and then
    /// nothing is counted.
    pub fn add(&mut self, pred: &[i32], labels: &[i32], ignore: i32) -> Result<(), EvalError> {
        check_len("the prediction", pred.len(), labels.len())?;
        let mut cells = Vec::with_capacity(labels.len());
        for (i, (&p, &l)) in pred.iter().zip(labels).enumerate() {
            if l == ignore {
                continue;
            }
            let classes = self.classes;
            let Some(truth) = self.class_of(l) else {
                return fail(format!(
                    "label {l} at pixel {i} is outside 0..{classes} and is not the ignore label {ignore}"
                ));
            };
            let Some(prediction) = self.class_of(p) else {
                return fail(format!(
                    "prediction {p} at pixel {i} is outside 0..{classes}"
                ));
            };
            cells.push(truth * classes + prediction);
        }
        for cell in cells {
            self.counts[cell] += 1;
        }
        Ok(())
    }

    /// Adds another matrix over the same classes.
    pub fn merge(&mut self, other: &Confusion) -> Result<(), EvalError> {
        if other.classes != self.classes || other.counts.len() != self.counts.len() {
            return fail(format!(
                "cannot merge a confusion matrix over {} classes into one over {}",
                other.classes, self.classes
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// IoU `TP / (TP + FP + FN)` and accuracy `TP / (TP + FN)` per class, and their means.
    pub fn metrics(&self) -> SegMetrics {
        let k = self.classes;
        let mut per_class = Vec::with_capacity(k);
        let mut absent = Vec::new();
        let mut correct = 0u64;
        for c in 0..k {
            let tp = self.get(c, c);
            let gt: u64 = (0..k).map(|p| self.get(c, p)).sum();
            let pred: u64 = (0..k).map(|t| self.get(t, c)).sum();
            let union = gt + pred - tp;
            if union == 0 {
                absent.push(c);
            }
            correct += tp;
            per_class.push(ClassMetrics {
                iou: (union > 0).then(|| tp as f64 / union as f64),
                accuracy: (gt > 0).then(|| tp as f64 / gt as f64),
                gt_pixels: gt,
                pred_pixels: pred,
            });
        }
        let pixels: u64 = self.counts.iter().sum();
        SegMetrics {
            pixels,
            pixel_accuracy: (pixels > 0).then(|| correct as f64 / pixels as f64),
            mean_accuracy: mean(per_class.iter().filter_map(|m| m.accuracy)),
            mean_iou: mean(per_class.iter().filter_map(|m| m.iou)),
            per_class,
            absent,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Depth metrics

/// Sums for the depth metrics over the valid pixels (ground truth finite and > 0) of any
/// number of images, in f64.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DepthMetrics {
    pixels: u64,
    abs_rel: f64,
    squared: f64,
    log10: f64,
    within: [u64; 3],
}

/// The depth metrics: `rel = mean |g - d| / g`, `rms = sqrt(mean (g - d)^2)`,
/// `log10 = mean |log10 g - log10 d|`, `delta_i` the fraction of pixels with
/// `max(d/g, g/d) < 1.25^i`, over `pixels` valid pixels, with predictions `d` clamped to at
/// least [`MIN_DEPTH`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DepthReport {
    pub pixels: u64,
    pub rel: f64,
    pub rms: f64,
    pub log10: f64,
    pub delta1: f64,
    pub delta2: f64,
    pub delta3: f64,
}

impl DepthMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image: `pred` and `gt` in metres, pixel for pixel; pixels whose ground truth
    /// is not finite and positive are skipped. A non-finite prediction at a valid pixel is an
    /// error, and then nothing is added.
    pub fn add(&mut self, pred: &[f32], gt: &[f32]) -> Result<(), EvalError> {
        check_len("the depth prediction", pred.len(), gt.len())?;
        let mut image = DepthMetrics::default();
        for (i, (&d, &g)) in pred.iter().zip(gt).enumerate() {
            if !(g.is_finite() && g > 0.0) {
                continue;
            }
            if !d.is_finite() {
                return fail(format!("the depth prediction at pixel {i} is {d}"));
            }
            let (d, g) = ((d as f64).max(MIN_DEPTH), g as f64);
            image.pixels += 1;
            image.abs_rel += (g - d).abs() / g;
            image.squared += (g - d) * (g - d);
            image.log10 += (g.log10() - d.log10()).abs();
            let ratio = (d / g).max(g / d);
            for (k, count) in image.within.iter_mut().enumerate() {
                if ratio < 1.25f64.powi(k as i32 + 1) {
                    *count += 1;
                }
            }
        }
        self.merge(&image);
        Ok(())
    }

    /// Adds another accumulator's pixels.
    pub fn merge(&mut self, other: &DepthMetrics) {
        self.pixels += other.pixels;
        self.abs_rel += other.abs_rel;
        self.squared += other.squared;
        self.log10 += other.log10;
        for (a, b) in self.within.iter_mut().zip(other.within) {
            *a += b;
        }
    }

    /// The metrics, or `None` when no valid pixel was added.
    pub fn finish(&self) -> Option<DepthReport> {
        if self.pixels == 0 {
            return None;
        }
        let n = self.pixels as f64;
        Some(DepthReport {
            pixels: self.pixels,
            rel: self.abs_rel / n,
            rms: (self.squared / n).sqrt(),
            log10: self.log10 / n,
            delta1: self.within[0] as f64 / n,
            delta2: self.within[1] as f64 / n,
            delta3: self.within[2] as f64 / n,
        })
    }
}
