//! NRRD (`.nrrd` with the data attached, `.nhdr` with it detached): raw and gzip
//! encodings, `space directions`/`space origin` in the named `space` (RAS, LAS,
//! LPS), or `spacings` alone; one non-spatial axis (first or last) holds channels.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use nifti::{Endianness, NiftiType};

use super::raw::{self, RawLayout};
use crate::error::{IngestError, Result};
use crate::geometry::Affine;
use crate::nifti_io::{ReadOptions, Volume};

const MAX_HEADER: u64 = 1 << 20;

/// Reads a NRRD file as its volumes (one per channel).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let file = super::name(path);
    let io_err = |error| IngestError::Io { file: file.clone(), error };
    let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err)?);
    let header = Header::parse(&mut r, &file)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    header.volumes(Box::new(r), dir, &file, opts)
}

/// The data files a `.nhdr` header names (none when attached), relative to its folder.
pub fn data_files(path: &Path) -> Result<Vec<String>> {
    let file = super::name(path);
    let mut r = BufReader::new(File::open(path).map_err(|error| IngestError::Io { file: file.clone(), error })?);
    let header = Header::parse(&mut r, &file)?;
    Ok(match header.get("data file") {
        None => Vec::new(),
        Some(v) if v.split_whitespace().next() == Some("LIST") => header.list.clone(),
        Some(v) => raw::data_file_names(v, &file)?,
    })
}

/// Reads a NRRD file with attached data from memory.
pub fn read_bytes(bytes: &[u8], file: &str, opts: &ReadOptions) -> Result<Vec<Volume>> {
    let mut r = bytes;
    let header = Header::parse(&mut r, file)?;
    if header.get("data file").is_some() {
        return Err(IngestError::Unsupported {
            file: file.into(),
            reason: "a detached data file read from memory".into(),
        });
    }
    header.volumes(Box::new(r), Path::new("."), file, opts)
}

struct Header {
    /// Field names lower-cased (`space directions`, `sizes`, ...).
    fields: BTreeMap<String, String>,
    /// File names after `data file: LIST`.
    list: Vec<String>,
}

impl Header {
    fn parse(r: &mut dyn BufRead, file: &str) -> Result<Header> {
        let mut first = Vec::new();
        r.take(64).read_until(b'\n', &mut first).map_err(|error| IngestError::Io { file: file.into(), error })?;
        if !first.starts_with(b"NRRD000") {
            return Err(IngestError::NotImage { file: file.into(), reason: "no NRRD000x magic line".into() });
        }
        let mut fields = BTreeMap::new();
        let mut read = first.len() as u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r
                .take(MAX_HEADER.saturating_sub(read))
                .read_until(b'\n', &mut line)
                .map_err(|error| IngestError::Io { file: file.into(), error })?;
            read += n as u64;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if n == 0 || text.is_empty() {
                // A blank line (or the end of a detached header) ends the header.
                break;
            }
            if text.starts_with('#') || text.contains(":=") && !text.contains(": ") {
                continue; // comments and key/value pairs
            }
            let Some((key, value)) = text.split_once(':') else {
                return Err(IngestError::BadHeader {
                    file: file.into(),
                    reason: format!("line {text:?} is not 'field: value'"),
                });
            };
            let key = key.trim().to_lowercase();
            let value = value.trim().to_string();
            let is_list = (key == "data file" || key == "datafile") && value.split_whitespace().next() == Some("LIST");
            fields.insert(key, value);
            if is_list {
                let mut rest = String::new();
                r.take(MAX_HEADER.saturating_sub(read))
                    .read_to_string(&mut rest)
                    .map_err(|error| IngestError::Io { file: file.into(), error })?;
                let list = rest.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                return Ok(Header { fields, list });
            }
        }
        Ok(Header { fields, list: Vec::new() })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).or_else(|| self.fields.get(&key.replace(' ', ""))).map(String::as_str)
    }

    fn volumes(
        &self,
        attached: Box<dyn BufRead + '_>,
        dir: &Path,
        file: &str,
        opts: &ReadOptions,
    ) -> Result<Vec<Volume>> {
        let bad = |reason: String| IngestError::BadHeader { file: file.into(), reason };
        let unsupported = |reason: String| IngestError::Unsupported { file: file.into(), reason };
        let dimension: usize = self
            .get("dimension")
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad(format!("dimension: {:?}", self.get("dimension"))))?;
        if !(3..=4).contains(&dimension) {
            return Err(bad(format!("dimension {dimension}; a 3-D volume (or 4-D, one volume per channel) is needed")));
        }
        let sizes: Vec<usize> = self
            .get("sizes")
            .ok_or_else(|| bad("no sizes".into()))?
            .split_whitespace()
            .map(|s| s.parse::<usize>().ok().filter(|&n| n >= 1 && n <= i32::MAX as usize))
            .collect::<Option<_>>()
            .filter(|v: &Vec<usize>| v.len() == dimension)
            .ok_or_else(|| {
                bad(format!("sizes: {:?}; {dimension} whole numbers from 1 are needed", self.get("sizes")))
            })?;
        let elem = self.get("type").ok_or_else(|| bad("no type".into()))?;
        let elem =
            element_type(elem).ok_or_else(|| unsupported(format!("type {elem:?}; numeric scalar types only")))?;
        let endian = match self.get("endian") {
            Some("big") => Endianness::Big,
            Some("little") | None => Endianness::Little,
            Some(e) => return Err(bad(format!("endian: {e}"))),
        };
        let encoding = self.get("encoding").unwrap_or("raw");
        let gzip = match encoding {
            "raw" => false,
            "gzip" | "gz" => true,
            other => return Err(unsupported(format!("encoding {other:?}; raw and gzip are read"))),
        };

        // Which axes are spatial: `space directions` says "none" for the others;
        // without it, `kinds` does.
        let directions =
            self.get("space directions").map(|d| parse_directions(d, dimension)).transpose().map_err(bad)?;
        let kinds: Vec<String> =
            self.get("kinds").map_or(vec![], |k| k.split_whitespace().map(str::to_lowercase).collect());
        let spatial: Vec<bool> = (0..dimension)
            .map(|a| match &directions {
                Some(d) => d[a].is_some(),
                None if kinds.is_empty() => dimension == 3,
                None => kinds.get(a).is_some_and(|k| matches!(k.as_str(), "domain" | "space")),
            })
            .collect();
        let axes: Vec<usize> = (0..dimension).filter(|&a| spatial[a]).collect();
        if axes.len() != 3 {
            return Err(unsupported(format!("{} spatial axes (kinds {kinds:?}); 3 are needed", axes.len())));
        }
        let channel_axis = (0..dimension).find(|&a| !spatial[a]);
        let interleaved = match channel_axis {
            None => false,
            Some(0) => true,
            Some(a) if a == dimension - 1 => false,
            Some(a) => return Err(unsupported(format!("channel axis {a} between spatial axes"))),
        };
        let shape = [sizes[axes[0]], sizes[axes[1]], sizes[axes[2]]];
        let channels = channel_axis.map_or(1, |a| sizes[a]);

        let flip = match self.get("space").map(str::to_lowercase).as_deref() {
            Some("right-anterior-superior" | "ras") => [1.0, 1.0, 1.0],
            Some("left-anterior-superior" | "las") => [-1.0, 1.0, 1.0],
            Some("left-posterior-superior" | "lps") | None => [-1.0, -1.0, 1.0],
            Some(other) => return Err(unsupported(format!("space {other:?}; RAS, LAS or LPS is needed"))),
        };
        let columns: [[f64; 3]; 3] = match &directions {
            Some(d) => std::array::from_fn(|i| d[axes[i]].expect("spatial")),
            None => {
                let spacings: Vec<f64> = self.get("spacings").map_or(vec![1.0; dimension], |s| {
                    s.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN)).collect()
                });
                let s = |i: usize| spacings.get(axes[i]).copied().filter(|v| v.is_finite()).unwrap_or(1.0);
                std::array::from_fn(|i| std::array::from_fn(|r| if r == i { s(i) } else { 0.0 }))
            }
        };
        let origin = match self.get("space origin") {
            Some(o) => parse_vector(o).filter(|v| v.len() == 3).ok_or_else(|| bad(format!("space origin: {o}")))?,
            None => vec![0.0; 3],
        };
        let mut affine: Affine = [[0.0; 4]; 4];
        for r in 0..3 {
            for (c, col) in columns.iter().enumerate() {
                affine[r][c] = flip[r] * col[r];
            }
            affine[r][3] = flip[r] * origin[r];
        }
        affine[3][3] = 1.0;

        let layout = RawLayout { elem, endian, shape, channels, interleaved };
        let total = raw::check(&layout, &affine, file, opts)?;
        let mut stream = self.data(attached, dir, file, gzip, total)?;
        raw::read_volumes(&mut stream, &layout, affine, file, opts)
    }

    /// The voxel stream: attached, one detached file, a `%d` pattern or a `LIST`.
    fn data<'a>(
        &self,
        attached: Box<dyn BufRead + 'a>,
        dir: &Path,
        file: &str,
        gzip: bool,
        total: u64,
    ) -> Result<Box<dyn Read + 'a>> {
        let io_err =
            |name: &str, error: io::Error| IngestError::Io { file: format!("{file}: data file {name}"), error };
        let bad = |reason: String| IngestError::BadHeader { file: file.into(), reason };
        let byte_skip: i64 =
            self.get("byte skip").map_or(Ok(0), |v| v.parse().map_err(|_| bad(format!("byte skip: {v}"))))?;
        let line_skip: u64 =
            self.get("line skip").map_or(Ok(0), |v| v.parse().map_err(|_| bad(format!("line skip: {v}"))))?;
        let names: Vec<String> = match self.get("data file") {
            None => {
                let mut r = attached;
                skip(&mut r, line_skip, byte_skip.max(0) as u64).map_err(|e| io_err("attached", e))?;
                return Ok(if gzip { Box::new(flate2::read::MultiGzDecoder::new(r)) } else { r });
            }
            Some(v) if v.split_whitespace().next() == Some("LIST") => self.list.clone(),
            Some(v) => raw::data_file_names(v, file)?,
        };
        if names.is_empty() {
            return Err(bad("data file names no files".into()));
        }
        let per_file = total / names.len() as u64;
        let mut chain: Box<dyn Read + 'a> = Box::new(io::empty());
        for name in names {
            if name.contains("..") || Path::new(&name).is_absolute() {
                return Err(bad(format!("data file {name:?} lies outside the header's folder")));
            }
            let f = File::open(dir.join(&name)).map_err(|e| io_err(&name, e))?;
            let len = f.metadata().map_err(|e| io_err(&name, e))?.len();
            let mut r: Box<dyn BufRead + 'a> = Box::new(BufReader::with_capacity(1 << 20, f));
            // byte skip -1: the voxels are the file's last bytes (raw encoding only).
            let bytes = if byte_skip == -1 && !gzip { len.saturating_sub(per_file) } else { byte_skip.max(0) as u64 };
            skip(&mut r, line_skip, if gzip { 0 } else { bytes }).map_err(|e| io_err(&name, e))?;
            let mut r: Box<dyn Read + 'a> = if gzip { Box::new(flate2::read::MultiGzDecoder::new(r)) } else { r };
            if gzip && bytes > 0 {
                io::copy(&mut (&mut r).take(bytes), &mut io::sink()).map_err(|e| io_err(&name, e))?;
            }
            chain = Box::new(chain.chain(r));
        }
        Ok(chain)
    }
}

fn skip(r: &mut Box<dyn BufRead + '_>, lines: u64, bytes: u64) -> io::Result<()> {
    let mut line = Vec::new();
    for _ in 0..lines {
        line.clear();
        r.read_until(b'\n', &mut line)?;
    }
    io::copy(&mut r.take(bytes), &mut io::sink())?;
    Ok(())
}

/// `(1,0,0)` → [1, 0, 0].
fn parse_vector(s: &str) -> Option<Vec<f64>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let v: Option<Vec<f64>> = inner.split(',').map(|x| x.trim().parse().ok()).collect();
    v.filter(|v| v.iter().all(|x: &f64| x.is_finite()))
}

/// `space directions`: a vector per axis, or `none` for a non-spatial one.
fn parse_directions(s: &str, dimension: usize) -> Result<Vec<Option<[f64; 3]>>, String> {
    let items: Vec<&str> = s.split_whitespace().collect();
    let parsed: Option<Vec<Option<[f64; 3]>>> = items
        .iter()
        .map(|t| {
            if *t == "none" {
                Some(None)
            } else {
                parse_vector(t).filter(|v| v.len() == 3).map(|v| Some([v[0], v[1], v[2]]))
            }
        })
        .collect();
    match parsed {
        Some(p) if p.len() == dimension => Ok(p),
        _ => Err(format!("space directions: {s:?}; one 3-vector (or none) per axis is needed")),
    }
}

/// NRRD's type names and their aliases.
fn element_type(name: &str) -> Option<NiftiType> {
    use NiftiType::*;
    Some(match name {
        "signed char" | "int8" | "int8_t" => Int8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => Uint8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => Int16,
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => Uint16,
        "int" | "signed int" | "int32" | "int32_t" => Int32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => Uint32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => Int64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => Uint64,
        "float" => Float32,
        "double" => Float64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nrrd(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = format!("NRRD0004\n{header}\n").into_bytes();
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn ras_and_lps_spaces_give_the_same_ras_affine() {
        let data: Vec<u8> = (0u8..8).collect();
        let common = "type: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n";
        let ras = nrrd(
            &format!("{common}space: RAS\nspace directions: (2,0,0) (0,3,0) (0,0,4)\nspace origin: (1,2,3)\n"),
            &data,
        );
        let lps = nrrd(
            &format!(
                "{common}space: left-posterior-superior\nspace directions: (-2,0,0) (0,-3,0) (0,0,4)\nspace origin: (-1,-2,3)\n"
            ),
            &data,
        );
        let a = read_bytes(&ras, "a.nrrd", &ReadOptions::default()).unwrap().remove(0);
        let b = read_bytes(&lps, "b.nrrd", &ReadOptions::default()).unwrap().remove(0);
        assert_eq!(a.affine, b.affine);
        assert_eq!(a.affine[0], [2.0, 0.0, 0.0, 1.0]);
        assert_eq!(a.value(7), 7.0);
    }

    #[test]
    fn a_list_axis_last_or_vector_axis_first_gives_channels() {
        let planar: Vec<u8> = (0u8..16).collect();
        let h = "type: uchar\ndimension: 4\nsizes: 2 2 2 2\nspace: RAS\nspace directions: (1,0,0) (0,1,0) (0,0,1) none\nkinds: domain domain domain list\nencoding: raw\n";
        let v = read_bytes(&nrrd(h, &planar), "p.nrrd", &ReadOptions::default()).unwrap();
        assert_eq!((v.len(), v[1].value(0)), (2, 8.0));
        let h = "type: uchar\ndimension: 4\nsizes: 2 2 2 2\nspace: RAS\nspace directions: none (1,0,0) (0,1,0) (0,0,1)\nkinds: vector domain domain domain\nencoding: raw\n";
        let v = read_bytes(&nrrd(h, &planar), "i.nrrd", &ReadOptions::default()).unwrap();
        assert_eq!((v.len(), v[1].value(0), v[1].value(1)), (2, 1.0, 3.0));
    }

    #[test]
    fn a_header_that_lies_about_its_size_is_truncated_data() {
        let h = "type: short\ndimension: 3\nsizes: 100 100 100\nencoding: raw\n";
        let e = read_bytes(&nrrd(h, &[0; 10]), "l.nrrd", &ReadOptions::default()).unwrap_err();
        assert!(matches!(e, IngestError::Truncated { .. }), "{e}");
        let h = "type: short\ndimension: 3\nsizes: 100 100 100\nencoding: gzip\n";
        let e = read_bytes(&nrrd(h, &[0x1f, 0x8b, 8, 0, 0]), "g.nrrd", &ReadOptions::default()).unwrap_err();
        assert!(matches!(e, IngestError::Truncated { .. }), "{e}");
    }
}
