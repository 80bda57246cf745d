//! Reading one case's image and label from its source, as the ingest and the
//! source-geometry evaluation both need it.

use std::path::Path;

use crate::error::{IngestError, Result};
use crate::layout::{CaseRef, LabelSource};
use crate::nifti_io::{ReadOptions, Volume, Voxels, read_nifti};
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

impl CaseReader<'_> {
    /// The case's image and label map, and the input bytes read.
    pub fn read_case(&self, case: &CaseRef) -> Result<(Volume, Volume, u64)> {
        let mut bytes = 0u64;
        let image = self.read(&case.image, &mut bytes)?;
        let label = match &case.label {
            LabelSource::File(key) => self.read(key, &mut bytes)?,
            LabelSource::Structures(files) => self.merge_structures(files, &mut bytes)?,
            LabelSource::Missing(reason) => return Err(IngestError::Mismatch(reason.clone())),
        };
        Ok((image, label, bytes))
    }

    fn read(&self, key: &str, bytes: &mut u64) -> Result<Volume> {
        let file = self.handle.block_on(self.source.fetch(key, self.tmp_dir))?;
        *bytes += std::fs::metadata(file.path()).map(|m| m.len()).unwrap_or(0);
        read_nifti(file.path(), self.read)
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
