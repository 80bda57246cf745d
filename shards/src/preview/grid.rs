//! Many samples in one picture: a grid of their slices, each captioned with what it
//! is (sample id; class, category, modality and channel; split).

use std::collections::HashMap;

use image::{Rgb, RgbImage};

use super::caption::{CAPTION_PX, draw_text};
use crate::samples_table::SampleRow;

/// One picture of the grid and the lines written under it.
pub struct Tile {
    /// The picture.
    pub image: RgbImage,
    /// Caption lines.
    pub caption: Vec<String>,
}

const GAP: u32 = 6;
const BACKGROUND: Rgb<u8> = Rgb([16, 16, 16]);
const INK: Rgb<u8> = Rgb([235, 235, 235]);

/// The tiles in rows of `columns`, each with its caption under it.
pub fn grid(tiles: &[Tile], columns: usize) -> RgbImage {
    let columns = columns.clamp(1, tiles.len().max(1)) as u32;
    let w = tiles.iter().map(|t| t.image.width()).max().unwrap_or(1);
    let lines = tiles.iter().map(|t| t.caption.len()).max().unwrap_or(0) as u32;
    let h = tiles.iter().map(|t| t.image.height()).max().unwrap_or(1) + lines * CAPTION_PX + 2;
    let rows = (tiles.len() as u32).div_ceil(columns).max(1);
    let mut out = RgbImage::from_pixel(columns * (w + GAP) + GAP, rows * (h + GAP) + GAP, BACKGROUND);
    for (n, tile) in tiles.iter().enumerate() {
        let (x, y) = (GAP + (n as u32 % columns) * (w + GAP), GAP + (n as u32 / columns) * (h + GAP));
        image::imageops::replace(&mut out, &tile.image, i64::from(x), i64::from(y));
        for (l, line) in tile.caption.iter().enumerate() {
            draw_text(&mut out, line, x, y + tile.image.height() + 2 + l as u32 * CAPTION_PX, w, INK);
        }
    }
    out
}

/// Up to `n` samples of `dataset` (every dataset when `None`), spread out: the first
/// sample of each case before the second of any, cases taken in turn, and with every
/// dataset the datasets in turn, so 16 samples of a dataset with 8 cases show every
/// case twice and a store's grid starts with one sample of each dataset.
pub fn pick<'a>(rows: &'a [SampleRow], dataset: Option<&str>, n: usize) -> Vec<&'a SampleRow> {
    // dataset → (its order, cases seen); case → (its order in the dataset, samples seen)
    let mut datasets: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut cases: HashMap<(&str, &str, &str), (usize, usize)> = HashMap::new();
    let mut keyed: Vec<((usize, usize, usize), &SampleRow)> = Vec::new();
    for r in rows.iter().filter(|r| dataset.is_none_or(|d| r.dataset == d)) {
        let next = datasets.len();
        let d = datasets.entry(&r.dataset).or_insert((next, 0));
        let case = cases.entry((&r.dataset, &r.task, &r.case_id)).or_insert_with(|| {
            d.1 += 1;
            (d.1 - 1, 0)
        });
        keyed.push(((case.1, case.0, d.0), r));
        case.1 += 1;
    }
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().take(n).map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Split;

    fn row(dataset: &str, case: &str, label: i32) -> SampleRow {
        SampleRow {
            sample_id: format!("{dataset}/default/{case}/{label}"),
            shard: "s".into(),
            row: 0,
            dataset: dataset.into(),
            task: "default".into(),
            case_id: case.into(),
            label,
            label_name: format!("l{label}"),
            category: "c".into(),
            split: Split::Train,
            fg_voxels: 1,
        }
    }

    #[test]
    fn picks_spread_over_cases_before_repeating_one() {
        let rows: Vec<SampleRow> = ["a", "b", "c"]
            .iter()
            .flat_map(|c| (1..=3).map(move |l| row("D", c, l)))
            .chain([row("E", "x", 1)])
            .collect();
        let ids = |v: Vec<&SampleRow>| v.iter().map(|r| r.sample_id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(pick(&rows, Some("D"), 4)),
            ["D/default/a/1", "D/default/b/1", "D/default/c/1", "D/default/a/2"]
        );
        assert_eq!(pick(&rows, Some("D"), 100).len(), 9, "no more than there are");
        assert!(pick(&rows, Some("nope"), 4).is_empty());
        assert_eq!(ids(pick(&rows, None, 2)), ["D/default/a/1", "E/default/x/1"], "every dataset first");
    }

    #[test]
    fn the_grid_holds_every_tile_and_its_caption() {
        let tile = |shade: u8| Tile {
            image: RgbImage::from_pixel(40, 20, Rgb([shade, 0, 0])),
            caption: vec!["x".into(), "y".into()],
        };
        let g = grid(&[tile(200), tile(100), tile(50)], 2);
        let h = 20 + 2 * CAPTION_PX + 2;
        assert_eq!(g.dimensions(), (2 * (40 + GAP) + GAP, 2 * (h + GAP) + GAP));
        assert_eq!(*g.get_pixel(GAP, GAP), Rgb([200, 0, 0]));
        assert_eq!(*g.get_pixel(2 * GAP + 40, GAP), Rgb([100, 0, 0]));
        assert_eq!(*g.get_pixel(GAP, 2 * GAP + h), Rgb([50, 0, 0]));
    }
}
