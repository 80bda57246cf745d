//! A run's metrics on its store, appended rather than rewritten: each checkpoint
//! adds one segment `metrics/step-NNNNNNNN.csv` with the steps since the previous
//! one (`step,epoch,loss,dice,lr,samples_per_s`), so a checkpoint's cost does not
//! grow with the run. The plots are drawn from a bounded summary
//! ([`Curves`] of at most [`SUMMARY_POINTS`] points) kept inside each checkpoint.
//!
//! `tail -q -n +2 metrics/*.csv` (after one header) or [`read_all`] gives the whole
//! history.

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::plots::Curves;

/// Points the plot summary keeps; beyond that neighbours are averaged in pairs.
pub const SUMMARY_POINTS: usize = 2048;

/// Folder of the segments.
pub const METRICS_DIR: &str = s3_shards::run_folder::METRICS_DIR;

/// One optimiser step's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step number (1-based after the step).
    pub step: u64,
    /// Epoch.
    pub epoch: u64,
    /// Mean loss per sample (summed over passes).
    pub loss: f64,
    /// Mean Dice of the last pass.
    pub dice: f64,
    /// Encoder learning rate.
    pub lr: f64,
    /// Samples per second over the step.
    pub samples_per_s: f64,
}

fn store_err(op: &'static str, path: &ObjPath, e: object_store::Error) -> TrainError {
    TrainError::from(s3_shards::ShardError::Store { op, path: path.clone(), source: e })
}

fn segment_key(last_step: u64) -> ObjPath {
    ObjPath::from(format!("{METRICS_DIR}/step-{last_step:08}.csv"))
}

fn segment_step(key: &ObjPath) -> Option<u64> {
    key.filename()?.strip_prefix("step-")?.strip_suffix(".csv")?.parse().ok()
}

/// The steps not yet written and the plot summary.
#[derive(Debug, Default)]
pub struct MetricsLog {
    pending: Vec<StepMetrics>,
    summary: Curves,
}

impl MetricsLog {
    /// Continues from a checkpoint's summary.
    pub fn resume(summary: Curves) -> MetricsLog {
        MetricsLog { pending: Vec::new(), summary }
    }

    /// Records a step.
    pub fn push(&mut self, m: StepMetrics) {
        self.summary.push_bounded(m.step as f64, m.loss, m.dice, m.lr, m.samples_per_s, SUMMARY_POINTS);
        self.pending.push(m);
    }

    /// The bounded summary (what the plots and the checkpoint keep).
    pub fn summary(&self) -> &Curves {
        &self.summary
    }

    /// Writes the pending steps as the segment ending at `step` (before the
    /// checkpoint pointer moves: a crash in between leaves a segment past the
    /// checkpoint, which [`drop_segments_after`] removes at resume).
    pub async fn flush(&mut self, store: &dyn ObjectStore, step: u64) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        for m in &self.pending {
            w.serialize(m)
                .map_err(|e| TrainError::Metrics { what: format!("row of step {}", m.step), source: Box::new(e) })?;
        }
        let bytes = w.into_inner().map_err(|e| TrainError::Metrics {
            what: format!("segment of step {step}"),
            source: Box::new(e.into_error()),
        })?;
        let key = segment_key(step);
        store.put(&key, PutPayload::from(bytes)).await.map_err(|e| store_err("put", &key, e))?;
        self.pending.clear();
        Ok(())
    }
}

async fn segments(store: &dyn ObjectStore) -> Result<Vec<(u64, ObjPath)>> {
    let prefix = ObjPath::from(METRICS_DIR);
    let metas: Vec<object_store::ObjectMeta> =
        store.list(Some(&prefix)).try_collect().await.map_err(|e| store_err("list", &prefix, e))?;
    let mut out: Vec<(u64, ObjPath)> =
        metas.into_iter().filter_map(|m| segment_step(&m.location).map(|s| (s, m.location))).collect();
    out.sort();
    Ok(out)
}

/// Removes segments of steps after `step` (written by an attempt that died before
/// its checkpoint pointer moved): the resumed run writes those steps again.
pub async fn drop_segments_after(store: &dyn ObjectStore, step: u64) -> Result<()> {
    for (s, key) in segments(store).await? {
        if s > step {
            store.delete(&key).await.map_err(|e| store_err("delete", &key, e))?;
        }
    }
    Ok(())
}

/// Every step recorded in the run's segments, in order.
pub async fn read_all(store: &dyn ObjectStore) -> Result<Vec<StepMetrics>> {
    let mut out = Vec::new();
    for (_, key) in segments(store).await? {
        let bytes = s3_shards::json::get_bytes(store, &key).await?;
        let mut r = csv::Reader::from_reader(bytes.as_ref());
        for row in r.deserialize::<StepMetrics>() {
            out.push(row.map_err(|e| TrainError::Parse { file: key.to_string(), source: Box::new(e) })?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(step: u64) -> StepMetrics {
        StepMetrics { step, epoch: 0, loss: 1.0 / step as f64, dice: 0.5, lr: 1e-3, samples_per_s: 2.0 }
    }

    #[test]
    fn segments_append_and_a_resume_drops_what_came_after_its_checkpoint() {
        let store = object_store::memory::InMemory::new();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut log = MetricsLog::default();
            for s in 1..=3 {
                log.push(m(s));
            }
            log.flush(&store, 3).await.unwrap();
            for s in 4..=5 {
                log.push(m(s));
            }
            log.flush(&store, 5).await.unwrap();
            let all = read_all(&store).await.unwrap();
            assert_eq!(all, (1..=5).map(m).collect::<Vec<_>>(), "whole history, each step once");
            drop_segments_after(&store, 3).await.unwrap();
            assert_eq!(read_all(&store).await.unwrap().len(), 3);
        });
    }

    #[test]
    fn the_plot_summary_stays_bounded() {
        let mut log = MetricsLog::default();
        for s in 1..=(SUMMARY_POINTS as u64 * 5) {
            log.push(m(s));
            log.pending.clear();
        }
        let c = log.summary();
        assert!(c.step.len() <= SUMMARY_POINTS && c.step.len() >= SUMMARY_POINTS / 2, "{}", c.step.len());
        assert!(c.step.windows(2).all(|w| w[0] < w[1]), "steps stay ordered");
        assert!(*c.step.last().unwrap() > (SUMMARY_POINTS * 4) as f64, "covers the whole run");
    }
}
