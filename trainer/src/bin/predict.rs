//! `s3-train predict`: the command line over [`s3_trainer::predict`].

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use s3_ingest::catalog::Modality;
use s3_ingest::nifti_io::{ReadOptions, Volume, write_u8_like};
use s3_shards::preview::{LABEL_RED, PREDICTION_GREEN, Tile, grid, render_outlined};
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
    #[arg(long, conflicts_with = "click")]
    pub clicks_from_label: Option<String>,
    /// The label's classes to segment, e.g. `3` or `2,5`; every class of the label
    /// when left out. Each is prompted on its own; the output holds each class's
    /// value, a later (higher) class winning where two overlap, as the reference's
    /// `validate_paired_img_gt` merges them.
    #[arg(
        long,
        value_name = "C[,C...]",
        value_delimiter = ',',
        requires = "clicks_from_label",
        conflicts_with = "click"
    )]
    pub label_value: Vec<i32>,
    /// Simulated clicks.
    #[arg(long, default_value_t = 5)]
    pub clicks: usize,
    /// Seed of the simulated clicks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output mask (.nii.gz or .nii), uint8 on the image's grid: 1 = foreground with
    /// --click; the class values with --clicks-from-label.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a PNG of the crop's three slices: the prediction outlined in green;
    /// with --clicks-from-label each class's label (red) beside it, Dice in the caption.
    #[arg(long, value_name = "PNG")]
    pub preview: Option<PathBuf>,
}

/// The crop's three slices with `outlines`, centred on the first outline's mask (the
/// crop's centre when it is empty), and its caption.
fn tile(input: &[f32], outlines: &[(&[bool], image::Rgb<u8>)], caption: Vec<String>) -> Tile {
    let centre = outlines.first().map_or(&[][..], |(m, _)| m);
    let centre: Vec<bool> = if centre.iter().any(|&v| v) { centre.to_vec() } else { vec![false; input.len()] };
    // z-normalised intensities: no HU window, whatever the modality.
    Tile { image: render_outlined(input, "normalised", outlines, &centre, s3_shards::preview::ZOOM), caption }
}

fn foreground(logits: &[f32]) -> Vec<bool> {
    logits.iter().map(|&l| l > 0.0).collect()
}

/// An image (NIfTI, MetaImage, NRRD) from a path or any store URL, or a local DICOM folder.
fn read_volume(url: &str, opts: &s3_shards::StoreOptions, tmp: &std::path::Path) -> Result<Volume> {
    let local = s3_trainer::checkpoint::local_copy(url, opts, tmp).with_context(|| format!("fetching {url}"))?;
    Ok(s3_ingest::formats::read_volume(&local, &ReadOptions::default())?)
}

pub fn predict(
    a: PredictArgs,
    device: Device,
    opts: &s3_shards::StoreOptions,
    output: s3_shards::cli::OutputFlags,
) -> Result<()> {
    let modality: Modality = crate::parse_enum("modality", &a.modality.to_ascii_uppercase())?;
    let say = output.say();
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let (model, cfg) = match (&a.run, &a.weights) {
        (Some(run), _) => {
            let stage = s3_trainer::run_inputs::load_run_stage(run, opts).context("reading the run's stage")?;
            let cfg = s3_trainer::run_inputs::model_config(&stage)?;
            let (model, step) = s3_trainer::run_inputs::load_latest_weights(run, opts, &cfg, &device)?;
            say(&format!("weights: {run} at step {step} (preset {})", stage.preset));
            (model, cfg)
        }
        (None, Some(w)) => {
            let cfg = s3_trainer::config::SamConfig::preset(&a.preset)
                .with_context(|| format!("unknown preset {:?} (vit_b_ori, small)", a.preset))?;
            let file = s3_trainer::checkpoint::local_copy(w, opts, tmp.path())?;
            let mut model = Sam::new(&cfg, &device);
            s3_trainer::weights::load(&mut model, &file, s3_trainer::weights::Strictness::Strict)?;
            (model, cfg)
        }
        (None, None) => bail!("--weights or --run is needed"),
    };
    if cfg.img_size != s3_shards::SIDE {
        bail!("preset {:?} takes {}³ inputs; inference crops are {}³", a.preset, cfg.img_size, s3_shards::SIDE);
    }
    let image = read_volume(&a.image, opts, tmp.path())?;
    let prepared = PreparedImage::new(&image, modality)?;
    let mut tiles = Vec::new();
    let mask = match &a.clicks_from_label {
        None => {
            let p = predict_clicks(&model, &cfg, &prepared, &a.click, &device)?;
            for (c, seen) in a.click.iter().zip(&p.clicks) {
                say(&format!("click {:?} (label {}) → crop voxel {:?}", c.at, u8::from(c.positive), seen.at));
            }
            say(&format!("crop at {:?} of the 1.5 mm RAS+ grid", p.input.begin));
            if a.preview.is_some() {
                let fg = foreground(&p.logits);
                let caption = vec![
                    format!("prediction after {} click(s)", a.click.len()),
                    format!("crop at {:?} of the 1.5 mm RAS+ grid", p.input.begin),
                ];
                tiles.push(tile(&p.input.image, &[(&fg, PREDICTION_GREEN)], caption));
            }
            p.input.paste(&p.logits)
        }
        Some(label_url) => {
            let label = read_volume(label_url, opts, tmp.path())?;
            let ctx = ClassPredictor { model: &model, cfg: &cfg, image: &prepared, device: &device, say: &say };
            let previews = a.preview.is_some().then_some(&mut tiles);
            ctx.predict(&label, label_url, &a.label_value, a.seed, a.clicks.max(1), previews)?
        }
    };
    write_u8_like(&a.out, &image, &mask).with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(png) = &a.preview {
        let columns = if a.clicks_from_label.is_some() { 2 } else { 1 };
        grid(&tiles, columns).save(png).with_context(|| format!("writing {}", png.display()))?;
        println!("wrote {}: {} picture(s) of the crop, prediction outlined in green", png.display(), tiles.len());
    }
    let fg = mask.iter().filter(|&&m| m != 0).count();
    let voxel_ml = s3_ingest::geometry::spacing(&image.affine).iter().product::<f64>() / 1000.0;
    println!(
        "wrote {}: {fg} foreground voxels ({:.1} mL) on the {:?} grid",
        a.out.display(),
        fg as f64 * voxel_ml,
        image.shape
    );
    Ok(())
}

/// What every class of `--clicks-from-label` is predicted with.
struct ClassPredictor<'a> {
    model: &'a Sam,
    cfg: &'a s3_trainer::config::SamConfig,
    image: &'a PreparedImage<'a>,
    device: &'a Device,
    say: &'a dyn Fn(&str),
}

impl ClassPredictor<'_> {
    /// The label's classes `wanted` (every class but 0 when empty), each with its own
    /// crop and simulated clicks, merged in ascending order into one map of class values.
    /// With `previews`, each class's label and prediction are drawn into it.
    fn predict(
        &self,
        label: &Volume,
        label_url: &str,
        wanted: &[i32],
        seed: u64,
        clicks: usize,
        mut previews: Option<&mut Vec<Tile>>,
    ) -> Result<Vec<u8>> {
        s3_ingest::preprocess::check_pair(self.image.source(), label, &Default::default())?;
        let canonical = s3_ingest::preprocess::canonical_label(label)?;
        let counts = s3_trainer::predict::class_voxels(label);
        let classes = s3_trainer::class_map::classes(&counts, wanted).with_context(|| label_url.to_string())?;
        if !classes.unrepresentable.is_empty() {
            eprintln!(
                "warning: label values {:?} do not fit the uint8 output (1 to 255): not predicted",
                classes.unrepresentable
            );
        }
        let mut merged = vec![0u8; label.len()];
        let mut predicted = 0;
        for &value in &classes.values {
            let voxels = counts.get(&value).copied().unwrap_or(0);
            let Some(structure) = Structure::new(self.image, label, &canonical, value, voxels)? else {
                if !wanted.is_empty() {
                    bail!("class {value} of {label_url}: its {voxels} source voxels leave none at 1.5 mm");
                }
                (self.say)(&format!("class {value}: {voxels} source voxels, none left at 1.5 mm; not predicted"));
                continue;
            };
            predicted += 1;
            let id = format!("predict/{value}");
            let (dice, logits) = structure.run_clicks(self.model, self.cfg, &id, seed, clicks, self.device);
            for (n, d) in dice.iter().enumerate() {
                println!("click {}: Dice {d:.4} against class {value} on the source grid", n + 1);
            }
            (self.say)(&format!("class {value}: crop at {:?} of the 1.5 mm RAS+ grid", structure.input.begin));
            if let Some(tiles) = previews.as_deref_mut() {
                let truth: Vec<bool> = structure.mask.iter().map(|&m| m > 0.5).collect();
                let fg = foreground(&logits);
                let at = format!("{label_url} class {value}");
                tiles.push(tile(&structure.input.image, &[(&truth, LABEL_RED)], vec![at.clone(), "label".into()]));
                let last = dice.last().copied().unwrap_or(f64::NAN);
                let caption = vec![at, format!("prediction after {clicks} click(s): Dice {last:.3} (source grid)")];
                tiles.push(tile(&structure.input.image, &[(&truth, LABEL_RED), (&fg, PREDICTION_GREEN)], caption));
            }
            // `classes` has kept them to 1–255.
            structure.input.paste_over(&logits, &mut merged, value as u8);
        }
        if predicted == 0 {
            bail!("no class of {label_url} has a voxel left at 1.5 mm: nothing to predict");
        }
        Ok(merged)
    }
}
