//! Headers whose numbers are absurd (huge or non-finite spacings, offsets, dims,
//! affines, scale factors) are quarantined with a reason naming the field; they
//! never abort or panic the run, and the good cases of the same run are ingested.

use std::io::Read;
use std::path::Path;
use std::process::Command;

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

fn put_i16(b: &mut [u8], at: usize, v: i16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

// NIfTI-1 header byte offsets.
const DIM: usize = 40;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
const SCL_SLOPE: usize = 112;
const SCL_INTER: usize = 116;
const QFORM_CODE: usize = 252;
const SFORM_CODE: usize = 254;
const QUATERN_B: usize = 256;
const SROW_X: usize = 280;
const SROW_Y: usize = 296;
const SROW_Z: usize = 312;

/// Sets every spacing of a phantom header (pixdim and the sform diagonal) to `mm`,
/// keeping the LPS signs of the CT phantom.
fn spacing(b: &mut [u8], mm: f32) {
    for a in 1..4 {
        put_f32(b, PIXDIM + 4 * a, mm);
    }
    put_f32(b, SROW_X, -mm);
    put_f32(b, SROW_Y + 4, -mm);
    put_f32(b, SROW_Z + 8, mm);
}

#[test]
fn hostile_headers_are_quarantined_and_the_run_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    s3_ingest::synth::write_corpus(&raw, 3, 5).unwrap();
    let ct = raw.join("PhantomCT");
    let (images, labels) = (ct.join("imagesTr"), ct.join("labelsTr"));
    let good_img = gunzip(&images.join("case000_0000.nii.gz"));
    let good_lab = gunzip(&labels.join("case000.nii.gz"));
    // Plain (not gzipped) bytes under .nii.gz names: the reader goes by the magic.
    let case = |name: &str, img: &[u8], lab: &[u8]| {
        std::fs::write(images.join(format!("{name}_0000.nii.gz")), img).unwrap();
        std::fs::write(labels.join(format!("{name}.nii.gz")), lab).unwrap();
    };
    // The same header edit on image and label, so that no image/label mismatch
    // check can stop the case before the edited field is used.
    let both = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let (mut i, mut l) = (good_img.clone(), good_lab.clone());
        edit(&mut i);
        edit(&mut l);
        case(name, &i, &l);
    };

    // 112×112×48 voxels at 400 mm resample to ~29866×29866×12800 at 1.5 mm: 45 TB.
    both("bad_huge_spacing_sform", &|b| spacing(b, 400.0));
    both("bad_huge_spacing_base", &|b| {
        spacing(b, 400.0);
        put_i16(b, SFORM_CODE, 0);
        put_i16(b, QFORM_CODE, 0);
    });
    both("bad_spacing_1e30", &|b| spacing(b, 1e30));
    both("bad_pixdim_nan", &|b| put_f32(b, PIXDIM + 4, f32::NAN));
    both("bad_pixdim_inf", &|b| put_f32(b, PIXDIM + 8, f32::INFINITY));
    both("bad_pixdim_zero", &|b| put_f32(b, PIXDIM + 12, 0.0));
    both("bad_pixdim_negative", &|b| {
        put_f32(b, PIXDIM + 4, -0.9);
        put_i16(b, SFORM_CODE, 0);
    });
    both("bad_vox_offset_huge", &|b| put_f32(b, VOX_OFFSET, 1e30));
    both("bad_vox_offset_nan", &|b| put_f32(b, VOX_OFFSET, f32::NAN));
    both("bad_vox_offset_negative", &|b| put_f32(b, VOX_OFFSET, -1e9));
    both("bad_dim_negative", &|b| put_i16(b, DIM + 2, -1));
    both("bad_dims_huge", &|b| {
        for a in 1..4 {
            put_i16(b, DIM + 2 * a, i16::MAX);
        }
    });
    both("bad_sform_nan", &|b| put_f32(b, SROW_Y + 4, f32::NAN));
    both("bad_qform_nan", &|b| {
        put_i16(b, SFORM_CODE, 0);
        put_i16(b, QFORM_CODE, 1);
        put_f32(b, QUATERN_B, f32::NAN);
    });
    let mut b = good_img.clone();
    put_f32(&mut b, SCL_SLOPE, 1e38);
    case("bad_slope_huge", &b, &good_lab);
    let mut b = good_img.clone();
    put_f32(&mut b, SCL_INTER, f32::NAN);
    case("bad_inter_nan", &b, &good_lab);
    // nibabel (and niftilib) read a zero or non-finite slope as "no scaling": such
    // files are common (nibabel itself writes NaN) and must be ingested unscaled.
    let mut b = good_img.clone();
    put_f32(&mut b, SCL_SLOPE, f32::NAN);
    case("slope_nan", &b, &good_lab);
    let mut b = good_img.clone();
    put_f32(&mut b, SCL_SLOPE, f32::INFINITY);
    case("slope_inf", &b, &good_lab);

    let manifest = raw.join("datasets.toml");
    let out = tmp.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_s3-ingest"))
        .args(["--manifest", manifest.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "the run must finish and exit 0: {text}");

    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels/PhantomCT.json")).unwrap()).unwrap();
    let reasons: std::collections::BTreeMap<String, String> = m["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["case_id"].as_str().unwrap().to_string(), q["reason"].as_str().unwrap().to_string()))
        .collect();
    let expect = [
        ("bad_huge_spacing_sform", "resampled to 1.5 mm"),
        ("bad_huge_spacing_base", "resampled to 1.5 mm"),
        ("bad_spacing_1e30", "resampled to 1.5 mm"),
        ("bad_pixdim_nan", "pixdim[1] = NaN"),
        ("bad_pixdim_inf", "pixdim[2] = inf"),
        ("bad_pixdim_zero", "pixdim[3] = 0"),
        ("bad_pixdim_negative", "pixdim[1] = -0.9"),
        ("bad_vox_offset_huge", "vox_offset"),
        ("bad_vox_offset_nan", "vox_offset"),
        ("bad_vox_offset_negative", "vox_offset"),
        ("bad_dim_negative", "dim[1] = -1"),
        ("bad_dims_huge", "over the limit"),
        ("bad_sform_nan", "non-finite"),
        ("bad_qform_nan", "non-finite"),
        ("bad_slope_huge", "float32"),
        ("bad_inter_nan", "scl_inter"),
    ];
    for (case, why) in expect {
        let got = reasons.get(case).unwrap_or_else(|| panic!("{case} not quarantined: {reasons:?}"));
        assert!(got.contains(why), "{case}: reason {got:?} should mention {why:?}");
    }
    assert_eq!(reasons.len(), expect.len(), "only the hostile cases are quarantined: {reasons:?}");
    let cases = m["cases"]["default"].as_object().unwrap();
    assert_eq!(cases.len(), 3 + 2 + expect.len(), "every source case has a fate");
    let ingested: Vec<&String> = cases.iter().filter(|(_, f)| f["fate"] == "ingested").map(|(c, _)| c).collect();
    assert_eq!(ingested, ["case000", "case001", "case002", "slope_inf", "slope_nan"], "the good cases are ingested");
    let mr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels/PhantomMR.json")).unwrap()).unwrap();
    assert_eq!(mr["cases"]["default"].as_object().unwrap().values().filter(|f| f["fate"] == "ingested").count(), 3);
}
