//! Which classes go into one label map of per-class predictions, as the
//! reference's `validate_paired_img_gt` writes it: ascending, each class's
//! foreground pasted with its value over the ones before it
//! ([`crate::predict::CropInput::paste_over`]), so a higher class wins where two
//! predictions overlap.

use std::collections::BTreeMap;

use crate::error::{Result, TrainError};

/// The classes to predict, in the order they are merged.
#[derive(Debug, PartialEq)]
pub struct Classes {
    /// Ascending, each in 1–255 and present in the label.
    pub values: Vec<i32>,
    /// Label values a uint8 map cannot hold (below 0, above 255), left out when
    /// every class was asked for.
    pub unrepresentable: Vec<i32>,
}

/// `wanted`, or every class of the label but 0 (`counts` from
/// [`crate::predict::class_voxels`]) when `wanted` is empty. Asked for by name, 0
/// (the background), a value outside 1–255 or one the label lacks is refused
/// before anything runs; a label with nothing to predict is refused too.
pub fn classes(counts: &BTreeMap<i32, usize>, wanted: &[i32]) -> Result<Classes> {
    let representable = |v: i32| (1..=255).contains(&v);
    let (mut values, mut unrepresentable): (Vec<i32>, Vec<i32>) = if wanted.is_empty() {
        counts.keys().copied().filter(|&v| v != 0).partition(|&v| representable(v))
    } else {
        for &v in wanted {
            if v == 0 {
                return Err(TrainError::Predict("class 0 is the background, not a class to predict".into()));
            }
            if !representable(v) {
                return Err(TrainError::Predict(format!("class {v}: the output is uint8, so classes are 1 to 255")));
            }
            if !counts.contains_key(&v) {
                let present: Vec<String> = counts.keys().filter(|&&c| c != 0).map(i32::to_string).collect();
                return Err(TrainError::Predict(format!(
                    "class {v} is not in the label (it has {})",
                    if present.is_empty() { "background only".into() } else { present.join(", ") }
                )));
            }
        }
        (wanted.to_vec(), Vec::new())
    };
    values.sort_unstable();
    values.dedup();
    unrepresentable.sort_unstable();
    if values.is_empty() {
        let why = if unrepresentable.is_empty() {
            "the label has no class but 0 (the background)".to_string()
        } else {
            format!("the label's classes {unrepresentable:?} do not fit a uint8 map (1 to 255)")
        };
        return Err(TrainError::Predict(why));
    }
    Ok(Classes { values, unrepresentable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(counts: &BTreeMap<i32, usize>, wanted: &[i32]) -> String {
        classes(counts, wanted).unwrap_err().to_string()
    }

    #[test]
    fn every_class_of_the_label_or_the_wanted_ones_ascending() {
        let counts = BTreeMap::from([(0, 900), (7, 5), (2, 40), (3, 12)]);
        assert_eq!(classes(&counts, &[]).unwrap().values, [2, 3, 7]);
        assert_eq!(classes(&counts, &[7, 2, 7]).unwrap().values, [2, 7]);
    }

    #[test]
    fn a_class_asked_for_is_checked_before_anything_runs() {
        let counts = BTreeMap::from([(0, 900), (2, 40), (3, 12)]);
        assert!(err(&counts, &[2, 5]).contains("class 5 is not in the label (it has 2, 3)"));
        assert!(err(&counts, &[0]).contains("background"));
        for bad in [256, -1] {
            assert!(err(&counts, &[2, bad]).contains("1 to 255"), "{bad}");
        }
        assert!(err(&BTreeMap::from([(0, 10)]), &[]).contains("no class but 0"));
    }

    #[test]
    fn values_a_uint8_map_cannot_hold_are_left_out_of_every_class() {
        let counts = BTreeMap::from([(-1, 3), (0, 900), (4, 40), (300, 12)]);
        assert_eq!(classes(&counts, &[]).unwrap(), Classes { values: vec![4], unrepresentable: vec![-1, 300] });
        assert!(err(&BTreeMap::from([(0, 9), (300, 1)]), &[]).contains("[300] do not fit"));
    }
}
