//! DICOM series: a folder of single-frame slices → one volume, as SimpleITK's
//! `ImageSeriesReader` assembles it. Slices are grouped by SeriesInstanceUID (the
//! largest series is read; the others are named in the log), ordered by their
//! position along the slice normal (never by file name or InstanceNumber), and
//! rescaled by each slice's slope and intercept. Gantry tilt, uneven spacing,
//! slices of another size or orientation are quarantine reasons.
//!
//! Uncompressed transfer syntaxes only (implicit and explicit VR little endian):
//! the public datasets that ship DICOM (CHAOS, COSMOS22) use them; a compressed
//! series is refused with its transfer syntax named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use nifti::NiftiType;

use crate::error::{IngestError, Result};
use crate::geometry::Affine;
use crate::nifti_io::{ReadOptions, Volume, Voxels, check_grid, checked_bytes, header_for};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Relative tolerance on slice spacing and on how parallel the slice offsets are to
/// the normal (ITK's series reader warns at about the same point).
const SPACING_TOLERANCE: f64 = 1e-3;

/// One slice's header.
#[derive(Clone, Debug)]
struct Slice {
    path: PathBuf,
    series: String,
    rows: usize,
    columns: usize,
    /// Row direction (along a row, increasing column), column direction, in LPS.
    orientation: [f64; 6],
    position: [f64; 3],
    /// PixelSpacing: between rows, between columns.
    pixel_spacing: [f64; 2],
    bits: u16,
    signed: bool,
    slope: f64,
    intercept: f64,
}

/// Whether `path` looks like a DICOM file (the `DICM` marker after the preamble).
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[128..] == b"DICM"
}

/// Reads the largest series in `dir` (files directly inside it) as one volume.
pub fn read_series(dir: &Path, opts: &ReadOptions) -> Result<Volume> {
    let folder = super::name(dir);
    let io_err = |error| IngestError::Io { file: folder.clone(), error };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_dicom_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(IngestError::NotImage {
            file: folder,
            reason: "a folder with no DICOM file (no DICM marker)".into(),
        });
    }
    let mut series: BTreeMap<String, Vec<Slice>> = BTreeMap::new();
    for path in &files {
        let s = read_slice_header(path)?;
        series.entry(s.series.clone()).or_default().push(s);
    }
    // The largest series; on a tie, the first UID in order, so the choice is stable.
    let (uid, mut slices) = series
        .iter()
        .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("non-empty");
    if series.len() > 1 {
        let others: Vec<String> =
            series.iter().filter(|(k, _)| **k != uid).map(|(k, v)| format!("{k} ({} files)", v.len())).collect();
        tracing::warn!(folder = %folder, "{} series in one folder: reading {uid} ({} files), leaving {}", series.len(), slices.len(), others.join(", "));
    }
    let geometry = order(&mut slices, &folder)?;
    assemble(&slices, geometry, &folder, opts)
}

fn read_slice_header(path: &Path) -> Result<Slice> {
    let file = super::name(path);
    let bad = |reason: String| IngestError::BadHeader { file: file.clone(), reason };
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| IngestError::NotImage { file: file.clone(), reason: format!("not a readable DICOM file: {e}") })?;
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0').trim().to_string();
    if ts != IMPLICIT_LE && ts != EXPLICIT_LE {
        return Err(IngestError::Unsupported {
            file,
            reason: format!(
                "transfer syntax {ts}; uncompressed little-endian DICOM (1.2.840.10008.1.2, .1.2.1) is read"
            ),
        });
    }
    let text = |tag, what: &str| -> Result<String> {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string())
            .ok_or_else(|| bad(format!("no {what}")))
    };
    let floats = |tag, what: &str, n: usize| -> Result<Vec<f64>> {
        let v =
            obj.element(tag).ok().and_then(|e| e.to_multi_float64().ok()).ok_or_else(|| bad(format!("no {what}")))?;
        if v.len() != n || v.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("{what} = {v:?}; {n} finite numbers expected")));
        }
        Ok(v)
    };
    let int = |tag, what: &str| -> Result<i64> {
        obj.element(tag).ok().and_then(|e| e.to_int::<i64>().ok()).ok_or_else(|| bad(format!("no {what}")))
    };
    let optional = |tag| obj.element(tag).ok().and_then(|e| e.to_float64().ok());
    let frames = obj.element(tags::NUMBER_OF_FRAMES).ok().and_then(|e| e.to_int::<i64>().ok()).unwrap_or(1);
    if frames > 1 {
        return Err(IngestError::Unsupported {
            file,
            reason: format!("a multi-frame object ({frames} frames); single-frame slices are read"),
        });
    }
    let samples = int(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel").unwrap_or(1);
    if samples != 1 {
        return Err(IngestError::Unsupported {
            file,
            reason: format!("SamplesPerPixel = {samples}; greyscale is needed"),
        });
    }
    let o = floats(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6)?;
    let p = floats(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let ps = floats(tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    if ps.iter().any(|&s| s <= 0.0) {
        return Err(bad(format!("PixelSpacing = {ps:?}")));
    }
    let rows = int(tags::ROWS, "Rows")?;
    let columns = int(tags::COLUMNS, "Columns")?;
    let bits = int(tags::BITS_ALLOCATED, "BitsAllocated")?;
    if !(1..=65535).contains(&rows) || !(1..=65535).contains(&columns) || ![8, 16, 32].contains(&bits) {
        return Err(bad(format!("Rows {rows}, Columns {columns}, BitsAllocated {bits}")));
    }
    let slope = optional(tags::RESCALE_SLOPE).filter(|s| s.is_finite() && *s != 0.0).unwrap_or(1.0);
    let intercept = optional(tags::RESCALE_INTERCEPT).filter(|s| s.is_finite()).unwrap_or(0.0);
    Ok(Slice {
        path: path.to_path_buf(),
        series: text(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID").unwrap_or_default(),
        rows: rows as usize,
        columns: columns as usize,
        orientation: std::array::from_fn(|i| o[i]),
        position: [p[0], p[1], p[2]],
        pixel_spacing: [ps[0], ps[1]],
        bits: bits as u16,
        signed: int(tags::PIXEL_REPRESENTATION, "PixelRepresentation").unwrap_or(0) == 1,
        slope,
        intercept,
    })
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Sorts the slices along the normal and returns the LPS affine of the stack.
fn order(slices: &mut [Slice], folder: &str) -> Result<Affine> {
    let first = slices[0].clone();
    let bad = |reason: String| IngestError::BadHeader { file: folder.into(), reason };
    for s in slices.iter() {
        if (s.rows, s.columns, s.bits, s.signed) != (first.rows, first.columns, first.bits, first.signed) {
            return Err(bad(format!(
                "slice {} is {}×{} of {} bits, slice {} is {}×{} of {} bits: one series must share one size",
                super::name(&s.path),
                s.columns,
                s.rows,
                s.bits,
                super::name(&first.path),
                first.columns,
                first.rows,
                first.bits
            )));
        }
        if s.orientation.iter().zip(first.orientation).any(|(a, b)| (a - b).abs() > 1e-4)
            || s.pixel_spacing.iter().zip(first.pixel_spacing).any(|(a, b)| (a - b).abs() > 1e-4 * b.abs().max(1.0))
        {
            return Err(bad(format!(
                "slice {} has another orientation or pixel spacing than the series",
                super::name(&s.path)
            )));
        }
    }
    let row = [first.orientation[0], first.orientation[1], first.orientation[2]];
    let col = [first.orientation[3], first.orientation[4], first.orientation[5]];
    let normal = cross(row, col);
    if (dot(normal, normal) - 1.0).abs() > 1e-3 || dot(row, col).abs() > 1e-3 {
        return Err(bad(format!("ImageOrientationPatient {:?} is not two orthonormal vectors", first.orientation)));
    }
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let step = if slices.len() > 1 {
        let d: Vec<f64> = slices.windows(2).map(|w| dot(w[1].position, normal) - dot(w[0].position, normal)).collect();
        let mean = (dot(slices[slices.len() - 1].position, normal) - dot(slices[0].position, normal)) / d.len() as f64;
        if mean <= 0.0 || d.iter().any(|&x| x <= 0.0) {
            return Err(bad("two slices share one position along the normal".into()));
        }
        if let Some((i, x)) = d.iter().enumerate().find(|(_, x)| ((*x - mean) / mean).abs() > SPACING_TOLERANCE) {
            return Err(bad(format!(
                "uneven slice spacing: {x:.4} mm between slices {i} and {} where the mean is {mean:.4} mm",
                i + 1
            )));
        }
        // Gantry tilt: the offset between slices leaves the normal.
        let offset: [f64; 3] = std::array::from_fn(|a| slices[slices.len() - 1].position[a] - slices[0].position[a]);
        let along = dot(offset, normal);
        let off_axis = (dot(offset, offset) - along * along).max(0.0).sqrt();
        if off_axis > SPACING_TOLERANCE * along.abs().max(1.0) * 10.0 {
            return Err(bad(format!(
                "gantry tilt: the slices drift {off_axis:.3} mm across the normal over {along:.1} mm; resample the series first"
            )));
        }
        mean
    } else {
        tracing::warn!(folder, "a series of one slice: spacing along the normal taken as 1 mm");
        1.0
    };
    let columns = [row, col, normal];
    let spacing = [first.pixel_spacing[1], first.pixel_spacing[0], step];
    Ok(super::raw::lps_affine(columns, spacing, slices[0].position))
}

fn assemble(slices: &[Slice], affine: Affine, folder: &str, opts: &ReadOptions) -> Result<Volume> {
    let first = &slices[0];
    let shape = [first.columns, first.rows, slices.len()];
    let bad = |reason: String| IngestError::BadHeader { file: folder.into(), reason };
    let integral = slices.iter().all(|s| s.slope.fract() == 0.0 && s.intercept.fract() == 0.0);
    // Integer rescales stay integers (SimpleITK reads such a series as an integer
    // image, and interpolated values are then truncated as for any integer source).
    let elem = if integral { NiftiType::Int32 } else { NiftiType::Float32 };
    checked_bytes(shape, 1, 4, opts).map_err(bad)?;
    check_grid(shape, &affine, opts).map_err(bad)?;
    let per_slice = first.rows * first.columns;
    let mut ints: Vec<i32> = Vec::new();
    let mut floats: Vec<f32> = Vec::new();
    let n = shape.iter().product::<usize>();
    let reserved = if integral { ints.try_reserve_exact(n) } else { floats.try_reserve_exact(n) };
    reserved.map_err(|e| IngestError::Io {
        file: folder.into(),
        error: std::io::Error::new(std::io::ErrorKind::OutOfMemory, e.to_string()),
    })?;
    for s in slices {
        let file = super::name(&s.path);
        let obj: DefaultDicomObject = dicom_object::open_file(&s.path)
            .map_err(|e| IngestError::Truncated { file: file.clone(), reason: format!("reading the slice: {e}") })?;
        let pixels = obj
            .element(tags::PIXEL_DATA)
            .map_err(|e| IngestError::Truncated { file: file.clone(), reason: format!("no pixel data: {e}") })?;
        let bytes = pixels.to_bytes().map_err(|e| IngestError::Unsupported {
            file: file.clone(),
            reason: format!("encapsulated pixel data: {e}"),
        })?;
        let width = usize::from(s.bits / 8);
        if bytes.len() < per_slice * width {
            return Err(IngestError::Truncated {
                file,
                reason: format!(
                    "{} bytes of pixel data for {}×{} pixels of {} bits",
                    bytes.len(),
                    s.columns,
                    s.rows,
                    s.bits
                ),
            });
        }
        let raw = |i: usize| -> f64 {
            let b = &bytes[i * width..(i + 1) * width];
            match (width, s.signed) {
                (1, false) => f64::from(b[0]),
                (1, true) => f64::from(b[0] as i8),
                (2, false) => f64::from(u16::from_le_bytes([b[0], b[1]])),
                (2, true) => f64::from(i16::from_le_bytes([b[0], b[1]])),
                (_, false) => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                (_, true) => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            }
        };
        for i in 0..per_slice {
            let v = raw(i) * s.slope + s.intercept;
            if integral {
                if !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&v) {
                    return Err(IngestError::BadValues { file, reason: format!("rescaled value {v} beyond int32") });
                }
                ints.push(v as i32);
            } else {
                floats.push(v as f32);
            }
        }
    }
    let voxels = if integral { Voxels::I32(ints) } else { Voxels::F32(floats) };
    Ok(Volume {
        shape,
        affine,
        voxels,
        slope: 1.0,
        inter: 0.0,
        datatype: format!("{elem:?}").to_uppercase(),
        header: Box::new(header_for(shape, &affine, elem)),
    })
}
