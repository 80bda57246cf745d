//! Progress bar and log lines for `s3-train train`.

use std::time::Duration;

use burn::prelude::Device;
use indicatif::{ProgressBar, ProgressStyle};
use s3_trainer::train::{RunSpec, TrainEvent, TrainOutcome, train};

/// Runs training with a progress bar (steps, ETA, loss, Dice, lr).
pub fn train_with_progress(spec: &RunSpec, device: &Device) -> anyhow::Result<TrainOutcome> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps, eta {eta}  {msg}")
            .expect("template"),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let out = train(spec, device, &|e| match e {
        TrainEvent::Started { samples, steps_per_epoch, total_steps, from } => {
            bar.set_length(*total_steps);
            bar.set_position(from.step);
            bar.suspend(|| {
                eprintln!(
                    "{samples} training samples, {steps_per_epoch} steps per epoch; starting at step {} (epoch {})",
                    from.step, from.sampler.epoch
                )
            });
        }
        TrainEvent::Step(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "epoch {} loss {:.4} dice {:.3} lr {:.1e} {:.2} samples/s",
                m.epoch, m.loss, m.dice, m.lr, m.samples_per_s
            ));
            tracing::info!(step = m.step, loss = m.loss, dice = m.dice, "step");
        }
        TrainEvent::Skipped { sample_id, reason } => bar.suspend(|| eprintln!("skipped {sample_id}: {reason}")),
        TrainEvent::Checkpoint { step, dir } => tracing::info!(step, dir, "checkpoint"),
    });
    bar.finish_and_clear();
    Ok(out?)
}
