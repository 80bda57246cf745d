//! CUDA ranks: gradients summed by NCCL on the GPU, one process per GPU, any number
//! of nodes (DESIGN §9).
//!
//! Joining: the TCP star at `MASTER_ADDR:MASTER_PORT` ([`TcpCollective`]) comes up
//! first; the ranks compare NCCL versions and rank 0 hands out the 128-byte unique id
//! over it ([`super::nccl_id`]); then each rank joins the NCCL communicator on the GPU
//! `LOCAL_RANK` chose, non-blocking, within the rendezvous timeout.
//!
//! Reducing the flat buffer: burn's queued work is waited for (a device sync), the
//! buffer's device pointer taken ([`super::cuda_buffer`]), and the sum runs in place
//! on an NCCL stream of our own, in ~64 MB buckets inside one group; the stream is
//! polled to completion together with the communicator's asynchronous error, within
//! the io timeout. On any failure the communicator is aborted and the TCP star's roll
//! call names the ranks that are gone, so a dead peer ends every rank with an error
//! naming it, as the TCP collective does.
//!
//! Host buffers (the weights digests, the version exchange) and broadcasts are a few
//! bytes: they stay on the TCP star, which is also the barrier.

use std::sync::Arc;
use std::time::Duration;

use burn::prelude::*;
use cudarc::driver::{CudaContext, CudaStream};

use super::cuda_buffer;
use super::flat::{bucket_elems, buckets};
use super::nccl_ffi::{self, Comm, Failure};
use super::nccl_id;
use super::{Collective, CollectiveOptions, TcpCollective};
use crate::error::{Result, TrainError};

/// How long the roll call after a failure waits for the other ranks.
const ROLL_CALL: Duration = Duration::from_secs(30);

/// One CUDA rank's end of the group.
pub(super) struct NcclCollective {
    tcp: TcpCollective,
    comm: Comm,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    io_timeout: Duration,
}

impl NcclCollective {
    /// This process's libnccl version, or why it has none (checked before the
    /// rendezvous, reported after it so every rank hears of it).
    pub(super) fn check_library() -> std::result::Result<i32, String> {
        nccl_ffi::library_version()
    }

    /// Joins NCCL over the rendezvous `tcp` on GPU `ordinal`; `library` is
    /// [`NcclCollective::check_library`]'s answer.
    pub(super) fn join(
        mut tcp: TcpCollective,
        library: std::result::Result<i32, String>,
        ordinal: usize,
        options: &CollectiveOptions,
    ) -> Result<NcclCollective> {
        let (rank, world) = (tcp.rank(), tcp.world());
        let version = *library.as_ref().unwrap_or(&0);
        let id = nccl_id::exchange(&mut tcp, version, || {
            nccl_ffi::unique_id().map_err(|f| device_error(rank, "creating the NCCL unique id", f))
        });
        // This rank's own missing library is the clearer message.
        let id = match (library, id) {
            (Err(why), _) => return Err(TrainError::Collective(format!("rank {rank}: {why}"))),
            (Ok(_), id) => id?,
        };
        let ctx = CudaContext::new(ordinal).map_err(|e| TrainError::CollectiveDevice {
            what: format!("rank {rank}: opening CUDA device {ordinal}"),
            source: e.into(),
        })?;
        ctx.bind_to_thread().map_err(|e| TrainError::CollectiveDevice {
            what: format!("rank {rank}: CUDA context"),
            source: e.into(),
        })?;
        let stream = ctx.new_stream().map_err(|e| TrainError::CollectiveDevice {
            what: format!("rank {rank}: NCCL stream"),
            source: e.into(),
        })?;
        let comm = match Comm::init(world, rank, id, options.rendezvous_timeout) {
            Ok(c) => c,
            Err(f) => return Err(failed(&mut tcp, rank, "joining the NCCL communicator", f)),
        };
        // Everyone is in before the first reduction.
        tcp.barrier()?;
        tracing::info!(rank, world, ordinal, nccl = %nccl_id::version_name(version), "joined the NCCL group");
        Ok(NcclCollective { tcp, comm, ctx, stream, io_timeout: options.io_timeout })
    }
}

fn device_error(rank: usize, what: &str, f: Failure) -> TrainError {
    TrainError::CollectiveDevice { what: format!("rank {rank}: {what}"), source: Box::new(f) }
}

/// The error of a failed NCCL operation, after asking the TCP star who is still there.
fn failed(tcp: &mut TcpCollective, rank: usize, what: &str, f: Failure) -> TrainError {
    let gone = tcp.roll_call(ROLL_CALL).unwrap_or_default();
    let who = match gone.as_slice() {
        [] => String::new(),
        ranks => {
            let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
            format!(" (ranks that did not answer the roll call, stalled or gone: {})", list.join(", "))
        }
    };
    device_error(rank, &format!("{what}{who}"), f)
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world(&self) -> usize {
        self.tcp.world()
    }

    fn kind(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.tcp.all_reduce_sum(buf)
    }

    fn all_reduce_sum_tensor(&mut self, flat: Tensor<1>) -> Result<Tensor<1>> {
        if cuda_buffer::cuda_ordinal(&flat.device()).is_none() {
            // Not on the GPU (nothing in the trainer does this): through the host.
            let device = flat.device();
            let n = flat.dims()[0];
            let mut v: Vec<f32> = flat.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            self.tcp.all_reduce_sum(&mut v)?;
            return Ok(Tensor::from_data(TensorData::new(v, [n]), &device));
        }
        let rank = self.rank();
        let buf = cuda_buffer::into_device(flat)?;
        self.ctx.bind_to_thread().map_err(|e| TrainError::CollectiveDevice {
            what: format!("rank {rank}: CUDA context"),
            source: e.into(),
        })?;
        let ranges = buckets(buf.len(), bucket_elems());
        if let Err(f) = self.comm.all_reduce_sum(&buf, &ranges, &self.stream, self.io_timeout) {
            return Err(failed(&mut self.tcp, rank, "summing the gradients with NCCL", f));
        }
        Ok(buf.into_tensor())
    }

    fn all_reduce_avg_into_new(&mut self, send: &Tensor<1>) -> Result<Tensor<1>> {
        let device = send.device();
        if cuda_buffer::cuda_ordinal(&device).is_none() {
            let world = self.world() as f32;
            return Ok(self.all_reduce_sum_tensor(send.clone())?.div_scalar(world));
        }
        let rank = self.rank();
        let n = send.dims()[0];
        // A copy to send from, and zeros to receive into: a bucket reduced at the
        // wrong address leaves zeros where its values belong.
        let from = cuda_buffer::into_device(send.clone().add_scalar(0.0))?;
        let into = cuda_buffer::into_device(Tensor::<1>::zeros([n], &device))?;
        self.ctx.bind_to_thread().map_err(|e| TrainError::CollectiveDevice {
            what: format!("rank {rank}: CUDA context"),
            source: e.into(),
        })?;
        let ranges = buckets(n, bucket_elems());
        if let Err(f) = self.comm.all_reduce_avg_into(&from, &into, &ranges, &self.stream, self.io_timeout) {
            return Err(failed(&mut self.tcp, rank, "averaging with NCCL", f));
        }
        drop(from.into_tensor());
        Ok(into.into_tensor())
    }

    fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<()> {
        self.tcp.broadcast(bytes)
    }

    fn barrier(&mut self) -> Result<()> {
        self.tcp.barrier()
    }
}
