//! Writing image files: palette PNGs (the VOC colour map or another), 8- and 16-bit
//! greyscale PNGs, RGB PNGs and JPEGs. Used by the synthetic datasets, and for writing
//! predictions. Every file is encoded in memory and written atomically (a temporary file
//! beside it, renamed over it), so a crash never leaves half an image.

use std::io::Write;
use std::path::Path;

use crate::error::DataError;

/// The PASCAL VOC colour map: 256 RGB entries, class `i`'s colour built from the bits of
/// `i` (class 0 black, 1 dark red, 2 dark green, ..., 255 the ignore label's cream).
pub fn voc_palette() -> [u8; 768] {
    let mut palette = [0u8; 768];
    for i in 0..256usize {
        let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
        let mut c = i;
        for shift in (0..8).rev() {
            r |= ((c & 1) as u8) << shift;
            g |= (((c >> 1) & 1) as u8) << shift;
            b |= (((c >> 2) & 1) as u8) << shift;
            c >>= 3;
        }
        palette[i * 3..i * 3 + 3].copy_from_slice(&[r, g, b]);
    }
    palette
}

/// Writes `bytes` to `path` atomically, creating missing folders.
fn save(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| DataError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| DataError::io(path, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| DataError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        tmp.as_file()
            .set_permissions(mode)
            .map_err(|e| DataError::io(path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

fn check_len(path: &Path, len: usize, expected: usize) -> Result<(), DataError> {
    if len != expected {
        return Err(DataError::write(
            path,
            format!("{len} values given for an image of {expected}"),
        ));
    }
    Ok(())
}

fn write_png(
    path: &Path,
    (width, height): (usize, usize),
    color: png::ColorType,
    depth: png::BitDepth,
    bytes: &[u8],
) -> Result<(), DataError> {
    write_png_with(path, (width, height), color, depth, bytes, &voc_palette())
}

fn write_png_with(
    path: &Path,
    (width, height): (usize, usize),
    color: png::ColorType,
    depth: png::BitDepth,
    bytes: &[u8],
    palette: &[u8],
) -> Result<(), DataError> {
    let channels = match color {
        png::ColorType::Rgb => 3,
        _ => 1,
    };
    let per_sample = if depth == png::BitDepth::Sixteen {
        2
    } else {
        1
    };
    check_len(path, bytes.len(), width * height * channels * per_sample)?;
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(DataError::write(
            path,
            format!("size {width}x{height} too large"),
        ));
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if color == png::ColorType::Indexed {
        encoder.set_palette(palette.to_vec());
    }
    let fail = |e: png::EncodingError| DataError::write(path, e);
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(bytes).map_err(fail)?;
    writer.finish().map_err(fail)?;
    save(path, &out)
}

/// An 8-bit palette PNG with the VOC colour map whose pixel values are `indices`
/// (row-major, `width * height`), as VOC's `SegmentationClass` labels are stored.
pub fn write_palette_png(
    path: &Path,
    width: usize,
    height: usize,
    indices: &[u8],
) -> Result<(), DataError> {
    write_png(
        path,
        (width, height),
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        indices,
    )
}

/// An 8-bit palette PNG with the colour map `palette` (RGB triples, at most 256) whose pixel
/// values are `indices`.
pub fn write_indexed_png(
    path: &Path,
    (width, height): (usize, usize),
    indices: &[u8],
    palette: &[u8],
) -> Result<(), DataError> {
    if palette.is_empty() || !palette.len().is_multiple_of(3) || palette.len() > 768 {
        return Err(DataError::write(
            path,
            format!(
                "a palette of {} bytes is not 1 to 256 RGB colours",
                palette.len()
            ),
        ));
    }
    write_png_with(
        path,
        (width, height),
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        indices,
        palette,
    )
}

/// An 8-bit greyscale PNG (row-major, `width * height`).
pub fn write_gray8_png(
    path: &Path,
    width: usize,
    height: usize,
    values: &[u8],
) -> Result<(), DataError> {
    write_png(
        path,
        (width, height),
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        values,
    )
}

/// A 16-bit greyscale PNG (row-major, `width * height`), e.g. depth in millimetres.
pub fn write_gray16_png(
    path: &Path,
    width: usize,
    height: usize,
    values: &[u16],
) -> Result<(), DataError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_png(
        path,
        (width, height),
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &bytes,
    )
}

/// An 8-bit RGB PNG (row-major, interleaved, `width * height * 3`).
pub fn write_rgb_png(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<(), DataError> {
    write_png(
        path,
        (width, height),
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        rgb,
    )
}

/// A baseline JPEG of quality `quality` (1..=100) from 8-bit RGB (`width * height * 3`).
pub fn write_rgb_jpeg(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
    quality: u8,
) -> Result<(), DataError> {
    check_len(path, rgb.len(), width * height * 3)?;
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(DataError::write(
            path,
            format!("size {width}x{height} too large"),
        ));
    };
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    encoder
        .encode(rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| DataError::write(path, e))?;
    save(path, &out)
}
