//! Reading one case's image and label from its source, as the ingest and the
//! source-geometry evaluation both need it.

use std::path::Path;

use crate::error::{IngestError, Result};
use crate::formats::{self, png_stack};
use crate::layout::channel_name;
use crate::layout::{CaseRef, LabelSource, ValueMap};
use crate::nifti_io::{ReadOptions, Volume, Voxels};
use crate::source::Source;

/// How to read cases: where remote files are fetched to, and the reader's limits.
#[derive(Clone, Copy, Debug)]
pub struct CaseReader<'a> {
    /// The task's source.
    pub source: &'a Source,
    /// Directory for files fetched from remote stores (removed after reading).
    pub tmp_dir: &'a Path,
    /// Reader limits.
    pub read: &'a ReadOptions,
    /// Runtime the source's store is driven on.
    pub handle: &'a tokio::runtime::Handle,
}

/// A case as read: its image channels (name, volume; the name is empty for a
/// single-channel image), its label map, and the input bytes read.
pub struct CaseVolumes {
    /// The channels kept, in order.
    pub channels: Vec<(String, Volume)>,
    /// The label map.
    pub label: Volume,
    /// Input bytes read.
    pub bytes: u64,
}

impl CaseReader<'_> {
    /// The case's first image channel and label map, and the input bytes read.
    pub fn read_case(&self, case: &CaseRef) -> Result<(Volume, Volume, u64)> {
        let mut c = self.read_case_channels(case)?;
        Ok((c.channels.swap_remove(0).1, c.label, c.bytes))
    }

    /// The case's image channels (the catalogue's choice, in its order) and label map.
    pub fn read_case_channels(&self, case: &CaseRef) -> Result<CaseVolumes> {
        let mut bytes = 0u64;
        if let LabelSource::Missing(reason) = &case.label {
            return Err(IngestError::Mismatch(reason.clone()));
        }
        let mut channels: Vec<(String, Volume)> = if case.channels.files.is_empty() {
            let volumes = self.with_file(&case.image, &mut bytes, |p| formats::read_channels(p, self.read))?;
            let many = volumes.len() > 1;
            volumes
                .into_iter()
                .enumerate()
                .map(|(i, v)| (if many { channel_name(&case.channels.names, i) } else { String::new() }, v))
                .collect()
        } else {
            let mut out = Vec::new();
            for (name, key) in &case.channels.files {
                out.push((name.clone(), self.with_file(key, &mut bytes, |p| formats::read_volume(p, self.read))?));
            }
            out
        };
        if !case.channels.keep.is_empty() {
            let have: Vec<String> = channels.iter().map(|(n, _)| n.clone()).collect();
            let mut kept = Vec::new();
            for want in &case.channels.keep {
                let Some(i) = channels.iter().position(|(n, _)| n == want) else {
                    return Err(IngestError::Mismatch(format!(
                        "channel {want:?} (catalogue `channels`) is not in this case, which has {}",
                        if have == [""] { "one unnamed channel".to_string() } else { format!("{have:?}") }
                    )));
                };
                kept.push(channels.swap_remove(i));
            }
            channels = kept;
        }
        let label = match &case.label {
            LabelSource::File(key) => self.with_file(key, &mut bytes, |p| formats::read_volume(p, self.read))?,
            LabelSource::Structures(files) => self.merge_structures(files, &mut bytes)?,
            LabelSource::PngStack(key, stack) => {
                let like = &channels[0].1;
                self.with_file(key, &mut bytes, |p| png_stack::read(p, like, stack, self.read))?
            }
            LabelSource::Missing(reason) => return Err(IngestError::Mismatch(reason.clone())),
        };
        let label = if case.values.is_identity() { label } else { remap(&label, &case.values) };
        Ok(CaseVolumes { channels, label, bytes })
    }

    /// Runs `read` on `key` made local, counting the bytes it holds.
    fn with_file<T>(&self, key: &str, bytes: &mut u64, read: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let file = self.handle.block_on(self.source.fetch(key, self.tmp_dir))?;
        *bytes += disk_bytes(file.path());
        read(file.path())
    }

    fn read(&self, key: &str, bytes: &mut u64) -> Result<Volume> {
        self.with_file(key, bytes, |p| formats::read_volume(p, self.read))
    }

    /// TotalSegmentator: one binary mask per structure → one label map (later
    /// structures win where masks overlap).
    fn merge_structures(&self, files: &[(i32, String)], bytes: &mut u64) -> Result<Volume> {
        let mut merged: Option<(Volume, Vec<u16>)> = None;
        for (value, key) in files {
            let v = self.read(key, bytes)?;
            let (first, data) = merged.get_or_insert_with(|| {
                let n = v.len();
                (Volume { voxels: Voxels::U8(Vec::new()), ..v.clone_header() }, vec![0u16; n])
            });
            if v.shape != first.shape {
                return Err(IngestError::Mismatch(format!(
                    "segmentation {key} has shape {:?}, expected {:?}",
                    v.shape, first.shape
                )));
            }
            for (n, d) in data.iter_mut().enumerate() {
                if v.value(n) > 0.0 {
                    *d = *value as u16;
                }
            }
        }
        let (mut vol, data) = merged.ok_or_else(|| IngestError::Mismatch("no segmentation files".into()))?;
        vol.voxels = Voxels::U16(data);
        vol.slope = 1.0;
        vol.inter = 0.0;
        Ok(vol)
    }
}

/// The label map with the catalogue's `label_values` applied (ASC18's 255 → 1,
/// MMWHS's 205-850 → 1-7, RibFrac's instance ids → 1).
fn remap(label: &Volume, values: &ValueMap) -> Volume {
    let data: Vec<i32> = (0..label.len()).map(|n| values.apply(label.value(n).round() as i32)).collect();
    Volume { voxels: Voxels::I32(data), slope: 1.0, inter: 0.0, ..label.clone_header() }
}

/// Bytes of a file, or of the files directly inside a folder.
fn disk_bytes(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}
