//! The synthetic datasets: deterministic from the seed, real palette PNGs with the VOC
//! colour map, image sizes in range, and images whose colours and shading carry the
//! targets (so a small network can learn them).

mod common;

use std::path::Path;

use common::{open_voc, tempdir, voc};
use rfnc_data::encode::voc_palette;
use rfnc_data::synthetic::{write_list, write_nyud, MAX_SIDE, MIN_SIDE};
use rfnc_data::{Dataset, DatasetKind, Target};

/// Every file under `root` with its bytes, in sorted order.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_files_other_seed_other_files() {
    type Writer = fn(&Path, usize, usize, u64) -> Result<(), rfnc_data::DataError>;
    let writers: [Writer; 3] = [rfnc_data::synthetic::write_voc, write_list, write_nyud];
    for write in writers {
        let (a, b, c) = (tempdir(), tempdir(), tempdir());
        write(a.path(), 3, 2, 5).unwrap();
        write(b.path(), 3, 2, 5).unwrap();
        write(c.path(), 3, 2, 6).unwrap();
        let fa = files(a.path());
        assert!(fa.len() >= 5 * 2 + 2, "{} files", fa.len());
        assert_eq!(fa, files(b.path()));
        assert_ne!(fa, files(c.path()));
    }
}

#[test]
fn voc_labels_are_palette_pngs_with_the_voc_colour_map() {
    let dir = voc(1, 0, 3);
    let path = open_voc(dir.path(), "train")
        .sample(0)
        .unwrap()
        .target
        .clone();
    let decoder = png::Decoder::new(std::io::Cursor::new(std::fs::read(&path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!(
        (info.color_type, info.bit_depth),
        (png::ColorType::Indexed, png::BitDepth::Eight)
    );
    let palette = info.palette.as_ref().unwrap();
    assert_eq!(&palette[..], &voc_palette()[..]);
    assert_eq!(&palette[3..9], &[128, 0, 0, 0, 128, 0]);
    assert_eq!(&palette[255 * 3..], &[224, 224, 192]);
}

/// Mean RGB of the pixels whose label is `class`, over a whole split.
fn class_colour(ds: &Dataset, class: u8) -> [f64; 3] {
    let (mut sum, mut n) = ([0.0; 3], 0.0);
    for i in 0..ds.len() {
        let s = ds.load(i, None).unwrap();
        let Target::Labels(l) = &s.target else {
            unreachable!()
        };
        for (p, &v) in l.data.iter().enumerate() {
            if v == class {
                for (c, total) in sum.iter_mut().enumerate() {
                    *total += s.image.data[p * 3 + c] as f64;
                }
                n += 1.0;
            }
        }
    }
    assert!(n > 0.0, "class {class} occurs");
    sum.map(|v| v / n)
}

#[test]
fn shapes_have_distinct_colours_and_sizes_vary_in_range() {
    let dir = voc(12, 0, 4);
    let ds = open_voc(dir.path(), "train");
    let (disc, square) = (class_colour(&ds, 1), class_colour(&ds, 2));
    assert!(
        disc[0] > 150.0 && disc[2] < 100.0,
        "discs are red: {disc:?}"
    );
    assert!(
        square[2] > 150.0 && square[0] < 100.0,
        "squares are blue: {square:?}"
    );
    let sizes: Vec<_> = (0..ds.len())
        .map(|i| ds.load(i, None).unwrap().image.size())
        .collect();
    assert!(sizes
        .iter()
        .all(|&(w, h)| (MIN_SIDE..=MAX_SIDE).contains(&w) && (MIN_SIDE..=MAX_SIDE).contains(&h)));
    assert!(sizes.windows(2).any(|p| p[0] != p[1]));
    assert_eq!(rfnc_data::synthetic::seg_classes(), 3);
}

/// Nearer surfaces are brighter (light haze grows with depth): brightness and depth are
/// clearly anti-correlated over the valid pixels.
#[test]
fn depth_images_are_shaded_from_depth() {
    let dir = tempdir();
    write_nyud(dir.path(), 6, 0, 8).unwrap();
    let ds = Dataset::open(DatasetKind::NyudDepth, dir.path(), "train").unwrap();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..ds.len() {
        let s = ds.load(i, None).unwrap();
        let Target::Depth(d) = &s.target else {
            unreachable!()
        };
        for (p, &depth) in d.data.iter().enumerate() {
            if depth > 0.0 {
                xs.push(depth as f64);
                ys.push(
                    s.image.data[p * 3..p * 3 + 3]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>(),
                );
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mx, my) = (mean(&xs), mean(&ys));
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>().sqrt();
    let sy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum::<f64>().sqrt();
    let r = cov / (sx * sy);
    assert!(r < -0.3, "correlation of depth and brightness {r}");
}
