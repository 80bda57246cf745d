//! The NIfTI-2 header (540 bytes: NIfTI-1's fields widened to 64 bits and
//! reordered), read field by field; the nifti crate reads NIfTI-1 only.

use nifti::{Endianness, NiftiHeader};

use crate::nifti_header::Header1or2;

/// Why a 540-byte header is unusable.
pub(crate) enum Bad {
    /// Not a NIfTI-2 magic.
    Magic(String),
    /// A field that cannot describe a volume.
    Header(String),
}

/// Parses a NIfTI-2 header; `big` when its size field read big-endian.
pub(crate) fn parse(h: &[u8; 540], big: bool) -> Result<Header1or2, Bad> {
    let magic = &h[4..12];
    if &magic[..4] != b"n+2\0" {
        if &magic[..4] == b"ni2\0" {
            return Err(Bad::Header("separate NIfTI-2 .hdr/.img pair; store it as one .nii".into()));
        }
        return Err(Bad::Magic(format!("magic {:?}, expected \"n+2\"", String::from_utf8_lossy(&magic[..4]))));
    }
    let bytes = |at: usize| -> [u8; 8] { h[at..at + 8].try_into().expect("8 bytes") };
    let i64_at = |at: usize| if big { i64::from_be_bytes(bytes(at)) } else { i64::from_le_bytes(bytes(at)) };
    let f64_at = |at: usize| if big { f64::from_be_bytes(bytes(at)) } else { f64::from_le_bytes(bytes(at)) };
    let i32_at = |at: usize| {
        let b: [u8; 4] = h[at..at + 4].try_into().expect("4 bytes");
        if big { i32::from_be_bytes(b) } else { i32::from_le_bytes(b) }
    };
    let i16_at = |at: usize| {
        let b: [u8; 2] = h[at..at + 2].try_into().expect("2 bytes");
        if big { i16::from_be_bytes(b) } else { i16::from_le_bytes(b) }
    };
    let dim: [i64; 8] = std::array::from_fn(|i| i64_at(16 + 8 * i));
    let pixdim: [f64; 8] = std::array::from_fn(|i| f64_at(104 + 8 * i));
    let srow: [[f64; 4]; 3] = std::array::from_fn(|r| std::array::from_fn(|c| f64_at(400 + 32 * r + 8 * c)));
    let datatype = i16_at(12);
    let vox_offset = i64_at(168);
    let (qform_code, sform_code) = (i32_at(344), i32_at(348));
    let quatern = [f64_at(352), f64_at(360), f64_at(368)];
    let qoffset = [f64_at(376), f64_at(384), f64_at(392)];
    let (scl_slope, scl_inter) = (f64_at(176), f64_at(184));
    let endianness = if big { Endianness::Big } else { Endianness::Little };
    if vox_offset < 0 {
        return Err(Bad::Header(format!("vox_offset = {vox_offset}")));
    }
    // What an output on this grid copies: the same geometry in NIfTI-1's fields.
    let f = |v: f64| v as f32;
    let nifti1 = NiftiHeader {
        pixdim: pixdim.map(f),
        datatype,
        sform_code: i16::try_from(sform_code).unwrap_or(0),
        qform_code: i16::try_from(qform_code).unwrap_or(0),
        srow_x: srow[0].map(f),
        srow_y: srow[1].map(f),
        srow_z: srow[2].map(f),
        quatern_b: f(quatern[0]),
        quatern_c: f(quatern[1]),
        quatern_d: f(quatern[2]),
        quatern_x: f(qoffset[0]),
        quatern_y: f(qoffset[1]),
        quatern_z: f(qoffset[2]),
        xyzt_units: i32_at(500) as u8,
        endianness: Endianness::native(),
        ..NiftiHeader::default()
    };
    Ok(Header1or2 {
        size: 540,
        dim,
        pixdim,
        datatype,
        vox_offset: vox_offset as f64,
        scl_slope,
        scl_inter,
        qform_code,
        sform_code,
        quatern,
        qoffset,
        srow,
        endianness,
        nifti1,
    })
}
