//! Finding the cases of a task in its source, per layout.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Layout, TaskEntry};
use crate::source::Source;

/// Where a case's label comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelSource {
    /// One label-map file.
    File(String),
    /// TotalSegmentator: one binary file per structure, merged as (value, key).
    Structures(Vec<(i32, String)>),
    /// No label could be found; the case is quarantined with this reason.
    Missing(String),
}

/// One case of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseRef {
    /// Case id, unique within the task.
    pub case_id: String,
    /// Image key relative to the source.
    pub image: String,
    /// Label.
    pub label: LabelSource,
}

/// The cases of a task and what the layout says about labels.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Cases sorted by id.
    pub cases: Vec<CaseRef>,
    /// Label names found in the source (dataset.json, structure list).
    pub labels: BTreeMap<i32, String>,
}

fn nifti_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".nii.gz").or_else(|| name.strip_suffix(".nii"))
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Lists the cases of `task` in `source`.
pub async fn list_cases(source: &Source, task: &TaskEntry) -> Result<Listing, String> {
    match task.layout {
        Layout::Nnunet => nnunet(source).await,
        Layout::Totalseg => totalseg(source, task).await,
        Layout::Pairs => pairs(source, task).await,
    }
}

async fn nnunet(source: &Source) -> Result<Listing, String> {
    let images = source.list("imagesTr").await?;
    if images.is_empty() {
        return Err(format!("{}: no imagesTr/ (layout \"nnunet\")", source.url()));
    }
    let labels: BTreeSet<String> = source.list("labelsTr").await?.into_iter().collect();
    let mut cases = Vec::new();
    for key in images {
        let name = file_name(&key);
        // macOS resource forks ship inside the MSD tarballs.
        if name.starts_with('.') {
            continue;
        }
        let Some(stem) = nifti_stem(name) else { continue };
        let case_id = match stem.rsplit_once('_') {
            Some((case, ch)) if ch.len() == 4 && ch.chars().all(|c| c.is_ascii_digit()) => {
                if ch != "0000" {
                    continue; // further channels of a multi-channel case
                }
                case
            }
            _ => stem,
        };
        let label = ["nii.gz", "nii"]
            .iter()
            .map(|ext| format!("labelsTr/{case_id}.{ext}"))
            .find(|k| labels.contains(k))
            .map_or_else(
                || LabelSource::Missing(format!("no label file labelsTr/{case_id}.nii.gz")),
                LabelSource::File,
            );
        cases.push(CaseRef { case_id: case_id.to_string(), image: key.clone(), label });
    }
    cases.sort_by(|a, b| a.case_id.cmp(&b.case_id));
    cases.dedup_by(|a, b| a.case_id == b.case_id);
    let labels = match source.read_text("dataset.json").await? {
        Some(text) => dataset_json_labels(&text).map_err(|e| format!("{}/dataset.json: {e}", source.url()))?,
        None => BTreeMap::new(),
    };
    Ok(Listing { cases, labels })
}

/// Label names from an nnU-Net `dataset.json`: v1 `{"1": "liver"}` or v2 `{"liver": 1}`
/// (v2 region entries, whose values are lists, are not label values and are skipped).
pub fn dataset_json_labels(text: &str) -> Result<BTreeMap<i32, String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Some(obj) = v.get("labels").and_then(|l| l.as_object()) else { return Ok(BTreeMap::new()) };
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        if let Ok(value) = k.trim().parse::<i32>() {
            if let Some(name) = val.as_str() {
                out.insert(value, name.to_string());
            }
        } else if let Some(value) = val.as_i64() {
            out.insert(value as i32, k.clone());
        }
    }
    out.remove(&0);
    Ok(out)
}

async fn totalseg(source: &Source, task: &TaskEntry) -> Result<Listing, String> {
    let keys = source.list("").await?;
    let set: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let case_ids: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("/ct.nii.gz").filter(|c| !c.contains('/')).map(str::to_string))
        .collect();
    if case_ids.is_empty() {
        return Err(format!("{}: no <case>/ct.nii.gz (layout \"totalseg\")", source.url()));
    }
    let structures: Vec<String> = if task.structures.is_empty() {
        let prefix = format!("{}/segmentations/", case_ids[0]);
        let mut s: Vec<String> =
            keys.iter().filter_map(|k| k.strip_prefix(&prefix).and_then(nifti_stem).map(str::to_string)).collect();
        s.sort();
        s
    } else {
        task.structures.clone()
    };
    let cases = case_ids
        .into_iter()
        .map(|case_id| {
            let mut files = Vec::new();
            let mut missing = Vec::new();
            for (i, s) in structures.iter().enumerate() {
                let key = format!("{case_id}/segmentations/{s}.nii.gz");
                if set.contains(key.as_str()) {
                    files.push((i as i32 + 1, key));
                } else {
                    missing.push(s.as_str());
                }
            }
            let label = if missing.is_empty() {
                LabelSource::Structures(files)
            } else {
                LabelSource::Missing(format!("missing segmentations: {}", missing.join(", ")))
            };
            CaseRef { image: format!("{case_id}/ct.nii.gz"), case_id, label }
        })
        .collect();
    let labels = structures.into_iter().enumerate().map(|(i, s)| (i as i32 + 1, s)).collect();
    Ok(Listing { cases, labels })
}

/// A filename pattern (`*`, `?`, `[abc]`, `{a,b}`; globset syntax) matching whole names.
pub fn name_matcher(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("image_glob {pattern:?}: {e}"))
}

async fn pairs(source: &Source, task: &TaskEntry) -> Result<Listing, String> {
    let glob = task.image_glob.as_deref().unwrap_or_default();
    let template = task.label_template.as_deref().unwrap_or_default();
    let (dir, pattern) = glob.rsplit_once('/').unwrap_or(("", glob));
    let matcher = name_matcher(pattern)?;
    let keys = source.list(dir).await?;
    let labels_dir = template.rsplit_once('/').map_or("", |(d, _)| d);
    let label_keys: BTreeSet<String> = source.list(labels_dir).await?.into_iter().collect();
    let mut cases = Vec::new();
    for key in &keys {
        let rel = if dir.is_empty() {
            key.as_str()
        } else {
            key.strip_prefix(dir).and_then(|k| k.strip_prefix('/')).unwrap_or(key)
        };
        if rel.contains('/') || !matcher.is_match(rel) {
            continue;
        }
        let stem = nifti_stem(rel).unwrap_or(rel);
        let case_id = task.image_suffix.as_deref().and_then(|s| stem.strip_suffix(s)).unwrap_or(stem).to_string();
        let label_key = template.replace("{case}", &case_id);
        let label = if label_keys.contains(&label_key) {
            LabelSource::File(label_key)
        } else {
            LabelSource::Missing(format!("no label file {label_key}"))
        };
        cases.push(CaseRef { case_id, image: key.clone(), label });
    }
    if cases.is_empty() {
        return Err(format!("{}: nothing matches image_glob {glob:?}", source.url()));
    }
    cases.sort_by(|a, b| a.case_id.cmp(&b.case_id));
    Ok(Listing { cases, labels: BTreeMap::new() })
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
    fn wildcards() {
        let m = |p: &str, n: &str| name_matcher(p).unwrap().is_match(n);
        assert!(m("*_img.nii.gz", "case01_img.nii.gz"));
        assert!(!m("*_img.nii.gz", "case01_seg.nii.gz"));
        assert!(m("c??e*", "case7"));
        assert!(m("*", ""));
        assert!(m("case{01,02}.nii.gz", "case02.nii.gz"));
        assert!(name_matcher("case[").is_err(), "a broken pattern is an error, not a silent non-match");
    }
}
