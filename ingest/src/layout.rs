//! Finding the cases of a task in its source, as the catalogue describes the layout
//! of the dataset's official download.

mod files;
mod nnunet;

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Layout, TaskEntry};
use crate::formats::png_stack::PngStack;
use crate::pattern::{Captures, Pattern};
use crate::source::Source;

pub use nnunet::{channel_name, dataset_json_channels, dataset_json_labels};

/// Where a case's label comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelSource {
    /// One label-map file, in any supported format.
    File(String),
    /// One binary file per structure, merged as (value, key).
    Structures(Vec<(i32, String)>),
    /// A folder of PNG slices (its key ends in `/`) on the image's grid.
    PngStack(String, PngStack),
    /// No label could be found; the case is quarantined with this reason.
    Missing(String),
}

/// How a case's image channels are stored and which are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Channels {
    /// One file per channel, (name, key); empty: the case's `image` holds every channel.
    pub files: Vec<(String, String)>,
    /// Names of the volumes of a 4-D `image`, in order (missing names are numbers).
    pub names: Vec<String>,
    /// The channels to keep, by name (empty: all).
    pub keep: Vec<String>,
}

/// Stored label values → label values (the catalogue's `label_values`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValueMap {
    /// Value by value.
    pub map: BTreeMap<i32, i32>,
    /// Every other non-zero value (None: kept as it is).
    pub rest: Option<i32>,
}

impl ValueMap {
    /// From the catalogue's table (keys validated there).
    pub fn from_catalogue(table: &BTreeMap<String, i32>) -> ValueMap {
        let mut m = ValueMap::default();
        for (k, v) in table {
            match k.trim() {
                "*" => m.rest = Some(*v),
                k => {
                    if let Ok(k) = k.parse() {
                        m.map.insert(k, *v);
                    }
                }
            }
        }
        m
    }
    /// Whether it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.rest.is_none() && self.map.iter().all(|(k, v)| k == v)
    }
    /// The label value of stored value `v`.
    pub fn apply(&self, v: i32) -> i32 {
        match self.map.get(&v) {
            Some(m) => *m,
            None if v != 0 => self.rest.unwrap_or(v),
            None => 0,
        }
    }
}

/// One case of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseRef {
    /// Case id, unique within the task.
    pub case_id: String,
    /// Image key relative to the source (the first channel's file when channels are
    /// separate files); a key ending in `/` is a folder (a DICOM series).
    pub image: String,
    /// Its channels.
    pub channels: Channels,
    /// Label.
    pub label: LabelSource,
    /// Label values as stored → label values.
    pub values: ValueMap,
    /// Its modality where the task's differs from the dataset's.
    pub modality: Option<crate::catalog::Modality>,
    /// Why the case is not to be read at all (held out for evaluation, excluded by
    /// the dataset's authors); recorded as skipped.
    pub skip: Option<String>,
}

impl CaseRef {
    /// A case as a layout lists it: no per-case modality, not skipped (the task's rules
    /// set those afterwards).
    pub fn new(case_id: String, image: String, channels: Channels, label: LabelSource, values: ValueMap) -> CaseRef {
        CaseRef { case_id, image, channels, label, values, modality: None, skip: None }
    }
}

/// The cases of a task and what the layout says about labels.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Cases sorted by id.
    pub cases: Vec<CaseRef>,
    /// Label names found in the source (dataset.json, structure list).
    pub labels: BTreeMap<i32, String>,
    /// The folder the layout was found in, relative to the source ("" at its root):
    /// a wrapper folder the archive unpacked into, or none.
    pub root: String,
    /// Image files under the task's folders that no case uses and the catalogue does
    /// not `ignore`: a layout that matches fewer cases than the download has.
    pub unused: Vec<String>,
    /// Every file the cases use (tasks sharing a folder account for each other's).
    pub used: BTreeSet<String>,
}

/// The image files that no task of a dataset uses, from its tasks' listings.
pub fn unused_by_all<'a>(listings: impl IntoIterator<Item = &'a Listing> + Clone) -> Vec<String> {
    let used: BTreeSet<&String> = listings.clone().into_iter().flat_map(|l| &l.used).collect();
    let unused: BTreeSet<&String> =
        listings.into_iter().flat_map(|l| &l.unused).filter(|k| !used.contains(k)).collect();
    unused.into_iter().cloned().collect()
}

/// Why a task has no listing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The source is absent or empty: the user does not have this dataset.
    #[error("not present: {0}")]
    NotPresent(String),
    /// The source has files, but the layout finds no case in them.
    #[error("{0}")]
    Mismatch(String),
    /// The catalogue says the download cannot be read as it is.
    #[error("cannot be read as downloaded: {0}")]
    Unreadable(String),
    /// The source could not be listed.
    #[error("{0}")]
    Source(String),
}

/// A file name without its image format's extension (`.nii.gz`, `.mha`, ...).
fn image_stem(name: &str) -> Option<&str> {
    crate::formats::split_extension(name).map(|(stem, _)| stem)
}

fn file_name(key: &str) -> &str {
    key.trim_end_matches('/').rsplit('/').next().unwrap_or(key)
}

/// Hidden files (macOS `._` resource forks ship inside several archives, `.DS_Store`).
fn hidden(key: &str) -> bool {
    key.split('/').any(|c| c.starts_with('.'))
}

/// Lists the cases of task `task` of dataset `dataset` in `source`.
pub async fn list_cases(source: &Source, dataset: &str, task: &TaskEntry) -> Result<Listing, ListError> {
    if let Some(why) = &task.unreadable {
        return Err(ListError::Unreadable(why.clone()));
    }
    let keys: Vec<String> = source.list("").await.map_err(ListError::Source)?;
    let keys: BTreeSet<String> = keys.into_iter().filter(|k| !hidden(k)).collect();
    if keys.is_empty() {
        return Err(ListError::NotPresent(format!("{} holds no files", source.url())));
    }
    let mut listing = match task.layout {
        Layout::Nnunet => nnunet::list(source, &keys, task).await?,
        Layout::Totalseg => {
            let t = TaskEntry {
                layout: Layout::Pairs,
                image_glob: vec!["{id}/ct.nii.gz".into()],
                masks: Some("{id}/segmentations/{structure}.nii.gz".into()),
                ..task.clone()
            };
            files::list(source, &keys, &t).await?
        }
        Layout::Pairs => files::list(source, &keys, task).await?,
    };
    hold_out(source, &keys, dataset, task, &mut listing).await?;
    for c in &mut listing.cases {
        c.modality = task.modality;
        if task.label_optional
            && c.skip.is_none()
            && let LabelSource::Missing(why) = &c.label
        {
            c.skip = Some(format!("unlabelled in the download ({why})"));
        }
    }
    Ok(listing)
}

/// Marks the cases the catalogue excludes or holds out for evaluation.
async fn hold_out(
    source: &Source,
    keys: &BTreeSet<String>,
    dataset: &str,
    task: &TaskEntry,
    listing: &mut Listing,
) -> Result<(), ListError> {
    let exclude: BTreeSet<&str> = task.exclude.iter().map(String::as_str).collect();
    for c in &mut listing.cases {
        if exclude.contains(c.case_id.as_str()) {
            c.skip = Some("excluded by the catalogue (`exclude`: the dataset's authors leave it out)".into());
        }
    }
    let Some(h) = &task.held_out else { return Ok(()) };
    let reason = format!("held out: {}", h.reason);
    let mut held: BTreeSet<String> = BTreeSet::new();
    let patterns: Vec<Pattern> = h
        .images
        .iter()
        .map(|p| Pattern::parse(&format!("{}{p}", listing.root)))
        .collect::<Result<_, _>>()
        .map_err(ListError::Mismatch)?;
    for c in &listing.cases {
        if patterns.iter().any(|p| p.matches(&c.image, &Captures::new()).is_some()) {
            held.insert(c.case_id.clone());
        }
    }
    if let Some(t) = &h.csv {
        let key = format!("{}{}", listing.root, t.file);
        if !keys.contains(&key) {
            return Err(ListError::Mismatch(format!("held_out.csv: no {key} in {}", source.url())));
        }
        let text = source.read_text(&key).await.map_err(ListError::Source)?.unwrap_or_default();
        let ids = split_table(&text, t).map_err(|e| ListError::Mismatch(format!("{key}: {e}")))?;
        held.extend(ids);
    }
    if let Some(f) = h.fraction {
        let hash_as = h.hash_as.as_deref().unwrap_or(dataset);
        let n = (listing.cases.len() as f64 * f.clamp(0.0, 1.0)).floor() as usize;
        let mut by_hash: Vec<(u64, &str)> = listing
            .cases
            .iter()
            .map(|c| (xxhash_rust::xxh3::xxh3_64(format!("{hash_as}/{}", c.case_id).as_bytes()), c.case_id.as_str()))
            .collect();
        by_hash.sort();
        held.extend(by_hash.into_iter().take(n).map(|(_, c)| c.to_string()));
    }
    // An evaluation catalogue keeps what the training catalogue's same rule holds out.
    let selecting = task.select == Some(crate::catalog::Select::HeldOut);
    for c in &mut listing.cases {
        if c.skip.is_some() {
            continue;
        }
        match (selecting, held.contains(&c.case_id)) {
            (false, true) => c.skip = Some(reason.clone()),
            (true, false) => c.skip = Some(format!("not in the evaluation set ({})", h.reason)),
            _ => {}
        }
    }
    Ok(())
}

/// The case ids whose split column holds one of the held-out values.
fn split_table(text: &str, t: &crate::catalog::SplitTable) -> Result<Vec<String>, String> {
    let sep = if text.lines().next().is_some_and(|l| l.contains(';')) { b';' } else { b',' };
    let mut r = csv::ReaderBuilder::new().delimiter(sep).flexible(true).from_reader(text.as_bytes());
    let headers = r.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| format!("no column {name:?} (has {headers:?})"))
    };
    let (id, split) = (col(&t.id)?, col(&t.column)?);
    let mut out = Vec::new();
    for row in r.records() {
        let row = row.map_err(|e| e.to_string())?;
        if let (Some(i), Some(s)) = (row.get(id), row.get(split))
            && t.values.iter().any(|v| v == s.trim())
        {
            out.push(i.trim().to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_json_both_versions() {
        let v1 = r#"{"labels": {"0": "background", "1": "liver", "2": "tumour"}}"#;
        let v2 = r#"{"labels": {"background": 0, "liver": 1, "tumour": 2, "whole": [1, 2]}}"#;
        let want = BTreeMap::from([(1, "liver".to_string()), (2, "tumour".to_string())]);
        assert_eq!(dataset_json_labels(v1).unwrap(), want);
        assert_eq!(dataset_json_labels(v2).unwrap(), want);
    }

    #[test]
    fn channel_names_from_either_dataset_json() {
        let msd = r#"{"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}"#;
        assert_eq!(dataset_json_channels(msd), ["FLAIR", "T1w", "t1gd", "T2w"]);
        let v2 = r#"{"channel_names": {"0": "T2", "1": "ADC"}}"#;
        assert_eq!(dataset_json_channels(v2), ["T2", "ADC"]);
        assert!(dataset_json_channels(r#"{"modality": {"1": "CT"}}"#).is_empty());
    }
}
