//! One training micro-step of a preset on the CPU backend, split into its parts
//! (image embedding, decoder passes, upsampling + loss, backward, click draws).
//! Prints samples/s and each part's share; never asserts.
//!
//! `cargo bench -p s3-trainer --bench train_step --profile dev`. `PRESET=small`, `CLICKS=5`.

use std::time::{Duration, Instant};

use burn::prelude::*;
use s3_shards::synthetic::Rng;
use s3_trainer::clicks::next_click;
use s3_trainer::config::SamConfig;
use s3_trainer::loss::seg_loss;
use s3_trainer::model::Prompt;
use s3_trainer::model::layers::trilinear;
use s3_trainer::run_inputs::seeded_model;
use s3_trainer::stage::StageConfig;
use s3_trainer::step::{micro_step, points_tensors};

fn main() {
    let preset = std::env::var("PRESET").unwrap_or_else(|_| "small".into());
    let clicks: usize = std::env::var("CLICKS").ok().and_then(|c| c.parse().ok()).unwrap_or(5);
    let cfg = SamConfig::preset(&preset).expect("preset");
    let device = Device::flex().autodiff();
    let model = seeded_model(&cfg, &device, 1);
    let items = vec![s3_trainer::bench::phantom_item(cfg.img_size, 1)];
    let s = cfg.img_size;
    println!(
        "{preset}, {clicks} passes, batch 1, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rates = Vec::new();
    for loss in ["full", "low"] {
        let stage: StageConfig = toml::from_str(&format!(
            "name = \"bench\"\npreset = \"{preset}\"\nepochs = 1\nclicks = {clicks}\nloss_resolution = \"{loss}\"\n"
        ))
        .expect("stage");
        let l = micro_step(&model, &items, &stage, &cfg, 1, &device).loss;
        let _ = l.backward(); // warm-up
        let n = 3;
        let t = Instant::now();
        for k in 0..n {
            let l = micro_step(&model, &items, &stage, &cfg, k, &device).loss;
            let _ = l.backward();
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        println!("  loss at {loss:<4} resolution: {rate:.3} samples/s ({:.2} s/sample)", 1.0 / rate);
        rates.push(rate);
    }
    println!("  low / full speed: {:.2}x", rates[1] / rates[0]);
    let n = 3;

    // The full-resolution step, part by part (forward values forced after each part).
    let mut parts = [Duration::ZERO; 5];
    let names = ["image embedding", "decoder passes", "upsample + loss", "backward", "click draws"];
    for k in 0..n {
        let images = Tensor::<5>::from_data(TensorData::new(items[0].image.clone(), [1, 1, s, s, s]), &device);
        let masks = Tensor::<5>::from_data(TensorData::new(items[0].mask.clone(), [1, 1, s, s, s]), &device);
        let t = Instant::now();
        let emb = model.image_encoder.forward(images);
        let _ = emb.clone().sum().into_scalar::<f32>();
        parts[0] += t.elapsed();
        let l = cfg.low_res();
        let mut low = Tensor::<5>::zeros([1, 1, l, l, l], &device);
        let mut rng = Rng::new(k);
        let mut pred = vec![0f32; s * s * s];
        let mut clicks_so_far = vec![Vec::new()];
        let mut total = Tensor::<1>::zeros([1], &device);
        for _ in 0..clicks {
            let t = Instant::now();
            clicks_so_far[0].push(next_click(&pred, &items[0].mask, s, &mut rng));
            parts[4] += t.elapsed();
            let t = Instant::now();
            let out = model
                .decode(emb.clone(), Prompt { points: Some(points_tensors(&clicks_so_far, &device)), mask: Some(low) });
            let (logits, _) = out.single();
            let _ = logits.clone().sum().into_scalar::<f32>();
            parts[1] += t.elapsed();
            let t = Instant::now();
            let full = trilinear(logits.clone(), s);
            total = total + seg_loss(full.clone(), masks.clone(), false).surrogate;
            pred = full.detach().into_data().try_to_vec::<f32>().expect("f32");
            parts[2] += t.elapsed();
            low = logits;
        }
        let t = Instant::now();
        let _ = total.backward();
        parts[3] += t.elapsed();
    }
    let sum: Duration = parts.iter().sum();
    for (name, p) in names.iter().zip(parts) {
        println!(
            "  {name:<16} {:7.3} s/sample  {:5.1}%",
            p.as_secs_f64() / n as f64,
            100.0 * p.as_secs_f64() / sum.as_secs_f64()
        );
    }
}
