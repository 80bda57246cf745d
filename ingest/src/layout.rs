//! Finding the cases of a task in its source, per layout.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Layout, TaskEntry};
use crate::formats::png_stack::PngStack;
use crate::source::Source;

/// Where a case's label comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelSource {
    /// One label-map file, in any supported format.
    File(String),
    /// TotalSegmentator: one binary file per structure, merged as (value, key).
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
}

/// The cases of a task and what the layout says about labels.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Cases sorted by id.
    pub cases: Vec<CaseRef>,
    /// Label names found in the source (dataset.json, structure list).
    pub labels: BTreeMap<i32, String>,
}

/// A file name without its image format's extension (`.nii.gz`, `.mha`, ...).
fn image_stem(name: &str) -> Option<&str> {
    crate::formats::split_extension(name).map(|(stem, _)| stem)
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Lists the cases of `task` in `source`.
pub async fn list_cases(source: &Source, task: &TaskEntry) -> Result<Listing, String> {
    match task.layout {
        Layout::Nnunet => nnunet(source, task).await,
        Layout::Totalseg => totalseg(source, task).await,
        Layout::Pairs => pairs(source, task).await,
    }
}

async fn nnunet(source: &Source, task: &TaskEntry) -> Result<Listing, String> {
    let images = source.list("imagesTr").await?;
    if images.is_empty() {
        return Err(format!("{}: no imagesTr/ (layout \"nnunet\")", source.url()));
    }
    let labels: BTreeSet<String> = source.list("labelsTr").await?.into_iter().collect();
    let json = source.read_text("dataset.json").await?;
    let (names, json_channels) = match &json {
        Some(text) => (
            dataset_json_labels(text).map_err(|e| format!("{}/dataset.json: {e}", source.url()))?,
            dataset_json_channels(text),
        ),
        None => (BTreeMap::new(), Vec::new()),
    };
    let channel_names = if task.channel_names.is_empty() { json_channels } else { task.channel_names.clone() };
    let label_stems: BTreeSet<&str> = labels.iter().filter_map(|k| image_stem(file_name(k))).collect();
    // macOS resource forks ship inside the MSD tarballs.
    let stems: Vec<(&str, &str)> = images
        .iter()
        .filter(|k| !file_name(k).starts_with('.'))
        .filter_map(|k| Some((k.as_str(), image_stem(file_name(k))?)))
        .collect();
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
                            "no label file labelsTr/{case_id}.nii.gz (or .nii, .mha, .mhd, .nrrd, .nhdr)"
                        ))
                    },
                    LabelSource::File,
                );
            let channels = Channels { files, names: channel_names.clone(), keep: task.channels.clone() };
            CaseRef { case_id, image, channels, label }
        })
        .collect();
    Ok(Listing { cases, labels: names })
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
            keys.iter().filter_map(|k| k.strip_prefix(&prefix).and_then(image_stem).map(str::to_string)).collect();
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
            CaseRef { image: format!("{case_id}/ct.nii.gz"), case_id, channels: Channels::default(), label }
        })
        .collect();
    let labels = structures.into_iter().enumerate().map(|(i, s)| (i as i32 + 1, s)).collect();
    Ok(Listing { cases, labels })
}

/// A path pattern (`*`, `?`, `[abc]`, `{a,b}`; globset syntax, none crossing a `/`)
/// matching whole names or relative paths.
pub fn name_matcher(pattern: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("image_glob {pattern:?}: {e}"))
}

/// The folder part of a path pattern before its first component with a wildcard or
/// `{case}`: what to list.
fn literal_prefix(pattern: &str) -> String {
    let comps: Vec<&str> = pattern.split('/').collect();
    let n = comps[..comps.len() - 1].iter().take_while(|c| !c.contains(['*', '?', '[', '{'])).count();
    comps[..n].join("/")
}

/// The `{case}` part of `path` under `pattern` (their components aligned; each
/// `{case}` stands for part of one component and must capture the same text).
fn capture_case(pattern: &str, path: &str) -> Option<String> {
    let (pc, kc): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    if pc.len() != kc.len() {
        return None;
    }
    let mut case: Option<&str> = None;
    for (p, k) in pc.iter().zip(&kc) {
        let Some((pre, post)) = p.split_once("{case}") else { continue };
        let got = k.strip_prefix(pre)?.strip_suffix(post)?;
        if got.is_empty() || case.is_some_and(|c| c != got) {
            return None;
        }
        case = Some(got);
    }
    case.map(str::to_string)
}

/// Keys under the literal prefixes of templates, listed once each.
struct KeySets<'a> {
    source: &'a Source,
    listed: BTreeMap<String, BTreeSet<String>>,
}

impl KeySets<'_> {
    async fn load(&mut self, template: &str) -> Result<&BTreeSet<String>, String> {
        let prefix = literal_prefix(template);
        if !self.listed.contains_key(&prefix) {
            let keys = self.source.list(&prefix).await?.into_iter().collect();
            self.listed.insert(prefix.clone(), keys);
        }
        Ok(&self.listed[&prefix])
    }
    /// Whether `key` is a file of the source (a folder when it ends in `/`).
    async fn exists(&mut self, template: &str, key: &str) -> Result<bool, String> {
        let keys = self.load(template).await?;
        Ok(match key.strip_suffix('/') {
            Some(dir) => keys.range(format!("{dir}/")..).next().is_some_and(|k| k.starts_with(&format!("{dir}/"))),
            None => keys.contains(key),
        })
    }
}

async fn pairs(source: &Source, task: &TaskEntry) -> Result<Listing, String> {
    let glob = task.image_glob.as_deref().unwrap_or_default();
    let template = task.label_template.as_deref().unwrap_or_default();
    // A glob ending in `/` names folders (DICOM series); otherwise files.
    let folders = glob.ends_with('/');
    let pattern = glob.trim_end_matches('/');
    let matcher = name_matcher(&pattern.replace("{case}", "*"))?;
    let dir = literal_prefix(pattern);
    let keys = source.list(&dir).await?;
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    for key in &keys {
        if folders {
            let mut at = key.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                candidates.insert(parent.to_string());
                at = parent;
            }
        } else {
            candidates.insert(key.clone());
        }
    }
    let mut sets = KeySets { source, listed: BTreeMap::new() };
    let stack = task.label_png.as_ref().map(|p| p.stack()).transpose()?;
    let mut cases = Vec::new();
    for path in candidates.iter().filter(|p| matcher.is_match(p.as_str())) {
        let case_id = if pattern.contains("{case}") {
            let Some(id) = capture_case(pattern, path) else { continue };
            id
        } else {
            let name = file_name(path);
            let stem = image_stem(name).unwrap_or(name);
            task.image_suffix.as_deref().and_then(|s| stem.strip_suffix(s)).unwrap_or(stem).to_string()
        };
        let image = if folders { format!("{path}/") } else { path.clone() };
        let mut missing = Vec::new();
        let mut files = Vec::new();
        for (name, t) in &task.channel_files {
            let key = t.replace("{case}", &case_id);
            if sets.exists(t, &key).await? {
                files.push((name.clone(), key));
            } else {
                missing.push(format!("no {name} channel file {key}"));
            }
        }
        let label_key = template.replace("{case}", &case_id);
        let label = if !missing.is_empty() {
            LabelSource::Missing(missing.join("; "))
        } else if let Some(stack) = &stack {
            let folder = format!("{}/", label_key.trim_end_matches('/'));
            if sets.exists(template, &folder).await? {
                LabelSource::PngStack(folder, stack.clone())
            } else {
                LabelSource::Missing(format!("no label folder {folder}"))
            }
        } else if sets.exists(template, &label_key).await? {
            LabelSource::File(label_key)
        } else {
            LabelSource::Missing(format!("no label file {label_key}"))
        };
        let channels = Channels { files, names: task.channel_names.clone(), keep: task.channels.clone() };
        cases.push(CaseRef { case_id, image, channels, label });
    }
    if cases.is_empty() {
        return Err(format!("{}: nothing matches image_glob {glob:?}", source.url()));
    }
    cases.sort_by(|a, b| a.case_id.cmp(&b.case_id));
    if let Some(w) = cases.windows(2).find(|w| w[0].case_id == w[1].case_id) {
        return Err(format!(
            "{}: image_glob {glob:?} gives case id {:?} twice ({} and {}); make the pattern or image_suffix tell them apart",
            source.url(),
            w[0].case_id,
            w[0].image,
            w[1].image
        ));
    }
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
    fn case_captures_and_literal_prefixes() {
        assert_eq!(capture_case("{case}/{case}_flair.nii.gz", "B_001/B_001_flair.nii.gz").as_deref(), Some("B_001"));
        assert_eq!(capture_case("{case}/{case}_flair.nii.gz", "B_001/B_002_flair.nii.gz"), None);
        assert_eq!(
            capture_case("Train_Sets/CT/{case}/DICOM_anon", "Train_Sets/CT/21/DICOM_anon").as_deref(),
            Some("21")
        );
        assert_eq!(literal_prefix("Train_Sets/CT/{case}/DICOM_anon"), "Train_Sets/CT");
        assert_eq!(literal_prefix("images/*_img.nii.gz"), "images");
        assert_eq!(literal_prefix("*.mhd"), "");
        assert!(name_matcher("Train_Sets/CT/*/DICOM_anon").unwrap().is_match("Train_Sets/CT/21/DICOM_anon"));
        assert!(!name_matcher("images/*").unwrap().is_match("images/a/b.nii"));
    }

    #[test]
    fn channel_names_from_either_dataset_json() {
        let msd = r#"{"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}"#;
        assert_eq!(dataset_json_channels(msd), ["FLAIR", "T1w", "t1gd", "T2w"]);
        let v2 = r#"{"channel_names": {"0": "T2", "1": "ADC"}}"#;
        assert_eq!(dataset_json_channels(v2), ["T2", "ADC"]);
        assert!(dataset_json_channels(r#"{"modality": {"1": "CT"}}"#).is_empty());
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
