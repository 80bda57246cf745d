//! Evaluation with the reference inference protocol: the first click uniform in the
//! mask, each later click uniform in the error region, all clicks so far passed
//! together with the previous low-res logits; Dice (sigmoid > 0.5) after 1/3/5/10 clicks.

use std::collections::BTreeMap;

use burn::prelude::*;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload};
pub use s3_shards::eval_report::{DiceGroup, DiceRow, EvalReport, SourceClass};
use s3_shards::samples_table::SampleRow;
use s3_shards::{StoreLocation, json};

use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::loader::{Loaded, Loader, LoaderConfig};
use crate::model::Sam;
use crate::sampler::SampleRef;
use crate::stage::ClickMemory;
use crate::step::ClickLoop;

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
    let mut report = EvalReport::new("shards", clicks);
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
        report.samples.push(DiceRow {
            sample_id: item.sample_id,
            dataset: row.dataset.clone(),
            label: row.label_name.clone(),
            source: None,
            dice: dices,
        });
    }
    report.group();
    Ok(report)
}

/// Writes `eval/<name>.json`, `eval/<name>.csv` (per sample, or per case and class),
/// `eval/<name>-groups.csv` and `eval/<name>.md` (the groups as tables) to the run
/// folder, for either protocol.
pub fn write_report(run: &StoreLocation, name: &str, report: &EvalReport) -> Result<()> {
    use s3_shards::run_folder::{eval_groups_key, eval_markdown_key, eval_report_key, eval_table_key};
    let rt = s3_shards::io_runtime::io_runtime()?;
    let store = run.store().as_ref();
    rt.block_on(async {
        let tables = [
            (eval_table_key(name), report.rows_csv()),
            (eval_groups_key(name), report.groups_csv()),
            (eval_markdown_key(name), report.markdown()),
        ];
        for (key, text) in tables {
            let key = ObjPath::from(key);
            store.put(&key, PutPayload::from(text.into_bytes())).await.map_err(|e| {
                TrainError::from(s3_shards::ShardError::Store { op: "put", path: key.clone(), source: e })
            })?;
        }
        json::put_json(store, &ObjPath::from(eval_report_key(name)), report).await.map_err(TrainError::from)
    })
}
