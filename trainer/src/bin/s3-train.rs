//! `s3-train`: one SAM-Med3D trainer rank, and model tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::{Parser, Subcommand};
use s3_trainer::config::SamConfig;
use s3_trainer::model::Sam;
use s3_trainer::{fixture, weights};

/// SAM-Med3D trainer and model tools.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// cpu, or cuda / cuda:N in builds with the `cuda` feature.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Per-module and total parameter counts of a preset.
    Info {
        /// vit_b_ori, small or tiny.
        #[arg(long, default_value = "vit_b_ori")]
        preset: String,
    },
    /// Run a reference fixture (<prefix>.json, .weights.safetensors, .io.safetensors)
    /// and compare every output; exit 1 if any relative error exceeds 1e-4.
    CheckFixture {
        /// Path prefix, e.g. ../shared/fixtures/model/sam3d_tiny
        prefix: PathBuf,
    },
    /// Load a checkpoint (.safetensors, or a torch.save .pth with model_state_dict)
    /// and write it as safetensors with the reference key names.
    Convert {
        /// Input checkpoint.
        input: PathBuf,
        /// Output .safetensors.
        output: PathBuf,
        /// Preset the checkpoint was trained with.
        #[arg(long, default_value = "vit_b_ori")]
        preset: String,
        /// Load what matches instead of failing on missing/unexpected keys.
        #[arg(long)]
        allow_partial: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn preset(name: &str) -> Result<SamConfig> {
    match SamConfig::preset(name) {
        Some(c) => Ok(c),
        None => bail!("unknown preset {name:?} (vit_b_ori, small, tiny)"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let device = s3_trainer::device::parse_device(&cli.device)?;
    match cli.command {
        Command::Info { preset: name } => {
            let cfg = preset(&name)?;
            let m = Sam::new(&cfg, &device);
            let enc = &m.image_encoder;
            let rows = [
                ("image_encoder", enc.num_params()),
                (
                    "  patch_embed + pos_embed",
                    enc.patch_embed.num_params() + enc.pos_embed.val().dims().iter().product::<usize>(),
                ),
                ("  blocks", enc.blocks.iter().map(|b| b.num_params()).sum()),
                ("  neck", enc.neck.num_params()),
                ("prompt_encoder (trainable)", m.prompt_encoder.num_params() - m.prompt_encoder.pe_layer.num_params()),
                ("mask_decoder", m.mask_decoder.num_params()),
                ("  transformer", m.mask_decoder.transformer.num_params()),
            ];
            println!(
                "{name}: img {}³, embed {}, depth {}, heads {}, global {:?}, window {}, out {}",
                cfg.img_size, cfg.embed_dim, cfg.depth, cfg.heads, cfg.global_attn, cfg.window, cfg.out
            );
            for (k, v) in rows {
                println!("{k:<30} {v:>13}");
            }
            println!("{:<30} {:>13}", "total trainable", m.trainable_params());
            println!("{:<30} {:>13}", "buffers (PE Gaussian)", m.prompt_encoder.pe_layer.num_params());
        }
        Command::CheckFixture { prefix } => {
            let results =
                fixture::check_fixture(&prefix, &device).with_context(|| format!("fixture {}", prefix.display()))?;
            println!("{:<28} {:>14} {:>14}  {}", "OUTPUT", "MAX ABS ERR", "REL ERR", "");
            for r in &results {
                println!(
                    "{:<28} {:>14.3e} {:>14.3e}  {}",
                    r.name,
                    r.max_abs,
                    r.rel,
                    if r.ok() { "ok" } else { "FAIL" }
                );
            }
            if results.iter().any(|r| !r.ok()) {
                println!("parity FAILED (tolerance {:e})", fixture::TOLERANCE);
                return Ok(ExitCode::from(1));
            }
            println!("parity ok: every output within {:e} of the reference", fixture::TOLERANCE);
        }
        Command::Convert { input, output, preset: name, allow_partial } => {
            let cfg = preset(&name)?;
            let mut m = Sam::new(&cfg, &device);
            let strict = if allow_partial { weights::Strictness::AllowPartial } else { weights::Strictness::Strict };
            let report = weights::load(&mut m, &input, strict)?;
            weights::export_safetensors(&m, &output)?;
            println!(
                "{} tensors loaded; missing {:?}; unused {:?}; wrote {}",
                report.applied,
                report.missing,
                report.unused,
                output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
