//! The dataset catalogue (`manifests/datasets.toml`, DESIGN §3).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IngestError, Result};

/// Imaging modality; CT gets the [−1000, 1000] clamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum Modality {
    CT,
    MR,
    US,
    PET,
}

impl Modality {
    /// As stored in the `modality` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::CT => "CT",
            Modality::MR => "MR",
            Modality::US => "US",
            Modality::PET => "PET",
        }
    }
}

/// How a task's files are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `imagesTr/<case>_0000.nii.gz` (or MSD's `<case>.nii.gz`) + `labelsTr/<case>.nii.gz` +
    /// `dataset.json`, found at the source root or up to two folders below it.
    #[default]
    Nnunet,
    /// Short for `image = "{id}/ct.nii.gz"`, `masks = "{id}/segmentations/{structure}.nii.gz"`.
    Totalseg,
    /// The general description: `image` path patterns with captures, `label` (or
    /// `masks`) paths built from them. `files` is the same layout.
    #[serde(alias = "files")]
    Pairs,
}

/// A list that the catalogue may write as one string.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Cases kept out of training: the paper's evaluation sets (supplementary §A.2).
/// They are listed, and recorded as skipped with `reason`, never read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOut {
    /// Why, as the manifest records it (names the evaluation set).
    pub reason: String,
    /// Image path patterns whose cases are held out (`imagesVa/*`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub images: Vec<String>,
    /// A table in the source naming each case's split (TotalSegmentator's `meta.csv`).
    #[serde(default)]
    pub csv: Option<SplitTable>,
    /// Hold out this fraction of the cases (rounded down): those with the smallest
    /// xxh3 of `dataset/case`, a fixed choice for a given download, where the paper's
    /// own draw is not published (BraTS21: 0.072 of 1251 cases = the paper's 90).
    #[serde(default)]
    pub fraction: Option<f64>,
    /// The dataset name `fraction` hashes with (default: the dataset's own), so that
    /// an evaluation catalogue's `BraTS21-Val` picks the training catalogue's
    /// `BraTS21` cases.
    #[serde(default)]
    pub hash_as: Option<String>,
}

/// A split column in a CSV file of the source.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTable {
    /// Path in the source (`meta.csv`); `,` or `;` separated, with a header row.
    pub file: String,
    /// The column holding the case id.
    pub id: String,
    /// The column holding the split.
    pub column: String,
    /// Split values held out (`["test"]`).
    pub values: Vec<String>,
}

/// What an evaluation catalogue's task evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// Only the cases its `held_out` picks (the training catalogue's own rule, so
    /// the two agree case for case): the rest are skipped as not in the set.
    HeldOut,
}

/// The groups of supplementary §A.2's benchmarks.
pub const GROUPS: [&str; 3] = ["seen", "unseen", "lesion"];

/// The Table-2 categories.
pub const CATEGORIES: [&str; 8] =
    ["abdomen&thorax", "bone", "brain", "cardiac", "muscle", "lesion", "unseen organ", "unseen lesion"];

/// Name and category of a label value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelInfo {
    /// Label name.
    pub name: String,
    /// Table-2 category.
    pub category: String,
}

impl LabelInfo {
    /// For a value no label map names.
    pub fn unnamed(value: i32) -> LabelInfo {
        LabelInfo { name: format!("label{value}"), category: "abdomen&thorax".into() }
    }
}

/// One sub-source of a dataset.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    /// Task name (`default` for single-task datasets).
    pub name: String,
    /// File layout.
    pub layout: Layout,
    /// Store URL or local path; `${VAR}` and `${VAR:-default}` are expanded. None: not configured.
    #[serde(default)]
    pub source: Option<String>,
    /// Value → name, overriding the dataset's map and `dataset.json`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides the dataset's fine-tune flag for this task.
    #[serde(default)]
    pub finetune: Option<bool>,
    /// `pairs`: image path patterns relative to the source (`image` in short), tried in
    /// order (a file goes to the first that matches). `{name}` captures part of a
    /// folder or file name, `*`, `?` and `{a,b}` match as in globs; `{channel}`
    /// groups files into one case's channels. A pattern ending in `/` names folders
    /// (DICOM series).
    #[serde(default, alias = "image", deserialize_with = "one_or_many")]
    pub image_glob: Vec<String>,
    /// `pairs`: label path templates (`label` in short) over the image's captures
    /// (`{case}` is the case id); the first that exists is the label. Wildcards left
    /// must match exactly one file.
    #[serde(default, alias = "label", deserialize_with = "one_or_many")]
    pub label_template: Vec<String>,
    /// `pairs`: suffix removed from image names to get the case id (e.g. `_img`),
    /// where the pattern captures no `{id}`.
    #[serde(default)]
    pub image_suffix: Option<String>,
    /// The case id as a template over the captures (`"{modality}_{id}"`); default:
    /// `{case}` or `{id}`, else every capture but `{channel}` joined by `_`.
    #[serde(default)]
    pub case_id: Option<String>,
    /// One binary mask file per structure, merged into one label map in
    /// `structures` order (value 1, 2, ...; later ones win where they overlap): a
    /// template over the image's captures with `{structure}`.
    #[serde(default)]
    pub masks: Option<String>,
    /// `masks`/`totalseg`: structure names in label-value order (1, 2, ...); default:
    /// the mask files of the first case, sorted.
    #[serde(default)]
    pub structures: Vec<String>,
    /// `masks`: a structure without a mask file in a case is absent from that case
    /// (HaN-Seg delineates what each patient shows), not a missing label.
    #[serde(default)]
    pub masks_optional: bool,
    /// Label values as stored → label values (`"255" = 1`; `"*" = 1` maps every
    /// non-zero value not listed, e.g. instance ids to one class).
    #[serde(default)]
    pub label_values: BTreeMap<String, i32>,
    /// Case ids left out, with the reason the dataset's authors give (`ATM_164`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Image files under the task's folders not used on purpose (unlabelled test
    /// images, an unlabelled modality): path patterns. Others that no case uses are
    /// reported as a layout mismatch.
    #[serde(default, deserialize_with = "one_or_many")]
    pub ignore: Vec<String>,
    /// Cases held out of training.
    #[serde(default)]
    pub held_out: Option<HeldOut>,
    /// An evaluation catalogue's choice among the cases (`"held_out"`).
    #[serde(default)]
    pub select: Option<Select>,
    /// The download cannot be read as it is: why, and what to do. The task is
    /// reported, never listed.
    #[serde(default)]
    pub unreadable: Option<String>,
    /// A case whose label is not in the download is skipped (the dataset ships
    /// unlabelled cases beside labelled ones), not quarantined.
    #[serde(default)]
    pub label_optional: bool,
    /// The task's modality where it differs from the dataset's (MMWHS's MR half).
    #[serde(default)]
    pub modality: Option<Modality>,
    /// The entry of the paper's fine-tune list this task belongs to (default: its
    /// own name): a dataset split into tasks by modality or sub-collection counts once.
    #[serde(default)]
    pub counts_as: Option<String>,
    /// Image channels to keep, by name (default: every channel).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Names of a 4-D image's volumes, or of nnU-Net's `_0000`, `_0001`, ... files, in
    /// order; default: `dataset.json`'s `channel_names` (or MSD's `modality`), else
    /// `0`, `1`, ...
    #[serde(default)]
    pub channel_names: Vec<String>,
    /// `pairs`: one image file per channel, channel name → path template with `{case}`
    /// (BraTS's `{case}/{case}_t1.nii.gz`, ...). `image_glob` then only finds the cases.
    #[serde(default)]
    pub channel_files: BTreeMap<String, String>,
    /// `pairs`: the label is a folder of PNG slices on the image's grid (CHAOS `Ground/`).
    #[serde(default)]
    pub label_png: Option<PngLabels>,
}

impl TaskEntry {
    /// Checks the layout description before any source is listed.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use crate::pattern::Pattern;
        if self.unreadable.is_some() {
            return Ok(());
        }
        let pairs_only = !self.channel_files.is_empty()
            || self.label_png.is_some()
            || !self.image_glob.is_empty()
            || !self.label_template.is_empty()
            || self.masks.is_some();
        if self.layout != Layout::Pairs && pairs_only {
            return Err("image, label, masks, channel_files and label_png belong to layout \"pairs\"".into());
        }
        if self.layout == Layout::Pairs {
            if self.image_glob.is_empty() {
                return Err("layout \"pairs\" needs `image` (image_glob)".into());
            }
            if self.label_template.is_empty() && self.masks.is_none() {
                return Err("layout \"pairs\" needs `label` (label_template) or `masks`".into());
            }
            let images: Vec<Pattern> = self.image_glob.iter().map(|p| Pattern::parse(p)).collect::<Result<_, _>>()?;
            // A template may use what an image pattern captures, and the case id (a
            // label template whose captures a case lacks is not tried for it).
            let mut known: Vec<String> = images.iter().flat_map(|p| p.captures()).collect();
            known.push("case".into());
            let templates = self.label_template.iter().chain(self.channel_files.values()).chain(self.case_id.iter());
            for t in templates.chain(self.masks.iter()) {
                let p = Pattern::parse(t)?;
                for c in p.captures() {
                    let structure = c == "structure" && Some(t) == self.masks.as_ref();
                    if !known.contains(&c) && !structure {
                        return Err(format!("{t:?} uses {{{c}}}, which no image pattern captures"));
                    }
                }
            }
            if let Some(m) = &self.masks
                && !m.contains("{structure}")
            {
                return Err(format!("masks {m:?} must contain {{structure}}"));
            }
        }
        for p in self.ignore.iter().chain(self.held_out.iter().flat_map(|h| &h.images)) {
            Pattern::parse(p)?;
        }
        for k in self.label_values.keys() {
            if k.trim() != "*" && k.trim().parse::<i32>().is_err() {
                return Err(format!("label_values key {k:?} is neither an integer nor \"*\""));
            }
        }
        if let Some(p) = &self.label_png {
            p.stack()?;
        }
        Ok(())
    }
}

/// How a folder of PNG label slices maps onto its image.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PngLabels {
    /// Grey value → label value (`"63" = 1`); other grey values are background. Empty:
    /// the grey values are the labels.
    #[serde(default)]
    pub values: BTreeMap<String, i32>,
    /// The files, sorted by name, run from the image's last slice to its first.
    #[serde(default)]
    pub reversed: bool,
}

impl PngLabels {
    /// The reader's form; an error names a grey value that is not one.
    pub fn stack(&self) -> std::result::Result<crate::formats::png_stack::PngStack, String> {
        let mut values = BTreeMap::new();
        for (k, v) in &self.values {
            let grey: u16 =
                k.trim().parse().map_err(|_| format!("label_png.values key {k:?} is not a grey value 0-65535"))?;
            values.insert(grey, *v);
        }
        Ok(crate::formats::png_stack::PngStack { values, reversed: self.reversed })
    }
}

/// One dataset.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    /// Unique name.
    pub name: String,
    /// Modality of the images.
    pub modality: Modality,
    /// Used in stage-1 pre-training.
    #[serde(default)]
    pub pretrain: bool,
    /// Used in stage-2 fine-tuning.
    #[serde(default)]
    pub finetune: bool,
    /// An evaluation set's group (`seen`, `unseen`, `lesion`: supplementary §A.2).
    #[serde(default)]
    pub group: Option<String>,
    /// The training catalogue's datasets whose case ids are this set's (KiTS21-Val's
    /// cases are KiTS21's): the leakage check compares cases under these names.
    #[serde(default)]
    pub trained_as: Vec<String>,
    /// A private dataset (the operator supplies the source).
    #[serde(default)]
    pub private: bool,
    /// Licence note.
    #[serde(default)]
    pub licence: Option<String>,
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
    /// Value → name, when the layout does not carry label names.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Label name → Table-2 category, overriding the keyword rules.
    #[serde(default)]
    pub categories: BTreeMap<String, String>,
    /// Category for every label without a more specific one.
    #[serde(default)]
    pub category: Option<String>,
    /// Sub-sources.
    #[serde(default)]
    pub tasks: Vec<TaskEntry>,
}

impl DatasetEntry {
    /// Whether `task` takes part in fine-tuning.
    pub fn task_finetune(&self, task: &TaskEntry) -> bool {
        task.finetune.unwrap_or(self.finetune)
    }

    /// The category of label `name`: explicit map, dataset default, then keyword rules.
    pub fn category_of(&self, name: &str) -> String {
        if let Some(c) = self.categories.get(name) {
            return c.clone();
        }
        if let Some(c) = &self.category {
            return c.clone();
        }
        category_by_keyword(name).to_string()
    }

    /// Value → name/category from the catalogue maps (task over dataset), completed by
    /// `discovered` (e.g. from `dataset.json`) for values the catalogue does not name.
    pub fn label_map(&self, task: &TaskEntry, discovered: &BTreeMap<i32, String>) -> BTreeMap<i32, LabelInfo> {
        let mut names: BTreeMap<i32, String> = discovered.clone();
        for map in [&self.labels, &task.labels] {
            for (k, v) in map {
                if let Ok(k) = k.trim().parse::<i32>() {
                    names.insert(k, v.clone());
                }
            }
        }
        names
            .into_iter()
            .filter(|(k, _)| *k > 0)
            .map(|(k, name)| (k, LabelInfo { category: self.category_of(&name), name }))
            .collect()
    }
}

/// Table-2 category of a label from its name (lesions first: "kidney tumour" is a lesion).
pub fn category_by_keyword(name: &str) -> &'static str {
    let n = name.to_lowercase().replace(['_', '-'], " ");
    let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
    if has(&[
        "tumor",
        "tumour",
        "lesion",
        "edema",
        "oedema",
        "cyst",
        "nodule",
        "metasta",
        "cancer",
        "carcinoma",
        "necro",
        "enhancing",
        "infection",
        "covid",
        "scar",
        "fracture",
        "glioma",
        "stroke",
        "infarct",
        "neoplasm",
        "mass",
        "ggo",
        "consolidation",
    ]) {
        "lesion"
    } else if has(&["heart", "atri", "myocard", "ventric", "cardiac", "lv ", "rv ", "la ", "pericard"])
        || n == "lv"
        || n == "rv"
        || n == "la"
        || n == "myo"
    {
        "cardiac"
    } else if has(&["autochthon", "gluteus", "iliopsoas", "muscle", "psoas"]) {
        "muscle"
    } else if has(&[
        "vertebra", "rib", "femur", "hip", "humerus", "sacrum", "scapula", "clavic", "bone", "skull", "spine", "pelvi",
        "sternum", "costal", "mandible", "tibia", "patella",
    ]) {
        "bone"
    } else if has(&[
        "brain",
        "hippocamp",
        "cerebr",
        "white matter",
        "gray matter",
        "grey matter",
        "thalam",
        "ventricle",
    ]) {
        "brain"
    } else {
        "abdomen&thorax"
    }
}

/// The parsed catalogue.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Where an ingest without `--out` writes.
    #[serde(default)]
    pub output: Option<OutputEntry>,
    /// Present in an evaluation catalogue (`manifests/benchmarks.toml`): every case
    /// is an evaluation case, never trained on.
    #[serde(default)]
    pub evaluation: Option<EvaluationEntry>,
    /// Every dataset.
    pub datasets: Vec<DatasetEntry>,
}

/// The catalogue's `[output]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    /// Store URL or path; `${VAR:-default}` expanded.
    pub location: String,
}

/// The catalogue's `[evaluation]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationEntry {
    /// The split every case is ingested as: `test`.
    pub split: String,
}

/// Counts printed by `s3-ingest catalog`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CatalogCounts {
    /// Public datasets.
    pub public: usize,
    /// Public datasets used in pre-training.
    pub public_pretrain: usize,
    /// Public datasets used in fine-tuning.
    pub finetune_datasets: usize,
    /// Fine-tune tasks (LAScarQS22 counts twice).
    pub finetune_tasks: usize,
    /// Private datasets.
    pub private: usize,
    /// Datasets/tasks with a source configured.
    pub with_source: usize,
}

impl Catalog {
    /// Reads and validates a catalogue file.
    pub fn load(path: &Path) -> Result<Catalog> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| IngestError::Catalog { path: path.display().to_string(), reason: e.to_string() })?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// Parses and validates catalogue text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog> {
        let bad = |reason: String| IngestError::Catalog { path: origin.into(), reason };
        let mut catalog: Catalog = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut names = BTreeSet::new();
        for d in &mut catalog.datasets {
            if !names.insert(d.name.clone()) {
                return Err(bad(format!("dataset {} is listed twice", d.name)));
            }
            if d.name.is_empty() || d.name.contains(['/', ' ']) {
                return Err(bad(format!("dataset name {:?} must be non-empty without '/' or spaces", d.name)));
            }
            if d.tasks.is_empty() {
                if !d.private {
                    return Err(bad(format!("dataset {} has no [[datasets.tasks]]", d.name)));
                }
                d.tasks.push(TaskEntry { name: "default".into(), ..Default::default() });
            }
            let mut tasks = BTreeSet::new();
            for t in &d.tasks {
                if !tasks.insert(t.name.clone()) {
                    return Err(bad(format!("dataset {}: task {} is listed twice", d.name, t.name)));
                }
                t.validate().map_err(|e| bad(format!("dataset {}/{}: {e}", d.name, t.name)))?;
                for k in d.labels.keys().chain(t.labels.keys()) {
                    if k.trim().parse::<i32>().is_err() {
                        return Err(bad(format!("dataset {}: label key {k:?} is not an integer value", d.name)));
                    }
                }
            }
            if let Some(g) = &d.group
                && !GROUPS.contains(&g.as_str())
            {
                return Err(bad(format!("dataset {}: group {g:?} is not one of {GROUPS:?}", d.name)));
            }
            if let Some(t) = d.tasks.iter().find(|t| t.select.is_some() && t.held_out.is_none()) {
                return Err(bad(format!("dataset {}/{}: select = \"held_out\" needs a held_out rule", d.name, t.name)));
            }
            for c in d.categories.values().chain(d.category.iter()) {
                if !CATEGORIES.contains(&c.as_str()) {
                    return Err(bad(format!("dataset {}: category {c:?} is not one of {CATEGORIES:?}", d.name)));
                }
            }
        }
        if let Some(e) = &catalog.evaluation
            && e.split != "test"
        {
            return Err(bad(format!(
                "[evaluation] split = {:?}: an evaluation catalogue's cases are \"test\"",
                e.split
            )));
        }
        Ok(catalog)
    }

    /// Whether this is an evaluation catalogue: its cases are split `test`.
    pub fn is_evaluation(&self) -> bool {
        self.evaluation.is_some()
    }

    /// The counts of DESIGN §3.
    pub fn counts(&self) -> CatalogCounts {
        let mut c = CatalogCounts::default();
        for d in &self.datasets {
            if d.private {
                c.private += 1;
                continue;
            }
            c.public += 1;
            c.public_pretrain += usize::from(d.pretrain);
            let ft_tasks: BTreeSet<&str> = d
                .tasks
                .iter()
                .filter(|t| d.task_finetune(t))
                .map(|t| t.counts_as.as_deref().unwrap_or(&t.name))
                .collect();
            let ft_tasks = ft_tasks.len();
            c.finetune_datasets += usize::from(ft_tasks > 0);
            c.finetune_tasks += ft_tasks;
        }
        c.with_source = self.datasets.iter().flat_map(|d| &d.tasks).filter(|t| t.source.is_some()).count();
        c
    }

    /// Looks a dataset up by name.
    pub fn get(&self, name: &str) -> Option<&DatasetEntry> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in a source string.
pub fn expand_env(s: &str) -> std::result::Result<String, String> {
    expand_env_with(s, &BTreeMap::new())
}

/// [`expand_env`] where `overrides` take precedence over the environment
/// (`s3-ingest catalog --check RAW` sets `SAM3D_RAW`).
pub fn expand_env_with(s: &str, overrides: &BTreeMap<String, String>) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
        let expr = &after[..end];
        let (var, default) = match expr.split_once(":-") {
            Some((v, d)) => (v, Some(d)),
            None => (expr, None),
        };
        let value = overrides.get(var).cloned().ok_or(()).or_else(|()| std::env::var(var).map_err(|_| ()));
        match (value, default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {var} is not set (used in {s:?})")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_categories() {
        assert_eq!(category_by_keyword("kidney_tumor"), "lesion");
        assert_eq!(category_by_keyword("liver"), "abdomen&thorax");
        assert_eq!(category_by_keyword("vertebrae_L1"), "bone");
        assert_eq!(category_by_keyword("heart_myocardium"), "cardiac");
        assert_eq!(category_by_keyword("iliopsoas_left"), "muscle");
        assert_eq!(category_by_keyword("brainstem"), "brain");
        assert_eq!(category_by_keyword("peritumoral edema"), "lesion");
    }

    #[test]
    fn env_expansion() {
        assert_eq!(expand_env("${S3_TEST_SURELY_UNSET:-s3://raw}/AMOS22").unwrap(), "s3://raw/AMOS22");
        assert!(expand_env("${S3_TEST_SURELY_UNSET}/x").unwrap_err().contains("S3_TEST_SURELY_UNSET"));
        assert_eq!(expand_env("plain/path").unwrap(), "plain/path");
    }

    #[test]
    fn minimal_entry_and_errors() {
        let c = Catalog::parse(
            r#"
[[datasets]]
name = "AMOS22"
modality = "CT"
pretrain = true
finetune = true
[[datasets.tasks]]
name = "default"
layout = "nnunet"
source = "s3://raw/AMOS22"
"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.counts().finetune_tasks, 1);
        let e =
            Catalog::parse("[[datasets]]\nname='A'\nmodality='XR'\npretrain=true\nfinetune=false\n", "t").unwrap_err();
        assert!(e.to_string().contains("XR"), "{e}");
    }

    #[test]
    fn an_evaluation_catalogue_checks_its_groups_split_and_selection() {
        let entry = |extra: &str, task: &str| {
            format!(
                "[evaluation]\nsplit = \"test\"\n[[datasets]]\nname = \"B\"\nmodality = \"CT\"\n{extra}\n\
                 [[datasets.tasks]]\nname = \"default\"\nlayout = \"nnunet\"\n{task}\n"
            )
        };
        let c = Catalog::parse(&entry("group = \"lesion\"\ntrained_as = [\"K\"]", ""), "t").unwrap();
        assert!(c.is_evaluation());
        assert_eq!((c.datasets[0].group.as_deref(), c.datasets[0].pretrain), (Some("lesion"), false));
        let e = Catalog::parse(&entry("group = \"seen organs\"", ""), "t").unwrap_err();
        assert!(e.to_string().contains("\"seen organs\" is not one of"), "{e}");
        let e = Catalog::parse(&entry("", "select = \"held_out\""), "t").unwrap_err();
        assert!(e.to_string().contains("needs a held_out rule"), "{e}");
        let e = Catalog::parse(&entry("", "").replace("\"test\"", "\"val\""), "t").unwrap_err();
        assert!(e.to_string().contains("are \"test\""), "{e}");
        let shipped =
            Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/benchmarks.toml")).unwrap();
        assert!(shipped.is_evaluation());
        assert_eq!(shipped.datasets.len(), 16, "supplementary A.2's 16 evaluation sets");
        let groups: BTreeSet<&str> = shipped.datasets.iter().filter_map(|d| d.group.as_deref()).collect();
        assert_eq!(groups, BTreeSet::from(["seen", "unseen", "lesion"]));
        assert!(shipped.datasets.iter().all(|d| d.group.is_some() && !d.pretrain && !d.finetune));
    }
}
