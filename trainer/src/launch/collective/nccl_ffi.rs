//! The NCCL calls, with cudarc 0.19.10's `nccl::sys` types (the NCCL 2.30 bindings),
//! through the libnccl [`super::nccl_lib`] opened at run time (by the names NCCL
//! ships under, which cudarc's own loader misses).
//!
//! Why `unsafe`, and only here: cudarc's safe `nccl::Comm` neither exposes its raw
//! communicator (so `ncclCommGetAsyncError` cannot be polled) nor takes a
//! configuration (so it cannot be non-blocking), and NCCL itself has no timeout: a
//! dead peer leaves a blocking call, or the stream, waiting forever. A non-blocking
//! communicator whose every call is polled against a deadline, and aborted past it,
//! needs the raw handle. The surface is one type, [`Comm`], whose methods take
//! buffers only as [`DeviceF32`] — made solely by `cuda_buffer` from a live, held
//! allocation of at least `len()` f32s — so no caller hands NCCL an arbitrary
//! address.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, DriverError};
use cudarc::nccl::{result, sys};

use super::cuda_buffer::DeviceF32;
use super::nccl_id::ID_BYTES;
use super::nccl_lib::{Api, api};

/// `NCCL_CONFIG_UNDEF_INT`: "use NCCL's default".
const UNDEF: i32 = i32::MIN;
/// `NCCL_VERSION(2, 30, 0)`: the layout of the config cudarc's bindings declare. An
/// older libnccl reads only the prefix it knows (it clamps the copy to its own
/// `sizeof(ncclConfig_t)` and resets fields newer than `version` says).
const CONFIG_VERSION: u32 = 23_000;

/// What went wrong in an NCCL call.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// NCCL returned an error (the communicator is unusable).
    #[error("{call}: {code:?} ({reason}){}", if last.is_empty() { String::new() } else { format!(": {last}") })]
    Nccl {
        /// The call.
        call: &'static str,
        /// NCCL's result code.
        code: sys::ncclResult_t,
        /// `ncclGetErrorString`.
        reason: String,
        /// `ncclGetLastError`: often names the peer or the transport that failed.
        last: String,
    },
    /// Still not done at the deadline.
    #[error("{call}: not finished within {waited:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// How long it was given.
        waited: Duration,
    },
    /// libnccl could not be opened, or lacks a call.
    #[error("{0}")]
    Library(String),
    /// The communicator was aborted by an earlier failure.
    #[error("the NCCL communicator was aborted after an earlier failure")]
    Aborted,
    /// The CUDA driver failed (the stream or its event).
    #[error("{call}: CUDA driver")]
    Driver {
        /// The call.
        call: &'static str,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
}

/// The NCCL version code of the libnccl this process loads, or why there is none.
pub(super) fn library_version() -> Result<i32, String> {
    super::nccl_lib::library()?.version()
}

/// A fresh NCCL unique id (rank 0 makes it; the others receive it).
pub(super) fn unique_id() -> Result<[u8; ID_BYTES], Failure> {
    let api = api().map_err(Failure::Library)?;
    let mut id = std::mem::MaybeUninit::<sys::ncclUniqueId>::uninit();
    // SAFETY: `id` is a valid out-pointer to a ncclUniqueId, read only after success.
    let id = unsafe {
        (api.get_unique_id)(id.as_mut_ptr()).result().map_err(|e| failure(api, "ncclGetUniqueId", e.0, None))?;
        id.assume_init()
    };
    Ok(id.internal.map(|c| c as u8))
}

fn error_string(api: &Api, code: sys::ncclResult_t) -> String {
    // SAFETY: NCCL returns a pointer to a static NUL-terminated string for any code.
    unsafe {
        let p = (api.get_error_string)(code);
        if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
}

fn failure(api: &Api, call: &'static str, code: sys::ncclResult_t, comm: Option<sys::ncclComm_t>) -> Failure {
    let last = match comm {
        // SAFETY: `comm` is a live communicator (or null, which NCCL accepts here); the
        // string is NCCL's own, valid until the next call on this thread.
        Some(c) => unsafe {
            let p = (api.get_last_error)(c);
            if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
        },
        None => String::new(),
    };
    Failure::Nccl { call, code, reason: error_string(api, code), last }
}

/// When a wait gives up, and how long it was given.
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    fn after(total: Duration) -> Deadline {
        Deadline { at: Instant::now().checked_add(total).unwrap_or_else(far_future), total }
    }
    fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// `--collective-timeout 0` means no limit: a deadline that never comes.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

/// Sleeps a little longer each time: a reduction that ends in microseconds is not
/// held up, one that takes minutes does not spin a core.
struct Backoff(u32);

impl Backoff {
    fn wait(&mut self) {
        self.0 += 1;
        match self.0 {
            0..=64 => std::hint::spin_loop(),
            65..=256 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

/// One rank's non-blocking NCCL communicator. Aborted (never left waiting) on any
/// failure and on drop.
pub(super) struct Comm {
    api: &'static Api,
    comm: sys::ncclComm_t,
    aborted: bool,
}

impl Comm {
    /// Joins the communicator of `world` ranks with `id` as `rank`, on the device whose
    /// context is current on this thread; gives up (and aborts) after `timeout`.
    pub(super) fn init(world: usize, rank: usize, id: [u8; ID_BYTES], timeout: Duration) -> Result<Comm, Failure> {
        let deadline = Deadline::after(timeout);
        let api = api().map_err(Failure::Library)?;
        let id = sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
        let mut config = sys::ncclConfig_t {
            size: std::mem::size_of::<sys::ncclConfig_t>(),
            magic: 0xcafe_beef,
            version: CONFIG_VERSION,
            blocking: 0,
            cgaClusterSize: UNDEF,
            minCTAs: UNDEF,
            maxCTAs: UNDEF,
            netName: std::ptr::null(),
            splitShare: UNDEF,
            trafficClass: UNDEF,
            commName: std::ptr::null(),
            collnetEnable: UNDEF,
            CTAPolicy: UNDEF,
            shrinkShare: UNDEF,
            nvlsCTAs: UNDEF,
            nChannelsPerNetPeer: UNDEF,
            nvlinkCentricSched: UNDEF,
            graphUsageMode: UNDEF,
            numRmaCtx: UNDEF,
            maxP2pPeers: UNDEF,
        };
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let (n, r) = (world as i32, rank as i32);
        // SAFETY: `raw` and `config` outlive the call (NCCL copies the config); the id is
        // 128 plain bytes. With `blocking = 0` the call returns at once (ncclInProgress)
        // and the communicator finishes joining in the background.
        let started = unsafe { (api.comm_init_rank_config)(&mut raw, n, id, r, &mut config) }.result();
        if raw.is_null() {
            return Err(match started {
                Err(e) => failure(api, "ncclCommInitRankConfig", e.0, None),
                Ok(_) => failure(api, "ncclCommInitRankConfig", sys::ncclResult_t::ncclInternalError, None),
            });
        }
        let mut comm = Comm { api, comm: raw, aborted: false };
        if let Err(e) = started {
            let f = failure(api, "ncclCommInitRankConfig", e.0, Some(raw));
            comm.abort();
            return Err(f);
        }
        comm.settle("ncclCommInitRankConfig", deadline)?;
        Ok(comm)
    }

    /// The communicator's asynchronous state: `Ok(true)` done, `Ok(false)` in progress.
    fn state(&self, call: &'static str) -> Result<bool, Failure> {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: `self.comm` is live (not aborted: every caller checks) and `state` is
        // a valid out-pointer.
        let polled = unsafe { (self.api.comm_get_async_error)(self.comm, &mut state) };
        match (polled, state) {
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess) => Ok(true),
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => Ok(false),
            (sys::ncclResult_t::ncclSuccess, code) | (code, _) => Err(failure(self.api, call, code, Some(self.comm))),
        }
    }

    /// Polls until the last call has settled (NCCL accepted it, or failed); aborts on
    /// failure or at `deadline`.
    fn settle(&mut self, call: &'static str, deadline: Deadline) -> Result<(), Failure> {
        let mut backoff = Backoff(0);
        loop {
            match self.state(call) {
                Ok(true) => return Ok(()),
                Ok(false) if !deadline.passed() => backoff.wait(),
                Ok(false) => {
                    self.abort();
                    return Err(Failure::Timeout { call, waited: deadline.total });
                }
                Err(f) => {
                    self.abort();
                    return Err(f);
                }
            }
        }
    }

    fn checked(&mut self, call: &'static str, r: Result<result::NcclStatus, result::NcclError>) -> Result<(), Failure> {
        match r {
            Ok(_) => Ok(()), // ncclSuccess or ncclInProgress: settled later
            Err(e) => {
                let f = failure(self.api, call, e.0, Some(self.comm));
                self.abort();
                Err(f)
            }
        }
    }

    /// Sums `buf` over all ranks in place, `buckets` (consecutive element ranges
    /// covering it) as one NCCL group, on `stream`; returns once the stream has
    /// finished, or fails (aborting) after `timeout` or on any NCCL error.
    pub(super) fn all_reduce_sum(
        &mut self,
        buf: &DeviceF32,
        buckets: &[Range<usize>],
        stream: &Arc<CudaStream>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        self.all_reduce(buf, buf, sys::ncclRedOp_t::ncclSum, buckets, stream, timeout)
    }

    /// Averages `send` over all ranks into `recv` (another buffer of the same
    /// length), bucket by bucket as training sums: the pointer arithmetic checked
    /// where an in-place reduction could not show it (`bench all-reduce --verify`).
    pub(super) fn all_reduce_avg_into(
        &mut self,
        send: &DeviceF32,
        recv: &DeviceF32,
        buckets: &[Range<usize>],
        stream: &Arc<CudaStream>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        assert_eq!(send.len(), recv.len(), "send and receive buffers of one length");
        self.all_reduce(send, recv, sys::ncclRedOp_t::ncclAvg, buckets, stream, timeout)
    }

    fn all_reduce(
        &mut self,
        send: &DeviceF32,
        recv: &DeviceF32,
        op: sys::ncclRedOp_t,
        buckets: &[Range<usize>],
        stream: &Arc<CudaStream>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let deadline = Deadline::after(timeout);
        if self.aborted {
            return Err(Failure::Aborted);
        }
        assert!(buckets.iter().all(|b| b.end <= send.len() && b.end <= recv.len()), "buckets inside the buffers");
        let nccl_stream = stream.cu_stream() as sys::cudaStream_t;
        // SAFETY: group calls take no arguments; NCCL tracks the group per thread.
        let start = unsafe { (self.api.group_start)() }.result();
        self.checked("ncclGroupStart", start)?;
        let offset = |b: &Range<usize>| (b.start * std::mem::size_of::<f32>()) as u64;
        for b in buckets {
            let from = (send.ptr() + offset(b)) as *const std::ffi::c_void;
            let into = (recv.ptr() + offset(b)) as *mut std::ffi::c_void;
            // SAFETY: `send` and `recv` are held allocations of `len()` f32s (see
            // `DeviceF32`) and every bucket lies inside both (asserted above), on a
            // stream of this communicator's device; in place when they are one buffer.
            let r = unsafe {
                (self.api.all_reduce)(from, into, b.len(), sys::ncclDataType_t::ncclFloat32, op, self.comm, nccl_stream)
            }
            .result();
            if let Err(e) = r {
                // SAFETY: closes the group opened above.
                let _ = unsafe { (self.api.group_end)() };
                let f = failure(self.api, "ncclAllReduce", e.0, Some(self.comm));
                self.abort();
                return Err(f);
            }
        }
        // SAFETY: closes the group opened above.
        let end = unsafe { (self.api.group_end)() }.result();
        self.checked("ncclGroupEnd", end)?;
        self.settle("ncclAllReduce", deadline)?;
        self.finish(stream, deadline)
    }

    /// Waits for `stream` to finish, watching the communicator meanwhile.
    fn finish(&mut self, stream: &Arc<CudaStream>, deadline: Deadline) -> Result<(), Failure> {
        let call = "ncclAllReduce (on the stream)";
        let event = stream.record_event(None).map_err(|source| Failure::Driver { call, source })?;
        let mut backoff = Backoff(0);
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(source) => {
                    self.abort();
                    return Err(Failure::Driver { call, source });
                }
            }
            if let Err(f) = self.state(call) {
                self.abort();
                return Err(f);
            }
            if deadline.passed() {
                self.abort();
                return Err(Failure::Timeout { call, waited: deadline.total });
            }
            backoff.wait();
        }
    }

    /// Ends the communicator now, cancelling whatever it still waits for (a dead peer).
    pub(super) fn abort(&mut self) {
        if !self.aborted {
            self.aborted = true;
            // SAFETY: `self.comm` is live and, once aborted, never used again.
            let _ = unsafe { (self.api.comm_abort)(self.comm) };
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // Abort rather than destroy: destroying waits for the peers, which may be gone.
        self.abort();
    }
}
