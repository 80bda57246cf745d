//! Re-reading a published store and checking it against its index.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;

use crate::error::{Result, ShardError};
use crate::index::{FileRef, ShardIndex};
use crate::reader::{ShardReader, hash_object};

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file concerned.
    pub path: String,
    /// What is wrong, naming the sample when there is one.
    pub message: String,
}

/// Outcome of [`verify_store`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: usize,
    /// Samples whose checksum matched.
    pub samples_ok: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Everything wrong, in path order.
    pub problems: Vec<Problem>,
    /// Shard files on the store that the index does not name (left by an interrupted run).
    pub unreferenced: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every file the index names: size and xxh3 of each shard, the sample table
/// and label manifests; decodes every sample and checks its checksum and the row
/// counts. Keeps going after a problem so the report names all of them. `progress`
/// is called after each shard with (done, total).
pub async fn verify_store(
    store: &Arc<dyn ObjectStore>,
    mut progress: impl FnMut(usize, usize),
) -> Result<VerifyReport> {
    let index = ShardIndex::load(store.as_ref()).await?;
    let mut report = VerifyReport::default();
    let problem = |report: &mut VerifyReport, path: &str, message: String| {
        report.problems.push(Problem { path: path.to_string(), message });
    };
    for (n, meta) in index.shards.iter().enumerate() {
        report.shards += 1;
        let path = Path::from(meta.path.as_str());
        match hash_object(store.as_ref(), &path).await {
            Ok((bytes, hash)) => {
                report.bytes += bytes;
                if (bytes, hash) != (meta.bytes, meta.xxh3) {
                    let e = ShardError::FileHashMismatch {
                        path: path.clone(),
                        expected: meta.xxh3,
                        expected_bytes: meta.bytes,
                        found: hash,
                        found_bytes: bytes,
                    };
                    problem(&mut report, &meta.path, e.to_string());
                }
            }
            Err(e) => {
                problem(&mut report, &meta.path, error_chain(&e));
                progress(n + 1, index.shards.len());
                continue;
            }
        }
        match check_shard(store, &path).await {
            Ok((rows, ok, bad)) => {
                report.samples_ok += ok;
                for b in bad {
                    problem(&mut report, &meta.path, b);
                }
                if rows != meta.rows {
                    problem(&mut report, &meta.path, format!("has {rows} rows, index says {}", meta.rows));
                }
            }
            Err(e) => problem(&mut report, &meta.path, error_chain(&e)),
        }
        progress(n + 1, index.shards.len());
    }
    for f in index.samples.iter().chain(&index.labels) {
        if let Err(msg) = check_file(store.as_ref(), f).await {
            problem(&mut report, &f.path, msg);
        }
    }
    let named: BTreeSet<&str> = index.shards.iter().map(|s| s.path.as_str()).collect();
    let listed: Vec<_> = store
        .list(Some(&Path::from("shards")))
        .try_collect()
        .await
        .map_err(|e| ShardError::store("list", &Path::from("shards"), e))?;
    report.unreferenced = listed
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|p| p.ends_with(".parquet") && !named.contains(p.as_str()))
        .collect();
    report.unreferenced.sort();
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// (rows, samples ok, messages for bad samples) — a row group that cannot be decoded is one message.
async fn check_shard(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<(u64, u64, Vec<String>)> {
    let reader = ShardReader::open(store.clone(), path).await?;
    let (mut ok, mut bad) = (0, Vec::new());
    for g in 0..reader.num_row_groups() {
        match reader.read_row_group_each(g).await {
            Ok(samples) => {
                for s in samples {
                    match s {
                        Ok(_) => ok += 1,
                        Err(e) => bad.push(e.to_string()),
                    }
                }
            }
            Err(e) => bad.push(format!("row group {g}: {}", error_chain(&e))),
        }
    }
    Ok((reader.num_rows(), ok, bad))
}

async fn check_file(store: &dyn ObjectStore, f: &FileRef) -> std::result::Result<(), String> {
    let path = Path::from(f.path.as_str());
    let (bytes, hash) = hash_object(store, &path).await.map_err(|e| error_chain(&e))?;
    if (bytes, hash) != (f.bytes, f.xxh3) {
        return Err(ShardError::FileHashMismatch {
            path,
            expected: f.xxh3,
            expected_bytes: f.bytes,
            found: hash,
            found_bytes: bytes,
        }
        .to_string());
    }
    Ok(())
}

/// An error and all its causes on one line, each said once: a cause whose text is
/// already in the line (clients often repeat their cause in their own message) is
/// left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Said once: clients often repeat their cause inside their own message.
        if !text.is_empty() && !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(String, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }
    fn chain(texts: &[&str]) -> E {
        texts.iter().rev().fold(None, |inner, t| Some(E(t.to_string(), inner.map(Box::new)))).unwrap()
    }

    #[test]
    fn each_cause_is_said_once() {
        // An HTTP client that repeats its cause inside its own message, level after level.
        let e = chain(&[
            "get ledger.json",
            "Generic S3 error: HTTP error: error sending request: client error (Connect): tcp connect error: Connection refused",
            "HTTP error: error sending request: client error (Connect): tcp connect error: Connection refused",
            "error sending request: client error (Connect): tcp connect error: Connection refused",
            "client error (Connect)",
            "tcp connect error: Connection refused",
            "Connection refused",
        ]);
        assert_eq!(
            error_chain(&e),
            "get ledger.json: Generic S3 error: HTTP error: error sending request: client error (Connect): tcp \
             connect error: Connection refused"
        );
        // Causes that add something stay.
        assert_eq!(
            error_chain(&chain(&["opening s3://b", "no such bucket", "404"])),
            "opening s3://b: no such bucket: 404"
        );
    }
}
