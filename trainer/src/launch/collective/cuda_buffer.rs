//! The one place that reaches under burn's tensor API to a CUDA device pointer, for
//! NCCL. Everything here is internal API, pinned: burn 0.22.1 with its `extension`
//! feature (`Tensor::try_into_primitive` / `from_primitive`, `burn::backend::Cube`,
//! `DispatchDevice::Cube`), burn-cubecl 0.22.1's `CubeTensor` (`client`, `handle`,
//! `dtype`, `can_mut`, `copy`), cubecl-runtime 0.11.3's `Client::get_resource`
//! (a `ManagedResource` that keeps the allocation in place while held) and
//! cubecl-cuda 0.11.3's `GpuResource { ptr, size }` (the pointer already includes
//! the binding's offset). This build has no `fusion` feature, so a CUDA tensor's
//! primitive is the `CubeTensor` itself; with fusion it would be a fusion handle and
//! `into_device` would have to resolve it first.
//!
//! cubecl runs the device on the primary CUDA context of each GPU; cudarc's
//! `CudaContext::new(ordinal)` retains that same context, so these pointers are
//! valid on the NCCL stream.

use burn::backend::{BackendTypes, Cube, CubeDevice, DispatchDevice};
use burn::prelude::*;
use burn::tensor::DType;
use cubecl_runtime::runtime::Runtime;
use cubecl_runtime::server::ServerStorage;
use cubecl_runtime::storage::{ComputeStorage, ManagedResource};

use crate::error::{Result, TrainError};

type CudaServer = <cubecl_cuda::CudaRuntime as Runtime>::Server;
type GpuResource = <<CudaServer as ServerStorage>::Storage as ComputeStorage>::Resource;
type CubeTensor = <Cube as BackendTypes>::FloatTensorPrimitive;

/// The CUDA ordinal of `device`, when it is a CUDA device (with or without autodiff).
pub(super) fn cuda_ordinal(device: &Device) -> Option<usize> {
    match device.clone().without_autodiff().as_dispatch() {
        DispatchDevice::Cube(CubeDevice::Cuda(d)) => Some(d.index),
        _ => None,
    }
}

/// A flat f32 tensor's CUDA buffer, held in place, that this process alone may
/// write: what NCCL reduces in place. Only [`into_device`] makes one, from a live
/// allocation of at least `len` f32s, so the pointer is valid while it lives.
pub(super) struct DeviceF32 {
    tensor: CubeTensor,
    resource: ManagedResource<GpuResource>,
    len: usize,
}

impl DeviceF32 {
    /// The device address of the first element.
    pub(super) fn ptr(&self) -> u64 {
        self.resource.resource().ptr
    }

    /// Elements.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The tensor again (after the NCCL stream finished with the buffer).
    pub(super) fn into_tensor(self) -> Tensor<1> {
        let DeviceF32 { tensor, resource, .. } = self;
        drop(resource);
        Tensor::from_primitive::<Cube>(tensor)
    }
}

fn failed(what: &str, why: impl std::fmt::Display) -> TrainError {
    TrainError::Collective(format!("the gradient buffer on the GPU: {what}: {why}"))
}

/// The buffer of the flat f32 CUDA tensor `flat`, after every kernel burn queued has
/// finished (NCCL runs on a stream of its own, ordered after them by this sync).
pub(super) fn into_device(flat: Tensor<1>) -> Result<DeviceF32> {
    let device = flat.device();
    let len = flat.dims()[0];
    let flat = if flat.dtype() == DType::F32 { flat } else { flat.cast(burn::tensor::FloatDType::F32) };
    let tensor = flat.try_into_primitive::<Cube>().map_err(|e| failed("not a CUDA tensor", format!("{e:?}")))?;
    // NCCL writes the sum into this buffer: it must be this tensor's alone, and dense.
    let tensor = if tensor.can_mut() && tensor.is_contiguous_buffer() { tensor } else { tensor.copy() };
    device.sync().map_err(|e| failed("waiting for the backward pass", format!("{e:?}")))?;
    let resource =
        tensor.client.get_resource::<CudaServer>(tensor.handle.clone()).map_err(|e| failed("device pointer", e))?;
    if (resource.resource().size as usize) < len * 4 {
        return Err(failed("device pointer", format!("{} bytes for {len} f32s", resource.resource().size)));
    }
    Ok(DeviceF32 { tensor, resource, len })
}
