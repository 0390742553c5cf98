//! What a training run leaves in its work dir besides checkpoints: `log.jsonl` (one JSON
//! object per training step and per validation) and the curves drawn from it, `loss.png`
//! and `val.png` (plotters, with an embedded font so no system font is needed).
//!
//! Invariant: on resume the log keeps exactly the records up to the checkpoint's iteration
//! (rewritten atomically), so the log and the curves of a resumed run are those of an
//! uninterrupted one.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One line of `log.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// A training step: `iter` counts steps done (1 for the first).
    Train {
        iter: u64,
        epoch: u64,
        loss: f64,
        lr: f64,
        data_s: f64,
        step_s: f64,
        images_per_s: f64,
        /// The terms of a weighted objective, by name.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        terms: std::collections::BTreeMap<String, f64>,
    },
    /// A validation after `iter` steps: `metric` (`mean_iou`, `rms`) and its value, with the
    /// other figures of the task.
    Val {
        iter: u64,
        metric: String,
        value: f64,
        figures: serde_json::Map<String, serde_json::Value>,
    },
}

impl Record {
    fn iter(&self) -> u64 {
        match self {
            Record::Train { iter, .. } | Record::Val { iter, .. } => *iter,
        }
    }
}

/// The run's log: records in memory (for the curves) and appended to `log.jsonl`.
pub struct RunLog {
    path: PathBuf,
    pub records: Vec<Record>,
}

impl RunLog {
    /// Opens `WORK/log.jsonl`: a new run starts it empty; a resumed run keeps the records up
    /// to `resume_at` iterations.
    pub fn open(work_dir: &Path, resume_at: Option<u64>) -> Result<RunLog> {
        let path = work_dir.join("log.jsonl");
        let records = match resume_at {
            None => Vec::new(),
            Some(done) => read_records(&path)?
                .into_iter()
                .filter(|r| r.iter() <= done)
                .collect(),
        };
        let mut text = String::new();
        for r in &records {
            text.push_str(&line(r)?);
        }
        rfnc_bundle::atomic::write_atomically(&path, text.as_bytes()).map_err(|e| io(&path, e))?;
        Ok(RunLog { path, records })
    }

    pub fn push(&mut self, record: Record) -> Result<()> {
        let text = line(&record)?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io(&self.path, e))?;
        self.records.push(record);
        Ok(())
    }

    /// Draws `loss.png` (and `val.png` once there is a validation) into `dir`.
    pub fn plot(&self, dir: &Path) -> Result<()> {
        let mut loss = Vec::new();
        let mut val = Vec::new();
        let mut metric = String::new();
        for r in &self.records {
            match r {
                Record::Train { iter, loss: l, .. } if l.is_finite() => {
                    loss.push((*iter as f64, *l))
                }
                Record::Val {
                    iter,
                    metric: m,
                    value,
                    ..
                } => {
                    metric.clone_from(m);
                    val.push((*iter as f64, *value));
                }
                Record::Train { .. } => {}
            }
        }
        if !loss.is_empty() {
            let smooth = moving_average(&loss, 20);
            let series = [
                ("loss", &loss, BLUE.mix(0.35)),
                ("mean of 20", &smooth, BLUE.mix(1.0)),
            ];
            draw(&dir.join("loss.png"), "training loss", "loss", &series)?;
        }
        if !val.is_empty() {
            draw(
                &dir.join("val.png"),
                &format!("validation {metric}"),
                &metric,
                &[(metric.as_str(), &val, RED.mix(1.0))],
            )?;
        }
        Ok(())
    }
}

fn line(record: &Record) -> Result<String> {
    let mut text = serde_json::to_string(record)
        .map_err(|e| Error::internal(format!("cannot serialise a log record: {e}")))?;
    text.push('\n');
    Ok(text)
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    // A line cut off by a crash is dropped; anything else unreadable is an error.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut records = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(l) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(Error::message(format!(
                    "`{}` line {}: not a log record: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(records)
}

fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= window {
            sum -= points[i - window].1;
        }
        out.push((x, sum / (i + 1).min(window) as f64));
    }
    out
}

/// The font the curves are labelled with (embedded: DejaVu Sans).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font; registration fails only on invalid data.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

type Series<'a> = (&'a str, &'a Vec<(f64, f64)>, RGBAColor);

fn draw(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    register_font();
    let fail = |e: &dyn std::fmt::Display| {
        Error::message(format!("cannot draw `{}`: {e}", path.display()))
    };
    let points = series.iter().flat_map(|(_, s, _)| s.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-6);
    // Drawn in memory, then written atomically like every other output.
    let (w, h) = (800u32, 500u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(y_label)
            .draw()
            .map_err(|e| fail(&e))?;
        for (name, data, colour) in series {
            let style = ShapeStyle::from(*colour).stroke_width(2);
            chart
                .draw_series(LineSeries::new(data.iter().copied(), style))
                .map_err(|e| fail(&e))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    let mut png = Vec::new();
    image_png(&mut png, &pixels, w, h).map_err(|e| fail(&e))?;
    rfnc_bundle::atomic::write_atomically(path, &png).map_err(|e| io(path, e))
}

/// Encodes RGB8 pixels as PNG.
fn image_png(
    out: &mut Vec<u8>,
    rgb: &[u8],
    w: u32,
    h: u32,
) -> std::result::Result<(), png::EncodingError> {
    let mut encoder = png::Encoder::new(out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgb)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::message(format!("`{}`: {e}", path.display()))
}
