//! Bytes to pixels: RGB images (JPEG, PNG) through `image`, label PNGs as raw indices and
//! 16-bit depth PNGs through `png`. Every failure is a `DataError` naming the file; the
//! third-party decoders run under `catch_unwind`, so bad bytes never panic the caller.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use crate::error::DataError;

/// The largest image (width x height) decoded: 2^26 pixels, e.g. 8192 x 8192.
pub const MAX_PIXELS: usize = 1 << 26;

/// A row-major image with interleaved channels (HWC): the value of channel `c` at (x, y)
/// is `data[(y * width + x) * channels + c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane<T> {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Plane<T> {
    /// A plane filled with `value`.
    pub fn filled(width: usize, height: usize, channels: usize, value: T) -> Plane<T> {
        Plane {
            width,
            height,
            channels,
            data: vec![value; width * height * channels],
        }
    }

    /// (width, height).
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The channels of pixel (x, y).
    pub fn pixel(&self, x: usize, y: usize) -> &[T] {
        let at = (y * self.width + x) * self.channels;
        &self.data[at..at + self.channels]
    }
}

/// Reads a whole file; a missing or unreadable file is a `DataError::Io` naming it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Decodes an image file's bytes as RGB in [0, 255] (HWC, 3 channels): grey is replicated,
/// alpha is dropped, 16-bit samples are scaled to [0, 255]. JPEG or PNG.
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<Plane<f32>, DataError> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::decode(path, e))?;
    match reader.format() {
        None => return Err(DataError::decode(path, "not a JPEG or PNG file")),
        Some(image::ImageFormat::Jpeg) => check_jpeg_complete(path, bytes)?,
        Some(_) => {}
    }
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(1 << 15);
    limits.max_image_height = Some(1 << 15);
    reader.limits(limits);
    let img = catch_unwind(AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| DataError::decode(path, "the image decoder panicked"))?
        .map_err(|e| DataError::decode(path, e))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    check_size(path, width, height)?;
    let color = img.color();
    let data: Vec<f32> = if color.bytes_per_pixel() == color.channel_count() {
        img.to_rgb8()
            .into_raw()
            .into_iter()
            .map(f32::from)
            .collect()
    } else {
        img.to_rgb32f()
            .into_raw()
            .into_iter()
            .map(|v| (v * 255.0).clamp(0.0, 255.0))
            .collect()
    };
    Ok(Plane {
        width,
        height,
        channels: 3,
        data,
    })
}

/// The JPEG decoder fills missing data with grey instead of failing, so a truncated file
/// is recognised here: a complete JPEG has an end-of-image marker (FF D9) after its last
/// start-of-scan marker (FF DA). Inside entropy-coded data 0xFF is always followed by 0x00
/// or a restart marker, so neither pair occurs there by accident.
fn check_jpeg_complete(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let Some(sos) = last_sos else {
        return Err(DataError::decode(
            path,
            "JPEG without image data (no start-of-scan marker)",
        ));
    };
    if !bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(DataError::decode(
            path,
            "truncated JPEG (no end-of-image marker after the last scan)",
        ));
    }
    Ok(())
}

fn check_size(path: &Path, width: usize, height: usize) -> Result<(), DataError> {
    if width == 0 || height == 0 {
        return Err(DataError::decode(
            path,
            format!("empty image ({width}x{height})"),
        ));
    }
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            size: (width, height),
        });
    }
    Ok(())
}

/// A PNG's pixels exactly as stored (no palette expansion, no scaling).
struct RawPng {
    width: usize,
    height: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    /// Rows of `line_size` bytes.
    line_size: usize,
    bytes: Vec<u8>,
}

fn read_raw_png(path: &Path, bytes: &[u8]) -> Result<RawPng, DataError> {
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(DataError::decode(path, "not a PNG file"));
    }
    let run = || -> Result<RawPng, DataError> {
        let mut decoder = png::Decoder::new(Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let mut reader = decoder
            .read_info()
            .map_err(|e| DataError::decode(path, e))?;
        let info = reader.info();
        let (width, height) = (info.width as usize, info.height as usize);
        let (color, depth) = (info.color_type, info.bit_depth);
        check_size(path, width, height)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| DataError::decode(path, "image too large for memory"))?;
        let mut buf = vec![0; size];
        let frame = reader
            .next_frame(&mut buf)
            .map_err(|e| DataError::decode(path, e))?;
        buf.truncate(frame.buffer_size());
        Ok(RawPng {
            width,
            height,
            color,
            depth,
            line_size: frame.line_size,
            bytes: buf,
        })
    };
    catch_unwind(AssertUnwindSafe(run))
        .map_err(|_| DataError::decode(path, "the PNG decoder panicked"))?
}

fn describe(color: png::ColorType, depth: png::BitDepth) -> String {
    let kind = match color {
        png::ColorType::Grayscale => "greyscale",
        png::ColorType::Rgb => "RGB",
        png::ColorType::Indexed => "palette (indexed)",
        png::ColorType::GrayscaleAlpha => "greyscale with alpha",
        png::ColorType::Rgba => "RGBA",
    };
    let bits = depth as u8;
    let article = if bits == 8 { "an" } else { "a" };
    format!("{article} {bits}-bit {kind} PNG")
}

/// Decodes a label PNG as its stored indices (1 channel): palette PNGs give their palette
/// indices (the colours are never looked at), greyscale PNGs their grey values. Bit depths
/// 1, 2, 4 and 8 are accepted; anything else is a `PixelFormat` error.
pub fn decode_indices(path: &Path, bytes: &[u8]) -> Result<Plane<u8>, DataError> {
    let raw = read_raw_png(path, bytes)?;
    let ok_color = matches!(
        raw.color,
        png::ColorType::Indexed | png::ColorType::Grayscale
    );
    let bits = raw.depth as usize;
    if !ok_color || bits > 8 {
        return Err(DataError::PixelFormat {
            path: path.to_path_buf(),
            found: describe(raw.color, raw.depth),
            expected: "a palette or greyscale PNG of at most 8 bits holding class indices".into(),
        });
    }
    let mut data = Vec::with_capacity(raw.width * raw.height);
    let per_byte = 8 / bits;
    let mask = ((1u16 << bits) - 1) as u8;
    for row in raw.bytes.chunks(raw.line_size).take(raw.height) {
        for x in 0..raw.width {
            let byte = row[x / per_byte];
            let shift = 8 - bits * (x % per_byte + 1);
            data.push((byte >> shift) & mask);
        }
    }
    Ok(Plane {
        width: raw.width,
        height: raw.height,
        channels: 1,
        data,
    })
}

/// Decodes a 16-bit greyscale PNG (1 channel); any other format is a `PixelFormat` error
/// saying what the file is.
pub fn decode_gray16(path: &Path, bytes: &[u8]) -> Result<Plane<u16>, DataError> {
    let raw = read_raw_png(path, bytes)?;
    if raw.color != png::ColorType::Grayscale || raw.depth != png::BitDepth::Sixteen {
        return Err(DataError::PixelFormat {
            path: path.to_path_buf(),
            found: describe(raw.color, raw.depth),
            expected: "a 16-bit greyscale PNG (depth in millimetres)".into(),
        });
    }
    let mut data = Vec::with_capacity(raw.width * raw.height);
    for row in raw.bytes.chunks(raw.line_size).take(raw.height) {
        data.extend(
            row[..raw.width * 2]
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]])),
        );
    }
    Ok(Plane {
        width: raw.width,
        height: raw.height,
        channels: 1,
        data,
    })
}
