//! `rfnc eval` and `rfnc predict` end to end on synthetic datasets: the metrics table and
//! JSON, predictions written as palette PNGs that another reader decodes to the same
//! classes and that `eval --predictions` scores as `eval` does, depth pictures, and clear
//! errors for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Random weights of `program` (evaluation does not care how good they are).
fn weights(dir: &Path, program: &str) -> PathBuf {
    let path = dir.join("w.safetensors");
    let out = rfnc(&[
        "weights",
        program,
        "-o",
        path.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    path
}

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    [head, &["-D", "dropout=0.0", "--input", "1x3x64x64"], tail].concat()
}

fn mean_iou(text: &str) -> String {
    text.lines()
        .find_map(|l| l.split("mean IoU ").nth(1))
        .unwrap_or_else(|| panic!("no mean IoU in:\n{text}"))
        .to_string()
}

#[test]
fn predictions_read_back_score_as_eval_does() {
    let (_d, data) = dataset("voc", 2, 6);
    let dir = tempfile::tempdir().unwrap();
    let w = weights(dir.path(), "examples/tiny.rfn");
    let (w, root) = (w.to_str().unwrap(), data.to_str().unwrap());
    let json = dir.path().join("eval.json");
    let net = [
        "eval",
        "examples/tiny.rfn",
        "--weights",
        w,
        "--dataset",
        "voc",
        "--data-root",
        root,
    ];
    let out = rfnc(&args(&net, &["--json", json.to_str().unwrap()]));
    assert!(out.status.success(), "{}", stderr(&out));
    let direct = stdout(&out);
    assert!(direct.contains("6 images of voc `val`"), "{direct}");
    assert!(direct.contains("class    IoU %"), "{direct}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["images"], 6);
    assert!(report["metrics"]["per_class"].as_array().unwrap().len() == 3);
    assert!(report["metrics"]["pixel_accuracy"].is_number());

    // The val images predicted as files, then scored from the files.
    let ids = std::fs::read_to_string(data.join("ImageSets/Segmentation/val.txt")).unwrap();
    let images: Vec<String> = ids
        .lines()
        .map(|id| {
            data.join(format!("JPEGImages/{id}.jpg"))
                .display()
                .to_string()
        })
        .collect();
    let preds = dir.path().join("preds");
    let mut predict = vec![
        "predict",
        "examples/tiny.rfn",
        "--weights",
        w,
        "-o",
        preds.to_str().unwrap(),
        "--overlay",
    ];
    predict.extend(images.iter().map(String::as_str));
    let out = rfnc(&args(&predict, &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("wrote 12 files"), "{}", stdout(&out));
    let out = rfnc(&args(
        &[
            "eval",
            "examples/tiny.rfn",
            "--dataset",
            "voc",
            "--data-root",
            root,
            "--predictions",
            preds.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mean_iou(&stdout(&out)), mean_iou(&direct));

    // Another PNG reader sees the same class indices and the VOC colours.
    let first = preds.join(format!("{}.png", ids.lines().next().unwrap()));
    let read = Command::new("python3")
        .arg(root_path("tests/tools/png_indices.py"))
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let decoded: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    let ours = rfnc_data::decode::decode_indices(&first, &std::fs::read(&first).unwrap()).unwrap();
    let theirs: Vec<u8> = decoded["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(theirs, ours.data);
    assert!(theirs.iter().all(|&c| c < 3));
    assert_eq!(decoded["palette"][1], serde_json::json!([128, 0, 0]));
    assert!(
        std::fs::read(preds.join(format!("{}_overlay.png", ids.lines().next().unwrap())))
            .unwrap()
            .starts_with(b"\x89PNG")
    );
}

fn root_path(relative: &str) -> PathBuf {
    root().join(relative)
}

/// Multi-scale and flipped evaluation runs, and with one scale and no flip it equals the
/// plain evaluation.
#[test]
fn scales_and_flips_are_averaged() {
    let (_d, data) = dataset("voc", 2, 3);
    let dir = tempfile::tempdir().unwrap();
    let w = weights(dir.path(), "examples/tiny.rfn");
    let (w, root) = (w.to_str().unwrap(), data.to_str().unwrap());
    let net = [
        "eval",
        "examples/tiny.rfn",
        "--weights",
        w,
        "--dataset",
        "voc",
        "--data-root",
        root,
    ];
    let plain = rfnc(&args(&net, &[]));
    let one = rfnc(&args(&net, &["--scales", "1"]));
    let many = rfnc(&args(
        &net,
        &["--scales", "0.75,1,1.25", "--flip", "--crop", "48x48"],
    ));
    for out in [&plain, &one, &many] {
        assert!(out.status.success(), "{}", stderr(out));
    }
    assert_eq!(mean_iou(&stdout(&plain)), mean_iou(&stdout(&one)));
    assert!(
        stdout(&many).contains("scales [0.75, 1.0, 1.25], flipped too"),
        "{}",
        stdout(&many)
    );
}

/// Depth: eval reports the depth errors; predict writes 16-bit millimetres and a preview.
#[test]
fn depth_is_evaluated_and_predicted() {
    let (_d, data) = dataset("nyud", 2, 3);
    let dir = tempfile::tempdir().unwrap();
    let program = "tests/programs/tiny_depth.rfn";
    let w = weights(dir.path(), program);
    let (w, root) = (w.to_str().unwrap(), data.to_str().unwrap());
    let out = rfnc(&[
        "eval",
        program,
        "--input",
        "1x3x64x64",
        "--weights",
        w,
        "--dataset",
        "nyud_depth",
        "--data-root",
        root,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("rms"), "{}", stdout(&out));
    assert!(stdout(&out).contains("delta < 1.25"), "{}", stdout(&out));
    let preds = dir.path().join("preds");
    let images = data.join("images").display().to_string();
    let out = rfnc(&[
        "predict",
        program,
        "--input",
        "1x3x64x64",
        "--weights",
        w,
        images.as_str(),
        "-o",
        preds.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let depth = std::fs::read(preds.join("val_00000.png")).unwrap();
    // IHDR: bit depth 16, colour type 0 (greyscale).
    assert_eq!((depth[24], depth[25]), (16, 0));
    assert!(preds.join("val_00000_preview.png").is_file());
}

#[test]
fn bad_input_is_a_clear_error_naming_the_file() {
    let (_d, data) = dataset("voc", 2, 2);
    let dir = tempfile::tempdir().unwrap();
    let w = weights(dir.path(), "examples/tiny.rfn");
    let (w, root) = (w.to_str().unwrap(), data.to_str().unwrap());
    let out_dir = dir.path().join("out");
    let o = out_dir.to_str().unwrap();
    // An image that does not decode.
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8 not really a jpeg").unwrap();
    let out = rfnc(&args(
        &[
            "predict",
            "examples/tiny.rfn",
            "--weights",
            w,
            broken.to_str().unwrap(),
            "-o",
            o,
        ],
        &[],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("broken.jpg"), "{}", stderr(&out));
    // An empty directory.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = rfnc(&args(
        &[
            "predict",
            "examples/tiny.rfn",
            "--weights",
            w,
            empty.to_str().unwrap(),
            "-o",
            o,
        ],
        &[],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("holds no .jpg, .jpeg or .png image"),
        "{}",
        stderr(&out)
    );
    // A crop larger than the compiled network.
    let net = [
        "eval",
        "examples/tiny.rfn",
        "--weights",
        w,
        "--dataset",
        "voc",
        "--data-root",
        root,
    ];
    let out = rfnc(&args(&net, &["--crop", "96x96"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the crop 96x96 does not fit the network compiled for 64x64"),
        "{}",
        stderr(&out)
    );
    // Weights of another network.
    let other = dir.path().join("other.safetensors");
    let made = rfnc(&[
        "weights",
        "examples/tiny.rfn",
        "-D",
        "refine_width=4",
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    let net = [
        "eval",
        "examples/tiny.rfn",
        "--weights",
        other.to_str().unwrap(),
        "--dataset",
        "voc",
        "--data-root",
        root,
    ];
    let out = rfnc(&args(&net, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not fit network"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"));
}
