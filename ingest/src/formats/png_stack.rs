//! A label map stored as one PNG per slice (CHAOS's `Ground/`): the slices carry no
//! geometry, so the stack takes its image's grid; the catalogue says which grey value
//! is which class and whether the files run against the image's slice order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use nifti::NiftiType;

use crate::error::{IngestError, Result};
use crate::nifti_io::{ReadOptions, Volume, Voxels, checked_bytes, header_for};

/// How a PNG stack maps onto its image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PngStack {
    /// Grey value → label value; values not listed are background. Empty: the grey
    /// values are the labels.
    pub values: BTreeMap<u16, i32>,
    /// The files (sorted by name, numbers compared as numbers) run from the last
    /// image slice to the first.
    pub reversed: bool,
}

/// File names compared with digit runs as numbers (`slice2` before `slice10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, x), (db, y)) in ca.iter().zip(&cb) {
        let o = if *da && *db {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then(x.cmp(y))
        } else {
            x.cmp(y)
        };
        if o.is_ne() {
            return o;
        }
    }
    ca.len().cmp(&cb.len()).then(a.cmp(b))
}

/// Reads the `.png` files of `dir` as a label map on `image`'s grid.
pub fn read(dir: &Path, image: &Volume, stack: &PngStack, opts: &ReadOptions) -> Result<Volume> {
    let folder = super::name(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|error| IngestError::Io { file: folder.clone(), error })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort_by(|a, b| natural_cmp(&super::name(a), &super::name(b)));
    if stack.reversed {
        files.reverse();
    }
    let [nx, ny, nz] = image.shape;
    if files.len() != nz {
        return Err(IngestError::Mismatch(format!("{folder} holds {} PNG slices, the image has {nz}", files.len())));
    }
    checked_bytes(image.shape, 1, 2, opts).map_err(|reason| IngestError::BadHeader { file: folder.clone(), reason })?;
    let mut data = vec![0u16; nx * ny * nz];
    for (z, path) in files.iter().enumerate() {
        let file = super::name(path);
        let grey = decode(path, &file, (nx, ny))?;
        for (i, &g) in grey.iter().enumerate() {
            let label = if stack.values.is_empty() { i32::from(g) } else { stack.values.get(&g).copied().unwrap_or(0) };
            // PNG rows run down the slice like DICOM rows: pixel (row r, column c) is voxel (c, r).
            data[z * nx * ny + i] = label.clamp(0, i32::from(u16::MAX)) as u16;
        }
    }
    Ok(Volume {
        shape: image.shape,
        affine: image.affine,
        voxels: Voxels::U16(data),
        slope: 1.0,
        inter: 0.0,
        datatype: "UINT16".into(),
        header: Box::new(header_for(image.shape, &image.affine, NiftiType::Uint16)),
    })
}

/// The values of a greyscale PNG of `want` (width, height) pixels, row by row;
/// 16-bit values kept whole. The size is checked before the pixels are allocated.
fn decode(path: &Path, file: &str, want: (usize, usize)) -> Result<Vec<u16>> {
    let bad = |e: png::DecodingError| IngestError::Truncated { file: file.into(), reason: format!("PNG: {e}") };
    let f = File::open(path).map_err(|error| IngestError::Io { file: file.into(), error })?;
    let mut decoder = png::Decoder::new(BufReader::new(f));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(bad)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if (w, h) != want {
        return Err(IngestError::Mismatch(format!(
            "{file} is {w}×{h} pixels, the image slices are {}×{}",
            want.0, want.1
        )));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| IngestError::BadHeader { file: file.into(), reason: "PNG dimensions overflow".into() })?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let channels = info.color_type.samples();
    let wide = info.bit_depth == png::BitDepth::Sixteen;
    if !matches!(info.color_type, png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha) {
        return Err(IngestError::Unsupported {
            file: file.into(),
            reason: format!("PNG colour type {:?}; a greyscale label slice is needed", info.color_type),
        });
    }
    let step = channels * if wide { 2 } else { 1 };
    let grey = (0..w * h)
        .map(|i| {
            let p = &buf[i * step..];
            if wide { u16::from_be_bytes([p[0], p[1]]) } else { u16::from(p[0]) }
        })
        .collect();
    Ok(grey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_names_sort_as_numbers() {
        let mut v = vec!["s10.png", "s2.png", "s1.png", "s02b.png"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["s1.png", "s2.png", "s02b.png", "s10.png"]);
    }
}
