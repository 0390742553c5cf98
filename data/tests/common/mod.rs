//! Helpers shared by the rfnc-data tests: temporary dataset roots and small hand-made
//! datasets (Cityscapes, List) built from the synthetic scenes' files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rfnc_data::encode::{write_gray8_png, write_palette_png, write_rgb_png};
use rfnc_data::{DataError, Dataset, DatasetKind};

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A synthetic VOC root with `train` and `val` samples.
pub fn voc(train: usize, val: usize, seed: u64) -> tempfile::TempDir {
    let dir = tempdir();
    rfnc_data::synthetic::write_voc(dir.path(), train, val, seed).expect("synthetic VOC");
    dir
}

pub fn open_voc(root: &Path, split: &str) -> Dataset {
    Dataset::open(DatasetKind::Voc, root, split).expect("open synthetic VOC")
}

/// An RGB gradient of `w x h` pixels.
pub fn rgb(w: usize, h: usize) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| [(i % 251) as u8, (i * 7 % 253) as u8, 90])
        .collect()
}

/// A Cityscapes root: split `train` with cities `bonn` (2 images) and `aachen` (1), train
/// ids 0..=18 and 255, plus a file that is not an image of the layout.
pub fn cityscapes() -> tempfile::TempDir {
    let dir = tempdir();
    let root = dir.path();
    for (city, stems) in [
        ("bonn", &["bonn_000001_000019", "bonn_000000_000019"][..]),
        ("aachen", &["aachen_000000_000019"][..]),
    ] {
        for (i, stem) in stems.iter().enumerate() {
            let (w, h) = (16 + i, 8);
            let image = root.join(format!("leftImg8bit/train/{city}/{stem}_leftImg8bit.png"));
            write_rgb_png(&image, w, h, &rgb(w, h)).unwrap();
            let ids: Vec<u8> = (0..w * h)
                .map(|p| if p % 5 == 0 { 255 } else { (p % 19) as u8 })
                .collect();
            let label = root.join(format!(
                "gtFine/train/{city}/{stem}_gtFine_labelTrainIds.png"
            ));
            write_gray8_png(&label, w, h, &ids).unwrap();
        }
    }
    std::fs::write(
        root.join("leftImg8bit/train/bonn/README.txt"),
        "not an image",
    )
    .unwrap();
    dir
}

/// Writes `image.png` (RGB) and `label.png` (palette) of `w x h` under `root/sub/`.
pub fn image_and_label(
    root: &Path,
    sub: &str,
    w: usize,
    h: usize,
    labels: &[u8],
) -> (PathBuf, PathBuf) {
    let image = root.join(sub).join("image.png");
    let label = root.join(sub).join("label.png");
    write_rgb_png(&image, w, h, &rgb(w, h)).unwrap();
    write_palette_png(&label, w, h, labels).unwrap();
    (image, label)
}

/// The error's message names `path`.
pub fn names(err: &DataError, path: &Path) -> bool {
    err.to_string().contains(&path.display().to_string())
}
