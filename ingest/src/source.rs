//! Dataset sources: any store URL or local path, listed through `object_store`.
//! Local files are read in place; remote ones are fetched into a temporary area that
//! holds only the cases being processed.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;
use s3_shards::{StoreLocation, StoreOptions, open_store};

use crate::error::{IngestError, Result};

/// An opened source root.
#[derive(Clone, Debug)]
pub struct Source {
    loc: StoreLocation,
    local_root: Option<PathBuf>,
    /// The store error of a failed listing or read: an outage ends the run, where a
    /// source that is simply not usable (no such layout, nothing matches) skips the task.
    outage: std::sync::Arc<std::sync::Mutex<Option<(String, object_store::Error)>>>,
}

/// A file ready to be read: local in place, or a fetched copy deleted on drop.
pub struct LocalFile {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl LocalFile {
    /// Where to read it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Source {
    /// Opens `url` (already `${VAR}`-expanded). A local directory must exist.
    pub fn open(url: &str, options: &StoreOptions) -> std::result::Result<Source, String> {
        let local = match s3_shards::store::local_path(url) {
            Some(p) => Some(std::path::absolute(&p).map_err(|e| e.to_string())?),
            None => None,
        };
        if let Some(dir) = &local {
            if !dir.is_dir() {
                return Err(format!("source directory {} does not exist", dir.display()));
            }
        }
        let loc = open_store(url, options).map_err(|e| e.to_string())?;
        Ok(Source { loc, local_root: local, outage: Default::default() })
    }

    /// The source URL.
    pub fn url(&self) -> &str {
        self.loc.url()
    }

    /// Every key under `prefix` (recursive), sorted.
    pub async fn list(&self, prefix: &str) -> std::result::Result<Vec<String>, String> {
        let p = (!prefix.is_empty()).then(|| ObjPath::from(prefix));
        let mut keys: Vec<String> = self
            .loc
            .store()
            .list(p.as_ref())
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .map_err(|e| self.record_outage(format!("{}/{prefix}", self.url()), e))?;
        keys.sort();
        Ok(keys)
    }

    /// Whole small object as text (e.g. `dataset.json`); None when absent.
    pub async fn read_text(&self, key: &str) -> std::result::Result<Option<String>, String> {
        match self.loc.store().get(&ObjPath::from(key)).await {
            Ok(r) => {
                let b = r.bytes().await.map_err(|e| e.to_string())?;
                Ok(Some(String::from_utf8_lossy(&b).into_owned()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.record_outage(format!("{}/{key}", self.url()), e)),
        }
    }

    /// Keeps `e` as the source's outage; returns the message for the listing error.
    fn record_outage(&self, what: String, e: object_store::Error) -> String {
        let message = format!("reading {what}: {e}");
        if !matches!(e, object_store::Error::NotFound { .. }) {
            *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = Some((what, e));
        }
        message
    }

    /// The store failure behind a failed listing, if it was one.
    pub fn take_outage(&self) -> Option<IngestError> {
        let taken = self.outage.lock().unwrap_or_else(|p| p.into_inner()).take();
        taken.map(|(key, source)| IngestError::SourceUnavailable { key, source: Box::new(source) })
    }

    /// Makes `key` readable as a local file (fetching it under `tmp` for remote
    /// sources). A key ending in `/` is a folder: every file directly inside it comes
    /// along. A header that names data files beside it (`.mhd`, `.nhdr`) brings them.
    pub async fn fetch(&self, key: &str, tmp: &Path) -> Result<LocalFile> {
        if let Some(root) = &self.local_root {
            return Ok(LocalFile { path: root.join(key.trim_end_matches('/')), _temp: None });
        }
        let io = |e: std::io::Error| IngestError::Io { file: key.into(), error: e };
        let dir = tempfile::Builder::new().prefix("fetch-").tempdir_in(tmp).map_err(io)?;
        if let Some(folder) = key.strip_suffix('/') {
            let inside = self.list(folder).await.map_err(|_| {
                self.take_outage().unwrap_or_else(|| IngestError::Io {
                    file: key.into(),
                    error: std::io::Error::new(std::io::ErrorKind::NotFound, "listing the folder failed"),
                })
            })?;
            let path = dir.path().join(folder.rsplit('/').next().unwrap_or("folder"));
            std::fs::create_dir(&path).map_err(io)?;
            for k in inside.iter().filter(|k| !k[folder.len() + 1..].contains('/')) {
                self.fetch_into(k, &path).await?;
            }
            return Ok(LocalFile { path, _temp: Some(dir) });
        }
        let path = self.fetch_into(key, dir.path()).await?;
        let parent = key.rsplit_once('/').map_or("", |(p, _)| p);
        for name in crate::formats::companions(&path)? {
            if name.contains("..") {
                continue; // refused by the reader with its reason
            }
            let companion = if parent.is_empty() { name.clone() } else { format!("{parent}/{name}") };
            let target = dir.path().join(&name);
            if let Some(sub) = target.parent() {
                std::fs::create_dir_all(sub).map_err(io)?;
            }
            match self.fetch_into(&companion, target.parent().unwrap_or(dir.path())).await {
                Ok(_) => {}
                // A missing data file is the reader's quarantine reason, not an outage.
                Err(IngestError::SourceUnavailable { source, .. })
                    if matches!(*source, object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(LocalFile { path, _temp: Some(dir) })
    }

    /// Copies `key` into `dir` under its file name.
    async fn fetch_into(&self, key: &str, dir: &Path) -> Result<PathBuf> {
        let io = |e: std::io::Error| IngestError::Io { file: key.into(), error: e };
        let name = key.rsplit('/').next().unwrap_or("file");
        let path = dir.join(name);
        let obj = ObjPath::from(key);
        let unavailable =
            |source| IngestError::SourceUnavailable { key: format!("{}/{key}", self.url()), source: Box::new(source) };
        let get = self.loc.store().get(&obj).await.map_err(unavailable)?;
        let mut stream = get.into_stream();
        let mut file = std::fs::File::create(&path).map_err(io)?;
        while let Some(chunk) = stream.try_next().await.map_err(unavailable)? {
            std::io::Write::write_all(&mut file, &chunk).map_err(io)?;
        }
        Ok(path)
    }
}
