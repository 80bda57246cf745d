//! Evaluation in the source geometry (DESIGN §8, protocol *source*), comparable with
//! the reference's inference: every val case of the selected datasets read raw from
//! the catalogue's source, every class present in its label (no size filter), the
//! click protocol with all points so far, each prediction pasted back onto the
//! source grid and scored against the source label on the whole volume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use burn::prelude::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use s3_ingest::IngestError;
use s3_ingest::case_io::CaseReader;
use s3_ingest::catalog::{Catalog, expand_env};
use s3_ingest::layout::list_cases;
use s3_ingest::nifti_io::ReadOptions;
use s3_ingest::preprocess::{self, PreprocessOptions};
use s3_ingest::source::Source;
use s3_shards::{Split, StoreLocation, StoreOptions, json};
use serde::Serialize;

use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::eval::{csv_table, dice_columns};
use crate::model::Sam;
use crate::predict::{PreparedImage, Structure};

/// What to evaluate.
pub struct SourceEval<'a> {
    /// The catalogue the cases are read from.
    pub catalog: &'a Catalog,
    /// Dataset names to evaluate.
    pub datasets: &'a BTreeSet<String>,
    /// The split of the cases the published store holds, by (dataset, case id): the
    /// ingest's own decision, whatever `val_percent` it ran with.
    pub known_splits: BTreeMap<(String, String), Split>,
    /// Percent of cases in the val split (the ingest's `val_percent`), for cases the
    /// store does not hold (every class dropped, quarantined, or no store given).
    pub val_percent: u32,
    /// Click counts reported; the passes run to the largest.
    pub clicks: &'a [usize],
    /// Seeds the simulated clicks (with each sample id).
    pub seed: u64,
    /// Credentials and endpoint for the sources' stores.
    pub store_options: StoreOptions,
    /// Where files from remote sources are fetched to.
    pub tmp_dir: PathBuf,
}

impl SourceEval<'_> {
    /// The split of a case: the store's, else the val_percent rule.
    pub fn split_of(&self, dataset: &str, case_id: &str) -> Split {
        self.known_splits
            .get(&(dataset.to_string(), case_id.to_string()))
            .copied()
            .unwrap_or_else(|| Split::for_case(dataset, case_id, self.val_percent))
    }
}

/// The Dice of one class of one case.
#[derive(Clone, Debug, Serialize)]
pub struct ClassDice {
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// Case.
    pub case_id: String,
    /// Label value.
    pub label_value: i32,
    /// Label name.
    pub label: String,
    /// Table-2 category.
    pub category: String,
    /// Source voxels of the class.
    pub voxels: usize,
    /// Dice per click count (the order of [`SourceReport::clicks`]).
    pub dice: Vec<f64>,
    /// The best Dice over every pass up to the largest click count.
    pub max: f64,
}

/// Mean Dice of a group of classes.
#[derive(Clone, Debug, Serialize)]
pub struct SourceGroup {
    /// `dataset`, `dataset/label` or `category`.
    pub by: String,
    /// The dataset, `dataset/label` or the category.
    pub key: String,
    /// Classes in the group.
    pub n: usize,
    /// Mean Dice per click count.
    pub dice: Vec<f64>,
    /// Mean of the per-class maxima.
    pub max: f64,
}

/// What the source protocol measured.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    /// Protocol name (`source`).
    pub protocol: String,
    /// Click counts reported.
    pub clicks: Vec<usize>,
    /// One row per (case, class).
    pub classes: Vec<ClassDice>,
    /// Per dataset, per dataset and label, per category.
    pub groups: Vec<SourceGroup>,
    /// Val cases that could not be read or preprocessed, with the reason.
    pub skipped: Vec<String>,
}

impl SourceReport {
    /// Mean Dice over all classes at `clicks`.
    pub fn mean_at(&self, clicks: usize) -> Option<f64> {
        let i = self.clicks.iter().position(|&c| c == clicks)?;
        (!self.classes.is_empty())
            .then(|| self.classes.iter().map(|s| s.dice[i]).sum::<f64>() / self.classes.len() as f64)
    }

    /// CSV, one row per (case, class).
    pub fn classes_csv(&self) -> String {
        let header = ["dataset", "task", "case", "label_value", "label", "category", "voxels"].map(String::from);
        let rows = self.classes.iter().map(|r| {
            let mut row = vec![
                r.dataset.clone(),
                r.task.clone(),
                r.case_id.clone(),
                r.label_value.to_string(),
                r.label.clone(),
                r.category.clone(),
                r.voxels.to_string(),
            ];
            row.extend(r.dice.iter().chain([&r.max]).map(|d| format!("{d:.4}")));
            row
        });
        csv_table(header.into_iter().chain(dice_columns(&self.clicks)).chain(["max".into()]), rows)
    }

    /// CSV, one row per group.
    pub fn groups_csv(&self) -> String {
        let header = ["by", "key", "n"].map(String::from);
        let rows = self.groups.iter().map(|g| {
            let mut row = vec![g.by.clone(), g.key.clone(), g.n.to_string()];
            row.extend(g.dice.iter().chain([&g.max]).map(|d| format!("{d:.4}")));
            row
        });
        csv_table(header.into_iter().chain(dice_columns(&self.clicks)).chain(["max".into()]), rows)
    }
}

/// Runs the source protocol. A source that cannot be reached ends it with an error
/// (its numbers would be silently partial); a case that cannot be read or
/// preprocessed is skipped with its reason.
pub fn evaluate_source(
    model: &Sam,
    cfg: &SamConfig,
    spec: &SourceEval,
    device: &Device,
    progress: &dyn Fn(&str),
) -> Result<SourceReport> {
    let rt = crate::io_runtime::io_runtime()?;
    let max = spec.clicks.iter().copied().max().unwrap_or(1).max(1);
    let read = ReadOptions::default();
    let mut report = SourceReport {
        protocol: "source".into(),
        clicks: spec.clicks.to_vec(),
        classes: Vec::new(),
        groups: Vec::new(),
        skipped: Vec::new(),
    };
    let source_error = |what: String| TrainError::Config(format!("source evaluation: {what}"));
    for d in spec.catalog.datasets.iter().filter(|d| spec.datasets.contains(&d.name)) {
        for t in &d.tasks {
            let Some(raw) = &t.source else {
                report.skipped.push(format!("{}/{}: no source configured", d.name, t.name));
                continue;
            };
            let url = expand_env(raw).map_err(|e| source_error(format!("{}/{}: {e}", d.name, t.name)))?;
            let source = Source::open(&url, &spec.store_options)
                .map_err(|e| source_error(format!("{}/{}: {e}", d.name, t.name)))?;
            let listing = rt
                .block_on(list_cases(&source, &d.name, t))
                .map_err(|e| source_error(format!("{}/{}: listing {url}: {e}", d.name, t.name)))?;
            let labels = d.label_map(t, &listing.labels);
            let reader = CaseReader { source: &source, tmp_dir: &spec.tmp_dir, read: &read, handle: rt.handle() };
            let val: Vec<_> = listing
                .cases
                .iter()
                .filter(|c| c.skip.is_none() && spec.split_of(&d.name, &c.case_id) == Split::Val)
                .collect();
            for (n, case) in val.iter().enumerate() {
                progress(&format!("{}/{} case {} ({}/{})", d.name, t.name, case.case_id, n + 1, val.len()));
                let what = format!("{}/{}/{}", d.name, t.name, case.case_id);
                let read_case = || -> std::result::Result<_, IngestError> {
                    let (image, label, _) = reader.read_case(case)?;
                    preprocess::check_pair(&image, &label, &PreprocessOptions::default())?;
                    let values = preprocess::label_values(&label)?;
                    let canonical = preprocess::canonical_label(&label)?;
                    Ok((image, label, values, canonical))
                };
                let (image, label, values, canonical) = match read_case() {
                    Ok(v) => v,
                    Err(e @ IngestError::SourceUnavailable { .. }) => return Err(source_error(format!("{what}: {e}"))),
                    Err(e) => {
                        report.skipped.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let prepared = match PreparedImage::new(&image, d.modality) {
                    Ok(p) => p,
                    Err(e) => {
                        report.skipped.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let counts = crate::predict::class_voxels(&label);
                for value in values {
                    let voxels = counts.get(&value).copied().unwrap_or(0);
                    let info =
                        labels.get(&value).cloned().unwrap_or_else(|| s3_ingest::catalog::LabelInfo::unnamed(value));
                    let Some(structure) = Structure::new(&prepared, &label, &canonical, value, voxels)? else {
                        report.skipped.push(format!("{what} class {value}: no voxel left at 1.5 mm"));
                        continue;
                    };
                    let id = s3_shards::sample::sample_id(&d.name, &t.name, &case.case_id, value);
                    let (per_pass, _) = structure.run_clicks(model, cfg, &id, spec.seed, max, device);
                    report.classes.push(ClassDice {
                        dataset: d.name.clone(),
                        task: t.name.clone(),
                        case_id: case.case_id.clone(),
                        label_value: value,
                        label: info.name,
                        category: info.category,
                        voxels: structure.voxels(),
                        dice: spec.clicks.iter().map(|&c| per_pass[c.max(1) - 1]).collect(),
                        max: per_pass.iter().copied().fold(0.0, f64::max),
                    });
                }
            }
        }
    }
    report.groups = groups(&report.classes, spec.clicks.len());
    Ok(report)
}

fn groups(rows: &[ClassDice], clicks: usize) -> Vec<SourceGroup> {
    let mut by: BTreeMap<(&str, String), Vec<&ClassDice>> = BTreeMap::new();
    for r in rows {
        by.entry(("dataset", r.dataset.clone())).or_default().push(r);
        by.entry(("dataset/label", format!("{}/{}", r.dataset, r.label))).or_default().push(r);
        by.entry(("category", r.category.clone())).or_default().push(r);
    }
    by.into_iter()
        .map(|((kind, key), v)| {
            let n = v.len() as f64;
            SourceGroup {
                by: kind.into(),
                key,
                n: v.len(),
                dice: (0..clicks).map(|i| v.iter().map(|r| r.dice[i]).sum::<f64>() / n).collect(),
                max: v.iter().map(|r| r.max).sum::<f64>() / n,
            }
        })
        .collect()
}

/// What `s3-train eval --protocol source` was asked.
#[derive(Clone, Debug)]
pub struct SourceRun {
    /// The catalogue the datasets come from.
    pub manifest: PathBuf,
    /// Datasets to evaluate (empty: the stage's selection from the catalogue).
    pub datasets: Vec<String>,
    /// The published store, whose sample table says which cases are in val.
    pub data: Option<String>,
    /// Percent of cases in val where the store does not say.
    pub val_percent: u32,
    /// Click counts.
    pub clicks: Vec<usize>,
    /// S3 settings.
    pub store_options: StoreOptions,
}

/// Evaluates the val cases of the request's datasets on their source grids; the
/// stage's catalogue becomes the request's. Returns the report and the number of
/// datasets evaluated.
pub fn evaluate_source_run(
    req: &SourceRun,
    stage: &mut crate::stage::StageConfig,
    model: &Sam,
    cfg: &SamConfig,
    device: &Device,
) -> Result<(SourceReport, usize)> {
    let catalog = Catalog::load(&req.manifest).map_err(|e| TrainError::Config(e.to_string()))?;
    stage.datasets.catalog = Some(req.manifest.display().to_string());
    let named: BTreeSet<String> = catalog.datasets.iter().map(|d| d.name.clone()).collect();
    let datasets = if req.datasets.is_empty() {
        stage.select_datasets(&named)?
    } else {
        if let Some(d) = req.datasets.iter().find(|d| !named.contains(*d)) {
            return Err(TrainError::Config(format!("--datasets: {d:?} is not in {}", req.manifest.display())));
        }
        req.datasets.iter().cloned().collect()
    };
    let tmp = crate::checkpoint::temp_dir()?;
    // The published store says which cases the ingest put in val.
    let mut known_splits = BTreeMap::new();
    if let Some(data) = &req.data {
        let data_loc = s3_shards::open_store(data, &req.store_options)?;
        let rt = crate::io_runtime::io_runtime()?;
        let (rows, _) = rt.block_on(crate::run_identity::samples_from_index(data_loc.store().as_ref()))?;
        known_splits.extend(rows.into_iter().map(|r| ((r.dataset, r.case_id), r.split)));
    }
    let spec = SourceEval {
        catalog: &catalog,
        datasets: &datasets,
        known_splits,
        val_percent: req.val_percent,
        clicks: &req.clicks,
        seed: stage.seed,
        store_options: req.store_options.clone(),
        tmp_dir: tmp.path().to_path_buf(),
    };
    let report = evaluate_source(model, cfg, &spec, device, &|m| tracing::info!("{m}"))?;
    Ok((report, datasets.len()))
}

/// Writes `eval/<name>.csv` (per case and class), `eval/<name>-groups.csv` and
/// `eval/<name>.json` to the run folder.
pub fn write_source_report(run: &StoreLocation, name: &str, report: &SourceReport) -> Result<()> {
    let rt = crate::io_runtime::io_runtime()?;
    let store = run.store().as_ref();
    rt.block_on(async {
        for (file, text) in [
            (format!("eval/{name}.csv"), report.classes_csv()),
            (format!("eval/{name}-groups.csv"), report.groups_csv()),
        ] {
            let key = ObjPath::from(file);
            store.put(&key, PutPayload::from(text.into_bytes())).await.map_err(|e| {
                TrainError::from(s3_shards::ShardError::Store { op: "put", path: key.clone(), source: e })
            })?;
        }
        json::put_json(store, &ObjPath::from(format!("eval/{name}.json")), report).await.map_err(TrainError::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_name_with_a_comma_stays_one_field() {
        let row = ClassDice {
            dataset: "D".into(),
            task: "t".into(),
            case_id: "c1".into(),
            label_value: 3,
            label: "kidney, left".into(),
            category: "abdomen&thorax".into(),
            voxels: 10,
            dice: vec![0.5, 0.75],
            max: 0.8,
        };
        let report = SourceReport {
            protocol: "source".into(),
            clicks: vec![1, 5],
            groups: groups(std::slice::from_ref(&row), 2),
            classes: vec![row],
            skipped: Vec::new(),
        };
        let csv = report.classes_csv();
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>()[7..], ["dice@1", "dice@5", "max"]);
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!((&rec[4], &rec[7], &rec[9]), ("kidney, left", "0.5000", "0.8000"));
        let groups = report.groups_csv();
        assert!(groups.lines().any(|l| l == "dataset/label,\"D/kidney, left\",1,0.5000,0.7500,0.8000"), "{groups}");
    }
}
