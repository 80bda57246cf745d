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
    // deep in its loader: say so up front instead.
    if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        return Err(TrainError::Device {
            device: format!("cuda:{i}"),
            reason: "no NVIDIA driver on this machine (/proc/driver/nvidia/version missing); use --device cpu".into(),
        });
    }
    Ok(Device::cuda(i))
}

#[cfg(not(feature = "cuda"))]
fn cuda(index: &str) -> Result<Device> {
    Err(TrainError::Device {
        device: format!("cuda:{index}"),
        reason: "this build has no CUDA support; rebuild with `--features cuda` or use --device cpu".into(),
    })
}
