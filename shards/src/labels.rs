//! `labels/<dataset>.json`: what a dataset's labels are and what happened to every source case.

use std::collections::BTreeMap;

use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::json;

/// Key of a dataset's label manifest.
pub fn labels_path(dataset: &str) -> Path {
    Path::from("labels").join(format!("{dataset}.json"))
}

/// Foreground-size statistics of a class, in voxels of the 1.5 mm grid.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FgStats {
    /// Smallest foreground.
    pub min: i64,
    /// Largest foreground.
    pub max: i64,
    /// Mean foreground.
    pub mean: f64,
}

impl FgStats {
    /// Statistics of `values`; zeros when empty.
    pub fn of(values: &[i64]) -> FgStats {
        if values.is_empty() {
            return FgStats::default();
        }
        FgStats {
            min: *values.iter().min().expect("non-empty"),
            max: *values.iter().max().expect("non-empty"),
            mean: values.iter().sum::<i64>() as f64 / values.len() as f64,
        }
    }
}

/// One class of a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassEntry {
    /// Label value.
    pub value: i32,
    /// Label name.
    pub name: String,
    /// Table-2 category.
    pub category: String,
    /// Modality.
    pub modality: String,
    /// Samples written for this class.
    pub samples: u64,
    /// Foreground statistics over those samples.
    pub fg_voxels: FgStats,
    /// Samples per image channel (multi-channel datasets only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, u64>,
}

/// What happened to one source case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "fate")]
pub enum CaseFate {
    /// Samples were written.
    Ingested {
        /// How many.
        samples: u64,
        /// Labels dropped by the size filters (label value → reason). String keys:
        /// this enum is internally tagged, which cannot read integer map keys back.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        dropped_labels: BTreeMap<String, String>,
        /// Image channels left out (channel → reason), e.g. one on another grid.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        dropped_channels: BTreeMap<String, String>,
        /// The source image's voxel digest per channel (the leakage check's
        /// fingerprint; absent in stores written before it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        image_xxh3: Vec<String>,
    },
    /// Deliberately not ingested (e.g. no label survived the filters).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Bad input.
    Quarantined {
        /// Why.
        reason: String,
    },
}

/// A quarantined case and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Task of the case.
    pub task: String,
    /// Case id.
    pub case_id: String,
    /// The specific reason.
    pub reason: String,
}

/// The `labels/<dataset>.json` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelManifest {
    /// Dataset name.
    pub dataset: String,
    /// Modality.
    pub modality: String,
    /// Classes with their counts.
    pub classes: Vec<ClassEntry>,
    /// Quarantined cases with reasons.
    pub quarantine: Vec<Quarantined>,
    /// Every source case seen, per task, with its fate.
    pub cases: BTreeMap<String, BTreeMap<String, CaseFate>>,
}

impl LabelManifest {
    /// Stores the manifest under `labels/<dataset>.json` (one PUT).
    pub async fn write(&self, store: &dyn ObjectStore) -> Result<()> {
        json::put_json(store, &labels_path(&self.dataset), self).await
    }
    /// Loads a dataset's manifest.
    pub async fn load(store: &dyn ObjectStore, dataset: &str) -> Result<LabelManifest> {
        json::get_json(store, &labels_path(dataset)).await
    }
    /// Source cases seen, over all tasks.
    pub fn cases_seen(&self) -> usize {
        self.cases.values().map(|t| t.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fate_json_is_tagged() {
        let f = CaseFate::Quarantined { reason: "truncated gzip".into() };
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"fate":"quarantined","reason":"truncated gzip"}"#);
        assert_eq!(FgStats::of(&[2, 4, 9]), FgStats { min: 2, max: 9, mean: 5.0 });
    }
}
