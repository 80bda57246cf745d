//! Checkpoints on the run store (DESIGN §8): `checkpoints/step-N/` holds the model
//! and optimiser state (burnpack), the reference-named `weights.safetensors`,
//! `state.json` (where training stands and which run it belongs to) and the plot
//! summary; `checkpoints/latest.json` is written last, in one PUT, so a reader
//! following it only ever finds a complete checkpoint. Files stream to the store
//! (multipart above [`PART_BYTES`]) instead of being held in memory whole; once the
//! pointer has moved, folders beyond `keep_last` are deleted.

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use s3_shards::{StoreLocation, StoreOptions, json, open_store, run_folder};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::model::Sam;
use crate::plots::Curves;
use crate::run_identity::RunIdentity;
use crate::sampler::SamplerState;
use crate::step::Optimisers;
use crate::weights;

/// Where training stands; saved in every checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// Sampler position.
    pub sampler: SamplerState,
}

pub use s3_shards::run_folder::{LATEST, Latest};

/// Files above this size go up as multipart uploads of this part size.
pub const PART_BYTES: usize = 16 << 20;

const OPTIMISERS: [&str; 3] = ["encoder", "prompt", "decoder"];

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Where training stands.
    #[serde(flatten)]
    pub state: TrainState,
    /// Which run this is.
    pub identity: RunIdentity,
}

/// What a checkpoint restores.
pub(crate) struct Restored {
    pub model: Sam,
    pub opt: Optimisers,
    pub state: CheckpointState,
    pub summary: Curves,
    /// Burnpack tensors are read lazily from these files: keep them for the run.
    pub _files: tempfile::TempDir,
}

fn put_err(op: &'static str, key: &ObjPath, e: object_store::Error) -> TrainError {
    TrainError::from(s3_shards::ShardError::Store { op, path: key.clone(), source: e })
}

fn io_err(file: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { file: file.display().to_string(), error: source }
}

pub(crate) fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|source| TrainError::Io { file: "temp dir".into(), error: source })
}

/// Uploads `file` to `key` without holding it in memory: one PUT up to
/// [`PART_BYTES`], a multipart upload (aborted on failure) above.
pub async fn put_file(store: &dyn ObjectStore, key: &str, file: &Path) -> Result<()> {
    let key = ObjPath::from(key);
    let len = std::fs::metadata(file).map_err(io_err(file))?.len();
    if len <= PART_BYTES as u64 {
        let bytes = std::fs::read(file).map_err(io_err(file))?;
        store.put(&key, PutPayload::from(bytes)).await.map_err(|e| put_err("put", &key, e))?;
        return Ok(());
    }
    let upload = store.put_multipart(&key).await.map_err(|e| put_err("put_multipart", &key, e))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut f = std::fs::File::open(file).map_err(io_err(file))?;
    let mut buf = vec![0u8; 1 << 20];
    let failed = loop {
        match f.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                if let Err(e) = w.wait_for_capacity(4).await {
                    break Some(put_err("put_part", &key, e));
                }
                w.write(&buf[..n]);
            }
            Err(e) => break Some(io_err(file)(e)),
        }
    };
    match failed {
        None => w.finish().await.map(|_| ()).map_err(|e| put_err("complete_multipart", &key, e)),
        Some(e) => {
            // An aborted upload leaves no object; the cause is the read or part error.
            let _ = w.abort().await;
            Err(e)
        }
    }
}

/// Downloads `key` to `file`, streaming.
pub async fn get_file(store: &dyn ObjectStore, key: &str, file: &Path) -> Result<()> {
    use std::io::Write;
    let path = ObjPath::from(key);
    let got = store.get(&path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => TrainError::from(s3_shards::ShardError::NotFound(key.to_string())),
        e => put_err("get", &path, e),
    })?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).map_err(io_err(file))?);
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.try_next().await.map_err(|e| put_err("get", &path, e))? {
        out.write_all(&chunk).map_err(io_err(file))?;
    }
    out.flush().map_err(io_err(file))
}

/// A weights file named by a path or any store URL (`s3://…/weights.safetensors`),
/// as a local file: local paths as they are, remote objects downloaded into `tmp`.
pub fn local_copy(url: &str, options: &StoreOptions, tmp: &Path) -> Result<PathBuf> {
    if let Some(p) = s3_shards::store::local_path(url) {
        return Ok(p);
    }
    // The store is the URL's scheme and authority (an S3 bucket, a memory store's
    // name); the rest is the key.
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, key) = rest
        .split_once('/')
        .filter(|(a, k)| !a.is_empty() && !k.is_empty() && !k.ends_with('/'))
        .ok_or_else(|| TrainError::Url { url: s3_shards::store::redact(url), reason: "not a file URL" })?;
    let store = open_store(&format!("{scheme}://{authority}"), options)?;
    let name = key.rsplit('/').next().unwrap_or(key);
    let file = tmp.join(name);
    let rt = s3_shards::io_runtime::io_runtime()?;
    rt.block_on(get_file(store.store().as_ref(), key, &file))?;
    Ok(file)
}

/// The run's latest checkpoint pointer, if it has one (any other failure is an error:
/// a run that cannot see its checkpoint must not start over).
pub async fn read_latest(store: &dyn ObjectStore) -> Result<Option<Latest>> {
    match json::get_json::<Latest>(store, &ObjPath::from(LATEST)).await {
        Ok(l) => Ok(Some(l)),
        Err(s3_shards::ShardError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the checkpoint pointer (a run started over).
pub async fn forget_latest(store: &dyn ObjectStore) -> Result<()> {
    let key = ObjPath::from(LATEST);
    match store.delete(&key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(put_err("delete", &key, e)),
    }
}

/// Writes `checkpoints/step-N/`, then the pointer, then prunes; returns the folder.
pub(crate) fn save(
    rt: &tokio::runtime::Runtime,
    run: &StoreLocation,
    model: &Sam,
    opt: &Optimisers,
    state: &CheckpointState,
    summary: &Curves,
    keep_last: usize,
) -> Result<String> {
    let step = state.state.step;
    let dir = format!("checkpoints/step-{step:08}");
    let tmp = temp_dir()?;
    let store = run.store().as_ref();
    let record_err = |e: burn::store::RecordError| TrainError::Weights { file: dir.clone(), reason: e.to_string() };
    model.clone().save_file(tmp.path().join("model")).map_err(record_err)?;
    weights::export_safetensors(&model.clone().valid(), &tmp.path().join(run_folder::WEIGHTS_FILE))?;
    for (name, o) in OPTIMISERS.iter().zip(opt.parts()) {
        o.save(tmp.path().join(format!("optim-{name}"))).map_err(record_err)?;
    }
    rt.block_on(async {
        put_file(store, &format!("{dir}/model.bpk"), &tmp.path().join("model.bpk")).await?;
        put_file(store, &run_folder::weights_key(&dir), &tmp.path().join(run_folder::WEIGHTS_FILE)).await?;
        for name in OPTIMISERS {
            put_file(store, &format!("{dir}/optim-{name}.bpk"), &tmp.path().join(format!("optim-{name}.bpk"))).await?;
        }
        json::put_json(store, &ObjPath::from(format!("{dir}/summary.json")), summary).await?;
        json::put_json(store, &ObjPath::from(run_folder::state_key(&dir)), state).await?;
        // A plot that fails to render is logged, never a reason to lose a checkpoint.
        match crate::plots::render_png(summary, &format!("run at step {step}")) {
            Ok(png) => {
                if let Err(e) = store.put(&ObjPath::from("metrics.png"), PutPayload::from(png)).await {
                    tracing::warn!("writing metrics.png: {e}");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        json::put_json(store, &ObjPath::from(LATEST), &Latest { step, dir: dir.clone() }).await?;
        // The checkpoint is complete and pointed to: a store that refuses deletes
        // costs space, never the checkpoint.
        if keep_last > 0
            && let Err(e) = prune(store, step, keep_last).await
        {
            tracing::warn!("pruning old checkpoints: {e}");
        }
        Ok::<(), TrainError>(())
    })?;
    Ok(dir)
}

/// Steps of the `checkpoints/step-N/` folders on the store, ascending.
pub async fn checkpoint_steps(store: &dyn ObjectStore) -> Result<Vec<u64>> {
    let prefix = ObjPath::from("checkpoints");
    let list = store.list_with_delimiter(Some(&prefix)).await.map_err(|e| put_err("list", &prefix, e))?;
    let mut steps: Vec<u64> =
        list.common_prefixes.iter().filter_map(|p| p.filename()?.strip_prefix("step-")?.parse().ok()).collect();
    steps.sort_unstable();
    Ok(steps)
}

/// Deletes checkpoint folders older than the newest `keep` up to `newest`; folders
/// past `newest` (an attempt that died before moving the pointer) are left for the
/// next save to overwrite.
async fn prune(store: &dyn ObjectStore, newest: u64, keep: usize) -> Result<()> {
    let steps: Vec<u64> = checkpoint_steps(store).await?.into_iter().filter(|&s| s <= newest).collect();
    for &s in steps.iter().take(steps.len().saturating_sub(keep)) {
        let prefix = ObjPath::from(format!("checkpoints/step-{s:08}"));
        let files: Vec<object_store::ObjectMeta> =
            store.list(Some(&prefix)).try_collect().await.map_err(|e| put_err("list", &prefix, e))?;
        for f in files {
            store.delete(&f.location).await.map_err(|e| put_err("delete", &f.location, e))?;
        }
    }
    Ok(())
}

/// Reads a checkpoint folder back into `model` and `opt`, after `verify` accepted
/// its `state.json` (before any large file is fetched).
pub(crate) fn load(
    rt: &tokio::runtime::Runtime,
    run: &StoreLocation,
    dir: &str,
    model: Sam,
    opt: Optimisers,
    verify: impl FnOnce(&CheckpointState) -> Result<()>,
) -> Result<Restored> {
    let tmp = temp_dir()?;
    let store = run.store().as_ref();
    let state: CheckpointState = rt.block_on(json::get_json(store, &ObjPath::from(run_folder::state_key(&dir))))?;
    verify(&state)?;
    let summary: Curves = rt.block_on(async {
        get_file(store, &format!("{dir}/model.bpk"), &tmp.path().join("model.bpk")).await?;
        for name in OPTIMISERS {
            get_file(store, &format!("{dir}/optim-{name}.bpk"), &tmp.path().join(format!("optim-{name}.bpk"))).await?;
        }
        Ok::<_, TrainError>(json::get_json(store, &ObjPath::from(format!("{dir}/summary.json"))).await?)
    })?;
    let err = |e: burn::store::RecordError| TrainError::Weights { file: dir.to_string(), reason: e.to_string() };
    let model = model.try_load_file(tmp.path().join("model.bpk")).map_err(err)?;
    let [e, p, d] = opt.into_parts();
    let load = |o: burn::optim::ModuleOptimizer, name: &str| o.load(tmp.path().join(format!("optim-{name}.bpk")));
    let opt = Optimisers::from_parts([
        load(e, "encoder").map_err(err)?,
        load(p, "prompt").map_err(err)?,
        load(d, "decoder").map_err(err)?,
    ]);
    Ok(Restored { model, opt, state, summary, _files: tmp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_stream_as_multipart_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.bin");
        let data: Vec<u8> = (0..(PART_BYTES * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let store = object_store::memory::InMemory::new();
        let rt = s3_shards::io_runtime::io_runtime().unwrap();
        rt.block_on(put_file(&store, "x/big.bin", &file)).unwrap();
        let back = dir.path().join("back.bin");
        rt.block_on(get_file(&store, "x/big.bin", &back)).unwrap();
        assert_eq!(std::fs::read(back).unwrap(), data);
    }

    #[test]
    fn a_weights_url_on_any_store_becomes_a_local_file() {
        let dir = tempfile::tempdir().unwrap();
        let loc = open_store("memory://ckpt-url-test", &StoreOptions::default()).unwrap();
        assert!(local_copy("memory://ckpt-url-test/", &StoreOptions::default(), dir.path()).is_err());
        let rt = s3_shards::io_runtime::io_runtime().unwrap();
        rt.block_on(loc.store().put(&ObjPath::from("run/step-1/w.safetensors"), PutPayload::from(vec![1u8, 2, 3])))
            .unwrap();
        let f = local_copy("memory://ckpt-url-test/run/step-1/w.safetensors", &StoreOptions::default(), dir.path());
        let f = f.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(f).unwrap(), vec![1, 2, 3]);
        assert_eq!(local_copy("/a/b.pth", &StoreOptions::default(), dir.path()).unwrap(), PathBuf::from("/a/b.pth"));
    }

    /// The launcher reads `state.json` through `s3_shards::run_folder::StateView`: what
    /// the trainer writes must parse as it, with the same digest text and epoch.
    #[test]
    fn state_json_is_what_the_launcher_reads() {
        let state = CheckpointState {
            state: TrainState { step: 12, sampler: SamplerState { epoch: 3, consumed: 5, nodes: 0 } },
            identity: RunIdentity { config_digest: 0xabc, samples_xxh3: 7, world: 2 },
        };
        let text = serde_json::to_string(&state).unwrap();
        let view: run_folder::StateView = serde_json::from_str(&text).unwrap();
        assert_eq!(view.identity.config_digest, "0000000000000abc");
        assert_eq!(view.sampler.epoch, 3);
    }
}
