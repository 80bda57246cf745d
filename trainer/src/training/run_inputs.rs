//! What a run starts from: its model config, the rows it reads, and its initial
//! weights (seeded, or a run's latest checkpoint); also what `eval` and `predict`
//! read back from a finished run.

use std::collections::BTreeSet;

use burn::prelude::*;
use object_store::path::Path as ObjPath;
use s3_shards::samples_table::SampleRow;
use s3_shards::{Split, StoreLocation, StoreOptions, json, open_store};

use crate::checkpoint;
use crate::config::SamConfig;
use crate::error::{Result, TrainError};
use crate::model::Sam;
use crate::run_identity;
use crate::stage::StageConfig;
use crate::weights::{self, Strictness};

/// Resolves the model config of a stage.
pub fn model_config(stage: &StageConfig) -> Result<SamConfig> {
    let cfg = SamConfig::preset(&stage.preset).ok_or_else(|| TrainError::Stage {
        stage: stage.name.clone(),
        reason: format!("unknown preset {:?}", stage.preset),
    })?;
    if cfg.img_size != s3_shards::SIDE {
        return Err(TrainError::Stage {
            stage: stage.name.clone(),
            reason: format!(
                "preset {:?} takes {}³ inputs; the shards hold {}³ crops (use vit_b_ori or small)",
                stage.preset,
                cfg.img_size,
                s3_shards::SIDE
            ),
        });
    }
    Ok(SamConfig { attention: stage.attention, precision: stage.precision, ..cfg })
}

/// The `split` rows of the datasets `stage` selects, read through `index.json`;
/// with the chosen dataset names and the samples table's xxh3.
pub fn select_rows(
    data: &StoreLocation,
    stage: &StageConfig,
    split: Split,
    rt: &tokio::runtime::Runtime,
) -> Result<(Vec<SampleRow>, BTreeSet<String>, u64)> {
    let (rows, xxh3) = rt.block_on(run_identity::samples_from_index(data.store().as_ref()))?;
    let available: BTreeSet<String> = rows.iter().map(|r| r.dataset.clone()).collect();
    let chosen = stage.select_datasets(&available)?;
    let rows = rows.into_iter().filter(|r| r.split == split && chosen.contains(&r.dataset)).collect();
    Ok((rows, chosen, xxh3))
}

/// xxh3 of every parameter's f32 values in visiting order.
pub fn weights_digest(model: &Sam) -> u64 {
    struct Digest(xxhash_rust::xxh3::Xxh3);
    impl burn::module::ModuleVisitor for Digest {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let v = param.val().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 after convert");
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.0.update(&bytes);
        }
    }
    let mut d = Digest(xxhash_rust::xxh3::Xxh3::new());
    model.visit(&mut d);
    d.0.digest()
}

/// A model initialised from `seed`. The device RNG is process-wide and burn draws a
/// parameter's initial values lazily (at its first use), so seeding and every draw
/// happen here under one lock: concurrent runs in a process cannot interleave draws.
pub fn seeded_model(cfg: &SamConfig, device: &Device, seed: u64) -> Sam {
    struct Materialise;
    impl burn::module::ModuleVisitor for Materialise {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    device.seed(seed);
    let model = Sam::new(cfg, device);
    model.visit(&mut Materialise);
    model
}

/// Loads the weights of the run's latest checkpoint into a fresh model on `device`.
pub fn load_latest_weights(
    run_url: &str,
    options: &StoreOptions,
    cfg: &SamConfig,
    device: &Device,
) -> Result<(Sam, u64)> {
    let rt = s3_shards::io_runtime::io_runtime()?;
    let run = open_store(run_url, options)?;
    let latest = rt
        .block_on(checkpoint::read_latest(run.store().as_ref()))?
        .ok_or_else(|| TrainError::NoCheckpoint { run: run.to_string() })?;
    let tmp = checkpoint::temp_dir()?;
    let file = tmp.path().join(s3_shards::run_folder::WEIGHTS_FILE);
    rt.block_on(checkpoint::get_file(run.store().as_ref(), &s3_shards::run_folder::weights_key(&latest.dir), &file))?;
    let mut model = Sam::new(cfg, device);
    weights::load(&mut model, &file, Strictness::Strict)?;
    Ok((model, latest.step))
}

/// The stage a run was trained with, from its `config.json` (for `eval` and resume),
/// its selection pinned to the datasets it chose then: the catalogue it resolved
/// them from may have been a copy on a node that is gone, or may have changed.
pub fn load_run_stage(run_url: &str, options: &StoreOptions) -> Result<StageConfig> {
    let rt = s3_shards::io_runtime::io_runtime()?;
    let run = open_store(run_url, options)?;
    let v: serde_json::Value = rt.block_on(json::get_json(run.store().as_ref(), &ObjPath::from("config.json")))?;
    let file = format!("{run}/config.json");
    let stage =
        v.get("stage").cloned().ok_or_else(|| TrainError::Parse { file: file.clone(), source: "no stage".into() })?;
    let mut stage: StageConfig =
        serde_json::from_value(stage).map_err(|e| TrainError::Parse { file: file.clone(), source: Box::new(e) })?;
    if let Some(chosen) = v.get("datasets").and_then(|d| d.as_array()) {
        let names: Option<Vec<String>> = chosen.iter().map(|d| d.as_str().map(str::to_string)).collect();
        let names =
            names.ok_or_else(|| TrainError::Parse { file, source: "datasets is not a list of names".into() })?;
        stage.datasets =
            crate::stage::Selection { select: "none".into(), catalog: None, include: names, exclude: Vec::new() };
    }
    Ok(stage)
}

/// The store a run trained on, as its `config.json` records it.
pub fn load_run_data(run_url: &str, options: &StoreOptions) -> Result<Option<String>> {
    let rt = s3_shards::io_runtime::io_runtime()?;
    let run = open_store(run_url, options)?;
    let v: serde_json::Value = rt.block_on(json::get_json(run.store().as_ref(), &ObjPath::from("config.json")))?;
    Ok(v.get("data").and_then(|d| d.as_str()).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preset_that_does_not_take_shard_crops_is_refused() {
        let stage: StageConfig = toml::from_str("name = \"t\"\nepochs = 1\npreset = \"tiny\"\n").unwrap();
        let e = model_config(&stage).unwrap_err();
        assert!(e.to_string().contains("64³ inputs"), "{e}");
        let stage = StageConfig { preset: "small".into(), ..stage };
        assert_eq!(model_config(&stage).unwrap().low_res(), 32);
    }
}
