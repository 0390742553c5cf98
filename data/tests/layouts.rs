//! Every layout opens and loads: the synthetic VOC, List and NYUD sets, and small
//! hand-made VOC-Aug, Cityscapes and List sets.

mod common;

use std::collections::BTreeSet;
use std::str::FromStr;

use common::{cityscapes, image_and_label, open_voc, rgb, tempdir, voc};
use rfnc_data::decode::{decode_gray16, read_file};
use rfnc_data::encode::{write_gray8_png, write_rgb_jpeg};
use rfnc_data::synthetic::{write_list, write_nyud};
use rfnc_data::{Dataset, DatasetKind, Target, Task};

fn label_values(ds: &Dataset) -> BTreeSet<u8> {
    let mut seen = BTreeSet::new();
    for i in 0..ds.len() {
        let s = ds.load(i, None).unwrap();
        assert_eq!(s.index, i);
        assert_eq!(s.image.channels, 3);
        assert_eq!(s.image.data.len(), s.image.width * s.image.height * 3);
        assert!(s.image.data.iter().all(|v| (0.0..=255.0).contains(v)));
        let Target::Labels(l) = &s.target else {
            panic!("expected labels")
        };
        assert_eq!(l.size(), s.image.size());
        seen.extend(l.data.iter().copied());
    }
    seen
}

#[test]
fn voc_opens_and_loads() {
    let dir = voc(4, 2, 1);
    let ds = open_voc(dir.path(), "train");
    assert_eq!(
        (ds.kind(), ds.len(), ds.num_classes(), ds.ignore_label()),
        (DatasetKind::Voc, 4, Some(21), 255)
    );
    assert_eq!(ds.task(), Task::Segmentation);
    assert!(ds
        .split_source()
        .ends_with("ImageSets/Segmentation/train.txt"));
    let first = ds.sample(0).unwrap();
    assert_eq!(first.id, "train_00000");
    assert!(first.image.ends_with("JPEGImages/train_00000.jpg"));
    assert!(first.target.ends_with("SegmentationClass/train_00000.png"));
    assert_eq!(label_values(&ds), BTreeSet::from([0, 1, 2, 255]));
    assert_eq!(open_voc(dir.path(), "val").len(), 2);
}

#[test]
fn voc_aug_reads_train_aug_for_train_and_greyscale_labels() {
    let dir = voc(3, 1, 2);
    let root = dir.path();
    let voc = open_voc(root, "train");
    let mut ids = Vec::new();
    for (i, s) in voc.samples().iter().enumerate().take(2) {
        let Target::Labels(l) = voc.load(i, None).unwrap().target else {
            unreachable!()
        };
        let aug = root
            .join("SegmentationClassAug")
            .join(format!("{}.png", s.id));
        write_gray8_png(&aug, l.width, l.height, &l.data).unwrap();
        ids.push(s.id.clone());
    }
    let sets = root.join("ImageSets/Segmentation");
    std::fs::write(sets.join("train_aug.txt"), ids.join("\n")).unwrap();
    let aug = Dataset::open(DatasetKind::VocAug, root, "train").unwrap();
    assert!(aug.split_source().ends_with("train_aug.txt"));
    assert_eq!(aug.len(), 2);
    for i in 0..2 {
        assert_eq!(aug.load(i, None).unwrap(), voc.load(i, None).unwrap());
    }
    // Any other split reads <split>.txt.
    std::fs::write(sets.join("val.txt"), &ids[0]).unwrap();
    assert_eq!(
        Dataset::open(DatasetKind::VocAug, root, "val")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn cityscapes_lists_cities_and_files_sorted() {
    let dir = cityscapes();
    let ds = Dataset::open(DatasetKind::Cityscapes, dir.path(), "train").unwrap();
    let ids: Vec<_> = ds.samples().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "aachen/aachen_000000_000019",
            "bonn/bonn_000000_000019",
            "bonn/bonn_000001_000019"
        ]
    );
    assert_eq!(ds.num_classes(), Some(19));
    assert!(ds.split_source().ends_with("leftImg8bit/train"));
    let values = label_values(&ds);
    assert_eq!(values, (0..19).chain([255]).collect());
}

#[test]
fn nyud_depth_is_millimetres_over_1000_with_zeros_kept() {
    let dir = tempdir();
    write_nyud(dir.path(), 3, 1, 5).unwrap();
    let ds = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap();
    assert_eq!(
        (ds.task(), ds.num_classes(), ds.len()),
        (Task::Depth, None, 3)
    );
    for i in 0..ds.len() {
        let s = ds.load(i, None).unwrap();
        let Target::Depth(d) = &s.target else {
            panic!("expected depth")
        };
        let path = &ds.sample(i).unwrap().target;
        let mm = decode_gray16(path, &read_file(path).unwrap()).unwrap();
        assert_eq!(d.size(), s.image.size());
        for (m, v) in d.data.iter().zip(&mm.data) {
            assert_eq!(*m, *v as f32 / 1000.0);
        }
        assert!(d.data.contains(&0.0), "synthetic depth has holes");
        assert!(d.data.iter().all(|&v| v == 0.0 || (0.5..10.0).contains(&v)));
    }
}

#[test]
fn nyud_seg_shifts_labels_and_ignores_zero() {
    let dir = tempdir();
    write_nyud(dir.path(), 3, 1, 6).unwrap();
    let ds = Dataset::open(DatasetKind::NyudSeg, dir.path(), "val").unwrap();
    assert_eq!((ds.num_classes(), ds.len()), (Some(40), 1));
    // Stored 1 wall, 2 floor, 3 sphere, 0 on boundaries.
    let values = label_values(&ds);
    assert!(values.is_subset(&BTreeSet::from([0, 1, 2, 255])) && values.contains(&255));
    assert!(values.contains(&0) && values.contains(&1));
}

#[test]
fn nyud_takes_a_jpeg_image_when_there_is_no_png() {
    let dir = tempdir();
    write_nyud(dir.path(), 1, 0, 7).unwrap();
    let png = dir.path().join("images/train_00000.png");
    let img = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train")
        .unwrap()
        .load(0, None)
        .unwrap()
        .image;
    std::fs::remove_file(&png).unwrap();
    let bytes: Vec<u8> = img.data.iter().map(|&v| v as u8).collect();
    write_rgb_jpeg(
        &png.with_extension("jpg"),
        img.width,
        img.height,
        &bytes,
        95,
    )
    .unwrap();
    let ds = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap();
    assert!(ds
        .sample(0)
        .unwrap()
        .image
        .ends_with("images/train_00000.jpg"));
    assert_eq!(ds.load(0, None).unwrap().image.size(), img.size());
}

#[test]
fn synthetic_list_opens_with_classes() {
    let dir = tempdir();
    write_list(dir.path(), 3, 2, 8).unwrap();
    let ds = Dataset::open(DatasetKind::List, dir.path(), "train").unwrap();
    assert_eq!(ds.num_classes(), None);
    let ds = ds
        .with_classes(rfnc_data::synthetic::seg_classes())
        .unwrap();
    assert_eq!(ds.num_classes(), Some(3));
    assert!(ds
        .sample(0)
        .unwrap()
        .image
        .ends_with("images/train_00000.jpg"));
    assert_eq!(label_values(&ds), BTreeSet::from([0, 1, 2, 255]));
}

#[test]
fn hand_made_list_skips_comments_and_blank_lines_and_keeps_absolute_paths() {
    let dir = tempdir();
    let root = dir.path();
    let (_, _) = image_and_label(root, "a", 5, 4, &[1; 20]);
    let (abs_image, abs_label) = image_and_label(root, "b", 3, 2, &[0, 1, 255, 1, 0, 0]);
    let text = format!(
        "# my data\r\n\r\na/image.png\ta/label.png\r\n   \n{}\t{}\n",
        abs_image.display(),
        abs_label.display()
    );
    std::fs::write(root.join("mine.txt"), text).unwrap();
    let ds = Dataset::open(DatasetKind::List, root, "mine").unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.sample(1).unwrap().image, abs_image);
    let s = ds.load(1, Some(2)).unwrap();
    assert_eq!(
        s.image.data[..6],
        rgb(3, 2)[..6].iter().map(|&v| v as f32).collect::<Vec<_>>()
    );
    assert_eq!(
        s.target,
        Target::Labels(rfnc_data::Plane {
            width: 3,
            height: 2,
            channels: 1,
            data: vec![0, 1, 255, 1, 0, 0]
        })
    );
}

#[test]
fn kind_names_round_trip() {
    for kind in DatasetKind::ALL {
        assert_eq!(DatasetKind::from_str(kind.name()).unwrap(), kind);
        assert_eq!(kind.to_string(), kind.name());
    }
    let err = DatasetKind::from_str("coco").unwrap_err().to_string();
    assert!(err.contains("coco") && err.contains("voc_aug"), "{err}");
}

#[test]
fn with_classes_is_refused_for_depth_and_out_of_range() {
    let dir = tempdir();
    write_nyud(dir.path(), 1, 0, 9).unwrap();
    let depth = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap();
    assert!(depth.with_classes(3).is_err());
    let seg = Dataset::open(DatasetKind::NyudSeg, dir.path(), "train").unwrap();
    assert!(seg.clone().with_classes(0).is_err());
    assert!(seg.clone().with_classes(256).is_err());
    assert_eq!(seg.with_classes(255).unwrap().num_classes(), Some(255));
}
