//! Previews of a published store's samples, read through `samples.parquet`.

use std::collections::BTreeMap;
use std::sync::Arc;

use image::RgbImage;
use object_store::ObjectStore;
use object_store::path::Path;

use super::grid::{Tile, grid, pick};
use super::render::{LABEL_RED, render_outlined};
use crate::error::{Result, ShardError};
use crate::index::ShardIndex;
use crate::lookup;
use crate::reader::ShardReader;
use crate::sample::Sample;
use crate::samples_table;

/// What a preview shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// One sample, by id, at twice the size.
    Sample(String),
    /// Up to `n` samples of a dataset (every dataset when `None`), spread over cases.
    Spread {
        /// The dataset.
        dataset: Option<String>,
        /// How many.
        n: usize,
    },
}

/// What a sample's caption says: its id, then its class, category, modality and
/// channel, and its split.
pub fn caption(sample: &Sample) -> Vec<String> {
    let m = &sample.meta;
    let channel = if m.channel.is_empty() { String::new() } else { format!(" {}", m.channel) };
    vec![
        m.sample_id(),
        format!(
            "{} · {} · {}{channel} · {} · {} voxels",
            m.label_name,
            m.category,
            m.modality,
            m.split.as_str(),
            sample.fg_voxels
        ),
    ]
}

/// The preview of `selection` in `columns` columns, and the ids of the samples in it.
/// One sample is found as `s3-shards cat` finds it ([`lookup::find_sample`], which
/// also reads an index without `samples.parquet`); a spread is picked from the table.
pub async fn preview(
    store: &Arc<dyn ObjectStore>,
    index: &ShardIndex,
    selection: &Selection,
    columns: usize,
) -> Result<(RgbImage, Vec<String>)> {
    let (picked, zoom): (Vec<(Path, u64)>, u32) = match selection {
        Selection::Sample(id) => {
            let at = lookup::find_sample(store, index, id).await?;
            (vec![(at.shard, at.row)], super::ZOOM)
        }
        Selection::Spread { dataset, n } => {
            let rows = samples_table::read(store.as_ref()).await?;
            let picked = pick(&rows, dataset.as_deref(), *n);
            (picked.iter().map(|r| (Path::from(r.shard.as_str()), r.row as u64)).collect(), 1)
        }
    };
    if picked.is_empty() {
        let what = match selection {
            Selection::Spread { dataset: Some(d), .. } => format!("samples of dataset {d}"),
            _ => "samples".into(),
        };
        return Err(ShardError::NotFound(what));
    }
    // Each shard opened once, its rows read in order.
    let mut by_shard: BTreeMap<&Path, Vec<(usize, u64)>> = BTreeMap::new();
    for (n, (shard, row)) in picked.iter().enumerate() {
        by_shard.entry(shard).or_default().push((n, *row));
    }
    let mut samples: Vec<Option<Sample>> = (0..picked.len()).map(|_| None).collect();
    for (shard, at) in by_shard {
        let reader = ShardReader::open(store.clone(), shard).await?;
        for (n, row) in at {
            samples[n] = Some(reader.read_row(row).await?);
        }
    }
    let tiles: Vec<Tile> = samples
        .iter()
        .flatten()
        .map(|s| {
            let mask = s.mask_bools();
            let image = render_outlined(&s.image_f32(), &s.meta.modality, &[(&mask, LABEL_RED)], &mask, zoom);
            Tile { image, caption: caption(s) }
        })
        .collect();
    let ids = samples.iter().flatten().map(|s| s.meta.sample_id()).collect();
    Ok((grid(&tiles, columns), ids))
}
