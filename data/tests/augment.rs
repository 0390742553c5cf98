//! Augmentation: crop sizes, padding values, flips that move image and labels together,
//! nearest-neighbour targets, normalisation, evaluation examples.

use std::collections::BTreeSet;

use rfnc_data::augment::{augment, eval_example, train_example, AugmentParams};
use rfnc_data::rng::Rng;
use rfnc_data::{AugmentConfig, Plane, Sample, Target};

/// A `w x h` sample whose label at each pixel is `labels[(x + 2y) % 3]` and whose red
/// channel is 20 times the label, so the label can be read back from the image.
fn coded_sample(w: usize, h: usize, labels: [u8; 3]) -> Sample {
    let mut image = Vec::new();
    let mut target = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let l = labels[(x + 2 * y) % 3];
            image.extend([20.0 * l as f32, (x * 3) as f32, (y * 5) as f32]);
            target.push(l);
        }
    }
    Sample {
        index: 7,
        image: Plane {
            width: w,
            height: h,
            channels: 3,
            data: image,
        },
        target: Target::Labels(Plane {
            width: w,
            height: h,
            channels: 1,
            data: target,
        }),
    }
}

fn unit_norm(crop: (usize, usize)) -> AugmentConfig {
    AugmentConfig {
        mean: [0.0; 3],
        std: [1.0; 3],
        ..AugmentConfig::new(crop)
    }
}

#[test]
fn crops_have_the_crop_size_whatever_the_image_size() {
    let mut rng = Rng::new(3);
    for i in 0..40u64 {
        let (w, h) = (1 + rng.below(60) as usize, 1 + rng.below(60) as usize);
        let crop = (1 + rng.below(50) as usize, 1 + rng.below(50) as usize);
        let e = train_example(
            &coded_sample(w, h, [0, 1, 2]),
            &AugmentConfig::new(crop),
            5,
            0,
            i,
        );
        assert_eq!((e.height, e.width, e.index), (crop.0, crop.1, 7));
        assert_eq!(e.image.len(), 3 * crop.0 * crop.1);
        assert_eq!(e.labels.as_ref().map(Vec::len), Some(crop.0 * crop.1));
        assert!(e.depth.is_none());
    }
}

#[test]
fn padding_is_zero_after_normalisation_and_ignore_in_labels() {
    let s = coded_sample(5, 4, [1, 2, 3]);
    let mut cfg = AugmentConfig::new((6, 9));
    cfg.mean = [11.0, 22.0, 33.0];
    let params = AugmentParams {
        scaled: (4, 5),
        offset: (0, 0),
        flip: false,
    };
    let e = augment(&s, &cfg, &params);
    let labels = e.labels.as_ref().unwrap();
    for y in 0..6 {
        for x in 0..9 {
            let label = labels[y * 9 + x];
            let pixels: Vec<f32> = (0..3).map(|c| e.image[(c * 6 + y) * 9 + x]).collect();
            if y < 4 && x < 5 {
                let src = s.image.pixel(x, y);
                let want: Vec<f32> = (0..3)
                    .map(|c| (src[c] - cfg.mean[c]) / cfg.std[c])
                    .collect();
                assert_eq!(
                    (pixels, label),
                    (want, i32::from(s.image.pixel(x, y)[0] as u8 / 20))
                );
            } else {
                assert_eq!(
                    (pixels, label),
                    (vec![0.0; 3], 255),
                    "padding at ({x}, {y})"
                );
            }
        }
    }
}

#[test]
fn depth_pads_with_zero_and_keeps_values() {
    let depth: Vec<f32> = (0..12).map(|i| 1.0 + i as f32).collect();
    let s = Sample {
        index: 0,
        image: Plane::filled(4, 3, 3, 100.0),
        target: Target::Depth(Plane {
            width: 4,
            height: 3,
            channels: 1,
            data: depth.clone(),
        }),
    };
    let params = AugmentParams {
        scaled: (6, 8),
        offset: (1, 2),
        flip: false,
    };
    let e = augment(&s, &AugmentConfig::new((8, 8)), &params);
    let d = e.depth.unwrap();
    assert!(e.labels.is_none());
    // Rows 0..5 of the crop read scaled rows 1..6; columns 0..6 read scaled columns 2..8.
    for y in 0..8 {
        for x in 0..8 {
            let v = d[y * 8 + x];
            if y < 5 && x < 6 {
                // Scaled (row, column) (sy, sx) reads source (sy / 2, sx / 2).
                let (sy, sx) = (y + 1, x + 2);
                assert_eq!(v, depth[sy / 2 * 4 + sx / 2], "({x}, {y})");
            } else {
                assert_eq!(v, 0.0, "padding at ({x}, {y})");
            }
        }
    }
}

#[test]
fn flip_mirrors_image_and_labels_together() {
    let s = coded_sample(7, 5, [0, 1, 2]);
    let cfg = unit_norm((5, 7));
    let plain = augment(
        &s,
        &cfg,
        &AugmentParams {
            scaled: (5, 7),
            offset: (0, 0),
            flip: false,
        },
    );
    let flipped = augment(
        &s,
        &cfg,
        &AugmentParams {
            scaled: (5, 7),
            offset: (0, 0),
            flip: true,
        },
    );
    let (pl, fl) = (plain.labels.unwrap(), flipped.labels.unwrap());
    for y in 0..5 {
        for x in 0..7 {
            let m = 6 - x;
            assert_eq!(fl[y * 7 + x], pl[y * 7 + m]);
            for c in 0..3 {
                assert_eq!(
                    flipped.image[(c * 5 + y) * 7 + x],
                    plain.image[(c * 5 + y) * 7 + m]
                );
            }
        }
    }
    assert_ne!(pl, fl, "the sample is not symmetric");
}

/// With scale 1, any crop offset and flip keeps each label with its own pixel: the label
/// read back from the red channel matches.
#[test]
fn random_crops_and_flips_keep_labels_on_their_pixels() {
    let s = coded_sample(23, 17, [0, 1, 2]);
    let cfg = AugmentConfig {
        scale: (1.0, 1.0),
        ..unit_norm((12, 30))
    };
    let mut flips = BTreeSet::new();
    for position in 0..30 {
        let e = train_example(&s, &cfg, 1, 2, position);
        let labels = e.labels.unwrap();
        // The image is 7 columns narrower than the crop: padding, on the left when flipped.
        let padded = labels.iter().filter(|&&l| l == 255).count();
        assert_eq!(padded, 7 * 12);
        for (i, &l) in labels.iter().enumerate() {
            let want = if l == 255 { 0.0 } else { 20.0 * l as f32 };
            assert_eq!(e.image[i], want, "label {l} at ({}, {})", i % 30, i / 30);
        }
        flips.insert(labels[0] == 255);
    }
    assert_eq!(flips.len(), 2, "both flipped and unflipped crops occur");
}

#[test]
fn nearest_neighbour_labels_hold_only_original_values() {
    let s = coded_sample(31, 19, [3, 7, 9]);
    let cfg = AugmentConfig {
        scale: (0.3, 2.5),
        ..AugmentConfig::new((24, 24))
    };
    let (lo, hi) = (0.0f32, 180.0f32);
    let mut all = BTreeSet::new();
    for position in 0..60 {
        let e = train_example(&s, &cfg, 9, 0, position);
        all.extend(e.labels.unwrap());
        // Bilinear values stay between the source's extremes (before normalisation).
        for c in 0..3 {
            for &v in &e.image[c * 576..(c + 1) * 576] {
                let raw = v * cfg.std[c] + cfg.mean[c];
                assert!(v == 0.0 || (lo - 1e-3..=hi + 1e-3).contains(&raw), "{raw}");
            }
        }
    }
    assert_eq!(all, BTreeSet::from([3, 7, 9, 255]));
}

#[test]
fn params_respect_the_config() {
    let cfg = AugmentConfig::new((20, 30));
    let mut flips = BTreeSet::new();
    for k in 0..200 {
        let p = AugmentParams::draw(&cfg, (40, 50), k);
        assert!(
            (28..=52).contains(&p.scaled.0) && (35..=65).contains(&p.scaled.1),
            "{p:?}"
        );
        assert!(p.offset.0 + 20 <= p.scaled.0.max(20) && p.offset.1 + 30 <= p.scaled.1.max(30));
        flips.insert(p.flip);
    }
    assert_eq!(flips.len(), 2);
    let no_flip = AugmentConfig {
        flip: false,
        ..cfg.clone()
    };
    assert!((0..100).all(|k| !AugmentParams::draw(&no_flip, (40, 50), k).flip));
    assert_eq!(
        AugmentParams::draw(&cfg, (40, 50), 5),
        AugmentParams::draw(&cfg, (40, 50), 5)
    );
}

#[test]
fn train_examples_depend_only_on_seed_epoch_and_position() {
    let s = coded_sample(40, 30, [0, 1, 2]);
    let cfg = AugmentConfig::new((16, 16));
    let a = train_example(&s, &cfg, 1, 2, 3);
    assert_eq!(a, train_example(&s, &cfg, 1, 2, 3));
    assert_ne!(a, train_example(&s, &cfg, 1, 2, 4));
    assert_ne!(a, train_example(&s, &cfg, 1, 3, 3));
    assert_ne!(a, train_example(&s, &cfg, 2, 2, 3));
}

#[test]
fn eval_example_is_the_normalised_full_image_and_pads_to_a_fixed_size() {
    let s = coded_sample(5, 3, [0, 1, 2]);
    let cfg = AugmentConfig::new((100, 100));
    let e = eval_example(&s, &cfg);
    assert_eq!((e.height, e.width), (3, 5));
    for y in 0..3 {
        for x in 0..5 {
            for c in 0..3 {
                let want = (s.image.pixel(x, y)[c] - cfg.mean[c]) / cfg.std[c];
                assert_eq!(e.image[(c * 3 + y) * 5 + x], want);
            }
        }
    }
    let Target::Labels(l) = &s.target else {
        unreachable!()
    };
    assert_eq!(
        e.labels.as_ref().unwrap(),
        &l.data.iter().map(|&v| v as i32).collect::<Vec<_>>()
    );

    let p = e.padded(4, 6).unwrap();
    assert_eq!((p.height, p.width, p.image.len()), (4, 6, 72));
    assert_eq!(p.image[(2 * 4 + 1) * 6 + 3], e.image[(2 * 3 + 1) * 5 + 3]);
    assert_eq!(p.image[(2 * 4 + 3) * 6 + 3], 0.0);
    let labels = p.labels.unwrap();
    assert_eq!(
        (labels[5], labels[4], labels[3 * 6]),
        (255, e.labels.as_ref().unwrap()[4], 255)
    );
    assert!(e.padded(2, 6).is_err());
}

#[test]
fn bad_configs_are_refused() {
    let good = AugmentConfig::new((8, 8));
    assert!(good.validate().is_ok());
    let bad = [
        AugmentConfig {
            crop: (0, 8),
            ..good.clone()
        },
        AugmentConfig {
            scale: (0.0, 1.0),
            ..good.clone()
        },
        AugmentConfig {
            scale: (1.2, 1.0),
            ..good.clone()
        },
        AugmentConfig {
            scale: (f32::NAN, 1.0),
            ..good.clone()
        },
        AugmentConfig {
            std: [1.0, 0.0, 1.0],
            ..good.clone()
        },
        AugmentConfig {
            mean: [f32::INFINITY, 0.0, 1.0],
            ..good.clone()
        },
    ];
    for cfg in bad {
        assert!(cfg.validate().is_err(), "{cfg:?}");
    }
}

#[test]
fn a_greyscale_plane_is_replicated_to_rgb() {
    let grey = Sample {
        index: 0,
        image: Plane {
            width: 2,
            height: 1,
            channels: 1,
            data: vec![10.0, 200.0],
        },
        target: Target::Labels(Plane {
            width: 2,
            height: 1,
            channels: 1,
            data: vec![0, 1],
        }),
    };
    let cfg = unit_norm((1, 2));
    let params = AugmentParams {
        scaled: (1, 2),
        offset: (0, 0),
        flip: false,
    };
    assert_eq!(
        augment(&grey, &cfg, &params).image,
        [10.0, 200.0, 10.0, 200.0, 10.0, 200.0]
    );
    assert_eq!(
        eval_example(&grey, &cfg).image,
        [10.0, 200.0, 10.0, 200.0, 10.0, 200.0]
    );
}
