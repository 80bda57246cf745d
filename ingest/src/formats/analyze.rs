//! Analyze 7.5 (`.hdr` + `.img`), as iSeg-2017 and iSeg-2019 ship: a 348-byte
//! binary header beside the raw voxels. Read as SimpleITK (ITK 5.4) reads it: the
//! `orient` byte, SPM's originator and its scale factor are ignored, so the voxel
//! axes run along ITK's +x, +y, +z (LPS) from an origin at 0, each reversed where
//! its pixdim is negative, with the spacings' magnitudes (a zero one read as 1 mm). A `.hdr` whose
//! magic says NIfTI (`ni1`) is a NIfTI pair, not Analyze, and is refused here
//! rather than read with Analyze's geometry.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use nifti::{Endianness, NiftiType};

use super::raw::{self, RawLayout};
use crate::error::{IngestError, Result};
use crate::nifti_io::{ReadOptions, Volume};

/// Size of the header, and its first field in the file's byte order.
const HEADER: usize = 348;

/// Reads an Analyze `.hdr` and its `.img` as its volumes (one per 4th-axis entry).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let file = super::name(path);
    let io_err = |file: &str| {
        let file = file.to_string();
        move |error| IngestError::Io { file: file.clone(), error }
    };
    let mut bytes = Vec::with_capacity(HEADER);
    File::open(path).and_then(|f| f.take(HEADER as u64).read_to_end(&mut bytes)).map_err(io_err(&file))?;
    let header = Header::parse(&bytes, &file)?;
    let img = image_path(path);
    let img_name = super::name(&img);
    let mut f = File::open(&img).map_err(io_err(&img_name))?;
    f.seek(SeekFrom::Start(header.vox_offset)).map_err(io_err(&img_name))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    raw::read_volumes(&mut r, &header.layout, header.affine(), &img_name, opts)
}

/// The data file beside a header: `name.img` for `name.hdr` (same case as the `.hdr`).
pub fn data_files(path: &Path) -> Result<Vec<String>> {
    Ok(vec![super::name(&image_path(path))])
}

fn image_path(hdr: &Path) -> std::path::PathBuf {
    let upper = hdr.extension().is_some_and(|e| e == "HDR");
    hdr.with_extension(if upper { "IMG" } else { "img" })
}

/// What the reader takes from the header.
#[derive(Debug)]
struct Header {
    layout: RawLayout,
    spacing: [f64; 3],
    /// −1 for an axis whose pixdim is negative (ITK reverses it), else 1.
    signs: [f64; 3],
    vox_offset: u64,
}

impl Header {
    fn parse(b: &[u8], file: &str) -> Result<Header> {
        let bad = |reason: String| IngestError::BadHeader { file: file.into(), reason };
        if b.len() < HEADER {
            return Err(IngestError::Truncated {
                file: file.into(),
                reason: format!("{} bytes; an Analyze header has {HEADER}", b.len()),
            });
        }
        let le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let endian = match (le, be) {
            (348, _) => Endianness::Little,
            (_, 348) => Endianness::Big,
            _ => return Err(bad(format!("sizeof_hdr is {le}, not 348: not an Analyze header"))),
        };
        if &b[344..347] == b"ni1" || &b[344..347] == b"n+1" {
            return Err(IngestError::Unsupported {
                file: file.into(),
                reason: "a NIfTI-1 header in a .hdr file (a NIfTI pair): convert it to .nii".into(),
            });
        }
        let i16_at = |o: usize| match endian {
            Endianness::Little => i16::from_le_bytes([b[o], b[o + 1]]),
            Endianness::Big => i16::from_be_bytes([b[o], b[o + 1]]),
        };
        let f32_at = |o: usize| {
            let a = [b[o], b[o + 1], b[o + 2], b[o + 3]];
            match endian {
                Endianness::Little => f32::from_le_bytes(a),
                Endianness::Big => f32::from_be_bytes(a),
            }
        };
        let dim: Vec<i16> = (0..8).map(|i| i16_at(40 + 2 * i)).collect();
        let ndim = dim[0];
        if !(1..=4).contains(&ndim) {
            return Err(bad(format!("dim[0] is {ndim}; a volume has 3 (or 4 for channels)")));
        }
        let size = |i: usize| -> Result<usize> {
            let d = if i <= ndim as usize { dim[i] } else { 1 };
            usize::try_from(d).ok().filter(|&d| d > 0).ok_or_else(|| bad(format!("dim[{i}] is {d}")))
        };
        let shape = [size(1)?, size(2)?, size(3)?];
        let channels = size(4)?;
        let datatype = i16_at(70);
        let elem = element_type(datatype).ok_or_else(|| IngestError::Unsupported {
            file: file.into(),
            reason: format!("Analyze datatype {datatype} (bitpix {})", i16_at(72)),
        })?;
        let (mut spacing, mut signs) = ([1.0; 3], [1.0; 3]);
        for i in 0..3 {
            let p = f64::from(f32_at(80 + 4 * i));
            if !p.is_finite() {
                return Err(bad(format!("pixdim[{}] is {p}", i + 1)));
            }
            // ITK reads a zero spacing as 1 mm, and a negative one as a reversed axis.
            if p != 0.0 {
                spacing[i] = p.abs();
            }
            if p < 0.0 {
                signs[i] = -1.0;
            }
        }
        let offset = f32_at(108);
        if !offset.is_finite() || offset < 0.0 {
            return Err(bad(format!("vox_offset is {offset}")));
        }
        Ok(Header {
            layout: RawLayout { elem, endian, shape, channels, interleaved: false },
            spacing,
            signs,
            vox_offset: offset as u64,
        })
    }

    /// ITK's direction (identity, axes with a negative pixdim reversed) and zero
    /// origin (LPS), as RAS.
    fn affine(&self) -> crate::geometry::Affine {
        let [x, y, z] = self.signs;
        raw::lps_affine([[x, 0.0, 0.0], [0.0, y, 0.0], [0.0, 0.0, z]], self.spacing, [0.0; 3])
    }
}

/// Analyze's datatype codes (NIfTI keeps them, and adds the unsigned and 64-bit ones).
fn element_type(code: i16) -> Option<NiftiType> {
    use NiftiType::*;
    Some(match code {
        2 => Uint8,
        4 => Int16,
        8 => Int32,
        16 => Float32,
        64 => Float64,
        256 => Int8,
        512 => Uint16,
        768 => Uint32,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(endian: Endianness, dims: [i16; 4], datatype: i16, pixdim: [f32; 3]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER];
        let put16 = |h: &mut Vec<u8>, o: usize, v: i16| {
            let b = if matches!(endian, Endianness::Little) { v.to_le_bytes() } else { v.to_be_bytes() };
            h[o..o + 2].copy_from_slice(&b);
        };
        let b = if matches!(endian, Endianness::Little) { 348i32.to_le_bytes() } else { 348i32.to_be_bytes() };
        h[..4].copy_from_slice(&b);
        for (i, d) in dims.iter().enumerate() {
            put16(&mut h, 40 + 2 * i, *d);
        }
        put16(&mut h, 70, datatype);
        for (i, p) in pixdim.iter().enumerate() {
            let b = if matches!(endian, Endianness::Little) { p.to_le_bytes() } else { p.to_be_bytes() };
            h[80 + 4 * i..84 + 4 * i].copy_from_slice(&b);
        }
        h
    }

    #[test]
    fn both_byte_orders_and_the_lps_identity() {
        for endian in [Endianness::Little, Endianness::Big] {
            let h = Header::parse(&header(endian, [3, 4, 5, 6], 4, [1.5, 1.5, 3.0]), "a.hdr").unwrap();
            assert_eq!((h.layout.shape, h.layout.channels), ([4, 5, 6], 1));
            assert!(matches!(h.layout.elem, NiftiType::Int16));
            // +i runs to the left (−x in RAS), +k up, as SimpleITK's identity direction.
            let a = h.affine();
            assert_eq!([a[0][0], a[1][1], a[2][2]], [-1.5, -1.5, 3.0]);
            assert_eq!([a[0][3], a[1][3], a[2][3]], [0.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn a_lying_header_is_a_reason_not_a_panic() {
        let e = Header::parse(&header(Endianness::Little, [3, 4, -5, 6], 4, [1.0; 3]), "a.hdr").unwrap_err();
        assert!(e.to_string().contains("dim[2] is -5"), "{e}");
        let e = Header::parse(&header(Endianness::Little, [3, 4, 5, 6], 128, [1.0; 3]), "a.hdr").unwrap_err();
        assert!(e.to_string().contains("datatype 128"), "{e}");
        let h = Header::parse(&header(Endianness::Little, [3, 4, 5, 6], 4, [0.0, -2.0, 3.0]), "a.hdr").unwrap();
        let a = h.affine();
        assert_eq!([a[0][0], a[1][1], a[2][2]], [-1.0, 2.0, 3.0], "zero spacing is 1 mm, a negative one reverses");
        let e = Header::parse(&[0u8; 100], "a.hdr").unwrap_err();
        assert!(matches!(e, IngestError::Truncated { .. }), "{e}");
        let mut nifti = header(Endianness::Little, [3, 4, 5, 6], 4, [1.0; 3]);
        nifti[344..348].copy_from_slice(b"ni1\0");
        assert!(Header::parse(&nifti, "a.hdr").unwrap_err().to_string().contains("NIfTI pair"));
    }

    #[test]
    fn reads_the_image_file_beside_it_and_says_when_it_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let hdr = dir.path().join("subject-1-T1.hdr");
        std::fs::write(&hdr, header(Endianness::Big, [3, 2, 2, 2], 4, [1.0; 3])).unwrap();
        let voxels: Vec<u8> = (0i16..8).flat_map(|v| v.to_be_bytes()).collect();
        std::fs::write(dir.path().join("subject-1-T1.img"), &voxels).unwrap();
        let v = read(&hdr, &ReadOptions::default()).unwrap().remove(0);
        assert_eq!(v.shape, [2, 2, 2]);
        assert_eq!(v.voxels, crate::volume::Voxels::I16((0..8).collect()));
        std::fs::write(dir.path().join("subject-1-T1.img"), &voxels[..10]).unwrap();
        assert!(matches!(read(&hdr, &ReadOptions::default()).unwrap_err(), IngestError::Truncated { .. }));
        assert_eq!(data_files(&hdr).unwrap(), ["subject-1-T1.img"]);
    }
}
