//! Evaluation with the reference inference protocol: the first click uniform in the
//! mask, each later click uniform in the error region, all clicks so far passed
//! together with the previous low-res logits; Dice (sigmoid > 0.5) after 1/3/5/10 clicks.

use std::collections::BTreeMap;

use burn::prelude::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
use s3_shards::samples_table::SampleRow;
use s3_shards::{StoreLocation, json};
use serde::Serialize;

use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::loader::{Loaded, Loader, LoaderConfig};
use crate::model::Sam;
use crate::sampler::SampleRef;
use crate::stage::ClickMemory;
use crate::step::ClickLoop;

/// Dice of one sample after each click count.
#[derive(Clone, Debug, Serialize)]
pub struct SampleDice {
    /// Sample.
    pub sample_id: String,
    /// Dataset.
    pub dataset: String,
    /// Label name.
    pub label: String,
    /// Dice per click count (same order as [`EvalReport::clicks`]).
    pub dice: Vec<f64>,
}

/// Mean Dice of a group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupDice {
    /// Dataset.
    pub dataset: String,
    /// Label name (`*` for the whole dataset).
    pub label: String,
    /// Samples.
    pub n: usize,
    /// Mean Dice per click count.
    pub dice: Vec<f64>,
}

/// Evaluation results.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Click counts reported.
    pub clicks: Vec<usize>,
    /// Per sample.
    pub samples: Vec<SampleDice>,
    /// Per (dataset, label) and per dataset.
    pub groups: Vec<GroupDice>,
    /// Samples that could not be read.
    pub skipped: Vec<String>,
}

impl EvalReport {
    /// Mean Dice over all samples at `clicks`.
    pub fn mean_at(&self, clicks: usize) -> Option<f64> {
        let i = self.clicks.iter().position(|&c| c == clicks)?;
        (!self.samples.is_empty())
            .then(|| self.samples.iter().map(|s| s.dice[i]).sum::<f64>() / self.samples.len() as f64)
    }

    /// CSV: one row per group.
    pub fn to_csv(&self) -> String {
        let rows = self.groups.iter().map(|g| {
            let mut row = vec![g.dataset.clone(), g.label.clone(), g.n.to_string()];
            row.extend(g.dice.iter().map(|d| format!("{d:.4}")));
            row
        });
        csv_table(["dataset", "label", "n"].into_iter().map(String::from).chain(dice_columns(&self.clicks)), rows)
    }
}

/// `dice@N` for each click count.
pub(crate) fn dice_columns(clicks: &[usize]) -> impl Iterator<Item = String> + '_ {
    clicks.iter().map(|c| format!("dice@{c}"))
}

/// A header and rows as CSV, quoted where a field needs it (a label name with a comma).
pub(crate) fn csv_table(header: impl IntoIterator<Item = String>, rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing to memory cannot fail, and every row has the header's length.
    w.write_record(header).expect("in memory");
    for row in rows {
        w.write_record(row).expect("in memory");
    }
    String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 fields")
}

/// Evaluates `model` on `rows` (usually the val split) of the store `data`.
pub fn evaluate(
    model: &Sam,
    cfg: &SamConfig,
    data: &StoreLocation,
    rows: &[SampleRow],
    clicks: &[usize],
    seed: u64,
    device: &Device,
) -> Result<EvalReport> {
    let max = *clicks.iter().max().unwrap_or(&1);
    let positions: Vec<(u64, SampleRef)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (i as u64, SampleRef { sample_id: r.sample_id.clone(), shard: r.shard.clone(), row: r.row as u64 })
        })
        .collect();
    let by_id: BTreeMap<&str, &SampleRow> = rows.iter().map(|r| (r.sample_id.as_str(), r)).collect();
    let loader =
        Loader::start(data.store().clone(), positions, LoaderConfig { flip: false, ..LoaderConfig::default() });
    let s = cfg.img_size;
    let mut report =
        EvalReport { clicks: clicks.to_vec(), samples: Vec::new(), groups: Vec::new(), skipped: Vec::new() };
    for loaded in loader {
        let item = match loaded {
            Loaded::Item(i) => i,
            Loaded::Skipped { sample_id, reason, .. } => {
                report.skipped.push(format!("{sample_id}: {reason}"));
                continue;
            }
            Loaded::Failed { sample_id, error, .. } => {
                return Err(TrainError::Read { sample_id, source: Box::new(error) });
            }
        };
        let image = Tensor::<5>::from_data(TensorData::new(item.image.clone(), [1, 1, s, s, s]), device);
        let emb = model.image_encoder.forward(image);
        // The inference protocol: every pass sees all clicks so far.
        // Evaluation clicks as the reference infers: every point so far.
        let mut loop_ = ClickLoop::new(&[item.sample_id.as_str()], seed, cfg, ClickMemory::All, device);
        let mut dices = Vec::new();
        for c in 1..=max {
            let logits = loop_.pass(model, emb.clone(), &[item.mask.as_slice()], true, device);
            loop_.predict_from_low(&logits);
            if clicks.contains(&c) {
                dices.push(loop_.dice(0, &item.mask));
            }
        }
        let row = by_id[item.sample_id.as_str()];
        report.samples.push(SampleDice {
            sample_id: item.sample_id,
            dataset: row.dataset.clone(),
            label: row.label_name.clone(),
            dice: dices,
        });
    }
    let mut groups: BTreeMap<(String, String), Vec<&SampleDice>> = BTreeMap::new();
    for sd in &report.samples {
        groups.entry((sd.dataset.clone(), sd.label.clone())).or_default().push(sd);
        groups.entry((sd.dataset.clone(), "*".into())).or_default().push(sd);
    }
    report.groups = groups
        .into_iter()
        .map(|((dataset, label), v)| GroupDice {
            n: v.len(),
            dice: (0..clicks.len()).map(|i| v.iter().map(|s| s.dice[i]).sum::<f64>() / v.len() as f64).collect(),
            dataset,
            label,
        })
        .collect();
    Ok(report)
}

/// Writes `eval/<name>.csv` and `eval/<name>.json` to the run folder.
pub fn write_report(run: &StoreLocation, name: &str, report: &EvalReport) -> Result<()> {
    let rt = crate::io_runtime::io_runtime()?;
    let store = run.store().as_ref();
    rt.block_on(async {
        let csv = ObjPath::from(s3_shards::run_folder::eval_table_key(name));
        store
            .put(&csv, PutPayload::from(report.to_csv().into_bytes()))
            .await
            .map_err(|e| TrainError::from(s3_shards::ShardError::Store { op: "put", path: csv.clone(), source: e }))?;
        json::put_json(store, &ObjPath::from(s3_shards::run_folder::eval_report_key(name)), report)
            .await
            .map_err(TrainError::from)
    })
}
