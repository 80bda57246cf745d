//! `s3-train predict`: the command line over [`s3_trainer::predict`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use s3_ingest::catalog::Modality;
use s3_ingest::nifti_io::{ReadOptions, Volume, read_nifti, write_u8_like};
use s3_trainer::model::Sam;
use s3_trainer::predict::{PreparedImage, SourceClick, Structure, predict_clicks};

/// The command line of `predict`.
#[derive(clap::Args)]
pub struct PredictArgs {
    /// Weights: .safetensors (the reference's key names) or a torch .pth; a path
    /// or any store URL.
    #[arg(long, required_unless_present = "run", conflicts_with = "run")]
    pub weights: Option<String>,
    /// Preset the --weights were trained with.
    #[arg(long, default_value = "vit_b_ori")]
    pub preset: String,
    /// A run folder instead of --weights: its latest checkpoint and its stage's preset.
    #[arg(long)]
    pub run: Option<String>,
    /// The image (.nii or .nii.gz; a path or any store URL).
    #[arg(long)]
    pub image: String,
    /// CT, MR, US or PET: CT intensities are clamped to [-1000, 1000] as in training.
    #[arg(long, default_value = "CT")]
    pub modality: String,
    /// A click: voxel indices i,j,k of the image, `:1` foreground (the default) or
    /// `:0` background. Repeat for more clicks, in order.
    #[arg(long = "click", value_name = "I,J,K[:0|1]", required_unless_present = "clicks_from_label")]
    pub click: Vec<SourceClick>,
    /// Simulate the clicks from this label map (on the image's grid) instead.
    #[arg(long, conflicts_with = "click", requires = "label_value")]
    pub clicks_from_label: Option<String>,
    /// The label's class to segment.
    #[arg(long)]
    pub label_value: Option<i32>,
    /// Simulated clicks.
    #[arg(long, default_value_t = 5)]
    pub clicks: usize,
    /// Seed of the simulated clicks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output mask (.nii.gz or .nii): uint8, 1 = foreground, on the image's grid.
    #[arg(long)]
    pub out: PathBuf,
}

/// A NIfTI file from a path or any store URL.
fn read_volume(url: &str, tmp: &std::path::Path) -> Result<Volume> {
    let opts = s3_shards::StoreOptions::default();
    let local = s3_trainer::checkpoint::local_copy(url, &opts, tmp).with_context(|| format!("fetching {url}"))?;
    Ok(read_nifti(&local, &ReadOptions::default())?)
}

pub fn predict(a: PredictArgs, device: Device) -> Result<()> {
    let modality: Modality = crate::parse_enum("modality", &a.modality.to_ascii_uppercase())?;
    let opts = s3_shards::StoreOptions::default();
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let (model, cfg) = match (&a.run, &a.weights) {
        (Some(run), _) => {
            let stage = s3_trainer::train::load_run_stage(run, &opts).context("reading the run's stage")?;
            let cfg = s3_trainer::train::model_config(&stage)?;
            let (model, step) = s3_trainer::train::load_latest_weights(run, &opts, &cfg, &device)?;
            eprintln!("weights: {run} at step {step} (preset {})", stage.preset);
            (model, cfg)
        }
        (None, Some(w)) => {
            let cfg = s3_trainer::config::SamConfig::preset(&a.preset)
                .with_context(|| format!("unknown preset {:?} (vit_b_ori, small)", a.preset))?;
            let file = s3_trainer::checkpoint::local_copy(w, &opts, tmp.path())?;
            let mut model = Sam::new(&cfg, &device);
            s3_trainer::weights::load(&mut model, &file, s3_trainer::weights::Strictness::Strict)?;
            (model, cfg)
        }
        (None, None) => bail!("--weights or --run is needed"),
    };
    if cfg.img_size != s3_shards::SIDE {
        bail!("preset {:?} takes {}³ inputs; inference crops are {}³", a.preset, cfg.img_size, s3_shards::SIDE);
    }
    let image = read_volume(&a.image, tmp.path())?;
    let prepared = PreparedImage::new(&image, modality)?;
    let (mask, input_begin) = match &a.clicks_from_label {
        None => {
            let p = predict_clicks(&model, &cfg, &prepared, &a.click, &device)?;
            for (c, seen) in a.click.iter().zip(&p.clicks) {
                eprintln!("click {:?} (label {}) → crop voxel {:?}", c.at, u8::from(c.positive), seen.at);
            }
            (p.input.paste(&p.logits), p.input.begin)
        }
        Some(label_url) => {
            let value = a.label_value.context("--label-value is needed with --clicks-from-label")?;
            let label = read_volume(label_url, tmp.path())?;
            s3_ingest::preprocess::check_pair(&image, &label, &Default::default())?;
            let canonical = s3_ingest::preprocess::canonical_label(&label)?;
            let voxels = s3_trainer::predict::class_voxels(&label).get(&value).copied().unwrap_or(0);
            let Some(structure) = Structure::new(&prepared, &label, &canonical, value, voxels)? else {
                bail!("class {value} is not in {label_url} (or has no voxel at 1.5 mm)");
            };
            let id = format!("predict/{value}");
            let (dice, logits) = structure.run_clicks(&model, &cfg, &id, a.seed, a.clicks.max(1), &device);
            for (n, d) in dice.iter().enumerate() {
                println!("click {}: Dice {d:.4} against class {value} on the source grid", n + 1);
            }
            (structure.input.paste(&logits), structure.input.begin)
        }
    };
    write_u8_like(&a.out, &image, &mask).with_context(|| format!("writing {}", a.out.display()))?;
    let fg = mask.iter().filter(|&&m| m == 1).count();
    let voxel_ml = s3_ingest::geometry::spacing(&image.affine).iter().product::<f64>() / 1000.0;
    println!(
        "wrote {}: {fg} foreground voxels ({:.1} mL) on the {:?} grid; crop at {input_begin:?} of the 1.5 mm RAS+ grid",
        a.out.display(),
        fg as f64 * voxel_ml,
        image.shape
    );
    Ok(())
}
