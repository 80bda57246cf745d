//! Parity with torchio 1.2.1 on the reference fixtures (DESIGN §4 tolerances):
//! Resample(1.5) → ToCanonical() → CropOrPad(128, mask) per label value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use s3_ingest::catalog::Modality;
use s3_ingest::geometry::{self, Affine};
use s3_ingest::nifti_io::{ReadOptions, read_nifti};
use s3_ingest::preprocess::{CaseContext, PreprocessOptions, process_case};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/preprocess")
}

fn affine(v: &serde_json::Value) -> Affine {
    std::array::from_fn(|r| std::array::from_fn(|c| v[r][c].as_f64().unwrap()))
}

fn check_case(case: &str, image_file: &str) {
    let dir = fixtures();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.expected.json"))).unwrap()).unwrap();
    let opts = ReadOptions::default();
    let image = read_nifti(&dir.join(image_file), &opts).unwrap();
    let label = read_nifti(&dir.join(format!("{case}_label.nii.gz")), &opts).unwrap();
    let labels = BTreeMap::new();
    let ctx = CaseContext { dataset: "FIX", task: "default", case_id: case, modality: Modality::MR, labels: &labels };
    let all = PreprocessOptions { min_mask_mm3: 0.0, min_crop_voxels: 0, ..Default::default() };
    let out = process_case(&image, &label, &ctx, &all).unwrap();
    let canonical = geometry::to_canonical(&geometry::resample_label(&label).unwrap());
    let classes = expected["classes"].as_object().unwrap();
    assert_eq!(out.samples.len(), classes.len(), "{case}: one sample per class");

    for (c, exp) in classes {
        let c: i32 = c.parse().unwrap();
        let shape: Vec<usize> =
            exp["resampled_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(canonical.shape.to_vec(), shape, "{case} class {c}: resampled shape");
        let d = geometry::max_abs_diff(&canonical.affine, &affine(&exp["canonical_affine_after_resample"]));
        assert!(d <= 1e-4, "{case} class {c}: canonical affine off by {d} mm");

        let s = out.samples.iter().find(|s| s.meta.label_value == c).unwrap();
        let crop_affine: Affine = std::array::from_fn(|r| std::array::from_fn(|k| s.meta.affine[r * 4 + k]));
        let d = geometry::max_abs_diff(&crop_affine, &affine(&exp["crop_affine"]));
        assert!(d <= 1e-4, "{case} class {c}: crop affine off by {d} mm");

        // Expected arrays are NIfTI (x fastest); ours are C order (k fastest).
        let exp_img = read_nifti(&dir.join(format!("{case}.class{c}.expected_image.nii.gz")), &opts).unwrap();
        let exp_mask = read_nifti(&dir.join(format!("{case}.class{c}.expected_mask.nii.gz")), &opts).unwrap();
        assert_eq!(exp_img.shape, [128, 128, 128]);
        let d = geometry::max_abs_diff(&exp_img.affine, &affine(&exp["crop_affine"]));
        assert!(d <= 1e-3, "the expected image's header carries the crop affine ({d})");
        let ours_img = s.image_f32();
        let ours_mask = s.mask_bools();
        let (mut mask_diff, mut fg, mut img_far, mut worst) = (0usize, 0usize, 0usize, 0f64);
        let range = {
            let vals: Vec<f64> = (0..exp_img.len()).map(|n| exp_img.value(n)).collect();
            vals.iter().cloned().fold(f64::MIN, f64::max) - vals.iter().cloned().fold(f64::MAX, f64::min)
        };
        for i in 0..128 {
            for j in 0..128 {
                for k in 0..128 {
                    let f = i + 128 * (j + 128 * k);
                    let ours = (i * 128 + j) * 128 + k;
                    let em = exp_mask.value(f) > 0.0;
                    fg += usize::from(em);
                    mask_diff += usize::from(em != ours_mask[ours]);
                    let diff = (exp_img.value(f) - f64::from(ours_img[ours])).abs();
                    img_far += usize::from(diff > 1e-3 * range);
                    worst = worst.max(diff);
                }
            }
        }
        assert_eq!(fg as u64, exp["fg_voxels"].as_u64().unwrap(), "{case} class {c}: fixture fg count");
        assert!(mask_diff as f64 <= 0.01 * fg as f64, "{case} class {c}: {mask_diff} mask voxels differ of {fg}");
        assert!(
            img_far as f64 <= 0.01 * 128f64.powi(3),
            "{case} class {c}: {img_far} image voxels differ by > 1e-3 of range"
        );
        assert!(worst <= 1.0 + 1e-6, "{case} class {c}: worst image difference {worst} > one source unit");
        eprintln!("{case} class {c}: mask diff {mask_diff}/{fg}, image voxels off {img_far}, worst {worst}");
    }
}

#[test]
fn aniso_lps_matches_torchio() {
    check_case("aniso_lps", "aniso_lps_image.nii.gz");
}

#[test]
fn anat_las_bigendian_matches_torchio() {
    check_case("anat_las_bigendian", "anat_las_bigendian_image.nii");
}
