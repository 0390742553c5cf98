//! `rfnc eval`: a network's metrics on a dataset split, printed as a table (per class for
//! segmentation) and optionally written as JSON.

use std::fmt::Write as _;

use rfnc_driver::eval::{run_eval, EvalOptions, EvalReport, Metrics};
use rfnc_driver::Error;

use crate::cli::EvalArgs;
use crate::commands::device;
use crate::commands::predict::protocol;
use crate::print::{emit_text, print_stdout};
use crate::progress::ImageProgress;

pub fn run(args: &EvalArgs) -> Result<(), Error> {
    let options = EvalOptions {
        source: args.common.source(),
        weights: args.weights.clone(),
        dataset: args.dataset,
        data_root: args.data_root.clone(),
        split: args.split.clone(),
        limit: args.limit,
        protocol: protocol(&args.protocol),
        predictions: args.predictions.clone(),
        device: device(&args.device),
        gpu: args.device.gpu.clone(),
        precision: args.device.precision.into(),
        use_cache: !args.device.no_cache,
        timings: args.common.timings,
    };
    let mut progress = ImageProgress::new("evaluating");
    let report = run_eval(&options, &mut progress);
    progress.finish();
    let report = report?;
    print_stdout(&table(&report, args))?;
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "network": args.common.file.display().to_string(),
            "dataset": args.dataset.to_string(),
            "split": args.split,
            "images": report.images,
            "protocol": report.protocol,
            "metrics": report.metrics.figures(),
        });
        let text =
            serde_json::to_string_pretty(&json).map_err(|e| Error::internal(e.to_string()))?;
        emit_text(&(text + "\n"), Some(path))?;
    }
    Ok(())
}

fn table(report: &EvalReport, args: &EvalArgs) -> String {
    let mut out = String::new();
    let p = &report.protocol;
    let how = match &args.predictions {
        Some(dir) => format!("predictions in {}", dir.display()),
        None => format!(
            "windows {}x{} stepping {}x{}, scales {:?}{}",
            p.crop.0,
            p.crop.1,
            p.stride.0,
            p.stride.1,
            p.scales,
            if p.flip { ", flipped too" } else { "" }
        ),
    };
    let _ = writeln!(
        out,
        "{} images of {} `{}` ({how})",
        report.images, args.dataset, args.split
    );
    let figure =
        |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{:.2}", 100.0 * v));
    match &report.metrics {
        Metrics::Segmentation(m) => {
            let _ = writeln!(
                out,
                "{:>5} {:>8} {:>8} {:>12}",
                "class", "IoU %", "acc %", "pixels"
            );
            for (c, row) in m.per_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{c:>5} {:>8} {:>8} {:>12}",
                    figure(row.iou),
                    figure(row.accuracy),
                    row.gt_pixels
                );
            }
            let _ = writeln!(
                out,
                "pixel accuracy {}%, mean accuracy {}%, mean IoU {}%",
                figure(m.pixel_accuracy),
                figure(m.mean_accuracy),
                figure(m.mean_iou)
            );
            if !m.absent.is_empty() {
                let _ = writeln!(
                    out,
                    "classes {:?} are in neither the labels nor the predictions and are left out of the means",
                    m.absent
                );
            }
        }
        Metrics::Depth(r) => {
            let _ = writeln!(
                out,
                "over {} valid pixels: rel {:.4}, rms {:.4} m, log10 {:.4}",
                r.pixels, r.rel, r.rms, r.log10
            );
            let _ = writeln!(
                out,
                "delta < 1.25: {:.4}, < 1.25^2: {:.4}, < 1.25^3: {:.4}",
                r.delta1, r.delta2, r.delta3
            );
        }
    }
    out
}
