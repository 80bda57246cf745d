//! The flat buffer of one optimiser step, shared by every [`super::Collective`]:
//! gradients of a module flattened in visiting order (every rank visits the same
//! model in the same order), one presence flag per parameter, then a few host values
//! (metric totals, stop flags). A parameter without a gradient on this rank (a prompt
//! path unused this step) contributes zeros, and gets a gradient back if any rank had
//! one, as DDP does.
//!
//! The buffer is built on the gradients' device (`Tensor::cat`), so a device
//! collective never moves it through the host. The pure parts — [`Layout`],
//! [`buckets`], [`mean_scale`], [`flag`] — are what every implementation shares.

use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

/// NCCL reduces the buffer in pieces of about this size, inside one group.
pub const BUCKET_BYTES: usize = 64 << 20;

/// Where each part sits in a step's flat buffer: `values` gradient values, then
/// `flags` presence flags, then `extra` host values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Gradient values of every parameter, in visiting order.
    pub values: usize,
    /// One presence flag per parameter.
    pub flags: usize,
    /// Metric totals and stop flags.
    pub extra: usize,
}

impl Layout {
    /// Elements in the whole buffer.
    pub fn len(&self) -> usize {
        self.values + self.flags + self.extra
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gradient values.
    pub fn values(&self) -> Range<usize> {
        0..self.values
    }

    /// Everything after the values (flags, then extras): what goes back to the host.
    pub fn tail(&self) -> Range<usize> {
        self.values..self.len()
    }
}

/// `0..len` cut into consecutive ranges of at most `bucket` elements (the last one
/// shorter); no range is empty, and none when `len` is 0.
pub fn buckets(len: usize, bucket: usize) -> Vec<Range<usize>> {
    let bucket = bucket.max(1);
    (0..len.div_ceil(bucket)).map(|i| i * bucket..((i + 1) * bucket).min(len)).collect()
}

/// [`BUCKET_BYTES`] in f32 elements.
pub fn bucket_elems() -> usize {
    BUCKET_BYTES / std::mem::size_of::<f32>()
}

/// What the summed gradients are multiplied by: 1 / world, the mean over ranks.
pub fn mean_scale(world: usize) -> f32 {
    1.0 / world.max(1) as f32
}

/// A stop flag as it travels in the sum (1 or 0).
pub fn flag(set: bool) -> f32 {
    f32::from(u8::from(set))
}

/// Whether any rank set a flag, from its sum.
pub fn any(sum: f32) -> bool {
    sum > 0.0
}

/// Appends `module`'s gradients from `grads` (removing them) to `pieces`, as flat f32
/// tensors on `device` (zeros for a parameter without one), and a flag per parameter
/// to `flags`.
pub fn gather<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    pieces: &mut Vec<Tensor<1>>,
    flags: &mut Vec<f32>,
    device: &Device,
) {
    struct Gather<'a> {
        grads: &'a mut GradientsParams,
        pieces: &'a mut Vec<Tensor<1>>,
        flags: &'a mut Vec<f32>,
        device: &'a Device,
    }
    impl ModuleVisitor for Gather<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n = param.val().shape().num_elements();
            match self.grads.remove::<D>(param.id) {
                Some(g) => {
                    let g = g.reshape([n]); // [n]
                    let g = if g.dtype() == DType::F32 { g } else { g.cast(FloatDType::F32) };
                    self.pieces.push(g);
                    self.flags.push(1.0);
                }
                None => {
                    self.pieces.push(Tensor::zeros([n], self.device));
                    self.flags.push(0.0);
                }
            }
        }
    }
    module.visit(&mut Gather { grads, pieces, flags, device });
}

/// Registers `module`'s gradients from the reduced `values` (a flat tensor) and
/// `flags`, starting at `*pos` / `*k`, scaled by `scale` (1 / world: the mean over
/// ranks). A parameter no rank had a gradient for gets none.
pub fn scatter<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    values: &Tensor<1>,
    flags: &[f32],
    pos: &mut usize,
    k: &mut usize,
    scale: f32,
) {
    struct Scatter<'a> {
        grads: &'a mut GradientsParams,
        values: &'a Tensor<1>,
        flags: &'a [f32],
        pos: &'a mut usize,
        k: &'a mut usize,
        scale: f32,
    }
    impl ModuleVisitor for Scatter<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let shape = param.val().shape();
            let n = shape.num_elements();
            let at = *self.pos..*self.pos + n;
            *self.pos += n;
            let present = self.flags[*self.k] > 0.0;
            *self.k += 1;
            if present {
                let g = self.values.clone().slice(at).reshape(shape) * self.scale; // the parameter's shape
                self.grads.register::<D>(param.id, g);
            }
        }
    }
    module.visit(&mut Scatter { grads, values, flags, pos, k, scale });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collective::{Collective, TcpCollective};

    #[test]
    fn buckets_cover_the_buffer_in_order_without_gaps() {
        assert_eq!(buckets(0, 4), Vec::<Range<usize>>::new());
        assert_eq!(buckets(3, 4), vec![0..3]);
        assert_eq!(buckets(8, 4), vec![0..4, 4..8]);
        assert_eq!(buckets(9, 4), vec![0..4, 4..8, 8..9]);
        assert_eq!(buckets(2, 0), vec![0..1, 1..2], "a zero bucket size is one element");
        // vit_b_ori: 100,509,232 parameters + 1 flag per tensor + 5 extras.
        let n = 100_509_232 + 300 + 5;
        let b = buckets(n, bucket_elems());
        assert_eq!(bucket_elems(), 16 << 20);
        assert_eq!(b.len(), 6, "≈ 400 MB in 64 MB buckets");
        assert!(b.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!((b[0].start, b.last().unwrap().end), (0, n));
        assert!(b.iter().all(|r| !r.is_empty() && r.len() <= bucket_elems()));
    }

    #[test]
    fn layout_scale_and_flags() {
        let l = Layout { values: 10, flags: 3, extra: 5 };
        assert_eq!((l.len(), l.values(), l.tail()), (18, 0..10, 10..18));
        assert_eq!(mean_scale(4), 0.25);
        assert_eq!(mean_scale(3), 1.0 / 3.0);
        assert_eq!(mean_scale(0), 1.0);
        assert!(any(flag(true) + flag(false)) && !any(flag(false) + flag(false)));
    }

    fn free_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[test]
    fn gradients_are_averaged_and_a_gradient_on_one_rank_only_is_halved() {
        use burn::nn::{Linear, LinearConfig};

        #[derive(Module, Debug)]
        struct Two {
            a: Linear,
            b: Linear,
        }
        let device = Device::flex();
        device.seed(3);
        let model = Two { a: LinearConfig::new(3, 2).init(&device), b: LinearConfig::new(2, 2).init(&device) };
        let addr = free_addr();
        let grad = |rank: usize, n: usize| {
            Tensor::<2>::from_data(TensorData::new(vec![(rank + 1) as f32; n], [n / 2, 2]), &device)
        };
        let results: Vec<GradientsParams> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|rank| {
                    let (model, addr, device) = (&model, addr.clone(), device.clone());
                    s.spawn(move || {
                        let mut c = TcpCollective::connect(&addr, rank, 2, Duration::from_secs(10)).unwrap();
                        let mut g = GradientsParams::new();
                        g.register(model.a.weight.id, grad(rank, 6));
                        if rank == 0 {
                            g.register(model.b.weight.id, grad(rank, 4)); // b.weight: rank 0 only
                        }
                        let (mut pieces, mut flags) = (Vec::new(), Vec::new());
                        gather(model, &mut g, &mut pieces, &mut flags, &device);
                        assert!(g.is_empty(), "gather takes the gradients out");
                        let layout =
                            Layout { values: pieces.iter().map(|p| p.dims()[0]).sum(), flags: flags.len(), extra: 0 };
                        pieces.push(Tensor::from_data(TensorData::new(flags, [layout.flags]), &device));
                        let flat = c.all_reduce_sum_tensor(Tensor::cat(pieces, 0)).unwrap();
                        assert_eq!(flat.dims(), [layout.len()]);
                        let tail: Vec<f32> = flat.clone().slice(layout.tail()).into_data().try_to_vec::<f32>().unwrap();
                        let values = flat.slice(layout.values());
                        let (mut pos, mut k) = (0, 0);
                        scatter(model, &mut g, &values, &tail, &mut pos, &mut k, mean_scale(2));
                        assert_eq!((pos, k), (layout.values, layout.flags));
                        g
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in &results {
            let a: Vec<f32> = g.get::<2>(model.a.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(a, vec![1.5; 6], "(1 + 2) / 2");
            let b: Vec<f32> = g.get::<2>(model.b.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(b, vec![0.5; 4], "present on rank 0 only: (1 + 0) / 2");
            assert!(g.get::<1>(model.a.bias.as_ref().unwrap().id).is_none(), "no rank had a bias gradient");
        }
    }
}
