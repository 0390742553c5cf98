//! `rfnc stats` against a hand computation from docs/networks.md: the 4-cascade RefineNet
//! on an MSRA-style ResNet-101 with 4-block CRP at 512x512, classifier counted separately.

mod common;

use common::*;
use rfnc_compiler::stats::{stats, Cost};

/// MACs of a conv: k*k*Cin*Cout*Hout*Wout (groups = 1).
fn conv(k: u64, cin: u64, cout: u64, hw: u64) -> u64 {
    k * k * cin * cout * hw * hw
}

/// MSRA-style ResNet backbone MACs for an input of side `side` (stride on the first 1x1).
fn backbone_macs(blocks: [u64; 4], side: u64) -> u64 {
    let mut macs = conv(7, 3, 64, side / 2); // stem, stride 2
    let mut hw = side / 4; // after the 3x3/2 max-pool
    let mut cin = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let w = 64 << stage;
        let stride = if stage == 0 { 1 } else { 2 };
        hw /= stride;
        for b in 0..n {
            let input = if b == 0 { cin } else { 4 * w };
            macs += conv(1, input, w, hw) + conv(3, w, w, hw) + conv(1, w, 4 * w, hw);
            if b == 0 {
                macs += conv(1, cin, 4 * w, hw); // projection shortcut
            }
        }
        cin = 4 * w;
    }
    macs
}

/// One RefineNet block of the 4-cascade: adaptation (3x3 conv + 2 RCUs), fusion with the
/// previous block's output (3x3 convs to the smaller width at each input's resolution),
/// 4-block CRP and 3 output RCUs, all 3x3 convs.
fn refine_macs(tap_ch: u64, width: u64, hw: u64, prev: Option<(u64, u64)>, crp: u64) -> u64 {
    let mut macs = conv(3, tap_ch, width, hw) + 4 * conv(3, width, width, hw);
    let mut out_width = width;
    if let Some((prev_ch, prev_hw)) = prev {
        out_width = width.min(prev_ch);
        macs += conv(3, width, out_width, hw) + conv(3, prev_ch, out_width, prev_hw);
    }
    macs + crp * conv(3, out_width, out_width, hw) + 6 * conv(3, out_width, out_width, hw)
}

#[test]
fn refinenet4_resnet101_macs_match_the_hand_computation() {
    let g = graph("refinenet4", &[1, 3, 512, 512], &[("depth", "101")]);
    let s = stats(&g);
    let component = |name: &str| -> Cost {
        s.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    };

    let backbone = backbone_macs([3, 4, 23, 3], 512);
    let r4 = refine_macs(2048, 512, 16, None, 4);
    let r3 = refine_macs(1024, 256, 32, Some((512, 16)), 4);
    let r2 = refine_macs(512, 256, 64, Some((256, 32)), 4);
    let r1 = refine_macs(256, 256, 128, Some((256, 64)), 4);
    let classifier = conv(3, 256, 21, 128);

    assert_eq!(component("backbone").macs, backbone);
    assert_eq!(component("refine4").macs, r4);
    assert_eq!(component("refine3").macs, r3);
    assert_eq!(component("refine2").macs, r2);
    assert_eq!(component("refine1").macs, r1);
    assert_eq!(component("head").macs, classifier);
    assert_eq!(s.total.macs, backbone + r4 + r3 + r2 + r1 + classifier);
    // The figures, for the record: 39.5 G backbone, 221.4 G RefineNet head, 0.8 G classifier.
    assert_eq!(backbone, 39_539_703_808);
    assert_eq!(r4 + r3 + r2 + r1, 221_358_587_904);
}

#[test]
fn backbone_parameter_counts_match_torchvision_without_the_fc_layer() {
    // torchvision resnet50/101/152 parameters minus the 1000-way fc (2048*1000 + 1000).
    for (depth, expected) in [
        ("50", 25_557_032 - 2_049_000),
        ("101", 44_549_160 - 2_049_000),
        ("152", 60_192_808 - 2_049_000),
    ] {
        let g = graph("refinenet4", &[1, 3, 224, 224], &[("depth", depth)]);
        let s = stats(&g);
        let backbone = s
            .components
            .iter()
            .find(|(n, _)| n == "backbone")
            .unwrap()
            .1;
        assert_eq!(backbone.params, expected, "ResNet-{depth}");
    }
}

#[test]
fn msra_and_torchvision_styles_differ_only_where_the_stride_sits() {
    let msra = stats(&graph(
        "refinenet4",
        &[1, 3, 224, 224],
        &[("style", "msra")],
    ));
    let tv = stats(&graph(
        "refinenet4",
        &[1, 3, 224, 224],
        &[("style", "torchvision")],
    ));
    let backbone = |s: &rfnc_compiler::stats::Stats| {
        s.components
            .iter()
            .find(|(n, _)| n == "backbone")
            .unwrap()
            .1
    };
    assert_eq!(backbone(&msra).params, backbone(&tv).params);
    // torchvision runs the first 1x1 conv of each downsampling block at full resolution.
    assert!(backbone(&tv).macs > backbone(&msra).macs);
    // ResNet-101 at 224x224: 7.80 GMACs in torchvision style (the published figure).
    assert_eq!((backbone(&tv).macs as f64 / 1e8).round() / 10.0, 7.8);
}

#[test]
fn naive_feature_memory_counts_every_op_output() {
    let g = graph("tiny", &[1, 3, 64, 64], &[]);
    let s = stats(&g);
    let expected: u64 = g
        .node_ids()
        .filter(|&id| !g.node(id).op.is_leaf())
        .map(|id| g.node(id).ty.bytes())
        .sum();
    assert_eq!(s.total.naive_feature_bytes, expected);
    let sum: u64 = s
        .components
        .iter()
        .map(|(_, c)| c.naive_feature_bytes)
        .sum();
    assert_eq!(sum, expected);
}

/// `rfnc stats --train` counts the training step's work: the forward convolutions, both
/// gradients of each (the data gradient only where a gradient flows: not into the image),
/// and the SGD update (two multiply-accumulates per parameter for the momentum, one for
/// the step).
#[test]
fn training_macs_count_the_backward_pass_and_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.rfn");
    std::fs::write(
        &file,
        "network two {
            input image: f32[N, 3, H, W];
            input labels: i32[N, H, W];
            let y = conv(relu(conv(image, 4, k = 3) as a), 5, k = 1) as b;
            objective loss = softmax_cross_entropy(y, labels);
        }",
    )
    .unwrap();
    let macs = |train: bool| {
        let mut args = vec![
            "stats",
            file.to_str().unwrap(),
            "--json",
            "--input",
            "1x3x8x8",
        ];
        if train {
            args.push("--train");
        }
        let out = rfnc(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        json["total"]["macs"].as_u64().unwrap()
    };
    let (a, b) = (3 * 3 * 3 * 4 * 64, 4 * 5 * 64); // the two convs at 8x8
    let params = 3 * 3 * 3 * 4 + 4 * 5;
    assert_eq!(macs(false), a + b);
    // forward, weight gradients of both, data gradient of `b` only, updates.
    assert_eq!(macs(true), (a + b) + (a + b) + b + 3 * params);
}
