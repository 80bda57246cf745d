//! Evaluation in the source geometry (DESIGN §8, protocol *source*), comparable with
//! the reference's inference: every val case of the selected datasets read raw from
//! the catalogue's source, every class present in its label (no size filter), the
//! click protocol with all points so far, each prediction pasted back onto the
//! source grid and scored against the source label on the whole volume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use burn::prelude::*;
use s3_ingest::IngestError;
use s3_ingest::case_io::CaseReader;
use s3_ingest::catalog::{Catalog, DatasetEntry, TaskEntry, expand_env};
use s3_ingest::layout::{CaseRef, Listing, list_cases};
use s3_ingest::nifti_io::ReadOptions;
use s3_ingest::preprocess::{self, PreprocessOptions};
use s3_ingest::source::Source;
use s3_shards::{Split, StoreOptions};

use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::eval::{DiceRow, EvalReport, SourceClass};
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
    /// What the run trained on: an evaluation catalogue's cases are checked against
    /// it, and any found refuses the evaluation.
    pub training: Option<&'a crate::leakage::TrainingCases>,
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

/// Runs the source protocol. A source that cannot be reached ends it with an error
/// (its numbers would be silently partial); a case that cannot be read or
/// preprocessed is skipped with its reason.
pub fn evaluate_source(
    model: &Sam,
    cfg: &SamConfig,
    spec: &SourceEval,
    device: &Device,
    progress: &dyn Fn(&str),
) -> Result<EvalReport> {
    let rt = s3_shards::io_runtime::io_runtime()?;
    let max = spec.clicks.iter().copied().max().unwrap_or(1).max(1);
    let read = ReadOptions::default();
    let mut report = EvalReport::new("source", spec.clicks);
    // Every source is listed before any case is scored: a benchmark case the run
    // trained on (by id) is refused before the first prediction.
    let mut listed = Vec::new();
    for d in spec.catalog.datasets.iter().filter(|d| spec.datasets.contains(&d.name)) {
        for t in &d.tasks {
            if t.unreadable.is_some() {
                report.skipped.push(format!("{}/{}: unreadable as downloaded", d.name, t.name));
                continue;
            }
            let Some(raw) = &t.source else {
                report.skipped.push(format!("{}/{}: no source configured", d.name, t.name));
                continue;
            };
            let task = format!("{}/{}", d.name, t.name);
            let url = expand_env(raw).map_err(unreachable(task.clone()))?;
            let source = Source::open(&url, &spec.store_options).map_err(unreachable(task.clone()))?;
            let listing =
                rt.block_on(list_cases(&source, &d.name, t)).map_err(unreachable(format!("{task}: listing {url}")))?;
            listed.push((d, t, source, listing));
        }
    }
    let evaluated = |d: &str, c: &CaseRef| {
        c.skip.is_none() && (spec.catalog.is_evaluation() || spec.split_of(d, &c.case_id) == Split::Val)
    };
    if let Some(train) = spec.training {
        refuse_known_ids(&listed, train, &evaluated)?;
    }
    let mut digest_leaks = Vec::new();
    for (d, t, source, listing) in &listed {
        let (d, t) = (*d, *t);
        let labels = d.label_map(t, &listing.labels);
        let reader = CaseReader { source, tmp_dir: &spec.tmp_dir, read: &read, handle: rt.handle() };
        let val: Vec<_> = listing.cases.iter().filter(|c| evaluated(&d.name, c)).collect();
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
                Err(e @ IngestError::SourceUnavailable { .. }) => return Err(unreachable(what)(e)),
                Err(e) => {
                    report.skipped.push(format!("{what}: {e}"));
                    continue;
                }
            };
            if let Some(why) = spec.training.and_then(|t| t.by_digest(&[s3_ingest::image_digest::digest(&image)])) {
                digest_leaks.push(format!("{what}: {why}"));
                continue;
            }
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
                let info = labels.get(&value).cloned().unwrap_or_else(|| s3_ingest::catalog::LabelInfo::unnamed(value));
                let Some(structure) = Structure::new(&prepared, &label, &canonical, value, voxels)? else {
                    report.skipped.push(format!("{what} class {value}: no voxel left at 1.5 mm"));
                    continue;
                };
                let id = s3_shards::sample::sample_id(&d.name, &t.name, &case.case_id, value);
                let (per_pass, _) = structure.run_clicks(model, cfg, &id, spec.seed, max, device);
                report.samples.push(DiceRow {
                    sample_id: id,
                    dataset: d.name.clone(),
                    label: info.name,
                    source: Some(SourceClass {
                        task: t.name.clone(),
                        case_id: case.case_id.clone(),
                        label_value: value,
                        category: info.category,
                        group: d.group.clone(),
                        voxels: structure.voxels(),
                        max: per_pass.iter().copied().fold(0.0, f64::max),
                    }),
                    dice: spec.clicks.iter().map(|&c| per_pass[c.max(1) - 1]).collect(),
                });
            }
        }
    }
    if !digest_leaks.is_empty() {
        return Err(crate::leakage::refusal(digest_leaks));
    }
    report.group();
    Ok(report)
}

/// Refuses, naming them all, the evaluated cases the run trained on by dataset and
/// case id (under the benchmark's name and its `trained_as` names).
fn refuse_known_ids(
    listed: &[(&DatasetEntry, &TaskEntry, Source, Listing)],
    train: &crate::leakage::TrainingCases,
    evaluated: &dyn Fn(&str, &CaseRef) -> bool,
) -> Result<()> {
    let mut leaks = Vec::new();
    for (d, t, _, listing) in listed {
        let names: Vec<&str> =
            std::iter::once(d.name.as_str()).chain(d.trained_as.iter().map(String::as_str)).collect();
        for c in listing.cases.iter().filter(|c| evaluated(&d.name, c)) {
            if let Some(why) = train.by_id(&names, &c.case_id) {
                leaks.push(format!("{}/{}/{}: {why}", d.name, t.name, c.case_id));
            }
        }
    }
    if leaks.is_empty() { Ok(()) } else { Err(crate::leakage::refusal(leaks)) }
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
) -> Result<(EvalReport, usize)> {
    let catalog = Catalog::load(&req.manifest)
        .map_err(|e| TrainError::Parse { file: req.manifest.display().to_string(), source: Box::new(e) })?;
    stage.datasets.catalog = Some(req.manifest.display().to_string());
    let named: BTreeSet<String> = catalog.datasets.iter().map(|d| d.name.clone()).collect();
    let datasets = if req.datasets.is_empty() && catalog.is_evaluation() {
        named.clone()
    } else if req.datasets.is_empty() {
        stage.select_datasets(&named)?
    } else {
        if let Some(d) = req.datasets.iter().find(|d| !named.contains(*d)) {
            return Err(TrainError::Stage {
                stage: stage.name.clone(),
                reason: format!("--datasets: {d:?} is not in {}", req.manifest.display()),
            });
        }
        req.datasets.iter().cloned().collect()
    };
    let tmp = crate::checkpoint::temp_dir()?;
    // The published store says which cases the ingest put in val; for a benchmark
    // catalogue, which cases the run trained on.
    let mut known_splits = BTreeMap::new();
    let mut training = None;
    match &req.data {
        Some(data) => {
            let data_loc = s3_shards::open_store(data, &req.store_options)?;
            let rt = s3_shards::io_runtime::io_runtime()?;
            let store = data_loc.store().as_ref();
            let (rows, _) = rt.block_on(crate::run_identity::samples_from_index(store))?;
            if catalog.is_evaluation() {
                let t = rt.block_on(crate::leakage::TrainingCases::load(store, &rows))?;
                if t.without_digest > 0 {
                    tracing::warn!(
                        "{} training case(s) of {data} record no image digest (ingested before digests): \
                         checked by dataset and case id only",
                        t.without_digest
                    );
                }
                training = Some(t);
            } else {
                known_splits.extend(rows.into_iter().map(|r| ((r.dataset, r.case_id), r.split)));
            }
        }
        None if catalog.is_evaluation() => {
            return Err(TrainError::Stage {
                stage: stage.name.clone(),
                reason: format!(
                    "{} is a benchmarks catalogue: the leakage check needs the store the run trained on (--data, \
                     or the run's config.json)",
                    req.manifest.display()
                ),
            });
        }
        None => {}
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
        training: training.as_ref(),
    };
    let report = evaluate_source(model, cfg, &spec, device, &|m| tracing::info!("{m}"))?;
    Ok((report, datasets.len()))
}

/// A source that cannot be reached ends the evaluation (a case that cannot be read is
/// skipped with its reason instead).
fn unreachable<E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: String) -> impl FnOnce(E) -> TrainError {
    move |e| TrainError::SourceEval { what, source: e.into() }
}
