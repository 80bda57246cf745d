//! nnU-Net / MSD layout: `imagesTr/` + `labelsTr/` + `dataset.json`, at the source
//! root or in a folder up to two levels below it (`MSD_Spleen/Task09_Spleen/`).

use std::collections::{BTreeMap, BTreeSet};

use super::{CaseRef, Channels, LabelSource, ListError, Listing, ValueMap, file_name, image_stem};
use crate::catalog::TaskEntry;
use crate::source::Source;

/// The shallowest folder holding `imagesTr/` (with a trailing `/`, or "").
fn find_root(keys: &BTreeSet<String>) -> Option<String> {
    keys.iter()
        .filter_map(|k| {
            let at = k.find("imagesTr/")?;
            let root = &k[..at];
            (root.is_empty() || root.ends_with('/')).then_some(root)
        })
        .filter(|r| r.matches('/').count() <= 2)
        .min_by_key(|r| (r.matches('/').count(), r.to_string()))
        .map(str::to_string)
}

pub(super) async fn list(source: &Source, keys: &BTreeSet<String>, task: &TaskEntry) -> Result<Listing, ListError> {
    let Some(root) = find_root(keys) else {
        return Err(ListError::Mismatch(format!(
            "{}: no imagesTr/ at the root or two folders below it (layout \"nnunet\")",
            source.url()
        )));
    };
    let under = |dir: &str| -> Vec<&String> {
        let prefix = format!("{root}{dir}/");
        keys.range(prefix.clone()..).take_while(|k| k.starts_with(&prefix)).collect()
    };
    let images = under("imagesTr");
    let labels: BTreeSet<String> = under("labelsTr").into_iter().map(|k| k[root.len()..].to_string()).collect();
    let json = source.read_text(&format!("{root}dataset.json")).await.map_err(ListError::Source)?;
    let (names, json_channels) = match &json {
        Some(text) => (
            dataset_json_labels(text)
                .map_err(|e| ListError::Mismatch(format!("{}/{root}dataset.json: {e}", source.url())))?,
            dataset_json_channels(text),
        ),
        None => (BTreeMap::new(), Vec::new()),
    };
    let channel_names = if task.channel_names.is_empty() { json_channels } else { task.channel_names.clone() };
    let label_stems: BTreeSet<&str> = labels.iter().filter_map(|k| image_stem(file_name(k))).collect();
    let stems: Vec<(&str, &str)> =
        images.iter().filter_map(|k| Some((k.as_str(), image_stem(file_name(k))?))).collect();
    let all_stems: BTreeSet<&str> = stems.iter().map(|(_, s)| *s).collect();
    // case → channel index → key
    let mut by_case: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    for (key, stem) in stems {
        let (case_id, index) = match channel_suffix(stem) {
            // `_0001` is a channel only where the name without it is the case: AMOS's
            // and WORD's own ids end in four digits (`amos_0001`, labelled as such).
            Some((case, index))
                if !label_stems.contains(stem)
                    && (label_stems.contains(case) || all_stems.contains(format!("{case}_0000").as_str())) =>
            {
                (case, index)
            }
            _ => (stem, 0),
        };
        by_case.entry(case_id.to_string()).or_default().entry(index).or_insert(key.to_string());
    }
    let values = ValueMap::from_catalogue(&task.label_values);
    let cases = by_case
        .into_iter()
        .map(|(case_id, files)| {
            let image = files.values().next().expect("one file").clone();
            let files = if files.len() > 1 {
                files.into_iter().map(|(i, key)| (channel_name(&channel_names, i as usize), key)).collect()
            } else {
                Vec::new()
            };
            let label = crate::formats::EXTENSIONS
                .iter()
                .map(|(ext, _)| format!("labelsTr/{case_id}{ext}"))
                .find(|k| labels.contains(k))
                .map_or_else(
                    || {
                        LabelSource::Missing(format!(
                            "no label file {root}labelsTr/{case_id}.nii.gz (or .nii, .mha, .mhd, .nrrd, .nhdr)"
                        ))
                    },
                    |k| LabelSource::File(format!("{root}{k}")),
                );
            let channels = Channels { files, names: channel_names.clone(), keep: task.channels.clone() };
            CaseRef::new(case_id, image, channels, label, values.clone())
        })
        .collect();
    Ok(Listing { cases, labels: names, root, unused: Vec::new(), used: BTreeSet::new() })
}

/// `case_0001` → (`case`, 1): nnU-Net's channel suffix, if the name has one.
fn channel_suffix(stem: &str) -> Option<(&str, u32)> {
    let (case, ch) = stem.rsplit_once('_')?;
    (ch.len() == 4 && ch.chars().all(|c| c.is_ascii_digit()) && !case.is_empty())
        .then(|| (case, ch.parse().expect("digits")))
}

/// The name of channel `i`: from the list, else its number.
pub fn channel_name(names: &[String], i: usize) -> String {
    names.get(i).cloned().unwrap_or_else(|| i.to_string())
}

/// Channel names from an nnU-Net `dataset.json`: v2 `channel_names` or v1/MSD
/// `modality`, both `{"0": "FLAIR", "1": "T1w"}`, in index order.
pub fn dataset_json_channels(text: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return Vec::new() };
    let Some(obj) = v.get("channel_names").or_else(|| v.get("modality")).and_then(|m| m.as_object()) else {
        return Vec::new();
    };
    let indexed: BTreeMap<usize, String> =
        obj.iter().filter_map(|(k, v)| Some((k.trim().parse().ok()?, v.as_str()?.to_string()))).collect();
    // Only a gap-free 0..n list names channels by position.
    if indexed.keys().copied().eq(0..indexed.len()) { indexed.into_values().collect() } else { Vec::new() }
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
