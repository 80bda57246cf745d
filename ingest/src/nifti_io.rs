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
use crate::geometry::Affine;

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

/// Voxel data in its stored type, Fortran order (x fastest), native endianness.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Voxels {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A stored voxel type.
pub trait Voxel: Copy + Send + Sync + 'static {
    /// The stored value as f64.
    fn to_f64(self) -> f64;
}

macro_rules! voxel {
    ($($t:ty),*) => { $(impl Voxel for $t { #[inline] fn to_f64(self) -> f64 { self as f64 } })* };
}
voxel!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

/// Runs `$body` with `$data` bound to the typed slice of a [`Voxels`].
#[macro_export]
macro_rules! with_voxels {
    ($voxels:expr, |$data:ident| $body:expr) => {
        match $voxels {
            $crate::nifti_io::Voxels::U8($data) => $body,
            $crate::nifti_io::Voxels::I8($data) => $body,
            $crate::nifti_io::Voxels::U16($data) => $body,
            $crate::nifti_io::Voxels::I16($data) => $body,
            $crate::nifti_io::Voxels::U32($data) => $body,
            $crate::nifti_io::Voxels::I32($data) => $body,
            $crate::nifti_io::Voxels::U64($data) => $body,
            $crate::nifti_io::Voxels::I64($data) => $body,
            $crate::nifti_io::Voxels::F32($data) => $body,
            $crate::nifti_io::Voxels::F64($data) => $body,
        }
    };
}

impl Voxels {
    /// Number of voxels.
    pub fn len(&self) -> usize {
        with_voxels!(self, |d| d.len())
    }
    /// True when there are no voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the stored type is an integer type.
    pub fn is_integer(&self) -> bool {
        !matches!(self, Voxels::F32(_) | Voxels::F64(_))
    }
    /// Bytes per voxel of a NIfTI datatype this reader supports.
    fn element_size(t: NiftiType) -> Option<usize> {
        use NiftiType::*;
        Some(match t {
            Uint8 | Int8 => 1,
            Int16 | Uint16 => 2,
            Int32 | Uint32 | Float32 => 4,
            Int64 | Uint64 | Float64 => 8,
            _ => return None,
        })
    }
    /// Reads `n` voxels of type `t` straight into a typed buffer (no intermediate byte
    /// copy: a 512 MiB int16 CT costs 512 MiB). Returns the bytes actually read.
    fn read(t: NiftiType, n: usize, e: Endianness, r: &mut dyn Read) -> io::Result<(Voxels, u64)> {
        fn typed<T: bytemuck::Pod>(
            n: usize,
            r: &mut dyn Read,
            swap: bool,
            sw: fn(T) -> T,
        ) -> io::Result<(Vec<T>, u64)> {
            // The buffer grows with the data actually present, not with the header's
            // claim: a 300-byte file whose dims promise 2 GiB must not cost 2 GiB (with
            // --jobs such files at once that is an OOM kill of the whole run). The last
            // step grows to exactly `n`, and large reallocations are remaps, not copies.
            let first = n.min((1 << 20) / std::mem::size_of::<T>());
            let mut v: Vec<T> = Vec::new();
            let mut got = 0;
            loop {
                let len = if v.is_empty() { first } else { v.len().saturating_mul(2).min(n) };
                v.try_reserve_exact(len - v.len())
                    .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
                v.resize(len, T::zeroed());
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
                while got < bytes.len() {
                    match r.read(&mut bytes[got..]) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                if got < bytes.len() || len == n {
                    break;
                }
            }
            if swap {
                v.iter_mut().for_each(|x| *x = sw(*x));
            }
            Ok((v, got as u64))
        }
        let swap = e != Endianness::native();
        use NiftiType::*;
        macro_rules! go {
            ($variant:ident, $t:ty, $sw:expr) => {{
                let (v, got) = typed::<$t>(n, r, swap, $sw)?;
                (Voxels::$variant(v), got)
            }};
        }
        Ok(match t {
            Uint8 => go!(U8, u8, |x| x),
            Int8 => go!(I8, i8, |x| x),
            Uint16 => go!(U16, u16, u16::swap_bytes),
            Int16 => go!(I16, i16, i16::swap_bytes),
            Uint32 => go!(U32, u32, u32::swap_bytes),
            Int32 => go!(I32, i32, i32::swap_bytes),
            Uint64 => go!(U64, u64, u64::swap_bytes),
            Int64 => go!(I64, i64, i64::swap_bytes),
            Float32 => go!(F32, f32, |x: f32| f32::from_bits(x.to_bits().swap_bytes())),
            Float64 => go!(F64, f64, |x: f64| f64::from_bits(x.to_bits().swap_bytes())),
            _ => unreachable!("checked by element_size"),
        })
    }
}

/// A 3-D volume as read from disk.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Voxels along the three array axes.
    pub shape: [usize; 3],
    /// Voxel index → world (mm), nibabel's choice of sform/qform/base.
    pub affine: Affine,
    /// The data, x fastest.
    pub voxels: Voxels,
    /// `scl_slope` (1 when the header asks for no scaling).
    pub slope: f64,
    /// `scl_inter` (0 when unscaled).
    pub inter: f64,
    /// Stored datatype name (`INT16`, ...).
    pub datatype: String,
    /// The header as read: what an output on this grid (a predicted mask) copies.
    pub header: Box<NiftiHeader>,
}

impl Volume {
    /// Whether values are the stored integers themselves (no scaling, integer type):
    /// interpolated intensities are then truncated back to integers, as SimpleITK does.
    pub fn integer_unscaled(&self) -> bool {
        self.voxels.is_integer() && self.slope == 1.0 && self.inter == 0.0
    }
    /// The scaled value of voxel `n` (Fortran order).
    pub fn value(&self, n: usize) -> f64 {
        with_voxels!(&self.voxels, |d| d[n].to_f64() * self.slope + self.inter)
    }
    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The same geometry and scaling without the voxels.
    pub fn clone_header(&self) -> Volume {
        Volume {
            shape: self.shape,
            affine: self.affine,
            voxels: Voxels::U8(Vec::new()),
            slope: self.slope,
            inter: self.inter,
            datatype: self.datatype.clone(),
            header: self.header.clone(),
        }
    }
    /// True for a volume without voxels (never produced by the reader).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Reads a NIfTI-1 file; the error says precisely why a file is unusable.
pub fn read_nifti(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    let file = name(path);
    let opened = File::open(path).map_err(|error| IngestError::Io { file: file.clone(), error })?;
    read_nifti_from(BufReader::with_capacity(1 << 20, opened), &file, opts)
}

/// Reads a NIfTI-1 volume (plain or gzipped) from memory; `file` names it in errors.
pub fn read_nifti_bytes(bytes: &[u8], file: &str, opts: &ReadOptions) -> Result<Volume> {
    read_nifti_from(bytes, file, opts)
}

/// Reads a NIfTI-1 volume from a stream. Every header field that feeds arithmetic
/// or an allocation is checked first: the header is untrusted input, and a wrong
/// number in it must become a quarantine reason, never a panic or an abort.
pub fn read_nifti_from<R: BufRead>(mut reader: R, file: &str, opts: &ReadOptions) -> Result<Volume> {
    let file = file.to_string();
    let io_err = |source: io::Error| IngestError::Io { file: file.clone(), error: source };
    let gz = reader.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
    let mut stream: Box<dyn Read + '_> =
        if gz { Box::new(flate2::read::MultiGzDecoder::new(reader)) } else { Box::new(reader) };
    let truncated = |what: &str, e: io::Error| IngestError::Truncated {
        file: file.clone(),
        reason: format!("{what}: {e}{}", if gz { " (gzip stream)" } else { "" }),
    };

    let mut hdr = [0u8; 348];
    stream.read_exact(&mut hdr[..4]).map_err(|e| truncated("reading the header", e))?;
    let (le, be) = (
        i32::from_le_bytes(hdr[..4].try_into().expect("4 bytes")),
        i32::from_be_bytes(hdr[..4].try_into().expect("4 bytes")),
    );
    if le == 540 || be == 540 {
        return Err(IngestError::Unsupported {
            file,
            reason: "NIfTI-2 header (540 bytes); convert to NIfTI-1, e.g. nibabel.Nifti1Image(img.dataobj, img.affine)"
                .into(),
        });
    }
    if le != 348 && be != 348 {
        return Err(IngestError::NotNifti { file, reason: format!("header size field is {le}, expected 348") });
    }
    stream.read_exact(&mut hdr[4..]).map_err(|e| truncated("reading the header", e))?;
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
    let header = NiftiHeader::from_reader(io::Cursor::new(&hdr[..]))
        .map_err(|e| IngestError::BadHeader { file: file.clone(), reason: e.to_string() })?;
    let bad = |reason: String| IngestError::BadHeader { file: file.clone(), reason };
    let shape = check_dims(&header).map_err(bad)?;
    let datatype = header.data_type().ok();
    let size = datatype.and_then(Voxels::element_size).ok_or_else(|| IngestError::Unsupported {
        file: file.clone(),
        reason: format!(
            "datatype {} ({}); numeric scalar types only",
            datatype.map_or("unknown".into(), |t| format!("{t:?}")),
            header.datatype
        ),
    })?;
    let datatype = datatype.expect("checked");
    let nbytes = shape
        .iter()
        .try_fold(size as u64, |acc, &n| acc.checked_mul(n as u64))
        .filter(|&b| b <= opts.max_bytes)
        .ok_or_else(|| {
            bad(format!(
                "{shape:?} voxels of {size} bytes are over the limit of {} bytes (--max-volume-bytes)",
                opts.max_bytes
            ))
        })?;
    let affine = best_affine(&header, shape);
    crate::geometry::check_affine(&affine).map_err(bad)?;
    // The 1.5 mm grid is allocated from the affine's spacings, not from the file
    // size: 64³ voxels that claim 400 mm each would resample to 17066³ (20 TB).
    let out_shape = crate::geometry::resampled_geometry(shape, &affine).0;
    let out_bytes = out_shape.iter().try_fold(4u64, |acc, &n| acc.checked_mul(n as u64));
    if out_bytes.is_none_or(|b| b > opts.max_bytes) {
        return Err(bad(format!(
            "spacings {:?} mm: resampled to 1.5 mm the {shape:?} voxels become {out_shape:?}, {}, over the limit of {} bytes (--max-volume-bytes)",
            crate::geometry::spacing(&affine),
            out_bytes.map_or("more than 2^64 bytes".into(), |b| format!("{b} bytes")),
            opts.max_bytes
        )));
    }
    let offset = check_vox_offset(header.vox_offset, opts).map_err(bad)?;
    let (slope, inter) = scaling(&header).map_err(bad)?;

    // Extensions sit between the header and the data.
    let skipped = io::copy(&mut (&mut stream).take(offset - 348), &mut io::sink())
        .map_err(|e| truncated("skipping extensions", e))?;
    if skipped < offset - 348 {
        return Err(IngestError::Truncated {
            file,
            reason: format!("vox_offset {offset} lies past the end of the data ({} bytes)", 348 + skipped),
        });
    }
    let n = shape.iter().product();
    let (voxels, got) =
        Voxels::read(datatype, n, header.endianness, &mut stream).map_err(|e| truncated("reading voxels", e))?;
    if got < nbytes {
        return Err(IngestError::Truncated {
            file,
            reason: format!("holds {got} bytes of voxel data, the header promises {nbytes}"),
        });
    }
    if gz {
        // The gzip CRC is only checked at the end of the stream.
        io::copy(&mut stream, &mut io::sink()).map_err(|e| truncated("after the voxels", e))?;
    }
    Ok(Volume {
        shape,
        affine,
        voxels,
        slope,
        inter,
        datatype: format!("{datatype:?}").to_uppercase(),
        header: Box::new(header),
    })
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

/// Where the voxels start. Below 352 means "right after the header and the
/// extension flag", as nibabel reads it; the bytes skipped before the voxels are
/// bounded like the voxels themselves.
fn check_vox_offset(v: f32, opts: &ReadOptions) -> Result<u64, String> {
    let v = f64::from(v);
    if !v.is_finite() || v < 0.0 || v - 348.0 > opts.max_bytes as f64 {
        return Err(format!(
            "vox_offset = {v}; must be a finite byte offset from 0 to 348 + {} (--max-volume-bytes)",
            opts.max_bytes
        ));
    }
    Ok((v as u64).max(352))
}

/// nibabel's `get_slope_inter`: a slope of 0 or non-finite means "no scaling"
/// (nibabel itself writes NaN there); a usable slope with a non-finite intercept is
/// an error.
fn scaling(h: &NiftiHeader) -> Result<(f64, f64), String> {
    let slope = f64::from(h.scl_slope);
    if slope == 0.0 || !slope.is_finite() {
        return Ok((1.0, 0.0));
    }
    let inter = f64::from(h.scl_inter);
    if !inter.is_finite() {
        return Err(format!("scl_inter = {inter} with scl_slope = {slope}; the intercept must be finite"));
    }
    Ok((slope, inter))
}

/// The shape, from dims read as NIfTI's signed shorts (the nifti crate stores them
/// as u16, which would turn a -1 into 65535 voxels).
fn check_dims(h: &NiftiHeader) -> Result<[usize; 3], String> {
    let dim = h.dim.map(|d| d as i16);
    let nd = dim[0];
    if !(1..=7).contains(&nd) {
        return Err(format!("dim[0] = {nd}"));
    }
    let nd = nd as usize;
    if nd < 3 {
        return Err(format!("{nd}-D image {:?}; a 3-D volume is needed", &dim[1..=nd]));
    }
    if dim[4..=nd.max(3)].iter().any(|&d| d > 1) {
        return Err(format!("{nd}-D image {:?}; a 3-D volume (or 4-D with one volume) is needed", &dim[1..=nd]));
    }
    if let Some(a) = (1..=3).find(|&a| dim[a] < 1) {
        return Err(format!("dim[{a}] = {}; dimensions must be at least 1", dim[a]));
    }
    for (a, &p) in h.pixdim[1..4].iter().enumerate() {
        if !p.is_finite() || p <= 0.0 {
            return Err(format!("pixdim[{}] = {p}; spacings must be finite and positive", a + 1));
        }
    }
    Ok([dim[1] as usize, dim[2] as usize, dim[3] as usize])
}

/// The affine nibabel reports (`get_best_affine`): sform if `sform_code > 0`, else
/// qform if `qform_code > 0`, else the base affine from shape and zooms (x flipped,
/// origin at the centre).
pub fn best_affine(h: &NiftiHeader, shape: [usize; 3]) -> Affine {
    let f = f64::from;
    if h.sform_code > 0 {
        let r = [h.srow_x, h.srow_y, h.srow_z];
        return [
            [f(r[0][0]), f(r[0][1]), f(r[0][2]), f(r[0][3])],
            [f(r[1][0]), f(r[1][1]), f(r[1][2]), f(r[1][3])],
            [f(r[2][0]), f(r[2][1]), f(r[2][2]), f(r[2][3])],
            [0.0, 0.0, 0.0, 1.0],
        ];
    }
    let zooms = [f(h.pixdim[1]).abs(), f(h.pixdim[2]).abs(), f(h.pixdim[3]).abs()];
    if h.qform_code > 0 {
        let (b, c, d) = (f(h.quatern_b), f(h.quatern_c), f(h.quatern_d));
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2 < 0.0 { 0.0 } else { w2.sqrt() };
        let r = quat_to_mat([a, b, c, d]);
        let qfac = if h.pixdim[0] == -1.0 { -1.0 } else { 1.0 };
        let s = [zooms[0], zooms[1], zooms[2] * qfac];
        let mut m = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] = r[i][j] * s[j];
            }
        }
        m[0][3] = f(h.quatern_x);
        m[1][3] = f(h.quatern_y);
        m[2][3] = f(h.quatern_z);
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
