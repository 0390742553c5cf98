//! `rfnc predict`: a network's predictions for image files, as pictures. Segmentation: a
//! palette PNG per image whose pixel values are the class indices (so `rfnc eval
//! --predictions` reads them back) and, with `overlay`, the colours blended over the photo;
//! depth: a 16-bit PNG in millimetres and a colour-mapped preview.

use std::path::{Path, PathBuf};

use rfnc_bundle::Precision;
use rfnc_data::augment::{normalised, AugmentConfig};
use rfnc_data::decode::{decode_rgb, read_file, Plane};
use rfnc_data::encode::{voc_palette, write_gray16_png, write_indexed_png, write_rgb_png};
use rfnc_dsl::Diagnostic;
use rfnc_runtime::Device;

use crate::error::{Error, Result};
use crate::eval::{open_network, open_predictor, Progress, ProtocolOptions};
use crate::evaluate::{argmax, Task};
use crate::train::data_failure;

/// The colours of the classes.
#[derive(Clone, Debug, PartialEq)]
pub enum Palette {
    /// PASCAL VOC's colour map.
    Voc,
    /// Cityscapes' colours of its 19 training classes.
    Cityscapes,
    /// A text file: one colour per class, `R G B` (0..255) or `#RRGGBB`, class 0 first.
    File(PathBuf),
}

/// Everything `rfnc predict` is asked.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub source: crate::Source,
    pub weights: PathBuf,
    /// Image files, or directories whose `.jpg`, `.jpeg` and `.png` files are predicted.
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub protocol: ProtocolOptions,
    pub palette: Palette,
    pub overlay: bool,
    pub device: Device,
    pub gpu: String,
    /// How the GPU's convolutions multiply.
    pub precision: Precision,
    pub use_cache: bool,
    pub timings: bool,
}

/// `rfnc predict`: writes the predictions of every input image into `output`; returns the
/// files written.
pub fn run_predict(options: &PredictOptions, progress: &mut dyn Progress) -> Result<Vec<PathBuf>> {
    let images = list_images(&options.inputs)?;
    let palette = palette_bytes(&options.palette)?;
    let log = crate::Log::new(options.timings);
    let (network, inputs) = open_network(&options.source, &log)?;
    let task = inputs.task();
    let (mut predictor, _temp) = open_predictor(
        &network,
        task,
        &options.weights,
        options.device,
        (&options.gpu, options.precision),
        options.use_cache,
        &log,
    )?;
    let protocol = options.protocol.protocol(&predictor)?;
    if task == Task::Segmentation && predictor.channels * 3 > palette.len() {
        progress.note(&format!(
            "the palette has {} colours for {} classes: the others are drawn black",
            palette.len() / 3,
            predictor.channels
        ));
    }
    let normalise = AugmentConfig::new((1, 1));
    let mut written = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let photo =
            decode_rgb(path, &read_file(path).map_err(data_failure)?).map_err(data_failure)?;
        let size = (photo.height, photo.width);
        let prediction = predictor.predict(&normalised(&photo, &normalise), size, &protocol)?;
        let stem = stem(path);
        let out = &options.output;
        match task {
            Task::Segmentation => {
                let classes = argmax(&prediction, predictor.channels, size.0 * size.1)?;
                written.extend(write_segmentation(
                    out,
                    &stem,
                    &photo,
                    &classes,
                    &palette,
                    options.overlay,
                )?);
            }
            Task::Depth => written.extend(write_depth(out, &stem, size, &prediction)?),
        }
        progress.image(i + 1, images.len());
    }
    Ok(written)
}

/// The images named by `inputs`: files as given, directories' image files sorted; distinct
/// stems (each names its outputs).
fn list_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| Error::message(format!("`{}`: {e}", input.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            if found.is_empty() {
                return Err(Error::message(format!(
                    "`{}` holds no .jpg, .jpeg or .png image",
                    input.display()
                )));
            }
            found.sort();
            images.extend(found);
        } else if input.is_file() {
            images.push(input.clone());
        } else {
            return Err(Error::message(format!(
                "`{}`: no such file or directory",
                input.display()
            )));
        }
    }
    let mut stems: Vec<(String, &PathBuf)> = images.iter().map(|p| (stem(p), p)).collect();
    stems.sort();
    if let Some(w) = stems.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::message(format!(
            "`{}` and `{}` would write the same prediction files (`{}.png`)",
            w[0].1.display(),
            w[1].1.display(),
            w[0].0
        )));
    }
    Ok(images)
}

fn is_image(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// `OUT/<stem>.png` (class indices with the palette) and, with `overlay`,
/// `OUT/<stem>_overlay.png` (the class colours blended half over the photo).
fn write_segmentation(
    out: &Path,
    stem: &str,
    photo: &Plane<f32>,
    classes: &[i32],
    palette: &[u8],
    overlay: bool,
) -> Result<Vec<PathBuf>> {
    let (h, w) = (photo.height, photo.width);
    let indices: Vec<u8> = classes.iter().map(|&c| c.clamp(0, 255) as u8).collect();
    let labels = out.join(format!("{stem}.png"));
    write_indexed_png(&labels, (w, h), &indices, palette).map_err(data_failure)?;
    if !overlay {
        return Ok(vec![labels]);
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    let channels = photo.channels.max(1);
    for (i, &class) in indices.iter().enumerate() {
        let colour = palette
            .get(class as usize * 3..class as usize * 3 + 3)
            .unwrap_or(&[0, 0, 0]);
        for (c, &tint) in colour.iter().enumerate() {
            let base = photo.data[i * channels + c.min(channels - 1)];
            rgb.push((0.5 * base + 0.5 * tint as f32).round().clamp(0.0, 255.0) as u8);
        }
    }
    let blended = out.join(format!("{stem}_overlay.png"));
    write_rgb_png(&blended, w, h, &rgb).map_err(data_failure)?;
    Ok(vec![labels, blended])
}

/// `OUT/<stem>.png` (16-bit, millimetres, clamped to 0..=65535) and `OUT/<stem>_preview.png`
/// (near blue, far red, scaled to the image's own range).
fn write_depth(
    out: &Path,
    stem: &str,
    (h, w): (usize, usize),
    depth: &[f32],
) -> Result<Vec<PathBuf>> {
    let mm: Vec<u16> = depth
        .iter()
        .map(|&d| (d as f64 * 1000.0).round().clamp(0.0, 65535.0) as u16)
        .collect();
    let raw = out.join(format!("{stem}.png"));
    write_gray16_png(&raw, w, h, &mm).map_err(data_failure)?;
    let (lo, hi) = depth
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &d| {
            (lo.min(d), hi.max(d))
        });
    let span = (hi - lo).max(1e-6);
    let rgb: Vec<u8> = depth
        .iter()
        .flat_map(|&d| colour_map((d - lo) / span))
        .collect();
    let preview = out.join(format!("{stem}_preview.png"));
    write_rgb_png(&preview, w, h, &rgb).map_err(data_failure)?;
    Ok(vec![raw, preview])
}

/// A blue-cyan-green-yellow-red ramp over `t` in [0, 1].
fn colour_map(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [48.0, 18.0, 59.0],
        [40.0, 160.0, 240.0],
        [60.0, 200.0, 90.0],
        [245.0, 210.0, 40.0],
        [200.0, 30.0, 20.0],
    ];
    let x = t.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let mix = |c: usize| (STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// The palette as RGB bytes.
pub fn palette_bytes(palette: &Palette) -> Result<Vec<u8>> {
    match palette {
        Palette::Voc => Ok(voc_palette().to_vec()),
        Palette::Cityscapes => Ok(CITYSCAPES.iter().flatten().copied().collect()),
        Palette::File(path) => read_palette(path),
    }
}

/// Cityscapes' colours of its 19 training classes (road, sidewalk, ..., bicycle).
const CITYSCAPES: [[u8; 3]; 19] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

fn read_palette(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::message(format!("`{}`: {e}", path.display())))?;
    let mut bytes = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let colour = parse_colour(line).ok_or_else(|| {
            Error::user(
                Diagnostic::new(format!(
                    "`{}` line {}: `{line}` is not a colour",
                    path.display(),
                    n + 1
                ))
                .hint("one colour per class: `R G B` with values 0..255, or `#RRGGBB`"),
            )
        })?;
        bytes.extend(colour);
    }
    if bytes.is_empty() || bytes.len() > 768 {
        return Err(Error::message(format!(
            "`{}` holds {} colours; a palette has 1 to 256",
            path.display(),
            bytes.len() / 3
        )));
    }
    Ok(bytes)
}

fn parse_colour(text: &str) -> Option<[u8; 3]> {
    if let Some(hex) = text.strip_prefix('#') {
        let v = u32::from_str_radix(hex, 16)
            .ok()
            .filter(|_| hex.len() == 6)?;
        return Some([(v >> 16) as u8, (v >> 8) as u8, v as u8]);
    }
    let parts: Vec<u8> = text
        .split_whitespace()
        .map(|p| p.parse::<u8>().ok())
        .collect::<Option<_>>()?;
    <[u8; 3]>::try_from(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::{colour_map, parse_colour};

    #[test]
    fn colours_parse_and_the_ramp_spans_it() {
        assert_eq!(parse_colour("#ff8000"), Some([255, 128, 0]));
        assert_eq!(parse_colour("1 2 3"), Some([1, 2, 3]));
        for bad in ["#ff80", "1 2", "1 2 300", "red"] {
            assert_eq!(parse_colour(bad), None, "{bad}");
        }
        assert_eq!(colour_map(0.0), [48, 18, 59]);
        assert_eq!(colour_map(1.0), [200, 30, 20]);
    }
}
