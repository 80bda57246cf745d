//! Opening a store URL as an `object_store` store rooted at the URL's prefix.
//!
//! Every path the rest of the crate uses is relative to that root, so a run
//! written to `file:///data/run1` and copied to `s3://bucket/run1` reads the same.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreScheme, RetryConfig};
use url::Url;

use crate::error::{Result, ShardError};

/// How to reach S3 and how hard to retry. Fields left `None` come from the
/// standard `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` for a local server.
    pub endpoint: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub allow_http: Option<bool>,
    /// Region (defaults to `us-east-1` when neither this nor the environment sets one).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret key; never printed.
    pub secret_access_key: Option<String>,
    /// Retries for transient failures (5xx, timeouts, connection resets).
    pub retry: Retry,
}

/// Retry policy for store requests (object_store's exponential backoff).
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Maximum attempts after the first; 0 disables retrying.
    pub max_retries: usize,
    /// Give up retrying a request after this long.
    pub timeout: Duration,
    /// First backoff delay; doubles (with jitter) up to 15 s.
    pub initial_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { max_retries: 10, timeout: Duration::from_secs(180), initial_backoff: Duration::from_millis(100) }
    }
}

impl StoreOptions {
    /// Options for an S3-compatible server at `endpoint` (e.g. `http://127.0.0.1:9000`)
    /// with static keys; plain HTTP is allowed only for `http://` endpoints.
    pub fn endpoint_with_keys(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> StoreOptions {
        StoreOptions {
            endpoint: Some(endpoint.to_string()),
            allow_http: Some(endpoint.starts_with("http://")),
            region: Some("us-east-1".into()),
            access_key_id: Some(access_key_id.to_string()),
            secret_access_key: Some(secret_access_key.to_string()),
            ..Default::default()
        }
    }
}

impl StoreOptions {
    /// Whether a request to S3 would carry credentials: keys here, or the
    /// environment's (keys, a web identity, a container's credentials, a profile).
    /// Without them object_store asks the cloud's instance-metadata address, which a
    /// laptop's dry run must not do.
    pub fn has_credentials(&self) -> bool {
        self.access_key_id.is_some()
            || [
                "AWS_ACCESS_KEY_ID",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_PROFILE",
            ]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
    }

    /// The launch-contract variables (DESIGN §10) that give a job these settings: the
    /// endpoint, region and plain-HTTP consent when set, the retry policy when it is
    /// not the default. Never the keys: a job gets those from its own environment or
    /// a secret.
    pub fn contract_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(e) = &self.endpoint {
            env.push(("AWS_ENDPOINT_URL".to_string(), e.clone()));
        }
        if let Some(r) = &self.region {
            env.push(("AWS_REGION".to_string(), r.clone()));
        }
        if self.allow_http == Some(true) {
            env.push(("AWS_ALLOW_HTTP".to_string(), "true".to_string()));
        }
        let default = Retry::default();
        if self.retry.max_retries != default.max_retries {
            env.push(("S3_STORE_RETRIES".to_string(), self.retry.max_retries.to_string()));
        }
        if self.retry.timeout != default.timeout {
            env.push(("S3_STORE_TIMEOUT".to_string(), self.retry.timeout.as_secs().to_string()));
        }
        env
    }

    /// These options, asking once and giving up after `timeout` (a preview that
    /// must not wait out the retries).
    pub fn fail_fast(&self, timeout: Duration) -> StoreOptions {
        StoreOptions { retry: Retry { max_retries: 0, timeout, ..self.retry.clone() }, ..self.clone() }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "<set>"))
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish()
    }
}

/// An opened store: an `ObjectStore` whose root is the URL's prefix.
#[derive(Clone)]
pub struct StoreLocation {
    url: String,
    store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreLocation").field("url", &self.url).finish_non_exhaustive()
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl StoreLocation {
    /// The store, rooted at the URL's prefix.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
    /// The URL it was opened from, credentials removed.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The directory, when the store is a local folder.
    pub fn local_dir(&self) -> Option<PathBuf> {
        local_path(&self.url)
    }
    /// Wraps an existing store (tests, embedding).
    pub fn from_store(url: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        StoreLocation { url: url.into(), store }
    }
}

/// The local path a store URL names: a path as it is, `file:///abs` without its
/// scheme; `None` for every other scheme.
pub fn local_path(url: &str) -> Option<PathBuf> {
    match url.strip_prefix("file://") {
        Some(p) => Some(PathBuf::from(p)),
        None => (!url.contains("://")).then(|| PathBuf::from(url)),
    }
}

/// Opens `file:///abs`, a relative or absolute path, `memory://[name]` or
/// `s3://bucket[/prefix]` (also `s3a://`).
///
/// `memory://name` stores live for the process and are shared by name, so two
/// opens of the same URL see the same objects. Local directories are created.
/// A URL with `user:password@` is refused: credentials belong in the `AWS_*`
/// variables, where they are never echoed, logged or saved with the URL.
pub fn open_store(url: &str, options: &StoreOptions) -> Result<StoreLocation> {
    let shown = redact(url);
    let bad = |reason: String| ShardError::StoreUrl { url: shown.clone(), reason };
    if !url.contains("://") {
        let dir = std::path::absolute(url).map_err(|e| bad(e.to_string()))?;
        return local_store(&dir, &bad);
    }
    if has_userinfo(url) {
        return Err(bad("credentials in a store URL are refused (they would end up in logs and run records): set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) instead"
            .into()));
    }
    if let Some(rest) = url.strip_prefix("memory://") {
        let name = rest.trim_end_matches('/').to_string();
        let store = memory_store(&name);
        return Ok(StoreLocation { url: shown, store });
    }
    let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
    match ObjectStoreScheme::parse(&parsed) {
        Ok((ObjectStoreScheme::Local, path)) => {
            if path.as_ref().is_empty() {
                return Err(bad("file:// URLs need an absolute path (file:///abs/path)".into()));
            }
            local_store(&std::path::PathBuf::from(format!("/{path}")), &bad)
        }
        Ok((ObjectStoreScheme::AmazonS3, prefix)) if matches!(parsed.scheme(), "s3" | "s3a") => {
            let bucket = parsed.host_str().unwrap_or_default();
            let s3 = s3_builder(bucket, options).build().map_err(|e| bad(e.to_string()))?;
            let store: Arc<dyn ObjectStore> =
                if prefix.as_ref().is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix.clone())) };
            Ok(StoreLocation { url: format!("s3://{bucket}/{prefix}"), store })
        }
        Ok(_) | Err(_) if parsed.scheme() == "file" => {
            Err(bad("file:// URLs need an absolute path (file:///abs/path)".into()))
        }
        _ => Err(bad("unsupported scheme (use file://, memory://, s3:// or a path)".into())),
    }
}

fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    userinfo_end(rest).is_some()
}

/// Where `user[:password]@` ends in the part of a URL after `://`. A secret may
/// itself hold `/` (AWS secret keys often do), so the authority is not simply the
/// text before the first `/`: an `@` whose prefix has a `:` counts too.
fn userinfo_end(rest: &str) -> Option<usize> {
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(at) = authority.rfind('@') {
        return Some(at);
    }
    let at = rest.rfind('@')?;
    rest[..at].contains(':').then_some(at)
}

fn local_store(dir: &std::path::Path, bad: &dyn Fn(String) -> ShardError) -> Result<StoreLocation> {
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
    let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?;
    Ok(StoreLocation { url: format!("file://{}", dir.display()), store: Arc::new(fs) })
}

fn s3_builder(bucket: &str, options: &StoreOptions) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
        b = b.with_region("us-east-1");
    }
    if let Some(v) = &options.endpoint {
        b = b.with_endpoint(v);
    }
    if let Some(v) = options.allow_http {
        b = b.with_allow_http(v);
    }
    if let Some(v) = &options.region {
        b = b.with_region(v);
    }
    if let Some(v) = &options.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &options.secret_access_key {
        b = b.with_secret_access_key(v);
    }
    let r = &options.retry;
    b.with_retry(RetryConfig {
        backoff: BackoffConfig { init_backoff: r.initial_backoff, ..BackoffConfig::default() },
        max_retries: r.max_retries,
        retry_timeout: r.timeout,
    })
}

fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut map = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    map.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

/// Removes `user:password@` from a URL so it can be logged.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match userinfo_end(rest) {
            Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo() {
        assert_eq!(redact("s3://AKIA:secret@bucket/a/b"), "s3://bucket/a/b");
        assert_eq!(redact("s3://bucket"), "s3://bucket");
        assert_eq!(redact("file:///x/y"), "file:///x/y");
        assert_eq!(redact("s3://AKIA:ab/cd+ef@bucket/p"), "s3://bucket/p", "a secret with a slash");
        assert_eq!(redact("s3://bucket/key@v2"), "s3://bucket/key@v2", "an @ in a key is not userinfo");
    }

    #[test]
    fn debug_hides_secrets() {
        let o = StoreOptions {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("sup3r-s3cret".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("sup3r-s3cret") && !s.contains("AKIAEXAMPLE"), "{s}");
    }

    #[test]
    fn credentials_in_a_url_are_refused_without_echoing_them() {
        for url in [
            "s3://AKIAEXAMPLE:sup3r-s3cret@bucket/p",
            "s3://AKIAEXAMPLE@bucket",
            "file://u:sup3r-s3cret@/x",
            "s3://AKIAEXAMPLE:sup3r/s3cret@bucket/p",
        ] {
            let e = open_store(url, &StoreOptions::default()).unwrap_err().to_string();
            assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
            assert!(!e.contains("sup3r-s3cret") && !e.contains("AKIAEXAMPLE"), "{e}");
        }
        let loc = open_store("s3://bucket/a/b", &StoreOptions::default()).unwrap();
        assert_eq!(loc.url(), "s3://bucket/a/b");
    }

    #[test]
    fn rejects_unknown_schemes() {
        let e = open_store("gs://bucket/x", &StoreOptions::default()).unwrap_err();
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
        assert!(open_store("file://relative", &StoreOptions::default()).is_err());
    }

    #[test]
    fn memory_stores_are_shared_by_name() {
        let a = open_store("memory://shared-test", &StoreOptions::default()).unwrap();
        let b = open_store("memory://shared-test", &StoreOptions::default()).unwrap();
        assert!(Arc::ptr_eq(a.store(), b.store()));
        let c = open_store("memory://other-test", &StoreOptions::default()).unwrap();
        assert!(!Arc::ptr_eq(a.store(), c.store()));
    }
}
