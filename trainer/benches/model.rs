//! Forward+backward of one 128³ sample on the CPU backend, per preset and attention
//! mode. Prints samples/s and ratios; never asserts.
//!
//! `cargo bench -p s3-trainer --bench model` (release), or `--profile dev` to reuse
//! the test build (burn's kernels are optimised there too). `PRESETS=small,vit_b_ori`.
//! PyTorch on the same architecture: `trainer/bench/torch_model.py` (by hand).

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use s3_trainer::config::{AttentionMode, SamConfig};
use s3_trainer::model::{Prompt, Sam};

fn step(model: &Sam, device: &Device, size: usize) -> f32 {
    let image = Tensor::<5>::random([1, 1, size, size, size], Distribution::Normal(0.0, 1.0), device);
    let coords = Tensor::<3>::from_data(TensorData::new(vec![64.0f32, 64.0, 64.0], [1, 1, 3]), device);
    let labels = Tensor::<2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), device);
    let emb = model.image_encoder.forward(image);
    let out = model.decode(emb, Prompt { points: Some((coords, labels)), mask: None });
    let loss = out.single().0.square().mean();
    let _grads = loss.clone().backward();
    loss.into_scalar::<f32>()
}

fn main() {
    let presets = std::env::var("PRESETS").unwrap_or_else(|_| "small,vit_b_ori".into());
    let device = Device::flex().autodiff();
    println!(
        "forward+backward, one 128³ sample, batch 1, flex CPU backend, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for name in presets.split(',') {
        let mut rates = Vec::new();
        for mode in [AttentionMode::Exact, AttentionMode::Unpadded] {
            let cfg = SamConfig { attention: mode, ..SamConfig::preset(name).expect("preset") };
            let model = Sam::new(&cfg, &device);
            step(&model, &device, cfg.img_size); // warm-up
            let n = if name == "vit_b_ori" { 1 } else { 3 };
            let t = Instant::now();
            for _ in 0..n {
                step(&model, &device, cfg.img_size);
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!("{name:<10} {mode:<9?} {rate:8.3} samples/s  ({:.2} s/sample)", 1.0 / rate);
            rates.push(rate);
        }
        println!("{name:<10} unpadded / exact speed: {:.2}x", rates[1] / rates[0]);
    }
}
