//! Decoding pixel formats: label PNGs of 1, 2, 4 and 8 bits read as stored indices,
//! greyscale, RGBA and 16-bit images turned into RGB in [0, 255].

use std::path::Path;

use rfnc_data::decode::{decode_indices, decode_rgb};

/// A PNG of `width x height` with the given format and packed rows.
fn png_bytes(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if color == png::ColorType::Indexed {
        encoder.set_palette(vec![9u8; 3 * 16]);
    }
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

#[test]
fn sub_byte_label_pngs_unpack_to_their_indices() {
    let path = Path::new("label.png");
    // 5 pixels a row: 2-bit palette indices 3 0 1 2 3 | 1 1 0 0 2.
    let two_bit = png_bytes(
        5,
        2,
        png::ColorType::Indexed,
        png::BitDepth::Two,
        &[0b1100_0110, 0b1100_0000, 0b0101_0000, 0b1000_0000],
    );
    let plane = decode_indices(path, &two_bit).unwrap();
    assert_eq!((plane.width, plane.height, plane.channels), (5, 2, 1));
    assert_eq!(plane.data, [3, 0, 1, 2, 3, 1, 1, 0, 0, 2]);
    // 4-bit greyscale: 15 1 7 | 0 8 2.
    let four_bit = png_bytes(
        3,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Four,
        &[0xF1, 0x70, 0x08, 0x20],
    );
    assert_eq!(
        decode_indices(path, &four_bit).unwrap().data,
        [15, 1, 7, 0, 8, 2]
    );
    // 1-bit palette: 1 0 1 1 0 0 0 1 1.
    let one_bit = png_bytes(
        9,
        1,
        png::ColorType::Indexed,
        png::BitDepth::One,
        &[0b1011_0001, 0b1000_0000],
    );
    assert_eq!(
        decode_indices(path, &one_bit).unwrap().data,
        [1, 0, 1, 1, 0, 0, 0, 1, 1]
    );
}

#[test]
fn images_of_any_format_become_rgb_in_0_255() {
    let path = Path::new("image.png");
    let grey = png_bytes(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[10, 200],
    );
    assert_eq!(
        decode_rgb(path, &grey).unwrap().data,
        [10.0, 10.0, 10.0, 200.0, 200.0, 200.0]
    );
    let rgba = png_bytes(
        1,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &[1, 2, 3, 4],
    );
    assert_eq!(decode_rgb(path, &rgba).unwrap().data, [1.0, 2.0, 3.0]);
    let deep = png_bytes(
        1,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &[0xFF, 0xFF, 0, 0, 0x80, 0x00],
    );
    let rgb = decode_rgb(path, &deep).unwrap().data;
    assert_eq!(rgb[..2], [255.0, 0.0]);
    assert!(
        (rgb[2] - 0x8000 as f32 / 65535.0 * 255.0).abs() < 1e-3,
        "{rgb:?}"
    );
}

#[test]
fn a_greyscale_label_of_16_bits_is_refused() {
    let path = Path::new("label.png");
    let wide = png_bytes(
        1,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &[0, 1],
    );
    let err = decode_indices(path, &wide).unwrap_err().to_string();
    assert!(
        err.starts_with("label.png: is a 16-bit greyscale PNG"),
        "{err}"
    );
}
