//! Voxel data described by a text header (MetaImage, NRRD): the stream, its type,
//! byte order and channel layout → volumes, with every size checked before
//! anything is allocated.

use std::io::{self, Read};

use nifti::{Endianness, NiftiType};

use crate::error::{IngestError, Result};
use crate::geometry::Affine;
use crate::nifti_io::{ReadOptions, Volume, Voxels, check_grid, checked_bytes, header_for};

/// How the voxels of a text-header format are stored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawLayout {
    /// Element type.
    pub elem: NiftiType,
    /// Byte order of multi-byte elements.
    pub endian: Endianness,
    /// The three spatial axes, fastest first.
    pub shape: [usize; 3],
    /// Volumes (channels); 1 for a plain 3-D image.
    pub channels: usize,
    /// Channels vary fastest (a vector image, `c x y z`), not slowest (`x y z c`).
    pub interleaved: bool,
}

/// Checks `layout` and `affine` against the limits; returns the total data bytes.
pub(crate) fn check(layout: &RawLayout, affine: &Affine, file: &str, opts: &ReadOptions) -> Result<u64> {
    let bad = |reason: String| IngestError::BadHeader { file: file.into(), reason };
    let size = Voxels::element_size(layout.elem).ok_or_else(|| IngestError::Unsupported {
        file: file.into(),
        reason: format!("element type {:?}", layout.elem),
    })?;
    if layout.shape.contains(&0) || layout.channels == 0 {
        return Err(bad(format!(
            "sizes {:?} × {} channels; every size must be at least 1",
            layout.shape, layout.channels
        )));
    }
    let total = checked_bytes(layout.shape, layout.channels, size, opts).map_err(bad)?;
    check_grid(layout.shape, affine, opts).map_err(bad)?;
    Ok(total)
}

/// Reads the voxels of `layout` from `stream` into one volume per channel.
pub(crate) fn read_volumes(
    stream: &mut dyn Read,
    layout: &RawLayout,
    affine: Affine,
    file: &str,
    opts: &ReadOptions,
) -> Result<Vec<Volume>> {
    let total = check(layout, &affine, file, opts)?;
    let n: usize = layout.shape.iter().product();
    let truncated = |e: io::Error| IngestError::Truncated { file: file.into(), reason: format!("reading voxels: {e}") };
    let short = |got: u64| IngestError::Truncated {
        file: file.into(),
        reason: format!("holds {got} bytes of voxel data, the header promises {total}"),
    };
    let volume = |voxels: Voxels| Volume {
        shape: layout.shape,
        affine,
        voxels,
        slope: 1.0,
        inter: 0.0,
        datatype: format!("{:?}", layout.elem).to_uppercase(),
        header: Box::new(header_for(layout.shape, &affine, layout.elem)),
    };
    if layout.channels == 1 || !layout.interleaved {
        let per = total / layout.channels as u64;
        let mut out = Vec::with_capacity(layout.channels);
        for c in 0..layout.channels {
            let (voxels, got) = Voxels::read(layout.elem, n, layout.endian, stream).map_err(truncated)?;
            if got < per {
                return Err(short(c as u64 * per + got));
            }
            out.push(volume(voxels));
        }
        return Ok(out);
    }
    let (all, got) = Voxels::read(layout.elem, n * layout.channels, layout.endian, stream).map_err(truncated)?;
    if got < total {
        return Err(short(got));
    }
    Ok(deinterleave(&all, layout.channels).into_iter().map(volume).collect())
}

/// Splits channel-fastest voxels into one buffer per channel.
fn deinterleave(all: &Voxels, channels: usize) -> Vec<Voxels> {
    macro_rules! split {
        ($($v:ident),*) => {
            match all {
                $(Voxels::$v(d) => (0..channels)
                    .map(|c| Voxels::$v(d.iter().skip(c).step_by(channels).copied().collect()))
                    .collect(),)*
            }
        };
    }
    split!(U8, I8, U16, I16, U32, I32, U64, I64, F32, F64)
}

/// A decompressing reader for zlib or gzip data (MetaImage writers use either).
pub(crate) fn inflate<'a>(mut r: Box<dyn io::BufRead + 'a>) -> io::Result<Box<dyn Read + 'a>> {
    let gz = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(flate2::read::MultiGzDecoder::new(r)) } else { Box::new(flate2::bufread::ZlibDecoder::new(r)) })
}

/// Row-major affine from a direction matrix (columns = axes), spacings and origin,
/// all in LPS (as ITK stores them), converted to RAS.
pub(crate) fn lps_affine(direction_columns: [[f64; 3]; 3], spacing: [f64; 3], origin: [f64; 3]) -> Affine {
    let flip = [-1.0, -1.0, 1.0];
    let mut a = [[0.0; 4]; 4];
    for r in 0..3 {
        for c in 0..3 {
            a[r][c] = flip[r] * direction_columns[c][r] * spacing[c];
        }
        a[r][3] = flip[r] * origin[r];
    }
    a[3][3] = 1.0;
    a
}

/// The files a data-file field names: a slice pattern's, or the one name.
pub(crate) fn data_file_names(value: &str, file: &str) -> Result<Vec<String>> {
    match slice_pattern(value) {
        Ok(names) => Ok(names.unwrap_or_else(|| vec![value.to_string()])),
        Err(reason) => Err(IngestError::BadHeader { file: file.into(), reason }),
    }
}

/// A printf slice pattern with first, last and step (`slice%03d.raw 1 40 1`, as
/// MetaImage's `ElementDataFile` and NRRD's `data file` write it) → the file names;
/// `Ok(None)` when `value` is no pattern (one file name), `Err` when it is a broken one.
pub(crate) fn slice_pattern(value: &str) -> std::result::Result<Option<Vec<String>>, String> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() < 3 || !parts[0].contains('%') {
        return Ok(None);
    }
    let bad = || format!("slice pattern {value:?}; `name%0Nd.raw first last [step]` is read");
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (first, last) = (num(parts[1])?, num(parts[2])?);
    let step = parts.get(3).map_or(Ok(1), |s| num(s))?;
    let count = last.checked_sub(first).and_then(|d| d.checked_div(step)).ok_or_else(bad)?;
    if !(0..=100_000).contains(&count) {
        return Err(bad());
    }
    let (pre, rest) = parts[0].split_once('%').ok_or_else(bad)?;
    let conv = rest.find('d').ok_or_else(bad)?;
    let width: usize = rest[..conv].trim_start_matches('0').parse().unwrap_or(0).min(32);
    let zero = rest.starts_with('0');
    let post = &rest[conv + 1..];
    Ok(Some(
        (0..=count)
            .map(|k| first + k * step)
            .map(|i| if zero { format!("{pre}{i:0width$}{post}") } else { format!("{pre}{i:width$}{post}") })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_patterns_expand_like_printf() {
        let names = |v| slice_pattern(v).unwrap().unwrap();
        assert_eq!(names("s%03d.raw 1 3 1"), ["s001.raw", "s002.raw", "s003.raw"]);
        assert_eq!(names("s%d.raw 4 0 -2"), ["s4.raw", "s2.raw", "s0.raw"]);
        assert_eq!(slice_pattern("plain name.raw").unwrap(), None);
        assert!(slice_pattern("s%d.raw 1 5 -1").is_err(), "a step away from the end never ends");
        assert!(slice_pattern("s%d.raw 1 5 0").is_err());
        assert!(slice_pattern("s%d.raw -9223372036854775808 9223372036854775807 1").is_err(), "no overflow");
    }
}
