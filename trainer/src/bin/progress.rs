//! Progress bar and log lines for `s3-train train`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use burn::prelude::Device;
use indicatif::{ProgressBar, ProgressStyle};
use s3_trainer::train::{RunSpec, TrainEvent, TrainOutcome, train};

/// Runs training with a progress bar (steps, ETA, loss, Dice, lr); with
/// `samples_log`, appends each step's sample ids to that file.
pub fn train_with_progress(
    spec: &RunSpec,
    device: &Device,
    samples_log: Option<&std::path::Path>,
    output: s3_shards::cli::OutputFlags,
) -> anyhow::Result<TrainOutcome> {
    let samples_log = match samples_log {
        Some(p) => Some(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        )),
        None => None,
    };
    let samples_log = samples_log.as_ref();
    let bar = if output.progress() { ProgressBar::new(0) } else { ProgressBar::hidden() };
    let bar = bar.with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps, eta {eta}  {msg}")
            .expect("template"),
    );
    if output.progress() {
        bar.enable_steady_tick(Duration::from_millis(500));
    }
    let say = output.say();
    let out = train(spec, device, &|e| match e {
        TrainEvent::Started { samples, steps_per_epoch, total_steps, from } => {
            bar.set_length(*total_steps);
            bar.set_position(from.step);
            bar.suspend(|| {
                say(&format!(
                    "{samples} training samples, {steps_per_epoch} steps per epoch; starting at step {} (epoch {})",
                    from.step, from.sampler.epoch
                ))
            });
        }
        TrainEvent::Step { metrics: m, samples } => {
            if let Some(log) = samples_log {
                // One line per step, flushed: what a killed rank had trained on.
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(f, "{} {}", m.step, samples.join(" "));
                let _ = f.flush();
            }
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
