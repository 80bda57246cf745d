//! Every image format the Table-1 datasets ship, each read into the same
//! [`Volume`] (voxels, RAS affine, stored type) the preprocessing consumes:
//! NIfTI-1/2 ([`crate::nifti_io`]), MetaImage ([`metaimage`]), NRRD ([`nrrd`]),
//! DICOM series ([`dicom`]), Analyze 7.5 ([`analyze`]) and PNG label stacks
//! ([`png_stack`]).
//!
//! A format is chosen by extension, then by content; a folder is a DICOM series.
//! Each reader checks every size before allocating (`--max-volume-bytes`) and turns
//! bad input into a quarantine reason.

pub mod analyze;
pub mod dicom;
pub mod metaimage;
pub mod nrrd;
pub mod png_stack;
mod raw;

use std::io::Read;
use std::path::Path;

use crate::error::{IngestError, Result};
use crate::nifti_io::{self, ReadOptions, Volume};

/// A supported file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// NIfTI-1 or NIfTI-2, `.nii` or `.nii.gz`.
    Nifti,
    /// MetaImage, `.mha` or `.mhd`.
    MetaImage,
    /// NRRD, `.nrrd` or `.nhdr`.
    Nrrd,
    /// A folder of DICOM slices.
    DicomSeries,
    /// Analyze 7.5, `.hdr` beside its `.img`.
    Analyze,
}

/// Extensions of the file formats, longest first; a case id is a file name without one.
pub const EXTENSIONS: [(&str, Format); 7] = [
    (".nii.gz", Format::Nifti),
    (".nii", Format::Nifti),
    (".mha", Format::MetaImage),
    (".mhd", Format::MetaImage),
    (".nrrd", Format::Nrrd),
    (".nhdr", Format::Nrrd),
    (".hdr", Format::Analyze),
];

/// `name` without its format's extension, and the format; None for other files
/// (including `.raw`/`.zraw` data files, which belong to a header).
pub fn split_extension(name: &str) -> Option<(&str, Format)> {
    EXTENSIONS.iter().find_map(|(ext, f)| {
        let cut = name.len().checked_sub(ext.len())?;
        (cut > 0 && name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(ext)).then(|| (&name[..cut], *f))
    })
}

pub(crate) fn name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The format of `path`: a folder is a DICOM series; a file by its extension, else
/// by its first bytes.
pub fn detect(path: &Path) -> Result<Format> {
    if path.is_dir() {
        return Ok(Format::DicomSeries);
    }
    if let Some((_, f)) = split_extension(&name(path)) {
        return Ok(f);
    }
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .and_then(|f| f.take(132).read_to_end(&mut head))
        .map_err(|error| IngestError::Io { file: name(path), error })?;
    let size = |b: [u8; 4]| [i32::from_le_bytes(b), i32::from_be_bytes(b)];
    Ok(if head.starts_with(b"NRRD000") {
        Format::Nrrd
    } else if head.starts_with(&[0x1f, 0x8b])
        || head.len() >= 4 && size([head[0], head[1], head[2], head[3]]).iter().any(|s| *s == 348 || *s == 540)
    {
        Format::Nifti
    } else if head.starts_with(b"ObjectType") || head.starts_with(b"NDims") {
        Format::MetaImage
    } else {
        return Err(IngestError::NotImage {
            file: name(path),
            reason: "not NIfTI, MetaImage, NRRD or a DICOM folder (unknown extension and content)".into(),
        });
    })
}

/// The files a header names beside itself (`.mhd` → `.raw`, `.nhdr` → its data),
/// relative to its folder; empty for self-contained files.
pub fn companions(path: &Path) -> Result<Vec<String>> {
    match split_extension(&name(path)).map(|(_, f)| f) {
        Some(Format::MetaImage) => metaimage::data_files(path),
        Some(Format::Nrrd) => nrrd::data_files(path),
        Some(Format::Analyze) => analyze::data_files(path),
        _ => Ok(Vec::new()),
    }
}

/// Reads an image as its channels: one volume for a 3-D file, one per volume of a
/// 4-D (or vector) file, all on one grid.
pub fn read_channels(path: &Path, opts: &ReadOptions) -> Result<Vec<Volume>> {
    match detect(path)? {
        Format::Nifti => nifti_io::read_nifti_channels(path, opts),
        Format::MetaImage => metaimage::read(path, opts),
        Format::Nrrd => nrrd::read(path, opts),
        Format::DicomSeries => Ok(vec![dicom::read_series(path, opts)?]),
        Format::Analyze => analyze::read(path, opts),
    }
}

/// Reads a 3-D volume (a label map, or an image with one channel) in any format.
pub fn read_volume(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    nifti_io::single(read_channels(path, opts)?, &name(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_lose_their_format_extension_only() {
        assert_eq!(split_extension("amos_0001.nii.gz"), Some(("amos_0001", Format::Nifti)));
        assert_eq!(split_extension("Case00.MHD"), Some(("Case00", Format::MetaImage)));
        assert_eq!(split_extension("lgemri.nrrd"), Some(("lgemri", Format::Nrrd)));
        assert_eq!(split_extension("x.nhdr"), Some(("x", Format::Nrrd)));
        assert_eq!(split_extension("subject-1-T1.hdr"), Some(("subject-1-T1", Format::Analyze)));
        assert_eq!(split_extension("Case00.raw"), None);
        assert_eq!(split_extension("subject-1-T1.img"), None);
        assert_eq!(split_extension(".nii"), None);
    }
}
