//! Reading NIfTI-1 volumes (`.nii`, `.nii.gz`; any endianness and datatype nibabel
//! reads as numbers) with every header check done before the voxel buffer is allocated.
//!
//! Voxels stay in their stored type (an int16 CT of 512×512×1000 is 512 MiB, not
//! 2 GiB of f64); [`Volume::value`] applies `scl_slope`/`scl_inter` on access.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use nifti::{Endianness, NiftiHeader, NiftiType};

use crate::error::{IngestError, Result};
use crate::nifti_header::Header1or2;
pub use crate::volume::{Affine, Volume, Voxel, Voxels};

/// Limits applied while reading.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Refuse volumes whose voxel data would exceed this many bytes.
    pub max_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { max_bytes: 2 << 30 }
    }
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Reads a 3-D NIfTI file (NIfTI-1 or NIfTI-2, `.nii` or `.nii.gz`); the error says
/// precisely why a file is unusable. A 4-D file with several volumes is refused: see
/// [`read_nifti_channels`].
pub fn read_nifti(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    single(read_nifti_channels(path, opts)?, &name(path))
}

/// Reads a NIfTI file as its volumes: one for a 3-D file, one per volume of a 4-D file
/// (MSD's multi-channel images), each on the same grid.
pub fn read_nifti_channels(path: &Path, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let file = name(path);
    let opened = File::open(path).map_err(|error| IngestError::Io { file: file.clone(), error })?;
    read_nifti_all(BufReader::with_capacity(1 << 20, opened), &file, opts)
}

/// Reads a NIfTI volume (plain or gzipped) from memory; `file` names it in errors.
pub fn read_nifti_bytes(bytes: &[u8], file: &str, opts: &ReadOptions) -> Result<Volume> {
    read_nifti_from(bytes, file, opts)
}

/// Reads a 3-D NIfTI volume from a stream (see [`read_nifti_all`]).
pub fn read_nifti_from<R: BufRead>(reader: R, file: &str, opts: &ReadOptions) -> Result<Volume> {
    single(read_nifti_all(reader, file, opts)?, file)
}

/// The one volume of a file, or why a file of several is not a 3-D volume.
pub(crate) fn single(mut volumes: Vec<Volume>, file: &str) -> Result<Volume> {
    if volumes.len() == 1 {
        return Ok(volumes.remove(0));
    }
    Err(IngestError::BadHeader {
        file: file.into(),
        reason: format!(
            "{} volumes (a 4-D image of shape {:?}); a 3-D volume is needed here (images may have channels, labels may not)",
            volumes.len(),
            volumes.first().map(|v| v.shape)
        ),
    })
}

/// Checks a grid before anything is allocated for it: a finite, invertible affine,
/// and a 1.5 mm grid (allocated from the spacings, not the file size: 64³ voxels
/// that claim 400 mm each would resample to 17066³, 20 TB) under the limit.
pub(crate) fn check_grid(shape: [usize; 3], affine: &Affine, opts: &ReadOptions) -> Result<(), String> {
    crate::geometry::check_affine(affine)?;
    let out_shape = crate::geometry::resampled_geometry(shape, affine).0;
    let out_bytes = out_shape.iter().try_fold(4u64, |acc, &n| acc.checked_mul(n as u64));
    if out_bytes.is_none_or(|b| b > opts.max_bytes) {
        return Err(format!(
            "spacings {:?} mm: resampled to 1.5 mm the {shape:?} voxels become {out_shape:?}, {}, over the limit of {} bytes (--max-volume-bytes)",
            crate::geometry::spacing(affine),
            out_bytes.map_or("more than 2^64 bytes".into(), |b| format!("{b} bytes")),
            opts.max_bytes
        ));
    }
    Ok(())
}

/// The bytes of `channels` volumes of `shape` voxels of `size` bytes, if under the limit.
pub(crate) fn checked_bytes(
    shape: [usize; 3],
    channels: usize,
    size: usize,
    opts: &ReadOptions,
) -> Result<u64, String> {
    shape
        .iter()
        .chain(&[channels])
        .try_fold(size as u64, |acc, &n| acc.checked_mul(n as u64))
        .filter(|&b| b <= opts.max_bytes)
        .ok_or_else(|| {
            format!(
                "{shape:?} voxels{} of {size} bytes are over the limit of {} bytes (--max-volume-bytes)",
                if channels > 1 { format!(" × {channels} volumes") } else { String::new() },
                opts.max_bytes
            )
        })
}

/// Reads a NIfTI-1 or NIfTI-2 file from a stream, as its volumes. Every header field
/// that feeds arithmetic or an allocation is checked first: the header is untrusted
/// input, and a wrong number in it must become a quarantine reason, never a panic
/// or an abort.
pub fn read_nifti_all<R: BufRead>(mut reader: R, file: &str, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let file = file.to_string();
    let io_err = |source: io::Error| IngestError::Io { file: file.clone(), error: source };
    let gz = reader.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
    let mut stream: Box<dyn Read + '_> =
        if gz { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) };
    let truncated = |what: &str, e: io::Error| IngestError::Truncated {
        file: file.clone(),
        reason: format!("{what}: {e}{}", if gz { " (gzip stream)" } else { "" }),
    };

    let mut hdr = [0u8; 540];
    stream.read_exact(&mut hdr[..4]).map_err(|e| truncated("reading the header", e))?;
    let (le, be) = (
        i32::from_le_bytes(hdr[..4].try_into().expect("4 bytes")),
        i32::from_be_bytes(hdr[..4].try_into().expect("4 bytes")),
    );
    let header = if le == 540 || be == 540 {
        stream.read_exact(&mut hdr[4..540]).map_err(|e| truncated("reading the header", e))?;
        crate::nifti2::parse(&hdr, be == 540).map_err(|reason| match reason {
            crate::nifti2::Bad::Magic(reason) => IngestError::NotNifti { file: file.clone(), reason },
            crate::nifti2::Bad::Header(reason) => IngestError::BadHeader { file: file.clone(), reason },
        })?
    } else if le == 348 || be == 348 {
        stream.read_exact(&mut hdr[4..348]).map_err(|e| truncated("reading the header", e))?;
        match &hdr[344..348] {
            b"n+1\0" => {}
            b"ni1\0" => {
                return Err(IngestError::Unsupported {
                    file,
                    reason: "separate .hdr/.img pair; store it as one .nii".into(),
                });
            }
            m => {
                return Err(IngestError::NotNifti {
                    file,
                    reason: format!("magic {:?}, expected \"n+1\"", String::from_utf8_lossy(m)),
                });
            }
        }
        let h = NiftiHeader::from_reader(io::Cursor::new(&hdr[..348]))
            .map_err(|e| IngestError::BadHeader { file: file.clone(), reason: e.to_string() })?;
        Header1or2::from_nifti1(h)
    } else {
        return Err(IngestError::NotNifti { file, reason: format!("header size field is {le}, expected 348 or 540") });
    };
    let bad = |reason: String| IngestError::BadHeader { file: file.clone(), reason };
    let (shape, channels) = check_dims(&header.dim, &header.pixdim).map_err(bad)?;
    let datatype = nifti_type(header.datatype);
    let size = datatype.and_then(Voxels::element_size).ok_or_else(|| IngestError::Unsupported {
        file: file.clone(),
        reason: format!(
            "datatype {} ({}); numeric scalar types only",
            datatype.map_or("unknown".into(), |t| format!("{t:?}")),
            header.datatype
        ),
    })?;
    let datatype = datatype.expect("checked");
    let nbytes = checked_bytes(shape, channels, size, opts).map_err(bad)? / channels as u64;
    let affine = header.affine(shape);
    check_grid(shape, &affine, opts).map_err(bad)?;
    let offset = check_vox_offset(header.vox_offset, header.size, opts).map_err(bad)?;
    let (slope, inter) = scaling(header.scl_slope, header.scl_inter).map_err(bad)?;

    // Extensions sit between the header and the data.
    let skipped = io::copy(&mut (&mut stream).take(offset - header.size), &mut io::sink())
        .map_err(|e| truncated("skipping extensions", e))?;
    if skipped < offset - header.size {
        return Err(IngestError::Truncated {
            file,
            reason: format!("vox_offset {offset} lies past the end of the data ({} bytes)", header.size + skipped),
        });
    }
    let n = shape.iter().product();
    let mut nifti1 = header.nifti1;
    nifti1.dim = [3, shape[0] as u16, shape[1] as u16, shape[2] as u16, 1, 1, 1, 1];
    let mut volumes = Vec::with_capacity(channels);
    // Volumes are stored one after the other (t slowest): each is read straight
    // into its own buffer, so a 4-channel MSD image costs its size once.
    for c in 0..channels {
        let (voxels, got) =
            Voxels::read(datatype, n, header.endianness, &mut stream).map_err(|e| truncated("reading voxels", e))?;
        if got < nbytes {
            return Err(IngestError::Truncated {
                file,
                reason: format!(
                    "holds {} bytes of voxel data, the header promises {}",
                    c as u64 * nbytes + got,
                    nbytes * channels as u64
                ),
            });
        }
        volumes.push(Volume {
            shape,
            affine,
            voxels,
            slope,
            inter,
            datatype: format!("{datatype:?}").to_uppercase(),
            header: Box::new(nifti1.clone()),
        });
    }
    if gz {
        // The gzip CRC is only checked at the end of the stream.
        io::copy(&mut stream, &mut io::sink()).map_err(|e| truncated("after the voxels", e))?;
    }
    Ok(volumes)
}

/// The NIfTI datatype of a code, if the nifti crate knows it.
pub(crate) fn nifti_type(code: i16) -> Option<NiftiType> {
    NiftiHeader { datatype: code, ..NiftiHeader::default() }.data_type().ok()
}

impl Header1or2 {
    /// nibabel's `get_best_affine`.
    fn affine(&self, shape: [usize; 3]) -> Affine {
        best_affine_of(self.sform_code, self.qform_code, &self.srow, self.quatern, self.qoffset, &self.pixdim, shape)
    }
}

/// Writes a uint8 volume (`data` x fastest, on `like`'s grid) with `like`'s header:
/// its sform, qform, pixdim and units, so that viewers overlay it on the source
/// image. `.gz` paths are compressed.
pub fn write_u8_like(path: &Path, like: &Volume, data: &[u8]) -> Result<()> {
    use nifti::writer::WriterOptions;
    let file = name(path);
    let [nx, ny, nz] = like.shape;
    let array = ndarray::Array3::from_shape_vec(ndarray::ShapeBuilder::f((nx, ny, nz)), data.to_vec())
        .map_err(|e| IngestError::Mismatch(format!("{file}: {} voxels for shape {:?}: {e}", data.len(), like.shape)))?;
    let mut h = (*like.header).clone();
    // A mask is stored as is: the source's intensity scaling and display range do not apply.
    h.scl_slope = 1.0;
    h.scl_inter = 0.0;
    h.cal_min = 0.0;
    h.cal_max = 1.0;
    h.intent_code = nifti::Intent::Label as i16;
    h.set_description(b"s3-train predict".to_vec()).expect("under 80 bytes");
    WriterOptions::new(path).reference_header(&h).write_nifti(&array).map_err(|e| IngestError::Io {
        file,
        error: match e {
            nifti::NiftiError::Io(io) => io,
            other => io::Error::other(other.to_string()),
        },
    })
}

/// Where the voxels start. Below the header plus its extension flag means "right
/// after them", as nibabel reads it; the bytes skipped before the voxels are bounded
/// like the voxels themselves.
fn check_vox_offset(v: f64, header_size: u64, opts: &ReadOptions) -> Result<u64, String> {
    if !v.is_finite() || v < 0.0 || v - header_size as f64 > opts.max_bytes as f64 {
        return Err(format!(
            "vox_offset = {v}; must be a finite byte offset from 0 to {header_size} + {} (--max-volume-bytes)",
            opts.max_bytes
        ));
    }
    Ok((v as u64).max(header_size + 4))
}

/// nibabel's `get_slope_inter`: a slope of 0 or non-finite means "no scaling"
/// (nibabel itself writes NaN there); a usable slope with a non-finite intercept is
/// an error.
fn scaling(slope: f64, inter: f64) -> Result<(f64, f64), String> {
    if slope == 0.0 || !slope.is_finite() {
        return Ok((1.0, 0.0));
    }
    if !inter.is_finite() {
        return Err(format!("scl_inter = {inter} with scl_slope = {slope}; the intercept must be finite"));
    }
    Ok((slope, inter))
}

/// The 3-D shape and the number of volumes (the 4th dimension; 5-D and beyond must
/// be singletons).
fn check_dims(dim: &[i64; 8], pixdim: &[f64; 8]) -> Result<([usize; 3], usize), String> {
    let nd = dim[0];
    if !(1..=7).contains(&nd) {
        return Err(format!("dim[0] = {nd}"));
    }
    let nd = nd as usize;
    if nd < 3 {
        return Err(format!("{nd}-D image {:?}; a 3-D volume is needed", &dim[1..=nd]));
    }
    if let Some(a) = (1..=nd).find(|&a| dim[a] < 1) {
        return Err(format!("dim[{a}] = {}; dimensions must be at least 1", dim[a]));
    }
    if dim[5..=nd.max(4)].iter().any(|&d| d > 1) {
        return Err(format!(
            "{nd}-D image {:?}; a 3-D volume, or 4-D with one volume per channel, is needed",
            &dim[1..=nd]
        ));
    }
    for (a, &p) in pixdim[1..4].iter().enumerate() {
        if !p.is_finite() || p <= 0.0 {
            // Shown at float32 precision, as a header viewer shows NIfTI-1's pixdim.
            return Err(format!("pixdim[{}] = {}; spacings must be finite and positive", a + 1, p as f32));
        }
    }
    let big = |d: i64| usize::try_from(d).map_err(|_| format!("dimension {d} does not fit in memory"));
    let channels = if nd >= 4 { big(dim[4])? } else { 1 };
    if dim[1..4].iter().any(|&d| d > i64::from(i16::MAX)) {
        return Err(format!("dimensions {:?} over 32767 voxels per axis", &dim[1..4]));
    }
    Ok(([big(dim[1])?, big(dim[2])?, big(dim[3])?], channels))
}

/// The affine nibabel reports (`get_best_affine`): sform if `sform_code > 0`, else
/// qform if `qform_code > 0`, else the base affine from shape and zooms (x flipped,
/// origin at the centre).
pub fn best_affine(h: &NiftiHeader, shape: [usize; 3]) -> Affine {
    let f = f64::from;
    best_affine_of(
        i32::from(h.sform_code),
        i32::from(h.qform_code),
        &[h.srow_x.map(f), h.srow_y.map(f), h.srow_z.map(f)],
        [f(h.quatern_b), f(h.quatern_c), f(h.quatern_d)],
        [f(h.quatern_x), f(h.quatern_y), f(h.quatern_z)],
        &h.pixdim.map(f),
        shape,
    )
}

fn best_affine_of(
    sform_code: i32,
    qform_code: i32,
    srow: &[[f64; 4]; 3],
    quatern: [f64; 3],
    qoffset: [f64; 3],
    pixdim: &[f64; 8],
    shape: [usize; 3],
) -> Affine {
    if sform_code > 0 {
        return [srow[0], srow[1], srow[2], [0.0, 0.0, 0.0, 1.0]];
    }
    let zooms = [pixdim[1].abs(), pixdim[2].abs(), pixdim[3].abs()];
    if qform_code > 0 {
        let [b, c, d] = quatern;
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2 < 0.0 { 0.0 } else { w2.sqrt() };
        let r = quat_to_mat([a, b, c, d]);
        let qfac = if pixdim[0] == -1.0 { -1.0 } else { 1.0 };
        let s = [zooms[0], zooms[1], zooms[2] * qfac];
        let mut m = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = r[i][j] * s[j];
            }
            m[i][3] = qoffset[i];
        }
        m[3][3] = 1.0;
        return m;
    }
    let mut m = [[0.0; 4]; 4];
    let z = [-zooms[0], zooms[1], zooms[2]];
    for a in 0..3 {
        m[a][a] = z[a];
        m[a][3] = -((shape[a] as f64 - 1.0) / 2.0) * z[a];
    }
    m[3][3] = 1.0;
    m
}

/// A NIfTI-1 header describing a volume read from another format, so that outputs
/// on its grid (a predicted mask) carry its geometry: the affine as sform (scanner
/// space), the spacings as pixdim, millimetres.
pub fn header_for(shape: [usize; 3], affine: &Affine, datatype: NiftiType) -> NiftiHeader {
    let s = crate::geometry::spacing(affine);
    let f = |v: f64| v as f32;
    NiftiHeader {
        dim: [3, shape[0] as u16, shape[1] as u16, shape[2] as u16, 1, 1, 1, 1],
        pixdim: [1.0, f(s[0]), f(s[1]), f(s[2]), 1.0, 1.0, 1.0, 1.0],
        datatype: datatype as i16,
        sform_code: 1,
        qform_code: 0,
        srow_x: affine[0].map(f),
        srow_y: affine[1].map(f),
        srow_z: affine[2].map(f),
        xyzt_units: 2,
        scl_slope: 1.0,
        endianness: Endianness::native(),
        ..NiftiHeader::default()
    }
}

/// nibabel's `quat2mat` for a (w, x, y, z) quaternion.
fn quat_to_mat(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = q;
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [[1.0 - (yy + zz), xy - wz, xz + wy], [xy + wz, 1.0 - (xx + zz), yz - wx], [xz - wy, yz + wx, 1.0 - (xx + yy)]]
}
