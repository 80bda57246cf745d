//! The header fields the NIfTI reader uses, at NIfTI-2's precision, whichever of the
//! two versions a file has: the NIfTI-1 parser (the nifti crate) and the NIfTI-2 one
//! ([`crate::nifti2`]) both produce it, and [`crate::nifti_io`] reads volumes from it.

use nifti::{Endianness, NiftiHeader};

/// The fields of a NIfTI-1 or NIfTI-2 header the reader uses, at NIfTI-2's precision,
/// and a NIfTI-1 header an output on the same grid copies.
pub(crate) struct Header1or2 {
    pub(crate) size: u64,
    pub(crate) dim: [i64; 8],
    pub(crate) pixdim: [f64; 8],
    pub(crate) datatype: i16,
    pub(crate) vox_offset: f64,
    pub(crate) scl_slope: f64,
    pub(crate) scl_inter: f64,
    pub(crate) qform_code: i32,
    pub(crate) sform_code: i32,
    pub(crate) quatern: [f64; 3],
    pub(crate) qoffset: [f64; 3],
    pub(crate) srow: [[f64; 4]; 3],
    pub(crate) endianness: Endianness,
    pub(crate) nifti1: NiftiHeader,
}

impl Header1or2 {
    pub(crate) fn from_nifti1(h: NiftiHeader) -> Header1or2 {
        let f = f64::from;
        Header1or2 {
            size: 348,
            // NIfTI's dims are signed shorts (the nifti crate stores them as u16,
            // which would turn a -1 into 65535 voxels).
            dim: h.dim.map(|d| i64::from(d as i16)),
            pixdim: h.pixdim.map(f),
            datatype: h.datatype,
            vox_offset: f(h.vox_offset),
            scl_slope: f(h.scl_slope),
            scl_inter: f(h.scl_inter),
            qform_code: i32::from(h.qform_code),
            sform_code: i32::from(h.sform_code),
            quatern: [f(h.quatern_b), f(h.quatern_c), f(h.quatern_d)],
            qoffset: [f(h.quatern_x), f(h.quatern_y), f(h.quatern_z)],
            srow: [h.srow_x.map(f), h.srow_y.map(f), h.srow_z.map(f)],
            endianness: h.endianness,
            nifti1: h,
        }
    }
}
