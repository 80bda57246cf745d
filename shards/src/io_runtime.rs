//! The one tokio runtime a process's store I/O runs on, for every program of the
//! workspace.
//!
//! A store's HTTP client pools connections, and a pooled connection is driven by
//! the runtime that opened it. With a runtime per thread or per call (the loader's,
//! the checkpoint writer's, each launcher step's), a connection opened on one and
//! reused from another stalls until the request timeout whenever its owner is not
//! inside `block_on` — 30 s on the first read of every epoch. One multi-threaded
//! runtime keeps every connection driven; any thread outside it may `block_on` it.

use std::sync::OnceLock;

use crate::error::{Result, ShardError};

/// The shared runtime (two I/O worker threads), built on first use.
pub fn io_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ShardError::Runtime(e.clone()))
}
