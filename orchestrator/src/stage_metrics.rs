//! What `status` shows of a stage's progress, read from what the jobs wrote to the
//! run folder (the orchestrator does not link the trainer): the last training step's
//! loss and Dice from `metrics/step-N.csv`, and Dice at each click count from
//! `eval/val.json`.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use s3_shards::eval_report::EvalReport;
use s3_shards::json;

use crate::error::{OrchError, Result};

fn store_err(op: &'static str, path: &ObjPath, source: object_store::Error) -> OrchError {
    s3_shards::ShardError::Store { op, path: path.clone(), source }.into()
}

/// `loss` and `dice` of the newest step in the stage's metric segments (empty when
/// there are none yet).
pub async fn last_step(stage: &dyn ObjectStore) -> Result<BTreeMap<String, f64>> {
    let prefix = ObjPath::from(s3_shards::run_folder::METRICS_DIR);
    let metas: Vec<object_store::ObjectMeta> =
        stage.list(Some(&prefix)).try_collect().await.map_err(|e| store_err("list", &prefix, e))?;
    // Segment names carry their last step zero-padded: the greatest name is the newest.
    let Some(newest) = metas.iter().filter(|m| m.location.as_ref().ends_with(".csv")).max_by_key(|m| &m.location)
    else {
        return Ok(BTreeMap::new());
    };
    let bytes = stage
        .get(&newest.location)
        .await
        .map_err(|e| store_err("get", &newest.location, e))?
        .bytes()
        .await
        .map_err(|e| store_err("get", &newest.location, e))?;
    let mut reader = csv::Reader::from_reader(bytes.as_ref());
    let bad = |source: csv::Error| OrchError::Metrics { segment: newest.location.to_string(), source };
    let header = reader.headers().map_err(bad)?.clone();
    let mut out = BTreeMap::new();
    if let Some(row) = reader.records().last() {
        let row = row.map_err(bad)?;
        for (name, value) in header.iter().zip(row.iter()) {
            if matches!(name, "loss" | "dice")
                && let Ok(v) = value.parse::<f64>()
            {
                out.insert(name.to_string(), v);
            }
        }
    }
    Ok(out)
}

/// Mean Dice over the evaluated samples of `eval/<report>.json` at each click count:
/// `dice@1`, `dice@3`, ...
pub async fn eval_dice(stage: &dyn ObjectStore, report: &str) -> Result<BTreeMap<String, f64>> {
    let report: EvalReport =
        json::get_json(stage, &ObjPath::from(s3_shards::run_folder::eval_report_key(report))).await?;
    Ok(report.means())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn the_newest_segment_last_row_and_the_eval_means() {
        let s = InMemory::new();
        assert!(last_step(&s).await.unwrap().is_empty());
        let put = |k: &str, v: &str| {
            let (k, v) = (ObjPath::from(k), PutPayload::from(v.to_string().into_bytes()));
            let s = &s;
            async move { s.put(&k, v).await.unwrap() }
        };
        put("metrics/step-00000002.csv", "step,epoch,loss,dice\n1,0,0.9,0.1\n2,0,0.8,0.2\n").await;
        put("metrics/step-00000010.csv", "step,epoch,loss,dice\n9,1,0.5,0.5\n10,1,0.4,0.6\n").await;
        let m = last_step(&s).await.unwrap();
        assert_eq!((m["loss"], m["dice"]), (0.4, 0.6));
        let mut report = EvalReport::new("shards", &[1, 5]);
        for dice in [vec![0.2, 0.6], vec![0.4, 0.8]] {
            let sample_id = "D/t/c/1".to_string();
            let (dataset, label) = ("D".to_string(), "liver".to_string());
            report.samples.push(s3_shards::eval_report::DiceRow { sample_id, dataset, label, source: None, dice });
        }
        put("eval/val.json", &serde_json::to_string(&report).unwrap()).await;
        let d = eval_dice(&s, "val").await.unwrap();
        assert!((d["dice@1"] - 0.3).abs() < 1e-12 && (d["dice@5"] - 0.7).abs() < 1e-12, "{d:?}");
    }
}
