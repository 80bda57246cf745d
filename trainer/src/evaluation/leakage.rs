//! The leakage check before a benchmark evaluation: no benchmark case may be one the
//! run trained on, by dataset and case id (under the benchmark's own name and the
//! training names it lists as `trained_as`) or by its image's voxel digest (the same
//! scan under another name: SEG.A.'s KiTS collection, BTCV scans inside
//! CTPelvic1K). The training side is every `train` case of the store the run trained
//! on, as its label manifests record it; the benchmark side is checked by id from the
//! listing and by digest as each case is read.

use std::collections::{BTreeMap, BTreeSet};

use object_store::ObjectStore;
use s3_shards::Split;
use s3_shards::labels::{CaseFate, LabelManifest};
use s3_shards::samples_table::SampleRow;

use crate::error::{Result, TrainError};

/// What a run trained on, as the check needs it.
#[derive(Debug, Default)]
pub struct TrainingCases {
    /// (dataset, case id) of every training case.
    ids: BTreeSet<(String, String)>,
    /// Image digest → `dataset/case` that has it.
    digests: BTreeMap<String, String>,
    /// Training cases whose manifest records no digest (a store ingested before
    /// digests were recorded): checked by id only.
    pub without_digest: usize,
}

impl TrainingCases {
    /// The `train` cases of `rows` (a store's sample table) with the digests their
    /// datasets' label manifests record.
    pub async fn load(store: &dyn ObjectStore, rows: &[SampleRow]) -> Result<TrainingCases> {
        let mut out = TrainingCases::default();
        for r in rows.iter().filter(|r| r.split == Split::Train) {
            out.ids.insert((r.dataset.clone(), r.case_id.clone()));
        }
        let datasets: BTreeSet<&str> = out.ids.iter().map(|(d, _)| d.as_str()).collect();
        for d in datasets {
            let m = LabelManifest::load(store, d).await?;
            for (case, fate) in m.cases.values().flat_map(|t| t.iter()) {
                if !out.ids.contains(&(d.to_string(), case.clone())) {
                    continue;
                }
                match fate {
                    CaseFate::Ingested { image_xxh3, .. } if !image_xxh3.is_empty() => {
                        for x in image_xxh3 {
                            out.digests.entry(x.clone()).or_insert_with(|| format!("{d}/{case}"));
                        }
                    }
                    _ => out.without_digest += 1,
                }
            }
        }
        Ok(out)
    }

    /// From known parts (tests, and callers that hold them already).
    pub fn from_parts(ids: BTreeSet<(String, String)>, digests: BTreeMap<String, String>) -> TrainingCases {
        TrainingCases { ids, digests, without_digest: 0 }
    }

    /// Training cases known.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Why a benchmark case is a training case by its id under any of `names`.
    pub fn by_id(&self, names: &[&str], case_id: &str) -> Option<String> {
        names
            .iter()
            .find(|n| self.ids.contains(&(n.to_string(), case_id.to_string())))
            .map(|n| format!("trained on as {n}/{case_id}"))
    }

    /// Why a benchmark case is a training case by one of its images' digests.
    pub fn by_digest(&self, digests: &[String]) -> Option<String> {
        digests
            .iter()
            .find_map(|x| self.digests.get(x).map(|c| format!("its image's voxels are training case {c}'s (xxh3 {x})")))
    }
}

/// The refusal naming every leaked case (`dataset/task/case: why`).
pub fn refusal(leaks: Vec<String>) -> TrainError {
    TrainError::Leakage { count: leaks.len(), cases: leaks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_leaks_by_its_training_name_or_by_its_voxels_and_says_which() {
        let train = TrainingCases::from_parts(
            BTreeSet::from([("KiTS21".to_string(), "00001".to_string())]),
            BTreeMap::from([("00000000000000aa".to_string(), "KiTS19/case_00003".to_string())]),
        );
        assert_eq!(train.by_id(&["KiTS21-Val", "KiTS21"], "00001").as_deref(), Some("trained on as KiTS21/00001"));
        assert_eq!(train.by_id(&["KiTS21-Val", "KiTS21"], "00210"), None, "a case the run never saw");
        assert_eq!(train.by_id(&["KiTS21-Val"], "00001"), None, "only the names the benchmark lists");
        let why = train.by_digest(&["00000000000000bb".into(), "00000000000000aa".into()]).unwrap();
        assert!(why.contains("KiTS19/case_00003"), "{why}");
        assert_eq!(train.by_digest(&["00000000000000bb".into()]), None);
        let e = refusal(vec!["SEG.A.2023/default/K1: x".into()]).to_string();
        assert!(e.contains("SEG.A.2023/default/K1") && e.contains("1 benchmark case"), "{e}");
    }
}
