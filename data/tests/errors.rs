//! Every bad-data case gives its own error naming the file; bad bytes never panic.

mod common;

use common::{cityscapes, image_and_label, names, open_voc, tempdir, voc};
use rfnc_data::encode::{write_gray16_png, write_gray8_png, write_palette_png, write_rgb_png};
use rfnc_data::rng::Rng;
use rfnc_data::synthetic::write_nyud;
use rfnc_data::{DataError, Dataset, DatasetKind};

fn truncate(path: &std::path::Path, keep: usize) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..keep]).unwrap();
}

#[test]
fn truncated_or_garbage_images_are_decode_errors() {
    let dir = voc(2, 0, 1);
    let ds = open_voc(dir.path(), "train");
    let image = ds.sample(0).unwrap().image.clone();
    let len = std::fs::metadata(&image).unwrap().len() as usize;
    truncate(&image, len / 2);
    let err = ds.load(0, None).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { .. }) && names(&err, &image),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");

    std::fs::write(&image, b"this is not an image at all").unwrap();
    let err = ds.load(0, None).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { .. }) && names(&err, &image),
        "{err}"
    );
}

#[test]
fn truncated_png_image_and_label_are_decode_errors() {
    let dir = tempdir();
    let (image, label) = image_and_label(dir.path(), "x", 30, 20, &[1; 600]);
    std::fs::write(dir.path().join("train.txt"), "x/image.png\tx/label.png\n").unwrap();
    let ds = Dataset::open(DatasetKind::List, dir.path(), "train").unwrap();
    for path in [&image, &label] {
        let good = std::fs::read(path).unwrap();
        truncate(path, good.len() / 2);
        let err = ds.load(0, None).unwrap_err();
        assert!(
            matches!(err, DataError::Decode { .. }) && names(&err, path),
            "{err}"
        );
        std::fs::write(path, good).unwrap();
    }
    assert!(ds.load(0, None).is_ok());
}

/// Truncations at every length and random byte changes of a JPEG, a palette PNG and a
/// 16-bit PNG: each load returns, never panics, and a JPEG cut before its end is an error.
#[test]
fn fuzzed_files_never_panic() {
    let dir = tempdir();
    write_nyud(dir.path(), 1, 0, 3).unwrap();
    let depth = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap();
    let vdir = voc(1, 0, 4);
    let seg = open_voc(vdir.path(), "train");
    let mut rng = Rng::new(11);
    let cases = [
        (&seg, seg.sample(0).unwrap().image.clone()),
        (&seg, seg.sample(0).unwrap().target.clone()),
        (&depth, depth.sample(0).unwrap().target.clone()),
    ];
    for (ds, path) in cases {
        let good = std::fs::read(&path).unwrap();
        let is_jpeg = path.extension().is_some_and(|e| e == "jpg");
        for keep in (0..good.len() - 2).step_by(7) {
            std::fs::write(&path, &good[..keep]).unwrap();
            let result = ds.load(0, None);
            assert!(!is_jpeg || result.is_err(), "JPEG cut at {keep} decoded");
        }
        for _ in 0..150 {
            let mut bad = good.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(bad.len() as u64) as usize;
                bad[at] = rng.next_u64() as u8;
            }
            std::fs::write(&path, &bad).unwrap();
            let _ = ds.load(0, None);
        }
        std::fs::write(&path, &good).unwrap();
        assert!(ds.load(0, None).is_ok());
    }
}

#[test]
fn label_of_another_size_gives_both_sizes() {
    let dir = voc(1, 0, 2);
    let ds = open_voc(dir.path(), "train");
    let s = ds.load(0, None).unwrap();
    let paths = ds.sample(0).unwrap();
    let (w, h) = (s.image.width + 3, s.image.height);
    write_palette_png(&paths.target, w, h, &vec![0; w * h]).unwrap();
    let err = ds.load(0, None).unwrap_err();
    let DataError::SizeMismatch {
        size, image_size, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((*size, *image_size), ((w, h), s.image.size()));
    let msg = err.to_string();
    assert!(
        names(&err, &paths.target) && names(&err, &paths.image),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{w}x{h}")) && msg.contains(&format!("{}x{h}", w - 3)),
        "{msg}"
    );
}

#[test]
fn bad_label_values_give_value_count_and_first_position() {
    let dir = tempdir();
    let mut labels = vec![0u8; 6 * 4];
    labels[2 * 6 + 4] = 30; // (x 4, y 2)
    labels[3 * 6 + 1] = 21;
    labels[3 * 6 + 2] = 255;
    image_and_label(dir.path(), "x", 6, 4, &labels);
    std::fs::write(dir.path().join("train.txt"), "x/image.png\tx/label.png").unwrap();
    let ds = Dataset::open(DatasetKind::List, dir.path(), "train")
        .unwrap()
        .with_classes(21)
        .unwrap();
    let err = ds.load(0, None).unwrap_err();
    let DataError::BadLabels {
        value,
        count,
        first,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((*value, *count, *first), (30, 2, (4, 2)));
    let msg = err.to_string();
    assert!(
        names(&err, &dir.path().join("x/label.png")) && msg.contains("30"),
        "{msg}"
    );
    // Without classes every value is a label; with an override fewer are.
    let any = Dataset::open(DatasetKind::List, dir.path(), "train").unwrap();
    assert!(any.load(0, None).is_ok());
    let DataError::BadLabels {
        value,
        count,
        first,
        ..
    } = any.load(0, Some(22)).unwrap_err()
    else {
        panic!("expected bad labels")
    };
    assert_eq!((value, count, first), (30, 1, (4, 2)));
}

#[test]
fn synthetic_labels_fail_a_smaller_class_override() {
    let dir = voc(3, 0, 3);
    let ds = open_voc(dir.path(), "train");
    let errors =
        (0..3).filter(|&i| matches!(ds.load(i, Some(1)), Err(DataError::BadLabels { .. })));
    assert_eq!(
        errors.count(),
        3,
        "every synthetic sample has a shape (class >= 1)"
    );
    assert!(matches!(ds.load(0, Some(0)), Err(DataError::Invalid(_))));
    assert!(matches!(ds.load(3, None), Err(DataError::Invalid(_))));
}

#[test]
fn nyud_label_above_40_is_bad() {
    let dir = tempdir();
    write_nyud(dir.path(), 1, 0, 4).unwrap();
    let ds = Dataset::open(DatasetKind::NyudSeg, dir.path(), "train").unwrap();
    let s = ds.load(0, None).unwrap();
    let path = &ds.sample(0).unwrap().target;
    let (w, h) = s.image.size();
    let mut stored = vec![40u8; w * h];
    stored[w + 1] = 41;
    write_gray8_png(path, w, h, &stored).unwrap();
    let err = ds.load(0, None).unwrap_err();
    let DataError::BadLabels {
        value,
        count,
        first,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((*value, *count, *first), (41, 1, (1, 1)));
    assert!(err.to_string().contains("0 = unlabelled"), "{err}");
}

#[test]
fn rgb_label_png_is_a_pixel_format_error() {
    let dir = voc(1, 0, 5);
    let ds = open_voc(dir.path(), "train");
    let s = ds.load(0, None).unwrap();
    let path = &ds.sample(0).unwrap().target;
    write_rgb_png(
        path,
        s.image.width,
        s.image.height,
        &vec![0; s.image.data.len()],
    )
    .unwrap();
    let err = ds.load(0, None).unwrap_err();
    assert!(
        matches!(err, DataError::PixelFormat { .. }) && names(&err, path),
        "{err}"
    );
    assert!(err.to_string().contains("is an 8-bit RGB PNG"), "{err}");
}

#[test]
fn depth_that_is_not_16_bit_greyscale_says_what_it_is() {
    let dir = tempdir();
    write_nyud(dir.path(), 1, 0, 6).unwrap();
    let ds = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap();
    let s = ds.load(0, None).unwrap();
    let path = &ds.sample(0).unwrap().target;
    let (w, h) = s.image.size();
    write_gray8_png(path, w, h, &vec![7; w * h]).unwrap();
    let err = ds.load(0, None).unwrap_err();
    assert!(
        matches!(err, DataError::PixelFormat { .. }) && names(&err, path),
        "{err}"
    );
    assert!(
        err.to_string().contains("is an 8-bit greyscale PNG"),
        "{err}"
    );
    assert!(err.to_string().contains("16-bit greyscale"), "{err}");
    write_gray16_png(path, w, h + 1, &vec![7; w * (h + 1)]).unwrap();
    assert!(matches!(
        ds.load(0, None),
        Err(DataError::SizeMismatch { .. })
    ));
}

#[test]
fn file_missing_from_split_names_file_and_list() {
    let dir = voc(2, 0, 7);
    let paths = open_voc(dir.path(), "train").sample(1).unwrap().clone();
    let list = dir.path().join("ImageSets/Segmentation/train.txt");
    for missing in [&paths.target, &paths.image] {
        let saved = std::fs::read(missing).unwrap();
        std::fs::remove_file(missing).unwrap();
        let err = Dataset::open(DatasetKind::Voc, dir.path(), "train").unwrap_err();
        let DataError::MissingFile { path, listed_by } = &err else {
            panic!("{err}")
        };
        assert_eq!((path, listed_by), (missing, &list));
        assert!(names(&err, missing) && names(&err, &list), "{err}");
        std::fs::write(missing, saved).unwrap();
    }
}

#[test]
fn file_removed_after_open_is_an_io_error_naming_it() {
    let dir = voc(1, 0, 8);
    let ds = open_voc(dir.path(), "train");
    let image = ds.sample(0).unwrap().image.clone();
    std::fs::remove_file(&image).unwrap();
    let err = ds.load(0, None).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && names(&err, &image),
        "{err}"
    );
}

#[test]
fn cityscapes_missing_label_names_the_split_directory() {
    let dir = cityscapes();
    let label = dir
        .path()
        .join("gtFine/train/bonn/bonn_000001_000019_gtFine_labelTrainIds.png");
    std::fs::remove_file(&label).unwrap();
    let err = Dataset::open(DatasetKind::Cityscapes, dir.path(), "train").unwrap_err();
    let DataError::MissingFile { path, listed_by } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (path, listed_by),
        (&label, &dir.path().join("leftImg8bit/train"))
    );
}

#[test]
fn empty_splits_name_their_list_or_directory() {
    let dir = voc(1, 0, 9);
    let list = dir.path().join("ImageSets/Segmentation/empty.txt");
    std::fs::write(&list, "# nothing here\n\n").unwrap();
    let err = Dataset::open(DatasetKind::Voc, dir.path(), "empty").unwrap_err();
    assert!(
        matches!(&err, DataError::EmptySplit { path } if *path == list),
        "{err}"
    );
    assert!(names(&err, &list));

    let city = cityscapes();
    let split_dir = city.path().join("leftImg8bit/test");
    std::fs::create_dir_all(split_dir.join("berlin")).unwrap();
    let err = Dataset::open(DatasetKind::Cityscapes, city.path(), "test").unwrap_err();
    assert!(
        matches!(&err, DataError::EmptySplit { path } if *path == split_dir),
        "{err}"
    );
}

#[test]
fn missing_split_list_is_an_io_error_naming_it() {
    let dir = voc(1, 0, 10);
    let err = Dataset::open(DatasetKind::Voc, dir.path(), "trainval").unwrap_err();
    let list = dir.path().join("ImageSets/Segmentation/trainval.txt");
    assert!(
        matches!(err, DataError::Io { .. }) && names(&err, &list),
        "{err}"
    );
    let err = Dataset::open(DatasetKind::Cityscapes, dir.path(), "train").unwrap_err();
    assert!(names(&err, &dir.path().join("leftImg8bit/train")), "{err}");
}

#[test]
fn list_line_without_tab_names_file_and_line() {
    let dir = tempdir();
    image_and_label(dir.path(), "x", 2, 2, &[0; 4]);
    let list = dir.path().join("train.txt");
    std::fs::write(
        &list,
        "# pairs\nx/image.png\tx/label.png\nx/image.png x/label.png\n",
    )
    .unwrap();
    let err = Dataset::open(DatasetKind::List, dir.path(), "train").unwrap_err();
    let DataError::BadListLine { path, line, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!((path, *line), (&list, 3));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:3:", list.display())) && msg.contains("no tab"),
        "{msg}"
    );

    std::fs::write(&list, "x/image.png\tx/label.png\textra\n").unwrap();
    let err = Dataset::open(DatasetKind::List, dir.path(), "train").unwrap_err();
    assert!(
        matches!(err, DataError::BadListLine { line: 1, .. }),
        "{err}"
    );
    std::fs::write(&list, "x/image.png\t\n").unwrap();
    assert!(matches!(
        Dataset::open(DatasetKind::List, dir.path(), "train"),
        Err(DataError::BadListLine { .. })
    ));
}

#[test]
fn id_list_line_with_two_words_is_refused() {
    let dir = voc(1, 0, 11);
    let list = dir.path().join("ImageSets/Segmentation/train.txt");
    std::fs::write(&list, "train_00000 1\n").unwrap();
    let err = Dataset::open(DatasetKind::Voc, dir.path(), "train").unwrap_err();
    assert!(
        matches!(err, DataError::BadListLine { line: 1, .. }) && names(&err, &list),
        "{err}"
    );
}

#[test]
fn split_names_with_separators_are_refused() {
    let dir = voc(1, 0, 12);
    for split in ["", "..", "../train", "a/b", "a\\b"] {
        let err = Dataset::open(DatasetKind::Voc, dir.path(), split).unwrap_err();
        assert!(matches!(err, DataError::Invalid(_)), "{split}: {err}");
    }
}
