//! Opening libnccl by the names NCCL ships under: `libnccl.so.2` (the runtime package
//! `libnccl2`, the CUDA runtime images, the `nvidia-nccl-cu12` wheels) before
//! `libnccl.so` (the -dev package's link), or the file `S3_NCCL_LIBRARY` names.
//! cudarc's own loader tries `libnccl.so`, `.so.12`, `.so.11`, ... but never `.so.2`,
//! so a GPU machine with only the runtime would fail before its first step; the
//! calls the trainer makes ([`super::nccl_ffi`]) go through the library opened here.
//!
//! The version probe works in every build (`s3-train info` says which libnccl a GPU
//! rank would load); the call table exists in CUDA builds.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::sync::OnceLock;

/// The names tried, in order, after `S3_NCCL_LIBRARY`.
pub const CANDIDATES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// An opened libnccl.
pub struct Library {
    lib: libloading::Library,
    /// The name or path it was opened by.
    pub name: String,
}

/// The process's libnccl, opened once (`S3_NCCL_LIBRARY`, then [`CANDIDATES`]).
pub fn library() -> Result<&'static Library, String> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| open(std::env::var("S3_NCCL_LIBRARY").ok().filter(|p| !p.is_empty()).as_deref()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Opens `explicit` if given, else the first of [`CANDIDATES`] that loads.
pub fn open(explicit: Option<&str>) -> Result<Library, String> {
    let names: Vec<&str> = match explicit {
        Some(p) => vec![p],
        None => CANDIDATES.to_vec(),
    };
    let mut tried = Vec::new();
    for name in names {
        // SAFETY: loading NCCL runs its initialisers, which only set up its own state.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return Ok(Library { lib, name: name.to_string() }),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "libnccl not found ({}); install libnccl2, or pip's nvidia-nccl-cu12 with its lib folder on \
         LD_LIBRARY_PATH, or set S3_NCCL_LIBRARY to the file",
        tried.join("; ")
    ))
}

impl Library {
    /// `ncclGetVersion`: the NCCL version code (`22105` for 2.21.5).
    pub fn version(&self) -> Result<i32, String> {
        // SAFETY: the symbol has NCCL's declared signature `ncclResult_t (int*)`
        // (ncclResult_t is a C enum, an int), and `v` outlives the call.
        unsafe {
            let f: libloading::Symbol<unsafe extern "C" fn(*mut c_int) -> c_int> =
                self.lib.get(b"ncclGetVersion\0").map_err(|e| format!("{}: ncclGetVersion: {e}", self.name))?;
            let mut v: c_int = 0;
            match f(&mut v) {
                0 => Ok(v),
                code => Err(format!("{}: ncclGetVersion returned {code}", self.name)),
            }
        }
    }
}

/// One line on the libnccl this process would load, for `s3-train info`.
pub fn describe() -> String {
    match library().and_then(|l| Ok((l.version()?, l.name.as_str()))) {
        Ok((v, name)) => format!("libnccl: {} ({name})", super::nccl_id::version_name(v)),
        Err(e) => format!("libnccl: none ({e})"),
    }
}

#[cfg(feature = "cuda")]
pub use api::{Api, api};

#[cfg(feature = "cuda")]
mod api {
    use std::ffi::{c_char, c_int, c_void};
    use std::sync::OnceLock;

    use cudarc::nccl::sys::{
        cudaStream_t, ncclComm_t, ncclConfig_t, ncclDataType_t, ncclRedOp_t, ncclResult_t, ncclUniqueId,
    };

    /// The NCCL calls the trainer makes, resolved once from [`super::library`], with the
    /// signatures of NCCL's `nccl.h` as cudarc declares them.
    pub struct Api {
        /// `ncclGetUniqueId`.
        pub get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> ncclResult_t,
        /// `ncclCommInitRankConfig`.
        pub comm_init_rank_config:
            unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int, *mut ncclConfig_t) -> ncclResult_t,
        /// `ncclCommGetAsyncError`.
        pub comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut ncclResult_t) -> ncclResult_t,
        /// `ncclCommAbort`.
        pub comm_abort: unsafe extern "C" fn(ncclComm_t) -> ncclResult_t,
        /// `ncclAllReduce`.
        pub all_reduce: unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            usize,
            ncclDataType_t,
            ncclRedOp_t,
            ncclComm_t,
            cudaStream_t,
        ) -> ncclResult_t,
        /// `ncclGroupStart`.
        pub group_start: unsafe extern "C" fn() -> ncclResult_t,
        /// `ncclGroupEnd`.
        pub group_end: unsafe extern "C" fn() -> ncclResult_t,
        /// `ncclGetErrorString`.
        pub get_error_string: unsafe extern "C" fn(ncclResult_t) -> *const c_char,
        /// `ncclGetLastError`.
        pub get_last_error: unsafe extern "C" fn(ncclComm_t) -> *const c_char,
    }

    /// The call table, or why libnccl cannot serve it.
    pub fn api() -> Result<&'static Api, String> {
        static API: OnceLock<Result<Api, String>> = OnceLock::new();
        API.get_or_init(|| {
            let l = super::library()?;
            // SAFETY: each symbol is looked up by its NCCL name and given the signature
            // nccl.h declares for it; the library stays loaded for the process (static).
            unsafe {
                macro_rules! sym {
                    ($name:literal) => {
                        *l.lib
                            .get(concat!($name, "\0").as_bytes())
                            .map_err(|e| format!("{}: {}: {e}", l.name, $name))?
                    };
                }
                Ok(Api {
                    get_unique_id: sym!("ncclGetUniqueId"),
                    comm_init_rank_config: sym!("ncclCommInitRankConfig"),
                    comm_get_async_error: sym!("ncclCommGetAsyncError"),
                    comm_abort: sym!("ncclCommAbort"),
                    all_reduce: sym!("ncclAllReduce"),
                    group_start: sym!("ncclGroupStart"),
                    group_end: sym!("ncclGroupEnd"),
                    get_error_string: sym!("ncclGetErrorString"),
                    get_last_error: sym!("ncclGetLastError"),
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_is_not_there_is_a_clear_error_naming_what_was_tried() {
        let e = open(Some("/nonexistent/libnccl.so.2")).err().unwrap();
        assert!(e.contains("/nonexistent/libnccl.so.2") && e.contains("S3_NCCL_LIBRARY"), "{e}");
        assert_eq!(CANDIDATES[0], "libnccl.so.2", "the runtime package's name first");
    }
}
