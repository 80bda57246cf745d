//! One label map from per-class predictions, as the reference's
//! `validate_paired_img_gt` writes it: the classes in ascending order, each
//! class's foreground written with its value, so a higher class wins where two
//! predictions overlap.

use std::collections::BTreeMap;

use crate::error::{Result, TrainError};

/// The classes to predict, in the order they are merged: `wanted`, or every class
/// of the label but 0 (`counts` from [`crate::predict::class_voxels`]) when
/// `wanted` is empty. Refused: no class at all, and a class outside 1–255, which a
/// uint8 map cannot hold (0 is the background).
pub fn classes(counts: &BTreeMap<i32, usize>, wanted: &[i32]) -> Result<Vec<i32>> {
    let mut values: Vec<i32> =
        if wanted.is_empty() { counts.keys().copied().filter(|&v| v != 0).collect() } else { wanted.to_vec() };
    values.sort_unstable();
    values.dedup();
    if values.is_empty() {
        return Err(TrainError::Config("the label has no class but 0 (the background)".into()));
    }
    if let Some(v) = values.iter().find(|&&v| !(1..=255).contains(&v)) {
        return Err(TrainError::Config(format!("class {v}: the output is uint8, so classes are 1 to 255")));
    }
    Ok(values)
}

/// Writes `class` wherever `mask` (0/1, the map's grid) is 1, over what is there.
pub fn overlay(map: &mut [u8], mask: &[u8], class: u8) {
    for (m, &p) in map.iter_mut().zip(mask) {
        if p == 1 {
            *m = class;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_of_the_label_or_the_wanted_ones_ascending() {
        let counts = BTreeMap::from([(0, 900), (7, 5), (2, 40), (3, 12)]);
        assert_eq!(classes(&counts, &[]).unwrap(), [2, 3, 7]);
        assert_eq!(classes(&counts, &[7, 2, 7]).unwrap(), [2, 7]);
        assert!(classes(&BTreeMap::from([(0, 10)]), &[]).is_err(), "only background");
        for bad in [0, 256, -1] {
            assert!(classes(&counts, &[3, bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_higher_class_wins_where_two_overlap() {
        let (a, b) = ([1, 1, 0, 0], [0, 1, 1, 0]);
        let mut map = vec![0u8; 4];
        for c in classes(&BTreeMap::new(), &[5, 2]).unwrap() {
            overlay(&mut map, if c == 2 { &a } else { &b }, c as u8);
        }
        assert_eq!(map, [2, 5, 5, 0]);
    }
}
