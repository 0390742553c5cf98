//! The evaluation protocol: PyTorch's bilinear resize, sliding windows (exact cover,
//! overlap averaging, padding), scales and flips, and the segmentation and depth metrics
//! against values computed by hand.

use rfnc_driver::evaluate::{
    argmax, predict_multiscale, predict_windows, resize_bilinear, softmax_channels, stride_for,
    upsampling, window_origins, Confusion, DepthMetrics, EvalError, Protocol, Task, IMAGE_CHANNELS,
    MIN_DEPTH,
};

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "at {i}: {x} vs {y}\n{a:?}\n{b:?}");
    }
}

/// A 3 x h x w image whose every value differs: channel c, row y, column x.
fn image(h: usize, w: usize) -> Vec<f32> {
    (0..IMAGE_CHANNELS * h * w)
        .map(|i| (i as f32 * 0.37).sin())
        .collect()
}

// --- resize -------------------------------------------------------------------------------

/// 2x2 -> 4x4, align_corners=False: along an axis of 2 -> 4 the source coordinate is
/// `(d + 0.5) * 2/4 - 0.5` = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (both taps the last
/// pixel), so a row [a, b] becomes [a, .75a+.25b, .25a+.75b, b]: [1, 2] -> [1, 1.25, 1.75, 2]
/// and [3, 4] -> [3, 3.25, 3.75, 4]; the middle rows mix those rows by .75/.25. These are
/// the values `F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4),
/// mode="bilinear", align_corners=False)` prints.
#[test]
fn resize_matches_pytorch_upsampling_by_two() {
    let y = resize_bilinear(&[1.0, 2.0, 3.0, 4.0], 1, (2, 2), (4, 4)).unwrap();
    #[rustfmt::skip]
    let expected = [
        1.0, 1.25, 1.75, 2.0,
        1.5, 1.75, 2.25, 2.5,
        2.5, 2.75, 3.25, 3.5,
        3.0, 3.25, 3.75, 4.0,
    ];
    close(&y, &expected, 1e-6);
}

/// 1x4 -> 1x2: source `(d + .5) * 2 - .5` = 0.5, 2.5, the means of pairs; 1x3 -> 1x2:
/// `(d + .5) * 1.5 - .5` = 0.25, 1.75. Channels are resized independently.
#[test]
fn resize_matches_pytorch_downsampling_per_channel() {
    let y = resize_bilinear(
        &[0.0, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0, 40.0],
        2,
        (1, 4),
        (1, 2),
    );
    close(&y.unwrap(), &[0.5, 2.5, 15.0, 35.0], 1e-6);
    let y = resize_bilinear(&[0.0, 1.0, 2.0], 1, (1, 3), (1, 2)).unwrap();
    close(&y, &[0.25, 1.75], 1e-6);
    let x = image(3, 5);
    assert_eq!(resize_bilinear(&x, 3, (3, 5), (3, 5)).unwrap(), x);
}

#[test]
fn resize_rejects_wrong_sizes() {
    let e = resize_bilinear(&[1.0; 5], 1, (2, 2), (4, 4)).unwrap_err();
    assert!(e.0.contains("5 values where 4"), "{e}");
    assert!(resize_bilinear(&[], 1, (0, 2), (4, 4)).is_err());
}

// --- windows ------------------------------------------------------------------------------

#[test]
fn window_origins_cover_the_size_with_the_last_aligned_to_the_end() {
    assert_eq!(window_origins(8, 4, 4).unwrap(), [0, 4]);
    assert_eq!(window_origins(10, 4, 4).unwrap(), [0, 4, 6]);
    assert_eq!(window_origins(9, 4, 2).unwrap(), [0, 2, 4, 5]);
    assert_eq!(window_origins(4, 4, 3).unwrap(), [0]);
    assert_eq!(window_origins(3, 4, 1).unwrap(), [0]);
    assert_eq!(stride_for((6, 9), 2.0 / 3.0).unwrap(), (4, 6));
    assert_eq!(stride_for((1, 2), 0.01).unwrap(), (1, 1));
}

#[test]
fn bad_strides_are_errors() {
    let e = window_origins(10, 4, 0).unwrap_err();
    assert!(e.0.contains("stride 0"), "{e}");
    let e = window_origins(10, 4, 5).unwrap_err();
    assert!(e.0.contains("stride 5") && e.0.contains("crop 4"), "{e}");
    assert!(window_origins(10, 0, 0).is_err());
    assert!(stride_for((4, 4), 0.0).is_err());
    assert!(stride_for((4, 4), 1.5).is_err());
    assert!(stride_for((4, 4), f64::NAN).is_err());
    let x = image(4, 4);
    let mut run = |_: &[f32]| -> Result<Vec<f32>, EvalError> { Ok(vec![0.0; 16]) };
    let e = predict_windows(&x, (4, 4), (4, 4), (5, 4), 1, &mut run).unwrap_err();
    assert!(e.0.contains("stride 5"), "{e}");
    let e = predict_windows(&x, (4, 4), (4, 4), (4, 0), 1, &mut run).unwrap_err();
    assert!(e.0.contains("stride 0"), "{e}");
}

/// A callback that depends on the window's contents and on how often it was called, so
/// that two windows never give the same result: 2 channels of a `ch x cw` window.
fn numbered(calls: &mut usize, window: &[f32], (ch, cw): (usize, usize)) -> Vec<f32> {
    *calls += 1;
    let plane = ch * cw;
    let mut out = window[..plane].iter().map(|v| v * 2.0).collect::<Vec<_>>();
    out.extend(window[plane..2 * plane].iter().map(|v| v + *calls as f32));
    out
}

#[test]
fn windows_covering_the_image_once_give_the_window_results_exactly() {
    let (h, w, crop) = (4, 6, (2, 3));
    let x = image(h, w);
    let mut calls = 0;
    let mut run = |win: &[f32]| Ok::<_, EvalError>(numbered(&mut calls, win, crop));
    let y = predict_windows(&x, (h, w), crop, crop, 2, &mut run).unwrap();
    assert_eq!(calls, 4);

    // The same windows, cut and placed by hand, in the same (row-major) order.
    let mut expected = vec![0.0f32; 2 * h * w];
    let mut calls = 0;
    for oy in [0, 2] {
        for ox in [0, 3] {
            let mut win = Vec::new();
            for c in 0..3 {
                for y in oy..oy + 2 {
                    win.extend_from_slice(&x[(c * h + y) * w + ox..][..3]);
                }
            }
            let r = numbered(&mut calls, &win, crop);
            for c in 0..2 {
                for y in 0..2 {
                    for xx in 0..3 {
                        expected[(c * h + oy + y) * w + ox + xx] = r[(c * 2 + y) * 3 + xx];
                    }
                }
            }
        }
    }
    assert_eq!(y, expected);
}

/// Channel 0 returns the window's first image channel (so the average must give the image
/// back wherever the windows overlap); channel 1 returns the position inside the window,
/// `x + 10 y`, whose average over the covering windows is known.
#[test]
fn overlapping_windows_are_averaged_per_pixel() {
    let (h, w, crop) = (4, 5, (3, 3));
    let x = image(h, w);
    let mut run = |win: &[f32]| -> Result<Vec<f32>, EvalError> {
        let mut out = win[..9].to_vec();
        out.extend((0..9).map(|i| (i % 3) as f32 + 10.0 * (i / 3) as f32));
        Ok(out)
    };
    let y = predict_windows(&x, (h, w), crop, (1, 1), 2, &mut run).unwrap();
    close(&y[..h * w], &x[..h * w], 1e-6);
    // Columns: origins 0, 1, 2; pixel x is covered by the windows with o <= x < o + 3, whose
    // local x averages to 0, 0.5, 1, 1.5, 2. Rows: origins 0, 1; local y 0, 0.5, 1.5, 2.
    let col = [0.0, 0.5, 1.0, 1.5, 2.0];
    let row = [0.0, 0.5, 1.5, 2.0];
    let expected: Vec<f32> = (0..h * w).map(|i| col[i % w] + 10.0 * row[i / w]).collect();
    close(&y[h * w..], &expected, 1e-5);
}

#[test]
fn images_smaller_than_the_crop_are_padded_with_zero_and_cropped_back() {
    let (h, w, crop) = (2, 3, (4, 4));
    let x = image(h, w);
    let mut calls = 0;
    let mut run = |win: &[f32]| -> Result<Vec<f32>, EvalError> {
        calls += 1;
        assert_eq!(win.len(), 3 * 16);
        for c in 0..3 {
            for yy in 0..4 {
                for xx in 0..4 {
                    let v = win[(c * 4 + yy) * 4 + xx];
                    if yy < h && xx < w {
                        assert_eq!(v, x[(c * h + yy) * w + xx]);
                    } else {
                        assert_eq!(v, 0.0, "padding at {c},{yy},{xx}");
                    }
                }
            }
        }
        Ok(win[16..32].to_vec())
    };
    let y = predict_windows(&x, (h, w), crop, (2, 2), 1, &mut run).unwrap();
    assert_eq!(calls, 1);
    assert_eq!(y, x[h * w..2 * h * w]);
}

#[test]
fn wrong_window_results_and_callback_errors_are_reported() {
    let x = image(4, 4);
    let mut short = |_: &[f32]| -> Result<Vec<f32>, EvalError> { Ok(vec![0.0; 15]) };
    let e = predict_windows(&x, (4, 4), (4, 4), (4, 4), 1, &mut short).unwrap_err();
    assert!(e.0.contains("15 values where 16"), "{e}");
    let mut failing = |_: &[f32]| -> Result<Vec<f32>, EvalError> { Err(EvalError("boom".into())) };
    let e = predict_windows(&x, (4, 4), (4, 4), (4, 4), 1, &mut failing).unwrap_err();
    assert_eq!(e.0, "boom");
    let e = predict_windows(&x[1..], (4, 4), (4, 4), (4, 4), 1, &mut failing).unwrap_err();
    assert!(e.0.contains("3x4x4 image"), "{e}");
    // The driver's error takes these as user errors.
    let e: rfnc_driver::Error = EvalError("bad".into()).into();
    assert!(matches!(e, rfnc_driver::Error::User(..)));
}

/// A network with a 2x2 output for a 4x4 crop, upsampled to the window: the 2x2 -> 4x4
/// values of the resize test.
#[test]
fn upsampled_network_outputs_fill_the_window() {
    let net = |_: &[f32]| -> Result<Vec<f32>, EvalError> { Ok(vec![1.0, 2.0, 3.0, 4.0]) };
    let mut run = upsampling(1, (2, 2), (4, 4), net);
    let y = predict_windows(&image(4, 4), (4, 4), (4, 4), (4, 4), 1, &mut run).unwrap();
    close(&y[..4], &[1.0, 1.25, 1.75, 2.0], 1e-6);
    close(&y[12..], &[3.0, 3.25, 3.75, 4.0], 1e-6);
    let mut wrong = upsampling(1, (2, 3), (4, 4), net);
    assert!(predict_windows(&image(4, 4), (4, 4), (4, 4), (4, 4), 1, &mut wrong).is_err());
}

// --- scales and flips ---------------------------------------------------------------------

/// Scores for 3 classes that depend on the window's contents and the position in it.
fn scores(win: &[f32], (ch, cw): (usize, usize)) -> Vec<f32> {
    let plane = ch * cw;
    (0..3 * plane)
        .map(|i| {
            let (c, p) = (i / plane, i % plane);
            win[c * plane + p] * (c as f32 + 1.0) + (p % cw) as f32 * 0.1
        })
        .collect()
}

#[test]
fn one_scale_without_flip_is_the_window_prediction() {
    let (h, w, crop, stride) = (7, 9, (4, 4), (3, 3));
    let x = image(h, w);
    let mut run = |win: &[f32]| Ok::<_, EvalError>(scores(win, crop));
    let windows = predict_windows(&x, (h, w), crop, stride, 3, &mut run).unwrap();
    let mut protocol = Protocol::single(crop, 3, Task::Segmentation);
    protocol.stride = stride;
    let probabilities = predict_multiscale(&x, (h, w), &protocol, &mut run).unwrap();
    let mut expected = windows.clone();
    softmax_channels(&mut expected, 3, h * w).unwrap();
    assert_eq!(probabilities, expected);
    assert_eq!(
        argmax(&probabilities, 3, h * w).unwrap(),
        argmax(&windows, 3, h * w).unwrap()
    );
    protocol.task = Task::Depth;
    assert_eq!(
        predict_multiscale(&x, (h, w), &protocol, &mut run).unwrap(),
        windows
    );
}

/// A per-pixel callback commutes with mirroring, and so does the bilinear resize: flipping
/// changes nothing, at any scale, even where the window grid is not symmetric.
#[test]
fn flip_with_a_mirror_symmetric_network_changes_nothing() {
    let (h, w) = (5, 7);
    let x = image(h, w);
    let mut run = |win: &[f32]| -> Result<Vec<f32>, EvalError> {
        Ok(win.iter().map(|v| v * 3.0 - 1.0).collect())
    };
    let protocol = Protocol {
        crop: (4, 4),
        stride: (3, 3),
        scales: vec![0.75, 1.0, 1.25],
        flip: false,
        channels: 3,
        task: Task::Segmentation,
    };
    let plain = predict_multiscale(&x, (h, w), &protocol, &mut run).unwrap();
    let flipped = Protocol {
        flip: true,
        ..protocol.clone()
    };
    let both = predict_multiscale(&x, (h, w), &flipped, &mut run).unwrap();
    close(&both, &plain, 1e-5);
    for p in 0..h * w {
        let sum: f32 = (0..3).map(|c| both[c * h * w + p]).sum();
        assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
    }
}

/// A callback that returns the column inside the window is not mirror symmetric: with the
/// flip, each pixel averages column x and column w-1-x, (w-1)/2 everywhere.
#[test]
fn flip_averages_the_mirrored_prediction() {
    let (h, w) = (4, 6);
    let mut run = |_: &[f32]| -> Result<Vec<f32>, EvalError> {
        Ok((0..h * w).map(|i| (i % w) as f32).collect())
    };
    let mut protocol = Protocol::single((h, w), 1, Task::Depth);
    let plain = predict_multiscale(&image(h, w), (h, w), &protocol, &mut run).unwrap();
    assert_eq!(plain[..w], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    protocol.flip = true;
    let both = predict_multiscale(&image(h, w), (h, w), &protocol, &mut run).unwrap();
    assert_eq!(both, vec![2.5; h * w]);
}

#[test]
fn scaled_predictions_come_back_at_the_image_size() {
    let (h, w) = (6, 10);
    let mut sizes = Vec::new();
    let mut run = |win: &[f32]| -> Result<Vec<f32>, EvalError> {
        sizes.push(win.len());
        Ok(vec![2.0; win.len() / 3])
    };
    let protocol = Protocol {
        crop: (4, 8),
        stride: (2, 4),
        scales: vec![0.5, 1.5],
        flip: true,
        channels: 1,
        task: Task::Depth,
    };
    let y = predict_multiscale(&image(h, w), (h, w), &protocol, &mut run).unwrap();
    close(&y, &vec![2.0; h * w], 1e-6);
    // 0.5: 3x5, one window; 1.5: 9x15, rows 0, 2, 4, 5 and columns 0, 4, 7; each twice.
    assert_eq!(sizes.len(), 2 * (1 + 4 * 3));
    assert!(sizes.iter().all(|&n| n == 3 * 32));
}

#[test]
fn bad_scales_are_errors() {
    let x = image(5, 5);
    let mut run = |win: &[f32]| -> Result<Vec<f32>, EvalError> { Ok(win[..16].to_vec()) };
    let mut protocol = Protocol::single((4, 4), 1, Task::Depth);
    for (scales, message) in [
        (vec![], "at least one scale"),
        (vec![0.0], "scale 0"),
        (vec![1.0, -1.0], "scale -1"),
        (vec![f64::NAN], "scale NaN"),
        (vec![0.05], "makes the 5x5 image 0x0"),
        (vec![1e9], "outside 1..="),
    ] {
        protocol.scales = scales;
        let e = predict_multiscale(&x, (5, 5), &protocol, &mut run).unwrap_err();
        assert!(e.0.contains(message), "{e} lacks {message}");
    }
}

// --- segmentation metrics -----------------------------------------------------------------

/// Four classes: 0 and 1 in the ground truth, 2 only predicted, 3 nowhere; two ignored
/// pixels (one with a prediction outside the classes, which is not looked at).
fn confusion() -> Confusion {
    let labels = [0, 0, 0, 1, 1, 255, 255, 1, 0, 1, 0];
    let pred = [0, 0, 2, 1, 0, 9, 1, 1, 1, 2, 0];
    let mut m = Confusion::new(4);
    m.add(&pred, &labels, 255).unwrap();
    m
}

#[test]
fn segmentation_metrics_match_a_matrix_counted_by_hand() {
    let m = confusion();
    // (truth, prediction): (0,0) x3, (0,1), (0,2); (1,1) x2, (1,0), (1,2).
    #[rustfmt::skip]
    let expected = [
        3, 1, 1, 0,
        1, 2, 1, 0,
        0, 0, 0, 0,
        0, 0, 0, 0,
    ];
    assert_eq!(m.counts, expected);
    let s = m.metrics();
    assert_eq!(s.pixels, 9);
    assert_eq!(s.absent, [3]);
    let gt: Vec<u64> = s.per_class.iter().map(|c| c.gt_pixels).collect();
    let pred: Vec<u64> = s.per_class.iter().map(|c| c.pred_pixels).collect();
    assert_eq!((gt, pred), (vec![5, 4, 0, 0], vec![4, 3, 2, 0]));
    // IoU: 3 / (5 + 4 - 3), 2 / (4 + 3 - 2), 0 / 2 (only predicted), none (absent).
    let iou: Vec<Option<f64>> = s.per_class.iter().map(|c| c.iou).collect();
    assert_eq!(iou, [Some(0.5), Some(0.4), Some(0.0), None]);
    // Accuracy: 3/5, 2/4; none for the classes without ground truth.
    let acc: Vec<Option<f64>> = s.per_class.iter().map(|c| c.accuracy).collect();
    assert_eq!(acc, [Some(0.6), Some(0.5), None, None]);
    assert_eq!(s.pixel_accuracy, Some(5.0 / 9.0));
    assert!((s.mean_accuracy.unwrap() - 0.55).abs() < 1e-12);
    assert!((s.mean_iou.unwrap() - 0.3).abs() < 1e-12);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["per_class"][3]["iou"], serde_json::Value::Null);
    assert_eq!(json["absent"], serde_json::json!([3]));
}

#[test]
fn merged_matrices_add_up_and_empty_ones_have_no_means() {
    let mut m = confusion();
    m.merge(&confusion()).unwrap();
    assert_eq!(m.get(0, 0), 6);
    assert_eq!(m.metrics().mean_iou, confusion().metrics().mean_iou);
    let e = m.merge(&Confusion::new(3)).unwrap_err();
    assert!(e.0.contains("3 classes"), "{e}");
    let s = Confusion::new(2).metrics();
    assert_eq!(
        (s.pixel_accuracy, s.mean_iou, s.mean_accuracy),
        (None, None, None)
    );
    assert_eq!(s.absent, [0, 1]);
}

#[test]
fn labels_and_predictions_outside_the_classes_are_errors() {
    let mut m = Confusion::new(3);
    let e = m.add(&[0, 1], &[0, 3], 255).unwrap_err();
    assert!(
        e.0.contains("label 3") && e.0.contains("ignore label 255"),
        "{e}"
    );
    let e = m.add(&[0], &[-1], 255).unwrap_err();
    assert!(e.0.contains("label -1"), "{e}");
    let e = m.add(&[0, 5], &[0, 1], 255).unwrap_err();
    assert!(e.0.contains("prediction 5"), "{e}");
    assert!(m.add(&[0, 1], &[0], 255).is_err());
    assert_eq!(m, Confusion::new(3), "nothing is counted from a bad image");
}

#[test]
fn argmax_takes_the_first_maximum() {
    // Pixel 0: [1, 3, 3] -> 1; pixel 1: [2, 2, 0] -> 0; pixel 2: [NaN, 1, 0] -> 1.
    let s = [1.0, 2.0, f32::NAN, 3.0, 2.0, 1.0, 3.0, 0.0, 0.0];
    assert_eq!(argmax(&s, 3, 3).unwrap(), [1, 0, 1]);
    assert!(argmax(&s, 2, 3).is_err());
}

// --- depth metrics ------------------------------------------------------------------------

#[test]
fn depth_metrics_match_hand_computed_values() {
    // Valid pixels (d, g): (1, 1), (2, 1), (5, 4), (0 -> MIN_DEPTH, 2); invalid: g = 0, NaN.
    let pred = [1.0, 2.0, 5.0, 0.0, 3.0, f32::NAN];
    let gt = [1.0, 1.0, 4.0, 2.0, 0.0, f32::NAN];
    let mut m = DepthMetrics::new();
    m.add(&pred, &gt).unwrap();
    let r = m.finish().unwrap();
    let d = MIN_DEPTH;
    assert_eq!(r.pixels, 4);
    let rel = (0.0 + 1.0 + 0.25 + (2.0 - d) / 2.0) / 4.0;
    let rms = ((0.0 + 1.0 + 1.0 + (2.0 - d) * (2.0 - d)) / 4.0f64).sqrt();
    // log10 2 + log10 1.25 + log10 (2 / d) = log10 (2 * 1.25 * 2 / d).
    let log10 = (5.0 / d).log10() / 4.0;
    assert!((r.rel - rel).abs() < 1e-12, "{} vs {rel}", r.rel);
    assert!((r.rms - rms).abs() < 1e-12, "{} vs {rms}", r.rms);
    assert!((r.log10 - log10).abs() < 1e-12, "{} vs {log10}", r.log10);
    // Ratios 1, 2, 1.25, 2000: 1.25 is not < 1.25 but is < 1.5625; 2 > 1.953125.
    assert_eq!((r.delta1, r.delta2, r.delta3), (0.25, 0.5, 0.5));
}

#[test]
fn depth_accumulators_merge_and_reject_bad_input() {
    let (p1, g1) = ([1.0, 2.5], [1.2, 2.0]);
    let (p2, g2) = ([4.0, 1.0, 9.0], [3.0, 0.0, 10.0]);
    let mut a = DepthMetrics::new();
    a.add(&p1, &g1).unwrap();
    let mut b = DepthMetrics::new();
    b.add(&p2, &g2).unwrap();
    let mut both = DepthMetrics::new();
    both.add(&p1, &g1).unwrap();
    both.add(&p2, &g2).unwrap();
    a.merge(&b);
    assert_eq!(a.finish(), both.finish());
    assert_eq!(a.finish().unwrap().pixels, 4);
    assert_eq!(DepthMetrics::new().finish(), None);
    let e = a.add(&[f32::INFINITY], &[1.0]).unwrap_err();
    assert!(e.0.contains("pixel 0 is inf"), "{e}");
    assert!(a.add(&[1.0], &[1.0, 2.0]).is_err());
    assert_eq!(
        a.finish(),
        both.finish(),
        "nothing is added from a bad image"
    );
    let json = serde_json::to_value(a.finish().unwrap()).unwrap();
    assert_eq!(json["pixels"], 4);
}
