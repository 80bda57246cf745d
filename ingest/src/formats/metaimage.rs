//! MetaImage (`.mha`, `.mhd` + `.raw`/`.zraw`, `ElementDataFile = LIST` and slice
//! patterns), read as SimpleITK reads it: `TransformMatrix` holds the direction
//! cosines one axis after another, `Offset` the origin, both in LPS.
//! `AnatomicalOrientation` is informational for ITK (it never changes the
//! geometry it reads), and so it is here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use nifti::{Endianness, NiftiType};

use super::raw::{self, RawLayout};
use crate::error::{IngestError, Result};
use crate::nifti_io::{ReadOptions, Volume};

/// The header may be followed by megabytes of voxels: stop looking for its end here.
const MAX_HEADER: u64 = 1 << 20;

/// Reads a MetaImage file as its volumes (one per channel).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let file = super::name(path);
    let io_err = |error| IngestError::Io { file: file.clone(), error };
    let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err)?);
    let header = Header::parse(&mut r, &file)?;
    let (layout, affine) = header.layout(&file)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let local: Box<dyn BufRead + '_> = Box::new(r);
    let mut stream = header.data(local, dir, &file, raw::check(&layout, &affine, &file, opts)?)?;
    raw::read_volumes(&mut stream, &layout, affine, &file, opts)
}

/// The data files a `.mhd` header names (none for `LOCAL`), relative to its folder:
/// what must be fetched beside it from a remote source.
pub fn data_files(path: &Path) -> Result<Vec<String>> {
    let file = super::name(path);
    let mut r = BufReader::new(File::open(path).map_err(|error| IngestError::Io { file: file.clone(), error })?);
    let header = Header::parse(&mut r, &file)?;
    Ok(match header.data_file.as_slice() {
        [one] if one == "LOCAL" => Vec::new(),
        [one] => raw::data_file_names(one, &file)?,
        many => many.to_vec(),
    })
}

/// Reads a one-file MetaImage (`.mha`, `ElementDataFile = LOCAL`) from memory.
pub fn read_bytes(bytes: &[u8], file: &str, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let mut r = bytes;
    let header = Header::parse(&mut r, file)?;
    if header.data_file.first().map(String::as_str) != Some("LOCAL") {
        return Err(IngestError::Unsupported {
            file: file.into(),
            reason: "a detached data file read from memory".into(),
        });
    }
    let (layout, affine) = header.layout(file)?;
    let total = raw::check(&layout, &affine, file, opts)?;
    let mut stream = header.data(Box::new(r), Path::new("."), file, total)?;
    raw::read_volumes(&mut stream, &layout, affine, file, opts)
}

/// The `Key = Value` lines up to and including `ElementDataFile` (and, for `LIST`,
/// the file names after it).
struct Header {
    fields: BTreeMap<String, String>,
    data_file: Vec<String>,
}

impl Header {
    fn parse(r: &mut dyn BufRead, file: &str) -> Result<Header> {
        let bad = |reason: String| IngestError::BadHeader { file: file.into(), reason };
        let mut fields = BTreeMap::new();
        let mut read = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r
                .take(MAX_HEADER - read.min(MAX_HEADER))
                .read_until(b'\n', &mut line)
                .map_err(|error| IngestError::Io { file: file.into(), error })?;
            read += n as u64;
            if n == 0 {
                return Err(if fields.is_empty() {
                    IngestError::Truncated { file: file.into(), reason: "empty MetaImage header".into() }
                } else if read >= MAX_HEADER {
                    bad(format!("no ElementDataFile line in the first {MAX_HEADER} bytes"))
                } else {
                    IngestError::Truncated {
                        file: file.into(),
                        reason: "the header ends before ElementDataFile".into(),
                    }
                });
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let Some((key, value)) = text.split_once('=') else {
                return Err(if fields.is_empty() {
                    IngestError::NotImage {
                        file: file.into(),
                        reason: "not a MetaImage header (no 'Key = Value' line)".into(),
                    }
                } else {
                    bad(format!("line {text:?} is not 'Key = Value'"))
                });
            };
            let (key, value) = (key.trim().to_string(), value.trim().to_string());
            if key == "ElementDataFile" {
                let data_file = if value.split_whitespace().next() == Some("LIST") {
                    list_files(r, file, MAX_HEADER.saturating_sub(read))?
                } else {
                    vec![value]
                };
                return Ok(Header { fields, data_file });
            }
            fields.insert(key, value);
        }
    }

    fn get(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.fields.get(*k)).map(String::as_str)
    }

    fn numbers(&self, keys: &[&str], n: usize, file: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.get(keys) else { return Ok(None) };
        let parsed: Option<Vec<f64>> = v.split_whitespace().map(|x| x.parse().ok()).collect();
        match parsed {
            Some(p) if p.len() >= n && p.iter().all(|x| x.is_finite()) => Ok(Some(p)),
            _ => Err(IngestError::BadHeader {
                file: file.into(),
                reason: format!("{} = {v:?}; {n} finite numbers expected", keys[0]),
            }),
        }
    }

    fn layout(&self, file: &str) -> Result<(RawLayout, crate::geometry::Affine)> {
        let bad = |reason: String| IngestError::BadHeader { file: file.into(), reason };
        if let Some(t) = self.get(&["ObjectType"]) {
            if !t.eq_ignore_ascii_case("image") {
                return Err(IngestError::Unsupported { file: file.into(), reason: format!("ObjectType = {t}") });
            }
        }
        let ndims: usize = self
            .get(&["NDims"])
            .ok_or_else(|| bad("no NDims".into()))?
            .parse()
            .map_err(|_| bad(format!("NDims = {:?}", self.get(&["NDims"]))))?;
        if !(3..=4).contains(&ndims) {
            return Err(bad(format!("NDims = {ndims}; a 3-D volume (or 4-D, one volume per channel) is needed")));
        }
        let dims = self.numbers(&["DimSize"], ndims, file)?.ok_or_else(|| bad("no DimSize".into()))?;
        if dims.iter().any(|&d| d < 1.0 || d.fract() != 0.0 || d > i32::MAX as f64) {
            return Err(bad(format!("DimSize = {dims:?}; whole numbers from 1 are needed")));
        }
        let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let spacing = match self.numbers(&["ElementSpacing", "ElementSize"], ndims, file)? {
            Some(s) => s,
            None => vec![1.0; ndims],
        };
        if spacing[..3].iter().any(|&s| s <= 0.0) {
            return Err(bad(format!("ElementSpacing = {spacing:?}; spacings must be positive")));
        }
        let origin = self.numbers(&["Offset", "Position", "Origin"], ndims, file)?.unwrap_or(vec![0.0; ndims]);
        // Direction cosines, one axis after another (ITK's SetDirection(axis, row)).
        let matrix = self.numbers(&["TransformMatrix", "Rotation", "Orientation"], ndims * ndims, file)?;
        let columns: [[f64; 3]; 3] = std::array::from_fn(|axis| {
            std::array::from_fn(|r| matrix.as_ref().map_or(f64::from(u8::from(axis == r)), |m| m[axis * ndims + r]))
        });
        let channels_per_voxel: usize = match self.get(&["ElementNumberOfChannels"]) {
            None => 1,
            Some(v) => {
                v.parse().ok().filter(|&c| c >= 1).ok_or_else(|| bad(format!("ElementNumberOfChannels = {v}")))?
            }
        };
        let volumes = if ndims == 4 { dims[3] } else { 1 };
        if channels_per_voxel > 1 && volumes > 1 {
            return Err(IngestError::Unsupported {
                file: file.into(),
                reason: "a 4-D image of vector voxels; one kind of channel is needed".into(),
            });
        }
        let elem = self.get(&["ElementType"]).ok_or_else(|| bad("no ElementType".into()))?;
        let elem = element_type(elem).ok_or_else(|| IngestError::Unsupported {
            file: file.into(),
            reason: format!("ElementType = {elem}; numeric scalar types only"),
        })?;
        let msb = self
            .get(&["BinaryDataByteOrderMSB", "ElementByteOrderMSB"])
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if self.get(&["BinaryData"]).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            return Err(IngestError::Unsupported {
                file: file.into(),
                reason: "ASCII voxel data (BinaryData = False)".into(),
            });
        }
        let layout = RawLayout {
            elem,
            endian: if msb { Endianness::Big } else { Endianness::Little },
            shape: [dims[0], dims[1], dims[2]],
            channels: volumes * channels_per_voxel,
            interleaved: channels_per_voxel > 1,
        };
        let affine = raw::lps_affine(columns, [spacing[0], spacing[1], spacing[2]], [origin[0], origin[1], origin[2]]);
        Ok((layout, affine))
    }

    fn compressed(&self) -> bool {
        self.get(&["CompressedData"]).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The voxel stream: what follows the header (`LOCAL`), one data file, or several
    /// one after the other; inflated when `CompressedData = True`.
    fn data<'a>(&self, local: Box<dyn BufRead + 'a>, dir: &Path, file: &str, total: u64) -> Result<Box<dyn Read + 'a>> {
        let io_err =
            |name: &str, error: io::Error| IngestError::Io { file: format!("{file}: data file {name}"), error };
        let compressed = self.compressed();
        let open = |r: Box<dyn BufRead + 'a>, name: &str| -> Result<Box<dyn Read + 'a>> {
            if compressed { raw::inflate(r).map_err(|e| io_err(name, e)) } else { Ok(Box::new(r)) }
        };
        let names = match self.data_file.as_slice() {
            [one] if one == "LOCAL" => return open(local, "LOCAL"),
            [one] => raw::data_file_names(one, file)?,
            many => many.to_vec(),
        };
        let skip = match self.get(&["HeaderSize"]) {
            None => 0i64,
            Some(v) => v
                .parse()
                .map_err(|_| IngestError::BadHeader { file: file.into(), reason: format!("HeaderSize = {v}") })?,
        };
        let mut chain: Box<dyn Read + 'a> = Box::new(io::empty());
        let per_file = total / names.len() as u64;
        for name in names {
            if name.contains("..") || Path::new(&name).is_absolute() {
                return Err(IngestError::BadHeader {
                    file: file.into(),
                    reason: format!("data file {name:?} lies outside the header's folder"),
                });
            }
            let path = dir.join(&name);
            let f = File::open(&path).map_err(|e| io_err(&name, e))?;
            let len = f.metadata().map_err(|e| io_err(&name, e))?.len();
            let mut r = BufReader::with_capacity(1 << 20, f);
            // HeaderSize = -1: the voxels are the file's last bytes (uncompressed only).
            let skip = if skip == -1 && !compressed { len.saturating_sub(per_file) } else { skip.max(0) as u64 };
            io::copy(&mut (&mut r).take(skip), &mut io::sink()).map_err(|e| io_err(&name, e))?;
            chain = Box::new(chain.chain(open(Box::new(r), &name)?));
        }
        Ok(chain)
    }
}

/// The file names after `ElementDataFile = LIST`, one per line.
fn list_files(r: &mut dyn BufRead, file: &str, budget: u64) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut text = String::new();
    r.take(budget).read_to_string(&mut text).map_err(|error| IngestError::Io { file: file.into(), error })?;
    names.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
    if names.is_empty() {
        return Err(IngestError::BadHeader {
            file: file.into(),
            reason: "ElementDataFile = LIST names no files".into(),
        });
    }
    Ok(names)
}

/// MetaIO's element types (MET_LONG is 4 bytes, MET_LONG_LONG 8).
fn element_type(name: &str) -> Option<NiftiType> {
    use NiftiType::*;
    Some(match name {
        "MET_UCHAR" => Uint8,
        "MET_CHAR" => Int8,
        "MET_USHORT" => Uint16,
        "MET_SHORT" => Int16,
        "MET_UINT" | "MET_ULONG" => Uint32,
        "MET_INT" | "MET_LONG" => Int32,
        "MET_ULONG_LONG" => Uint64,
        "MET_LONG_LONG" => Int64,
        "MET_FLOAT" => Float32,
        "MET_DOUBLE" => Float64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oblique_lps_header_becomes_a_ras_affine() {
        let text = b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
TransformMatrix = 0 1 0 -1 0 0 0 0 1\nOffset = 10 20 30\nElementSpacing = 2 3 4\nDimSize = 2 2 2\n\
ElementType = MET_SHORT\nElementDataFile = LOCAL\n";
        let mut bytes = text.to_vec();
        bytes.extend((0i16..8).flat_map(|v| v.to_le_bytes()));
        let v = read_bytes(&bytes, "t.mha", &ReadOptions::default()).unwrap().remove(0);
        // Axis 0 points along LPS +y (RAS −y), axis 1 along LPS −x (RAS +x).
        assert_eq!(v.affine[0], [0.0, 3.0, 0.0, -10.0]);
        assert_eq!(v.affine[1], [-2.0, 0.0, 0.0, -20.0]);
        assert_eq!(v.affine[2], [0.0, 0.0, 4.0, 30.0]);
        assert_eq!(v.value(5), 5.0);
        let short = &bytes[..bytes.len() - 3];
        let e = read_bytes(short, "t.mha", &ReadOptions::default()).unwrap_err();
        assert!(matches!(e, IngestError::Truncated { .. }), "{e}");
    }
}
