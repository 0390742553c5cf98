//! Synthetic datasets written as real files in this crate's layouts, for tests and first
//! runs without downloads: coloured discs and squares on textured backgrounds
//! (segmentation, 3 classes) and rooms of planes and spheres lit from the camera (depth).
//! Every file is a pure function of the seed, the split and the sample's number.

use std::path::Path;

use crate::encode::{
    write_gray16_png, write_gray8_png, write_palette_png, write_rgb_jpeg, write_rgb_png,
};
use crate::error::DataError;
use crate::rng::{key, Rng};

/// Classes of the synthetic segmentation sets: 0 background, 1 disc, 2 square.
pub const SEG_CLASSES: u32 = 3;
/// Classes of the synthetic NYUD labels (stored 1..=3): 0 wall, 1 floor, 2 sphere.
pub const NYUD_SEG_CLASSES: u32 = 3;

/// The number of classes of the synthetic segmentation sets ([`SEG_CLASSES`]).
pub fn seg_classes() -> u32 {
    SEG_CLASSES
}

/// Smallest and largest side of a synthetic image, in pixels.
pub const MIN_SIDE: usize = 40;
pub const MAX_SIDE: usize = 96;

const JPEG_QUALITY: u8 = 90;

/// Writes a VOC 2012 layout under `root`: `JPEGImages/<id>.jpg`,
/// `SegmentationClass/<id>.png` (palette PNGs, VOC colour map, 255 borders around shapes)
/// and `ImageSets/Segmentation/{train,val}.txt`, with ids `train_00000`... and
/// `val_00000`...
pub fn write_voc(root: &Path, train: usize, val: usize, seed: u64) -> Result<(), DataError> {
    let lists = root.join("ImageSets").join("Segmentation");
    for (split, count) in [("train", train), ("val", val)] {
        let ids = ids(split, count);
        for (i, id) in ids.iter().enumerate() {
            let s = seg_scene(&mut scene_rng(seed, split, i));
            write_rgb_jpeg(
                &root.join("JPEGImages").join(format!("{id}.jpg")),
                s.width,
                s.height,
                &s.rgb,
                JPEG_QUALITY,
            )?;
            let label = root.join("SegmentationClass").join(format!("{id}.png"));
            write_palette_png(&label, s.width, s.height, &s.labels)?;
        }
        write_lines(&lists.join(format!("{split}.txt")), &ids)?;
    }
    Ok(())
}

/// Writes a `List` layout under `root`: `images/<id>.jpg`, `labels/<id>.png` (8-bit
/// greyscale indices, 255 borders) and `{train,val}.txt` with `images/<id>.jpg<TAB>
/// labels/<id>.png` lines. The scenes are those of [`write_voc`] for the same seed.
pub fn write_list(root: &Path, train: usize, val: usize, seed: u64) -> Result<(), DataError> {
    for (split, count) in [("train", train), ("val", val)] {
        let mut lines = Vec::new();
        for (i, id) in ids(split, count).iter().enumerate() {
            let s = seg_scene(&mut scene_rng(seed, split, i));
            let (image, label) = (format!("images/{id}.jpg"), format!("labels/{id}.png"));
            write_rgb_jpeg(&root.join(&image), s.width, s.height, &s.rgb, JPEG_QUALITY)?;
            write_gray8_png(&root.join(&label), s.width, s.height, &s.labels)?;
            lines.push(format!("{image}\t{label}"));
        }
        write_lines(&root.join(format!("{split}.txt")), &lines)?;
    }
    Ok(())
}

/// Writes this crate's NYUD layout under `root`: `images/<id>.png` (RGB), `depth/<id>.png`
/// (16-bit millimetres, some 0 holes), `labels40/<id>.png` (8-bit: 1 wall, 2 floor,
/// 3 sphere, 0 unlabelled on boundaries) and `{train,val}.txt`. The same files serve
/// `NyudDepth` and `NyudSeg`.
pub fn write_nyud(root: &Path, train: usize, val: usize, seed: u64) -> Result<(), DataError> {
    for (split, count) in [("train", train), ("val", val)] {
        let ids = ids(split, count);
        for (i, id) in ids.iter().enumerate() {
            let s = depth_scene(&mut scene_rng(seed, split, i));
            let file = format!("{id}.png");
            write_rgb_png(&root.join("images").join(&file), s.width, s.height, &s.rgb)?;
            write_gray16_png(
                &root.join("depth").join(&file),
                s.width,
                s.height,
                &s.depth_mm,
            )?;
            write_gray8_png(
                &root.join("labels40").join(&file),
                s.width,
                s.height,
                &s.labels,
            )?;
        }
        write_lines(&root.join(format!("{split}.txt")), &ids)?;
    }
    Ok(())
}

fn ids(split: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{split}_{i:05}")).collect()
}

fn scene_rng(seed: u64, split: &str, i: usize) -> Rng {
    let split_tag = crate::rng::key(&split.bytes().map(u64::from).collect::<Vec<_>>());
    Rng::new(key(&[seed, split_tag, i as u64]))
}

fn write_lines(path: &Path, lines: &[String]) -> Result<(), DataError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).map_err(|e| DataError::io(path, e))
}

fn to_u8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// A segmentation scene: RGB bytes and labels (0 background, 1 disc, 2 square, 255 the
/// band around each shape's edge).
struct SegScene {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    labels: Vec<u8>,
}

/// A shape: class, centre, size (disc radius, square half-side), rotation, colour.
struct Shape {
    class: u8,
    centre: (f64, f64),
    size: f64,
    angle: f64,
    colour: [f64; 3],
}

impl Shape {
    /// Signed distance from (x, y) to the shape's edge, negative inside.
    fn distance(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        if self.class == 1 {
            return (dx * dx + dy * dy).sqrt() - self.size;
        }
        let (s, c) = self.angle.sin_cos();
        let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
        u.abs().max(v.abs()) - self.size
    }
}

fn random_shape(rng: &mut Rng, width: usize, height: usize) -> Shape {
    let class = 1 + rng.below(2) as u8;
    let short = width.min(height) as f64;
    let size = rng.range_f64(5.0, (short / 4.0).max(6.0));
    let centre = (
        rng.range_f64(0.0, width as f64),
        rng.range_f64(0.0, height as f64),
    );
    let jitter = |rng: &mut Rng, v: f64| v + rng.range_f64(-25.0, 25.0);
    let colour = if class == 1 {
        [jitter(rng, 215.0), jitter(rng, 50.0), jitter(rng, 45.0)]
    } else {
        [jitter(rng, 40.0), jitter(rng, 90.0), jitter(rng, 215.0)]
    };
    Shape {
        class,
        centre,
        size,
        angle: rng.range_f64(0.0, std::f64::consts::FRAC_PI_2),
        colour,
    }
}

fn seg_scene(rng: &mut Rng) -> SegScene {
    let width = rng.between(MIN_SIDE as i64, MAX_SIDE as i64) as usize;
    let height = rng.between(MIN_SIDE as i64, MAX_SIDE as i64) as usize;
    let base: Vec<f64> = (0..3).map(|_| rng.range_f64(70.0, 170.0)).collect();
    let gradient = (rng.range_f64(-0.6, 0.6), rng.range_f64(-0.6, 0.6));
    let wave = (
        rng.range_f64(0.15, 0.6),
        rng.range_f64(0.15, 0.6),
        rng.range_f64(5.0, 20.0),
    );
    let shapes: Vec<Shape> = (0..rng.between(1, 3))
        .map(|_| random_shape(rng, width, height))
        .collect();
    let border = 1.0 + rng.uniform();
    let mut rgb = Vec::with_capacity(width * height * 3);
    let mut labels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let texture = gradient.0 * px
                + gradient.1 * py
                + wave.2 * (wave.0 * px).sin() * (wave.1 * py).cos();
            let mut colour = [base[0] + texture, base[1] + texture, base[2] + texture];
            let mut label = 0u8;
            for shape in &shapes {
                let d = shape.distance(px, py);
                if d <= 0.0 {
                    colour = shape.colour;
                }
                if d.abs() <= border {
                    label = 255;
                } else if d < 0.0 {
                    label = shape.class;
                }
            }
            for c in colour {
                rgb.push(to_u8(c + rng.range_f64(-12.0, 12.0)));
            }
            labels.push(label);
        }
    }
    SegScene {
        width,
        height,
        rgb,
        labels,
    }
}

/// A depth scene: RGB shaded from the geometry, depth in millimetres (0 = missing),
/// NYUD-style labels (0 unlabelled, 1 wall, 2 floor, 3 sphere).
struct DepthScene {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    depth_mm: Vec<u16>,
    labels: Vec<u8>,
}

/// The nearest surface a camera ray meets: depth along the optical axis, unit normal,
/// label, albedo.
struct Hit {
    depth: f64,
    normal: [f64; 3],
    label: u8,
    albedo: [f64; 3],
}

struct Room {
    /// Floor at y = -camera_height.
    camera_height: f64,
    /// Wall: points p with dot(wall_normal, p) = wall_offset.
    wall_normal: [f64; 3],
    wall_offset: f64,
    spheres: Vec<([f64; 3], f64, [f64; 3])>,
    wall_albedo: [f64; 3],
    floor_albedo: [f64; 3],
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

impl Room {
    fn random(rng: &mut Rng) -> Room {
        let tilt = rng.range_f64(-0.35, 0.35);
        let spheres = (0..rng.between(1, 2))
            .map(|_| {
                let r = rng.range_f64(0.3, 0.8);
                let z = rng.range_f64(2.0, 4.5);
                let centre = [rng.range_f64(-1.2, 1.2), rng.range_f64(-1.3 + r, 0.6), z];
                (
                    centre,
                    r,
                    [
                        rng.range_f64(0.4, 0.9),
                        rng.range_f64(0.3, 0.8),
                        rng.range_f64(0.2, 0.7),
                    ],
                )
            })
            .collect();
        Room {
            camera_height: rng.range_f64(1.0, 1.6),
            wall_normal: [tilt.sin(), 0.0, tilt.cos()],
            wall_offset: rng.range_f64(5.0, 8.0),
            spheres,
            wall_albedo: [0.75, 0.72, rng.range_f64(0.55, 0.8)],
            floor_albedo: [0.55, rng.range_f64(0.4, 0.5), 0.3],
        }
    }

    /// The nearest hit along direction `d` (with d[2] = 1, so ray length t is depth).
    fn trace(&self, d: [f64; 3]) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        let mut offer = |hit: Hit| {
            if hit.depth > 0.0 && best.as_ref().is_none_or(|b| hit.depth < b.depth) {
                best = Some(hit);
            }
        };
        let along = dot(self.wall_normal, d);
        if along > 1e-9 {
            let (normal, albedo) = (self.wall_normal.map(|v| -v), self.wall_albedo);
            offer(Hit {
                depth: self.wall_offset / along,
                normal,
                label: 1,
                albedo,
            });
        }
        if d[1] < -1e-9 {
            let (normal, albedo) = ([0.0, 1.0, 0.0], self.floor_albedo);
            offer(Hit {
                depth: -self.camera_height / d[1],
                normal,
                label: 2,
                albedo,
            });
        }
        for &(c, r, albedo) in &self.spheres {
            // |t d - c|^2 = r^2
            let (a, b, k) = (dot(d, d), dot(d, c), dot(c, c) - r * r);
            let disc = b * b - a * k;
            if disc >= 0.0 {
                let t = (b - disc.sqrt()) / a;
                let p = d.map(|v| v * t);
                let normal = [(p[0] - c[0]) / r, (p[1] - c[1]) / r, (p[2] - c[2]) / r];
                offer(Hit {
                    depth: t,
                    normal,
                    label: 3,
                    albedo,
                });
            }
        }
        best
    }
}

/// Depth beyond this is not measured (0 in the PNG), as a Kinect's range ends.
const MAX_DEPTH_M: f64 = 10.0;

fn depth_scene(rng: &mut Rng) -> DepthScene {
    let width = rng.between(MIN_SIDE as i64, MAX_SIDE as i64) as usize;
    let height = rng.between(MIN_SIDE as i64, MAX_SIDE as i64) as usize;
    let room = Room::random(rng);
    let focal = width.max(height) as f64;
    let n = width * height;
    let (mut rgb, mut depth_mm, mut labels) =
        (Vec::with_capacity(3 * n), vec![0u16; n], vec![0u8; n]);
    for y in 0..height {
        for x in 0..width {
            let dx = (x as f64 + 0.5 - width as f64 / 2.0) / focal;
            let dy = -(y as f64 + 0.5 - height as f64 / 2.0) / focal;
            let ray = [dx, dy, 1.0];
            let hit = room.trace(ray);
            // A light at the camera: Lambert shading towards the eye, fading with depth.
            let (light, colour) = match &hit {
                Some(h) => {
                    let facing = -dot(h.normal, ray) / dot(ray, ray).sqrt();
                    (
                        (0.2 + 0.8 * facing.max(0.0)) * (-0.15 * h.depth).exp(),
                        h.albedo,
                    )
                }
                None => (0.0, [0.0; 3]),
            };
            for c in colour {
                rgb.push(to_u8(
                    255.0 * (0.05 + 1.2 * c * light) + rng.range_f64(-3.0, 3.0),
                ));
            }
            if let Some(h) = hit.filter(|h| h.depth < MAX_DEPTH_M) {
                depth_mm[y * width + x] = (h.depth * 1000.0).round() as u16;
                labels[y * width + x] = h.label;
            }
        }
    }
    punch_holes(rng, width, height, &mut depth_mm);
    mark_boundaries(width, height, &mut labels);
    DepthScene {
        width,
        height,
        rgb,
        depth_mm,
        labels,
    }
}

/// Sets 1 to 3 small rectangles of depth to 0 (missing), as a depth sensor leaves holes.
fn punch_holes(rng: &mut Rng, width: usize, height: usize, depth: &mut [u16]) {
    for _ in 0..rng.between(1, 3) {
        let (w, h) = (rng.between(2, 8) as usize, rng.between(2, 8) as usize);
        let (x0, y0) = (
            rng.below((width - w) as u64) as usize,
            rng.below((height - h) as u64) as usize,
        );
        for y in y0..y0 + h {
            depth[y * width + x0..y * width + x0 + w].fill(0);
        }
    }
}

/// Marks as unlabelled (0) every pixel whose right or lower neighbour has another label.
fn mark_boundaries(width: usize, height: usize, labels: &mut [u8]) {
    let original = labels.to_vec();
    for y in 0..height {
        for x in 0..width {
            let here = original[y * width + x];
            let right = x + 1 < width && original[y * width + x + 1] != here;
            let below = y + 1 < height && original[(y + 1) * width + x] != here;
            if right || below {
                labels[y * width + x] = 0;
            }
        }
    }
}
