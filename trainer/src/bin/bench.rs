//! `s3-train bench`: the command line over [`s3_trainer::bench`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::parse_enum;

/// What `bench` measures.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward + backward of training micro-steps (no optimiser step) on a phantom
    /// 128³ sample (`bench step` too): samples/s on the last line.
    #[command(alias = "step")]
    Model {
        /// vit_b_ori or small.
        #[arg(long, default_value = "vit_b_ori")]
        preset: String,
        /// f32 or bf16.
        #[arg(long, default_value = "f32")]
        precision: String,
        /// exact or unpadded.
        #[arg(long, default_value = "exact")]
        attention: String,
        /// Samples per micro-batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Decoder passes per sample.
        #[arg(long, default_value_t = 11)]
        clicks: usize,
        /// Timed micro-steps, after one warm-up.
        #[arg(long, default_value_t = 3)]
        steps: usize,
    },
    /// The loader on your own shards, as one rank reads them (decode, checksum, flips,
    /// z-normalisation): samples/s on the last line. Compare with the trainer's step
    /// rate to see how many loader threads a GPU needs.
    Loader {
        /// The published store.
        #[arg(long)]
        data: String,
        /// Decoding threads of the one loader (train --loader-threads): each takes whole
        /// row groups, the samples still come in order.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Samples to read (the first of the sampler's order).
        #[arg(long, default_value_t = 64)]
        samples: usize,
        /// Write the order read (`shard,row` per line) here, for a reference reader
        /// (trainer/bench/pyarrow_loader.py --order FILE) to read the same.
        #[arg(long, value_name = "FILE", conflicts_with = "epochs")]
        order_out: Option<PathBuf>,
        /// Read whole epochs instead, as a rank of a job (--rank/--world/--nodes), and
        /// print per epoch the bytes read from the store (one JSON line each with
        /// --json): with --cache-dir, what the node-local cache saves.
        #[arg(long, value_name = "N")]
        epochs: Option<u64>,
        /// This rank (with --epochs).
        #[arg(long, default_value_t = 0, requires = "epochs")]
        rank: usize,
        /// Ranks of the job (with --epochs).
        #[arg(long, default_value_t = 1, requires = "epochs")]
        world: usize,
        /// Nodes of the job, ranks in blocks per node (with --epochs).
        #[arg(long, default_value_t = 1, requires = "epochs")]
        nodes: usize,
        /// The node-local shard cache (train --cache-dir), shared by a node's ranks.
        #[arg(long, value_name = "DIR", requires = "epochs")]
        cache_dir: Option<PathBuf>,
        /// Most the cache may hold (train --cache-limit).
        #[arg(long, value_name = "SIZE", value_parser = crate::parse_cache_limit, requires = "cache_dir")]
        cache_limit: Option<u64>,
        /// Node-aware order on/off (train --node-order) [default: on with --cache-dir].
        #[arg(long, value_name = "on|off", value_parser = clap::builder::BoolishValueParser::new(), requires = "epochs")]
        node_order: Option<bool>,
        /// One JSON line per epoch.
        #[arg(long)]
        json: bool,
    },
    /// Writes a small synthetic store (CT-like 128³ samples) for a measured training run.
    PhantomStore {
        /// Store URL or directory to fill.
        out: String,
        /// Cases (one label each).
        #[arg(long, default_value_t = 8)]
        cases: usize,
    },
    /// Sums a flat f32 buffer over the ranks through the collective the device calls
    /// for (NCCL with --device cuda, else TCP); rank, world and rendezvous as for `train`.
    AllReduce {
        /// Buffer size in MB (vit_b_ori's gradients: 400).
        #[arg(long, default_value_t = 400)]
        mb: usize,
        /// Timed all-reduces, after one warm-up.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[command(flatten)]
        ranks: crate::rank_flags::RankFlags,
        /// Seconds one all-reduce may take before the run ends with an error.
        #[arg(long, default_value_t = 600, value_name = "SECS")]
        collective_timeout: u64,
        /// First average non-trivial values out of place through the training
        /// buckets and read each bucket's first, middle and last element back (a
        /// real check of the device pointers, with one GPU too).
        #[arg(long)]
        verify: bool,
    },
}

/// Runs one benchmark and prints its rate on the last line.
pub fn bench(
    what: BenchCommand,
    cli_device: &str,
    device: burn::prelude::Device,
    store_options: &s3_shards::StoreOptions,
) -> Result<()> {
    match what {
        BenchCommand::Model { preset, precision, attention, batch, clicks, steps } => {
            let b = s3_trainer::bench::ModelBench {
                preset,
                attention: parse_enum("attention", &attention)?,
                precision: parse_enum("precision", &precision)?,
                batch,
                clicks,
                steps,
            };
            let rate = s3_trainer::bench::model_step(&b, &device)?;
            println!(
                "bench model {} {precision} {attention} batch {batch} clicks {clicks} on {cli_device}: {:.3} s/sample",
                b.preset,
                1.0 / rate
            );
            println!("{rate:.3} samples/s");
        }
        BenchCommand::Loader {
            data,
            epochs: Some(epochs),
            rank,
            world,
            nodes,
            cache_dir,
            cache_limit,
            node_order,
            json,
            threads,
            ..
        } => {
            let loc = s3_shards::open_store(&data, store_options)?;
            let b = s3_trainer::bench::LoaderEpochs {
                epochs,
                rank,
                world,
                nodes,
                threads,
                cache: cache_dir
                    .map(|dir| s3_trainer::shard_cache::CacheSettings { dir, limit: cache_limit.unwrap_or(u64::MAX) }),
                node_order,
            };
            for e in s3_trainer::bench::loader_epochs(&loc, &b)? {
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!(
                        "bench loader rank {rank}/{world} epoch {}: {} samples ({} unreadable), {} store bytes, {} shard download(s), {:.2} s",
                        e.epoch, e.samples, e.failed, e.store_bytes, e.downloads, e.seconds
                    );
                }
            }
        }
        BenchCommand::Loader { data, threads, samples, order_out, .. } => {
            let loc = s3_shards::open_store(&data, store_options)?;
            let r = s3_trainer::bench::loader(&loc, threads, samples)?;
            if let Some(file) = order_out {
                let text: String = r.order.iter().map(|(shard, row)| format!("{shard},{row}\n")).collect();
                std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            }
            println!(
                "bench loader {}: {} samples ({} unreadable) with {threads} loader thread(s) in {:.2} s",
                loc.url(),
                r.samples,
                r.failed,
                r.seconds
            );
            println!("{:.2} samples/s", r.per_second());
        }
        BenchCommand::PhantomStore { out, cases } => {
            s3_trainer::bench::phantom_store(&out, cases)?;
            println!("bench phantom-store: {cases} cases in {out}");
        }
        BenchCommand::AllReduce { mb, iters, ranks, collective_timeout, verify } => {
            let flags = ranks.launch();
            let timeout = Duration::from_secs(collective_timeout.max(1));
            println!(
                "{}",
                s3_trainer::bench::all_reduce_launched(&flags, mb, iters, timeout, cli_device, device, verify)?
            );
        }
    }
    Ok(())
}
