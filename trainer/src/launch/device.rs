//! Choosing the compute device from a name: `cpu` (burn's flex backend) or
//! `cuda[:N]` (builds with the `cuda` feature).

use burn::prelude::*;

use crate::error::{Result, TrainError};

/// Parses `cpu`, `cuda` or `cuda:N`.
/// The device of a rank: with `cuda`, the GPU of its local rank; else `device`.
pub fn rank_device(name: &str, local_rank: usize, device: Device) -> Result<Device> {
    if name == "cuda" { parse_device(&format!("cuda:{local_rank}")) } else { Ok(device) }
}

/// A device by name: `cpu` (or `flex`), `cuda`, `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        n if n == "cuda" || n.starts_with("cuda:") => cuda(n.strip_prefix("cuda:").unwrap_or("0")),
        other => Err(TrainError::Device { device: other.into(), reason: "unknown (cpu, cuda, cuda:N)".into() }),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: &str) -> Result<Device> {
    let i: usize = index
        .parse()
        .map_err(|_| TrainError::Device { device: format!("cuda:{index}"), reason: "not a device index".into() })?;
    // Without a driver the CUDA runtime only fails at the first kernel, with a panic
    // deep in its loader: the driver API itself says so up front instead.
    use cudarc::driver::result;
    // SAFETY: only tries to open the driver library by its known names.
    #[allow(unsafe_code)]
    let library = unsafe { cudarc::driver::sys::is_culib_present() };
    let init = if library { result::init().map_err(|e| e.to_string()) } else { Err("not loaded".into()) };
    let count = match &init {
        Ok(()) => result::device::get_count().map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let proc_hint = std::path::Path::new("/proc/driver/nvidia/version").exists();
    match driver_verdict(library, init, count, i, proc_hint) {
        Some(reason) => Err(TrainError::Device { device: format!("cuda:{i}"), reason }),
        None => {
            enable_kernel_cache();
            Ok(Device::cuda(i))
        }
    }
}

/// cubecl's on-disk kernel cache, on before the first CUDA device: NVRTC compiles each
/// kernel once per machine (or per shared cache folder), not once per process and
/// rank. In `S3_KERNEL_CACHE` (a folder; `off` disables it), else the user's cache
/// folder, unless a `cubecl.toml` chose a place; a configuration the program already
/// set wins.
#[cfg(feature = "cuda")]
fn enable_kernel_cache() {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    let configured_default = matches!(config.environment.path, CacheConfig::Target);
    match kernel_cache_place(std::env::var("S3_KERNEL_CACHE").ok().as_deref(), configured_default) {
        CachePlace::Off => return,
        CachePlace::Folder(dir) => config.environment.path = CacheConfig::Directory(dir),
        CachePlace::UserCache => config.environment.path = CacheConfig::Global,
        CachePlace::AsConfigured => {}
    }
    config.compilation.cache = true;
    if !CubeClRuntimeConfig::try_set(config) {
        tracing::debug!("cubecl's configuration was already set; its kernel cache setting is kept");
    }
}

/// Where cubecl's kernel cache goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachePlace {
    /// No cache (`S3_KERNEL_CACHE=off`).
    Off,
    /// The folder `S3_KERNEL_CACHE` names.
    Folder(std::path::PathBuf),
    /// The user's cache folder: cubecl's own default (`target/` of the project the
    /// binary started in) means nothing for a deployed binary.
    UserCache,
    /// Where a `cubecl.toml` (or its variables) put it.
    AsConfigured,
}

/// The cache's place from `S3_KERNEL_CACHE` and whether cubecl's configuration is
/// still its default.
pub fn kernel_cache_place(var: Option<&str>, configured_default: bool) -> CachePlace {
    match var.map(str::trim).filter(|v| !v.is_empty()) {
        Some("off") => CachePlace::Off,
        Some(dir) => CachePlace::Folder(dir.into()),
        None if configured_default => CachePlace::UserCache,
        None => CachePlace::AsConfigured,
    }
}

/// Why GPU `ordinal` cannot be used, from what the driver API said: whether its
/// library (`libcuda.so`) loads, `cuInit`, and the device count. `/proc/driver/nvidia/
/// version` only words the message: sandboxed GPU machines (gVisor) run the driver
/// without it, so its absence alone refuses nothing.
pub fn driver_verdict(
    library: bool,
    init: std::result::Result<(), String>,
    count: std::result::Result<i32, String>,
    ordinal: usize,
    proc_hint: bool,
) -> Option<String> {
    if !library {
        let hint = if proc_hint {
            "the kernel module is loaded but libcuda.so is not on the library path (the NVIDIA container toolkit mounts it)"
        } else {
            "no NVIDIA driver on this machine"
        };
        return Some(format!("{hint}; use --device cpu"));
    }
    if let Err(e) = init {
        return Some(format!("the CUDA driver did not initialise: {e}"));
    }
    match count {
        Err(e) => Some(format!("the CUDA driver cannot count its GPUs: {e}")),
        Ok(0) => Some("the CUDA driver sees no GPU (CUDA_VISIBLE_DEVICES?)".into()),
        Ok(n) if ordinal >= n as usize => {
            Some(format!("this machine has {n} GPU(s): cuda:0 to cuda:{} (one GPU per local rank)", n - 1))
        }
        Ok(_) => None,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(index: &str) -> Result<Device> {
    Err(TrainError::Device {
        device: format!("cuda:{index}"),
        reason: "this build has no CUDA support; rebuild with `--features cuda` or use --device cpu".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_api_decides_and_proc_only_words_the_message() {
        // A sandboxed GPU machine: no /proc entry, but the driver answers.
        assert_eq!(driver_verdict(true, Ok(()), Ok(1), 0, false), None);
        let e = driver_verdict(true, Ok(()), Ok(1), 3, true).unwrap();
        assert!(e.contains("1 GPU(s)") && e.contains("cuda:0 to cuda:0"), "{e}");
        assert!(
            driver_verdict(false, Err("x".into()), Err("x".into()), 0, false).unwrap().contains("no NVIDIA driver")
        );
        assert!(driver_verdict(false, Err("x".into()), Err("x".into()), 0, true).unwrap().contains("libcuda.so"));
        let e = driver_verdict(true, Err("CUDA_ERROR_NO_DEVICE".into()), Err("-".into()), 0, true).unwrap();
        assert!(e.contains("did not initialise: CUDA_ERROR_NO_DEVICE"), "{e}");
        assert!(driver_verdict(true, Ok(()), Ok(0), 0, true).unwrap().contains("no GPU"));
    }

    #[test]
    fn the_kernel_cache_is_on_by_default_somewhere_a_deployed_binary_can_keep_it() {
        assert_eq!(kernel_cache_place(None, true), CachePlace::UserCache, "not target/ of nothing");
        assert_eq!(kernel_cache_place(Some(""), true), CachePlace::UserCache);
        assert_eq!(kernel_cache_place(None, false), CachePlace::AsConfigured, "a cubecl.toml's choice stays");
        assert_eq!(kernel_cache_place(Some("/scratch/k"), false), CachePlace::Folder("/scratch/k".into()));
        assert_eq!(kernel_cache_place(Some("off"), true), CachePlace::Off);
    }
}
