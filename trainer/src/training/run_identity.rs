//! What a run is, so that a resume lands only on the run it belongs to: a digest
//! of the resolved training config, the xxh3 of the samples table it planned from
//! (as `index.json` records it), and the world size. `state.json` of every
//! checkpoint carries it; `config.json` in the run folder holds the resolved
//! config itself, for the diff in the refusal and for `eval`.

use std::collections::BTreeSet;

use object_store::ObjectStore;
use s3_shards::ShardIndex;
use s3_shards::samples_table::{self, SampleRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::stage::StageConfig;

/// Stage fields that change how long or how often a run does things, not what it
/// learns: a resume may change them freely.
/// `data` is how this machine reads (the cache), not what is read.
const BUDGET_FIELDS: [&str; 6] = ["max_steps", "max_minutes", "checkpoint_every", "keep_last", "launch", "data"];

/// A run's identity, recorded in each checkpoint's `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// xxh3 of the canonical JSON of [`training_config`].
    #[serde(with = "s3_shards::index::hex_u64")]
    pub config_digest: u64,
    /// xxh3 of the samples table the epochs were planned from.
    #[serde(with = "s3_shards::index::hex_u64")]
    pub samples_xxh3: u64,
    /// Number of ranks that wrote the checkpoint.
    pub world: usize,
}

/// The resolved config that defines what a run learns: the stage without its
/// budget fields, the model, and the datasets the selection chose (rather than the
/// catalogue's path, which differs between machines).
pub fn training_config(stage: &StageConfig, model: &SamConfig, datasets: &BTreeSet<String>) -> Value {
    let saved = serde_json::json!({ "stage": stage, "model": model, "datasets": datasets });
    training_config_of(&saved)
}

/// xxh3 of `v` as compact JSON with sorted keys (serde_json's map is ordered).
pub fn digest(v: &Value) -> u64 {
    xxh3_64(v.to_string().as_bytes())
}

/// `path: old → new` for every leaf that differs.
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} → {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

/// Refuses to resume `saved` as `now`, saying what differs; a new world size is
/// allowed (the sampler keeps the global order) and logged.
pub fn check_resume(
    saved: &RunIdentity,
    saved_config: Option<&Value>,
    now: &RunIdentity,
    now_config: &Value,
) -> Result<()> {
    if saved.config_digest != now.config_digest {
        let what = match saved_config {
            Some(old) => {
                let d = differences(&training_config_of(old), now_config);
                if d.is_empty() { "the config digest differs".to_string() } else { d.join("; ") }
            }
            None => format!("config digest {:016x} → {:016x}", saved.config_digest, now.config_digest),
        };
        return Err(TrainError::Resume(format!(
            "this run folder holds a run with another training config ({what}); resume it with the same stage, \
             start over with --no-resume, or use a new run folder"
        )));
    }
    if saved.samples_xxh3 != now.samples_xxh3 {
        return Err(TrainError::Resume(format!(
            "the data changed since this run planned its epochs (samples table xxh3 {:016x} → {:016x}): resuming \
             would repeat or skip samples; point --data at the store it was started on, or use a new run folder",
            saved.samples_xxh3, now.samples_xxh3
        )));
    }
    if saved.world != now.world {
        tracing::warn!(
            from = saved.world,
            to = now.world,
            "resuming on another world size: the global sample order is kept, per-rank shares change"
        );
    }
    Ok(())
}

/// The training part of a saved `config.json` (which also records data and world).
fn training_config_of(saved: &Value) -> Value {
    let mut stage = saved.get("stage").cloned().unwrap_or(Value::Null);
    if let Value::Object(m) = &mut stage {
        for k in BUDGET_FIELDS {
            m.remove(k);
        }
        if let Some(Value::Object(d)) = m.get_mut("datasets") {
            d.remove("catalog");
        }
    }
    let get = |k: &str| saved.get(k).cloned().unwrap_or(Value::Null);
    serde_json::json!({ "stage": stage, "model": get("model"), "datasets": get("datasets") })
}

/// The samples table of a published store, read through `index.json` and checked
/// against the hash the index records; returns the rows and that hash.
pub async fn samples_from_index(store: &dyn ObjectStore) -> Result<(Vec<SampleRow>, u64)> {
    let index = ShardIndex::load(store).await?;
    let file = index.samples.ok_or_else(|| TrainError::Data {
        store: "index.json".into(),
        reason: "lists no samples table (published by an older s3-ingest?)".into(),
    })?;
    let path = object_store::path::Path::from(file.path.as_str());
    let bytes = s3_shards::json::get_bytes(store, &path).await?;
    let got = xxh3_64(&bytes);
    if got != file.xxh3 {
        return Err(TrainError::Data {
            store: file.path.clone(),
            reason: format!(
                "xxh3 {got:016x}, index.json says {:016x} (changed since publication, or a partial copy)",
                file.xxh3
            ),
        });
    }
    let rows = samples_table::decode(bytes, &path)?;
    Ok((rows, got))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_changes_keep_the_digest_and_training_changes_are_named() {
        let st: StageConfig = toml::from_str("name = \"t\"\nepochs = 2\npreset = \"small\"\n").unwrap();
        let model = SamConfig::small();
        let ds: BTreeSet<String> = ["A".to_string()].into();
        let base = training_config(&st, &model, &ds);
        let longer = StageConfig { max_steps: Some(9), checkpoint_every: 3, ..st.clone() };
        assert_eq!(digest(&base), digest(&training_config(&longer, &model, &ds)));
        let cached: StageConfig = toml::from_str(
            "name = \"t\"\nepochs = 2\npreset = \"small\"\n[data]\ncache_dir = \"/nvme/c\"\ncache_limit = \"2T\"\nnode_order = false\n",
        )
        .unwrap();
        assert_eq!(cached.data.cache("t").unwrap().map(|c| c.limit), Some(2 << 40));
        assert_eq!(digest(&base), digest(&training_config(&cached, &model, &ds)), "[data] is how, not what");
        let other = StageConfig { lr: 1e-2, ..st.clone() };
        let now = training_config(&other, &model, &ds);
        let id = |c: &Value| RunIdentity { config_digest: digest(c), samples_xxh3: 7, world: 1 };
        let saved = serde_json::json!({ "stage": st, "model": model, "datasets": ds, "data": "x" });
        let e = check_resume(&id(&base), Some(&saved), &id(&now), &now).unwrap_err().to_string();
        assert!(e.contains("stage.lr: 0.0008 → 0.01"), "{e}");
        let moved = RunIdentity { samples_xxh3: 8, ..id(&base) };
        let e = check_resume(&id(&base), None, &moved, &base).unwrap_err().to_string();
        assert!(e.contains("data changed"), "{e}");
        let wider = RunIdentity { world: 4, ..id(&base) };
        check_resume(&id(&base), None, &wider, &base).expect("a world-size change is allowed");
    }
}
