//! A node-local copy of the shards a run reads, shared by the ranks of a node: each
//! shard crosses the network once per node instead of once per epoch (issue 28).
//!
//! [`ShardCache`] is an `ObjectStore` in front of the data store. A read of a shard
//! the index names first makes sure the whole file is in the cache folder — fetched
//! once, under a lock file every process of the node honours, written beside its
//! final name and renamed into place only after its size and xxh3 match the index —
//! then serves the read from the local file. Everything else (index.json,
//! samples.parquet, a shard the index does not name) goes to the store as before.
//!
//! The cache never fails a run: an unwritable folder or a full disk turn it into
//! plain streaming (with one warning), and a local file that does not match the
//! index is fetched again.
//!
//! The rank tells the cache its future ([`ShardCache::plan`]: the shards of its
//! positions, in order). At the limit, the shard whose next use is farthest ahead
//! goes first (Belady's rule, as the row cache does in memory), and only for a shard
//! needed sooner; when nothing qualifies the read streams. After each read the next
//! shards of the plan are fetched in the background, each as parallel ranged GETs,
//! so the loader finds them on local disk.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use s3_shards::ShardIndex;
use xxhash_rust::xxh3::Xxh3Default;

/// Where the cache lives and how much of the node's disk it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// The node-local folder, shared by the node's ranks.
    pub dir: PathBuf,
    /// Bytes of shards it may hold; past it, shards are streamed.
    pub limit: u64,
}

/// Parses a size: bytes, or a number with K, M, G or T (binary: 200G = 200 GiB).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().trim_end_matches(['B', 'b']).trim_end_matches(['i']);
    let (num, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * (1u64 << shift) as f64) as u64)
}

/// `location` with `cache` in front of its store (and the cache, to tell it the
/// rank's plan), or as it is (with a warning) when the index cannot be read or the
/// folder cannot be used: a cache never fails a run.
pub fn with_cache(
    location: s3_shards::StoreLocation,
    cache: &CacheSettings,
    rt: &tokio::runtime::Runtime,
) -> (s3_shards::StoreLocation, Option<Arc<ShardCache>>) {
    let index = match rt.block_on(ShardIndex::load(location.store().as_ref())) {
        Ok(i) => i,
        Err(_) => return (location, None), // the run reports a missing index itself
    };
    match ShardCache::new(location.store().clone(), &index, cache.dir.clone(), cache.limit) {
        Ok(c) => {
            tracing::info!(dir = %cache.dir.display(), limit = cache.limit, "shard cache");
            (s3_shards::StoreLocation::from_store(location.url(), c.clone()), Some(c))
        }
        Err(e) => {
            tracing::warn!(dir = %cache.dir.display(), "shard cache unusable, streaming from the store: {e}");
            (location, None)
        }
    }
}

/// Shards fetched ahead of the loader, beyond the one it reads.
const AHEAD: usize = 2;
/// Bytes per ranged GET of a download (several in flight).
const CHUNK: u64 = 8 << 20;
/// Ranged GETs of one download in flight.
const PARALLEL_GETS: usize = 4;

/// The rank's future: the shards it will read, in order.
#[derive(Default)]
struct Plan {
    keys: Vec<String>,
    /// Per shard, its indices in `keys`, ascending.
    uses: HashMap<String, Vec<usize>>,
    /// Index in `keys` of the shard read last.
    now: usize,
}

impl Plan {
    /// The first use of `key` at or after `from`.
    fn next_use(&self, key: &str, from: usize) -> Option<usize> {
        let list = self.uses.get(key)?;
        list.get(list.partition_point(|&i| i < from)).copied()
    }
}

/// What the cache did, for `bench loader` and the tests: bytes that crossed the
/// network, and how the shard reads were served.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Bytes read from the data store (downloads and reads passed through).
    pub store_bytes: AtomicU64,
    /// Shards fetched into the cache by this process.
    pub downloads: AtomicU64,
    /// Shard reads served from the local copy.
    pub local_reads: AtomicU64,
    /// Shards this process deleted to make room.
    pub evictions: AtomicU64,
}

/// Gives a download's reservation back however it ends.
struct Unreserve<'a>(&'a AtomicU64, u64);

impl Drop for Unreserve<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::SeqCst);
    }
}

/// The guarded value, also after a panic elsewhere (every update here is one step).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shard cache in front of `inner`.
pub struct ShardCache {
    inner: Arc<dyn ObjectStore>,
    local: LocalFileSystem,
    dir: PathBuf,
    limit: u64,
    /// Shard key → (bytes, xxh3) as the index records them.
    known: HashMap<String, (u64, u64)>,
    /// Shards this process has verified in the folder.
    verified: Mutex<HashSet<String>>,
    /// Bytes of known shards in the folder (this process's count; others add theirs,
    /// and the count is taken afresh before evicting).
    held: AtomicU64,
    /// Bytes of this process's downloads under way, counted against the limit. The
    /// other ranks' downloads under way are not seen: the folder may pass the limit
    /// by up to `AHEAD + 1` shards per other rank of the node.
    reserved: AtomicU64,
    /// Set after an error the folder cannot recover from: stream from then on.
    off: AtomicBool,
    /// One fetch per shard within the process; the lock file keeps other processes out.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    stats: Arc<CacheStats>,
    plan: Mutex<Plan>,
    /// Background fetches under way (awaited by [`ShardCache::settle`]).
    ahead: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Shards a background fetch was started for in this plan.
    asked: Mutex<HashSet<String>>,
    /// Bytes per ranged GET of a download.
    chunk: u64,
    me: Weak<ShardCache>,
}

impl fmt::Debug for ShardCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardCache").field("dir", &self.dir).field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl fmt::Display for ShardCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardCache({}, {})", self.dir.display(), self.inner)
    }
}

impl ShardCache {
    /// A cache of `index`'s shards in `dir`, holding at most `limit` bytes of them.
    /// `Err` with why when the folder cannot be used (the caller streams instead).
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        index: &ShardIndex,
        dir: PathBuf,
        limit: u64,
    ) -> std::io::Result<Arc<Self>> {
        Self::with_chunk(inner, index, dir, limit, CHUNK)
    }

    /// As [`ShardCache::new`], downloading in ranged GETs of `chunk` bytes.
    pub fn with_chunk(
        inner: Arc<dyn ObjectStore>,
        index: &ShardIndex,
        dir: PathBuf,
        limit: u64,
        chunk: u64,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir.join(".locks"))?;
        let probe = dir.join(format!(".locks/probe-{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        let _ = std::fs::remove_file(&probe);
        let local = LocalFileSystem::new_with_prefix(&dir).map_err(std::io::Error::other)?;
        let known: HashMap<String, (u64, u64)> =
            index.shards.iter().map(|s| (s.path.clone(), (s.bytes, s.xxh3))).collect();
        let held = known
            .iter()
            .filter_map(|(k, (bytes, _))| std::fs::metadata(dir.join(k)).ok().filter(|m| m.len() == *bytes))
            .map(|m| m.len())
            .sum();
        Ok(Arc::new_cyclic(|me| ShardCache {
            inner,
            local,
            dir,
            limit,
            known,
            verified: Mutex::new(HashSet::new()),
            held: AtomicU64::new(held),
            reserved: AtomicU64::new(0),
            off: AtomicBool::new(false),
            fetching: Mutex::new(HashMap::new()),
            stats: Arc::new(CacheStats::default()),
            plan: Mutex::new(Plan::default()),
            ahead: Mutex::new(Vec::new()),
            asked: Mutex::new(HashSet::new()),
            chunk: chunk.max(1),
            me: me.clone(),
        }))
    }

    /// Tells the cache the shards this rank reads next, in order (the shard of each
    /// of its positions): eviction keeps what is needed soonest, and the next shards
    /// are fetched ahead.
    pub fn plan(&self, shards: impl IntoIterator<Item = String>) {
        let mut keys: Vec<String> = Vec::new();
        for k in shards {
            if keys.last() != Some(&k) && self.known.contains_key(&k) {
                keys.push(k);
            }
        }
        let mut uses: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            uses.entry(k.clone()).or_default().push(i);
        }
        *lock(&self.plan) = Plan { keys, uses, now: 0 };
        lock(&self.asked).clear();
    }

    /// Waits for the background fetches started so far.
    pub async fn settle(&self) {
        loop {
            let pending: Vec<_> = lock(&self.ahead).drain(..).collect();
            if pending.is_empty() {
                return;
            }
            futures::future::join_all(pending).await;
        }
    }

    /// A read of `key`: the plan moves to its next use (its index in the plan).
    fn move_to(&self, key: &str) -> usize {
        let mut plan = lock(&self.plan);
        if let Some(at) = plan.next_use(key, plan.now) {
            plan.now = at;
        }
        plan.now
    }

    /// The next shards of the plan not yet in the folder, fetched in the background.
    fn prefetch(&self, key: &str) {
        let wanted: Vec<(String, usize)> = {
            let plan = lock(&self.plan);
            let at = plan.now;
            if plan.keys.get(at).map(String::as_str) != Some(key) {
                return; // a read the plan does not know of
            }
            let verified = lock(&self.verified);
            let mut asked = lock(&self.asked);
            let mut seen = HashSet::new();
            plan.keys[at + 1..]
                .iter()
                .enumerate()
                .filter(|(_, k)| k.as_str() != key && seen.insert(k.as_str()))
                .take(AHEAD)
                .filter(|(_, k)| !verified.contains(*k) && asked.insert(k.to_string()))
                .map(|(d, k)| (k.clone(), at + 1 + d))
                .collect()
        };
        let (Some(me), Ok(rt)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else { return };
        for (key, at) in wanted {
            let Some(&(bytes, xxh3)) = self.known.get(&key) else { continue };
            let me = me.clone();
            let task = rt.spawn(async move {
                me.ensure(&key, bytes, xxh3, at).await;
            });
            let mut ahead = lock(&self.ahead);
            ahead.retain(|t| !t.is_finished());
            ahead.push(task);
        }
    }

    /// What the cache did so far.
    pub fn stats(&self) -> Arc<CacheStats> {
        self.stats.clone()
    }

    fn give_up(&self, why: &str) {
        if !self.off.swap(true, Ordering::SeqCst) {
            tracing::warn!(dir = %self.dir.display(), "shard cache off, streaming from the store: {why}");
        }
    }

    /// Makes sure `key` (next needed at plan index `at`) is in the folder and matches
    /// the index; `false` when it is not (the read then goes to the store).
    async fn ensure(&self, key: &str, bytes: u64, xxh3: u64, at: usize) -> bool {
        if self.off.load(Ordering::SeqCst) {
            return false;
        }
        if lock(&self.verified).contains(key) {
            return true;
        }
        let gate = lock(&self.fetching).entry(key.to_string()).or_default().clone();
        let _one = gate.lock().await;
        if lock(&self.verified).contains(key) {
            return true;
        }
        match self.fetch_locked(key, bytes, xxh3, at).await {
            Ok(true) => {
                lock(&self.verified).insert(key.to_string());
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.give_up(&format!("{key}: {e}"));
                false
            }
        }
    }

    fn lock_file(&self, key: &str) -> std::io::Result<std::fs::File> {
        let path = self.dir.join(".locks").join(format!("{:016x}.lock", xxhash_rust::xxh3::xxh3_64(key.as_bytes())));
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)
    }

    /// Under the node-wide lock of `key`: a copy already there and matching, else a
    /// fresh fetch. `Ok(false)`: not cached (no room without evicting a shard needed
    /// sooner than plan index `at`, or the store's own copy does not match its index:
    /// the loader's checksums report that).
    async fn fetch_locked(&self, key: &str, bytes: u64, xxh3: u64, at: usize) -> std::io::Result<bool> {
        let file = self.dir.join(key);
        let lock = self.lock_file(key)?;
        // Another rank of the node may be fetching it: wait on the blocking pool.
        let lock =
            tokio::task::spawn_blocking(move || lock.lock().map(|()| lock)).await.map_err(std::io::Error::other)??;
        if std::fs::metadata(&file).is_ok_and(|m| m.len() == bytes) {
            if hash_file(&file)? == xxh3 {
                drop(lock);
                return Ok(true);
            }
            std::fs::remove_file(&file)?;
            // Saturating: another process may have written the copy after this one
            // counted the folder, and a wrapped count would stop all caching.
            let _ = self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| Some(h.saturating_sub(bytes)));
        }
        if self.limit != u64::MAX {
            // The node's other ranks fill the folder too: count what is there now.
            self.held.store(self.count_held(), Ordering::SeqCst);
        }
        if self.used() + bytes > self.limit && !self.make_room(key, bytes, at) {
            return Ok(false);
        }
        self.reserved.fetch_add(bytes, Ordering::SeqCst);
        let _reservation = Unreserve(&self.reserved, bytes);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let part = file.with_extension(format!("part-{}", std::process::id()));
        let fetched = self.download(key, bytes, &part).await;
        let ok = match fetched {
            Ok((n, h)) if n == bytes && h == xxh3 => {
                std::fs::rename(&part, &file)?;
                self.held.fetch_add(bytes, Ordering::SeqCst);
                self.stats.downloads.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok((n, h)) => {
                tracing::warn!(
                    key,
                    n,
                    bytes,
                    "the store's shard does not match its index ({h:016x} != {xxh3:016x}): not cached"
                );
                let _ = std::fs::remove_file(&part);
                false
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        drop(lock);
        Ok(ok)
    }

    /// Frees room for `bytes` more by deleting the shards needed latest (never
    /// again first), each later than plan index `at`; `false` when that is not enough.
    fn make_room(&self, key: &str, bytes: u64, at: usize) -> bool {
        let plan = lock(&self.plan);
        let mut held: Vec<(usize, &String, u64)> = self
            .known
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .filter_map(|(k, &(b, _))| {
                let on_disk = std::fs::metadata(self.dir.join(k)).is_ok_and(|m| m.len() == b);
                on_disk.then(|| (plan.next_use(k, plan.now).unwrap_or(usize::MAX), k, b))
            })
            .filter(|&(next, _, _)| next > at)
            .collect();
        held.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        for (_, victim, b) in held {
            if self.used() + bytes <= self.limit {
                break;
            }
            // A shard another rank is fetching or checking right now is left alone.
            let Ok(guard) = self.lock_file(victim) else { continue };
            if guard.try_lock().is_err() {
                continue;
            }
            if std::fs::remove_file(self.dir.join(victim)).is_ok() {
                lock(&self.verified).remove(victim.as_str());
                lock(&self.asked).remove(victim.as_str());
                let _ = self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| Some(h.saturating_sub(b)));
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.used() + bytes <= self.limit
    }

    /// Bytes held and reserved.
    fn used(&self) -> u64 {
        self.held.load(Ordering::SeqCst) + self.reserved.load(Ordering::SeqCst)
    }

    /// Bytes of the index's shards in the folder at their full size.
    fn count_held(&self) -> u64 {
        self.known
            .iter()
            .filter_map(|(k, (bytes, _))| std::fs::metadata(self.dir.join(k)).ok().filter(|m| m.len() == *bytes))
            .map(|m| m.len())
            .sum()
    }

    /// Fetches `key` (`bytes` long) from the store into `part` as ranged GETs, several
    /// in flight, written in order and fsynced; its size and xxh3.
    async fn download(&self, key: &str, bytes: u64, part: &std::path::Path) -> std::io::Result<(u64, u64)> {
        let mut out = std::fs::File::create(part)?;
        let location = Path::from(key);
        let ranges = (0..bytes.div_ceil(self.chunk)).map(|i| i * self.chunk..((i + 1) * self.chunk).min(bytes));
        let mut chunks =
            futures::stream::iter(ranges).map(|r| self.inner.get_range(&location, r)).buffered(PARALLEL_GETS);
        let (mut n, mut h) = (0u64, Xxh3Default::new());
        while let Some(chunk) = chunks.try_next().await.map_err(std::io::Error::other)? {
            out.write_all(&chunk)?;
            h.update(&chunk);
            n += chunk.len() as u64;
            self.stats.store_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        out.sync_all()?;
        Ok((n, h.digest()))
    }

    /// Whether a read of `location` can be served from the folder (fetching it
    /// first when it is a shard of the index).
    async fn cached(&self, location: &Path) -> bool {
        let key = location.as_ref();
        let Some(&(bytes, xxh3)) = self.known.get(key) else { return false };
        let at = self.move_to(key);
        let here = self.ensure(key, bytes, xxh3, at).await;
        self.prefetch(key);
        here
    }

    /// A local read failed: a copy another rank evicted is simply read from the
    /// store (and fetched again on its next use); anything else turns the cache off.
    fn local_failed(&self, location: &Path, e: &object_store::Error) {
        if matches!(e, object_store::Error::NotFound { .. }) {
            lock(&self.verified).remove(location.as_ref());
        } else {
            self.give_up(&format!("{location}: {e}"));
        }
    }
}

fn hash_file(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let (mut h, mut buf) = (Xxh3Default::new(), vec![0u8; 1 << 20]);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest());
        }
        h.update(&buf[..n]);
    }
}

#[async_trait::async_trait]
impl ObjectStore for ShardCache {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if self.cached(location).await {
            match self.local.get_opts(location, options.clone()).await {
                Ok(r) => {
                    self.stats.local_reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) => self.local_failed(location, &e),
            }
        }
        let r = self.inner.get_opts(location, options).await?;
        self.stats.store_bytes.fetch_add(r.range.end - r.range.start, Ordering::Relaxed);
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if self.cached(location).await {
            match self.local.get_ranges(location, ranges).await {
                Ok(r) => {
                    self.stats.local_reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) => self.local_failed(location, &e),
            }
        }
        let r = self.inner.get_ranges(location, ranges).await?;
        let n: u64 = r.iter().map(|b| b.len() as u64).sum();
        self.stats.store_bytes.fetch_add(n, Ordering::Relaxed);
        Ok(r)
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use object_store::memory::InMemory;
    use s3_shards::{ShardReader, WriterOptions, synthetic};

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    /// A store of several small shards, and its index.
    async fn store() -> (Arc<dyn ObjectStore>, ShardIndex) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let opts = WriterOptions { row_group_rows: 2, target_file_bytes: 1 << 20, ..Default::default() };
        let index = synthetic::populate(&store, 2, 3, 2, opts).await.unwrap();
        assert!(index.shards.len() >= 2, "{} shards", index.shards.len());
        (store, index)
    }

    /// Every row of every shard, read through `store` as the loader reads them; the
    /// checksums of what came back.
    async fn epoch(store: &Arc<dyn ObjectStore>, index: &ShardIndex) -> Vec<u64> {
        let keys: Vec<&str> = index.shards.iter().map(|s| s.path.as_str()).collect();
        read_in_order(store, &keys).await
    }

    fn total(index: &ShardIndex) -> u64 {
        index.shards.iter().map(|s| s.bytes).sum()
    }

    #[test]
    fn each_shard_crosses_the_network_once_per_node() {
        rt().block_on(async {
            let (inner, index) = store().await;
            let dir = tempfile::tempdir().unwrap();
            let direct = epoch(&inner, &index).await;
            let cache = ShardCache::new(inner.clone(), &index, dir.path().into(), u64::MAX).unwrap();
            let stats = cache.stats();
            let cached: Arc<dyn ObjectStore> = cache;
            assert_eq!(epoch(&cached, &index).await, direct, "the same samples");
            let first = stats.store_bytes.load(Relaxed);
            assert_eq!(first, total(&index), "epoch 1 fetches each shard whole, once");
            assert_eq!(stats.downloads.load(Relaxed), index.shards.len() as u64);
            assert_eq!(epoch(&cached, &index).await, direct);
            assert_eq!(stats.store_bytes.load(Relaxed), first, "epoch 2 reads nothing from the store");
            // Another rank of the node (another process: a cache of its own over the same folder).
            let other = ShardCache::new(inner.clone(), &index, dir.path().into(), u64::MAX).unwrap();
            let other_stats = other.stats();
            let other: Arc<dyn ObjectStore> = other;
            assert_eq!(epoch(&other, &index).await, direct);
            assert_eq!(other_stats.store_bytes.load(Relaxed), 0, "the node's copy is verified and used");
            assert_eq!(other_stats.downloads.load(Relaxed), 0);
        });
    }

    #[test]
    fn ranks_racing_for_a_shard_fetch_it_once() {
        rt().block_on(async {
            let (inner, index) = store().await;
            let dir = tempfile::tempdir().unwrap();
            let ranks: Vec<Arc<ShardCache>> =
                (0..2).map(|_| ShardCache::new(inner.clone(), &index, dir.path().into(), u64::MAX).unwrap()).collect();
            let runs = ranks.iter().map(|c| {
                let (store, index): (Arc<dyn ObjectStore>, ShardIndex) = (c.clone(), index.clone());
                tokio::spawn(async move { epoch(&store, &index).await })
            });
            let sums: Vec<Vec<u64>> = futures::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
            assert_eq!(sums[0], sums[1]);
            let downloads: u64 = ranks.iter().map(|c| c.stats().downloads.load(Relaxed)).sum();
            assert_eq!(downloads, index.shards.len() as u64, "one download per shard for the node");
        });
    }

    #[test]
    fn a_damaged_local_copy_is_fetched_again_and_a_full_cache_streams() {
        rt().block_on(async {
            let (inner, index) = store().await;
            let dir = tempfile::tempdir().unwrap();
            let direct = epoch(&inner, &index).await;
            let first: Arc<dyn ObjectStore> =
                ShardCache::new(inner.clone(), &index, dir.path().into(), u64::MAX).unwrap();
            epoch(&first, &index).await;
            // The same size, one byte different: only the hash can tell.
            let victim = dir.path().join(&index.shards[0].path);
            let mut bytes = std::fs::read(&victim).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&victim, bytes).unwrap();
            let again = ShardCache::new(inner.clone(), &index, dir.path().into(), u64::MAX).unwrap();
            let stats = again.stats();
            let again: Arc<dyn ObjectStore> = again;
            assert_eq!(epoch(&again, &index).await, direct, "never the damaged copy");
            assert_eq!(stats.downloads.load(Relaxed), 1, "only the damaged shard is fetched again");

            // A limit below one shard: nothing is kept, every epoch streams, nothing fails.
            let small = tempfile::tempdir().unwrap();
            let tiny = ShardCache::new(inner.clone(), &index, small.path().into(), 1).unwrap();
            let stats = tiny.stats();
            let tiny: Arc<dyn ObjectStore> = tiny;
            assert_eq!(epoch(&tiny, &index).await, direct);
            let one = stats.store_bytes.load(Relaxed);
            assert_eq!(epoch(&tiny, &index).await, direct);
            assert_eq!(stats.store_bytes.load(Relaxed), 2 * one, "streamed twice");
            assert_eq!(stats.downloads.load(Relaxed), 0);
        });
    }

    /// Reads every row group of `keys`, in that order, through `store`; the checksums.
    async fn read_in_order(store: &Arc<dyn ObjectStore>, keys: &[&str]) -> Vec<u64> {
        let mut sums = Vec::new();
        for k in keys {
            let reader = ShardReader::open(store.clone(), &Path::from(*k)).await.unwrap();
            for g in 0..reader.num_row_groups() {
                sums.extend(reader.read_row_group(g).await.unwrap().iter().map(|x| x.checksum));
            }
        }
        sums
    }

    #[test]
    fn at_the_limit_the_shard_needed_latest_goes_first() {
        rt().block_on(async {
            let (inner, index) = store().await;
            assert!(index.shards.len() >= 3);
            let (a, b, c) = (&index.shards[0], &index.shards[1], &index.shards[2]);
            let mut sizes = [a.bytes, b.bytes, c.bytes];
            sizes.sort();
            // Any two fit, never three.
            let limit = sizes[1] + sizes[2];
            let dir = tempfile::tempdir().unwrap();
            let cache = ShardCache::with_chunk(inner.clone(), &index, dir.path().into(), limit, 4096).unwrap();
            let stats = cache.stats();
            let plan = [a.path.as_str(), b.path.as_str(), c.path.as_str(), a.path.as_str(), b.path.as_str()];
            cache.plan(plan.iter().map(|k| k.to_string()));
            let store: Arc<dyn ObjectStore> = cache.clone();
            let got = read_in_order(&store, &plan).await;
            cache.settle().await;
            assert_eq!(got, read_in_order(&inner, &plan).await, "the same rows");
            // Belady: at C, B (next needed at 4) goes rather than A (at 3); A is then
            // read locally and B fetched again. Evicting A instead would fetch 5 times.
            assert_eq!(stats.downloads.load(Relaxed), 4, "A, B, C, then B again");
            assert_eq!(stats.store_bytes.load(Relaxed), a.bytes + 2 * b.bytes + c.bytes);
            assert!(stats.evictions.load(Relaxed) >= 1);
            let held: u64 = index
                .shards
                .iter()
                .filter(|s| std::fs::metadata(dir.path().join(&s.path)).is_ok_and(|m| m.len() == s.bytes))
                .map(|s| s.bytes)
                .sum();
            assert!(held <= limit, "the folder holds {held} > {limit}");
        });
    }

    #[test]
    fn the_next_shards_of_the_plan_are_fetched_ahead_of_the_reads() {
        rt().block_on(async {
            let (inner, index) = store().await;
            let keys: Vec<&str> = index.shards.iter().take(3).map(|s| s.path.as_str()).collect();
            let dir = tempfile::tempdir().unwrap();
            // Small ranged GETs: each download is many of them, reassembled in order.
            let cache = ShardCache::with_chunk(inner.clone(), &index, dir.path().into(), u64::MAX, 1000).unwrap();
            let stats = cache.stats();
            cache.plan(keys.iter().map(|k| k.to_string()));
            let store: Arc<dyn ObjectStore> = cache.clone();
            read_in_order(&store, &keys[..1]).await;
            cache.settle().await;
            for k in &keys {
                assert!(dir.path().join(k).is_file(), "{k} is in the folder before it is read");
            }
            let fetched = stats.store_bytes.load(Relaxed);
            assert_eq!(
                fetched,
                keys.iter().map(|k| index.shards.iter().find(|s| s.path == *k).unwrap().bytes).sum::<u64>()
            );
            assert_eq!(read_in_order(&store, &keys).await, read_in_order(&inner, &keys).await);
            assert_eq!(stats.store_bytes.load(Relaxed), fetched, "every read after the first was local");
            assert_eq!(stats.downloads.load(Relaxed), 3);
        });
    }

    #[test]
    fn a_copy_another_rank_evicted_is_read_from_the_store_then_fetched_again() {
        rt().block_on(async {
            let (inner, index) = store().await;
            let dir = tempfile::tempdir().unwrap();
            let direct = epoch(&inner, &index).await;
            let cache = ShardCache::new(inner.clone(), &index, dir.path().into(), u64::MAX).unwrap();
            let stats = cache.stats();
            let store: Arc<dyn ObjectStore> = cache.clone();
            epoch(&store, &index).await;
            let gone = dir.path().join(&index.shards[0].path);
            std::fs::remove_file(&gone).unwrap();
            assert_eq!(epoch(&store, &index).await, direct);
            assert!(gone.is_file(), "fetched again: the cache stayed on");
            assert_eq!(stats.downloads.load(Relaxed), index.shards.len() as u64 + 1);
        });
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("200G"), Some(200 << 30));
        assert_eq!(parse_size("1.5T"), Some(3 << 39));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1G"), None);
    }

    #[test]
    fn a_folder_that_cannot_be_used_is_refused_up_front() {
        rt().block_on(async {
            let (inner, index) = store().await;
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("not-a-folder");
            std::fs::write(&file, b"x").unwrap();
            assert!(ShardCache::new(inner, &index, file.join("cache"), u64::MAX).is_err());
        });
    }
}
