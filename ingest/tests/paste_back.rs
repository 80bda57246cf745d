//! The inverse of the crop on the geometry fixtures (DESIGN §8): a label's 128³
//! crop pasted back onto the 1.5 mm RAS+ grid is the label itself wherever the crop
//! reaches, and through the nearest resampling it lands on the source label; the
//! written NIfTI carries the source's affine.

use std::path::PathBuf;

use s3_ingest::geometry::{self, Canonical};
use s3_ingest::nifti_io::{ReadOptions, read_nifti, write_u8_like};
use s3_ingest::paste_back::Footprint;
use s3_ingest::preprocess::{canonical_label, label_values};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/preprocess")
}

/// Ingest's crop of class `c`: its start index and its mask.
fn crop_of(lab: &Canonical<i32>, c: i32) -> ([isize; 3], Vec<bool>) {
    let (lo, hi) = geometry::bbox(lab, |v| v == c).unwrap();
    let begin = geometry::crop_begin(lo, hi, 128);
    (begin, geometry::crop(lab, begin, 128, false, |v| v == c))
}

/// `floor`: the least Dice of the pasted crop against the source label inside the
/// footprint (1 where the source is coarser than 1.5 mm: nearest there and back is exact).
fn check_case(case: &str, path: &std::path::Path, floor: f64) {
    let opts = ReadOptions::default();
    let label = read_nifti(path, &opts).unwrap();
    let lab = canonical_label(&label).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for c in label_values(&label).unwrap() {
        let (begin, mask) = crop_of(&lab, c);
        let crop_affine = geometry::crop_affine(&lab.affine, begin);

        // On the canonical grid the inverse is exact: every voxel the crop covers is
        // reached once and holds the crop's value.
        let on_canonical = Footprint::new(&crop_affine, 128, lab.shape, &lab.affine).unwrap();
        let [n0, n1, n2] = lab.shape;
        let covered: usize = (0..3)
            .map(|a| {
                let (b, n) = (begin[a], lab.shape[a] as isize);
                (b.max(0)..(b + 128).min(n)).len()
            })
            .product();
        let mut reached = 0;
        on_canonical.for_each(|s, k| {
            let (i, j, kk) = (s % n0, s / n0 % n1, s / (n0 * n1));
            assert_eq!(mask[k], lab.data[(i * n1 + j) * n2 + kk] == c, "{case} class {c}: voxel {:?}", [i, j, kk]);
            reached += 1;
        });
        assert_eq!(reached, covered, "{case} class {c}: voxels of the crop's footprint");

        // On the source grid: the nearest-neighbour round trip through 1.5 mm.
        let f = Footprint::new(&crop_affine, 128, label.shape, &label.affine).unwrap();
        let pasted = f.paste(|k| mask[k]);
        let (mut inter, mut ours, mut truth) = (0usize, 0usize, 0usize);
        let mut inside = vec![false; pasted.len()];
        f.for_each(|s, _| inside[s] = true);
        for n in 0..pasted.len() {
            let t = label.value(n) == f64::from(c);
            assert!(inside[n] || pasted[n] == 0, "{case} class {c}: foreground outside the crop");
            if inside[n] {
                inter += usize::from(t && pasted[n] == 1);
                ours += usize::from(pasted[n] == 1);
                truth += usize::from(t);
            }
        }
        let dice = 2.0 * inter as f64 / (ours + truth) as f64;
        eprintln!("{case} class {c}: Dice of the pasted crop against the source label {dice:.4} ({truth} voxels)");
        // Boundary voxels dominate a structure of a few dozen voxels.
        assert!(
            truth < 1000 || dice >= floor,
            "{case} class {c}: pasted crop vs source label Dice {dice:.4} (floor {floor})"
        );

        // Written with the source's header: same grid, same affine, same voxels.
        let out = tmp.path().join(format!("{case}.{c}.nii.gz"));
        write_u8_like(&out, &label, &pasted).unwrap();
        let back = read_nifti(&out, &opts).unwrap();
        assert_eq!(back.shape, label.shape);
        assert_eq!(geometry::max_abs_diff(&back.affine, &label.affine), 0.0, "{case}: the source affine");
        assert_eq!(
            (back.header.sform_code, back.header.qform_code),
            (label.header.sform_code, label.header.qform_code)
        );
        assert!((0..pasted.len()).all(|n| back.value(n) == f64::from(pasted[n])), "{case}: voxels read back");
    }
}

fn fixture(case: &str) -> PathBuf {
    fixtures().join(format!("{case}_label.nii.gz"))
}

#[test]
fn the_crop_pasted_back_onto_an_oblique_anisotropic_lps_source() {
    check_case("aniso_lps", &fixture("aniso_lps"), 1.0);
}

#[test]
fn the_crop_pasted_back_onto_a_big_endian_las_source() {
    check_case("anat_las_bigendian", &fixture("anat_las_bigendian"), 1.0);
}

/// The phantoms are finer than 1.5 mm in-plane (0.9 and 1.2 × 1.1 mm, swapped and
/// flipped axes): the round trip loses boundary voxels only.
#[test]
fn the_crop_pasted_back_onto_sources_finer_than_1_5_mm() {
    let tmp = tempfile::tempdir().unwrap();
    s3_ingest::synth::write_corpus(tmp.path(), 1, 7).unwrap();
    for dataset in ["PhantomCT", "PhantomMR"] {
        check_case(dataset, &tmp.path().join(dataset).join("labelsTr/case000.nii.gz"), 0.9);
    }
}
