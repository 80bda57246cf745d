//! Gradient all-reduce between ranks (DESIGN §8–9: gradients are averaged every
//! optimiser step — the reference's DDP never synchronised, so its ranks drifted
//! apart).
//!
//! One small trait, [`Collective`], and two implementations picked by the device
//! ([`join`]):
//! - [`TcpCollective`] ([`tcp`]): a star through rank 0 over TCP, for CPU ranks and
//!   the demo. It is also every implementation's rendezvous and control plane.
//! - `NcclCollective` (`nccl`, with the `cuda` feature): NCCL through cudarc for CUDA
//!   ranks. The flat buffer stays on the GPU; the 128-byte NCCL unique id travels
//!   over the TCP rendezvous ([`nccl_id`]); libnccl is opened by the names NCCL ships
//!   under ([`nccl_lib`]).
//!
//! Above the trait there is one code path ([`crate::step`]): the same flat layout of
//! gradients, presence flags, metric totals and stop flags ([`flat`]).

use std::time::Duration;

use burn::prelude::*;

use crate::error::Result;

#[cfg(feature = "cuda")]
mod cuda_buffer;
pub mod flat;
#[cfg(feature = "cuda")]
mod nccl;
#[cfg(feature = "cuda")]
mod nccl_ffi;
pub mod nccl_id;
pub mod nccl_lib;
pub mod tcp;

pub use tcp::TcpCollective;

/// One rank's end of a group of ranks that reduce together. Every rank calls the same
/// operations in the same order.
pub trait Collective {
    /// This rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world(&self) -> usize;

    /// What carries the data (`tcp`, `nccl`), for the logs.
    fn kind(&self) -> &'static str;

    /// Replaces the host buffer `buf` on every rank with the element-wise sum over all
    /// ranks.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;

    /// The element-wise sum over all ranks of one flat f32 tensor, on the tensor's
    /// device. The default goes through host memory and [`Collective::all_reduce_sum`];
    /// a device collective keeps it on the device.
    fn all_reduce_sum_tensor(&mut self, flat: Tensor<1>) -> Result<Tensor<1>> {
        let device = flat.device();
        let n = flat.dims()[0];
        let mut values: Vec<f32> = flat.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 after convert");
        self.all_reduce_sum(&mut values)?;
        Ok(Tensor::from_data(TensorData::new(values, [n]), &device))
    }

    /// The element-wise average over all ranks of `send`, written into a new tensor
    /// (`send` left as it is), in the buckets training uses: the check that a device
    /// collective reduces the memory it is pointed at (`bench all-reduce --verify`);
    /// with one rank an in-place reduction would be a no-op and prove nothing. The
    /// default goes through host memory.
    fn all_reduce_avg_into_new(&mut self, send: &Tensor<1>) -> Result<Tensor<1>> {
        let world = self.world() as f32;
        let summed = self.all_reduce_sum_tensor(send.clone())?;
        Ok(summed.div_scalar(world))
    }

    /// Replaces `bytes` on every rank with rank 0's.
    fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<()>;

    /// Returns once every rank has reached it.
    fn barrier(&mut self) -> Result<()> {
        self.all_reduce_sum(&mut [0.0])
    }
}

/// How long a rank waits, and the job's shared secret.
#[derive(Clone)]
pub struct CollectiveOptions {
    /// Ranks start in any order: how long to wait for all of them (and, on GPUs, for
    /// the NCCL communicator to come up).
    pub rendezvous_timeout: Duration,
    /// After the rendezvous, how long one reduction may take: a dead or stalled peer
    /// ends every rank with an error naming it within this time. It must exceed one
    /// optimiser step's compute (every rank waits for the slowest).
    pub io_timeout: Duration,
    /// The job's join token (`S3_JOB_TOKEN`): a process without it is turned away.
    pub token: Option<String>,
    /// Where rank 0 listens (`S3_BIND_ADDR`: an IP, or IP:PORT); by default every
    /// interface at the rendezvous port. The rendezvous address is what the others
    /// dial, and a host's own name may resolve to an address only it has (127.0.1.1
    /// on Debian), so rank 0 never binds the name itself.
    pub bind: Option<String>,
    /// Set to stop waiting at the rendezvous (a SIGTERM while peers are missing):
    /// the join ends with [`TrainError::Stopped`](crate::TrainError::Stopped) instead
    /// of waiting out its timeout.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for CollectiveOptions {
    fn default() -> Self {
        CollectiveOptions {
            rendezvous_timeout: Duration::from_secs(600),
            io_timeout: Duration::from_secs(1800),
            token: None,
            bind: None,
            cancel: None,
        }
    }
}

impl std::fmt::Debug for CollectiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectiveOptions")
            .field("rendezvous_timeout", &self.rendezvous_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("bind", &self.bind)
            .finish()
    }
}

/// Joins the group of `world` ranks at `addr` (`host:port`, rank 0 listens) with the
/// collective `device` calls for: NCCL on a CUDA device (in builds with the `cuda`
/// feature), the TCP star otherwise.
pub fn join(
    addr: &str,
    rank: usize,
    world: usize,
    options: &CollectiveOptions,
    device: &Device,
) -> Result<Box<dyn Collective>> {
    #[cfg(feature = "cuda")]
    if let Some(ordinal) = cuda_buffer::cuda_ordinal(device) {
        // Before the rendezvous: a rank without libnccl says so at once (the others
        // learn it at the version exchange) instead of failing inside NCCL.
        let nccl = nccl::NcclCollective::check_library();
        let tcp = TcpCollective::connect_with(addr, rank, world, options)?;
        return Ok(Box::new(nccl::NcclCollective::join(tcp, nccl, ordinal, options)?));
    }
    let _ = device;
    Ok(Box::new(TcpCollective::connect_with(addr, rank, world, options)?))
}
