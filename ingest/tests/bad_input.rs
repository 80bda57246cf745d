//! A corpus of broken cases: each is quarantined with its specific reason, the good
//! cases are ingested, the run exits 0 (1 with --strict), and every case is accounted for.

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

#[test]
fn every_broken_case_is_quarantined_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    s3_ingest::synth::write_corpus(&raw, 3, 3).unwrap();
    let ct = raw.join("PhantomCT");
    let mr = raw.join("PhantomMR");
    let (images, labels) = (ct.join("imagesTr"), ct.join("labelsTr"));
    let good_img = gunzip(&images.join("case000_0000.nii.gz"));
    let good_lab = gunzip(&labels.join("case000.nii.gz"));
    let case = |name: &str, img: &[u8], lab: Option<&[u8]>| {
        std::fs::write(images.join(format!("{name}_0000.nii.gz")), img).unwrap();
        if let Some(l) = lab {
            std::fs::write(labels.join(format!("{name}.nii.gz")), l).unwrap();
        }
    };
    // Plain bytes under .nii.gz names: the reader goes by the gzip magic, not the name.
    let gz = std::fs::read(images.join("case001_0000.nii.gz")).unwrap();
    case("bad_truncated_gzip", &gz[..gz.len() / 2], Some(&good_lab));
    let mut b = good_img.clone();
    b[344..348].copy_from_slice(b"abc\0");
    case("bad_magic", &b, Some(&good_lab));
    let mut b = good_img.clone();
    put_i16(&mut b, 46, 96); // dim[3]: 48 → 96 slices promised
    case("bad_dims_exceed_data", &b, Some(&good_lab));
    let mut b = good_img.clone();
    put_i16(&mut b, 40, 5);
    put_i16(&mut b, 48, 1);
    put_i16(&mut b, 50, 3); // 5-D: one time point of three vector components
    case("bad_5d", &b, Some(&good_lab));
    let mut b = good_img.clone();
    put_i16(&mut b, 40, 4);
    put_i16(&mut b, 48, 3); // three channels promised, one present
    case("bad_4d_short", &b, Some(&good_lab));
    let mut b = good_img.clone();
    put_i16(&mut b, 70, 128); // RGB24
    put_i16(&mut b, 72, 24);
    case("bad_datatype", &b, Some(&good_lab));
    let mut b = good_img.clone();
    b[0..4].copy_from_slice(&540i32.to_le_bytes());
    case("bad_nifti2", &b, Some(&good_lab));
    case("bad_no_label", &good_img, None);
    let mr_label = gunzip(&mr.join("labelsTr/case000.nii.gz"));
    case("bad_shape_mismatch", &good_img, Some(&mr_label));
    let mut l = good_lab.clone();
    let x = f32::from_le_bytes(l[292..296].try_into().unwrap()) + 5.0; // srow_x[3]
    l[292..296].copy_from_slice(&x.to_le_bytes());
    case("bad_affine_mismatch", &good_img, Some(&l));
    let mut l = good_lab.clone();
    for v in &mut l[352..] {
        *v = 0;
    }
    case("bad_empty_label", &good_img, Some(&l));
    // NaN voxels need a float image: the MR phantom stores float32.
    let mut m = gunzip(&mr.join("imagesTr/case000.nii.gz"));
    for n in 0..50 {
        let at = 352 + 4 * (1000 + n * 97);
        m[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(mr.join("imagesTr/bad_nan.nii.gz"), &m).unwrap();
    std::fs::copy(mr.join("labelsTr/case000.nii.gz"), mr.join("labelsTr/bad_nan.nii.gz")).unwrap();

    let manifest = raw.join("datasets.toml");
    let out = tmp.path().join("out");
    let run = |extra: &[&str], out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_s3-ingest"))
            .args(["--manifest", manifest.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[], &out);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");

    let manifest_ct: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels/PhantomCT.json")).unwrap()).unwrap();
    let reasons: std::collections::BTreeMap<String, String> = manifest_ct["quarantine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["case_id"].as_str().unwrap().to_string(), q["reason"].as_str().unwrap().to_string()))
        .collect();
    let expect = [
        ("bad_truncated_gzip", "truncated or corrupt data"),
        ("bad_magic", "not a NIfTI file: magic"),
        ("bad_dims_exceed_data", "the header promises"),
        ("bad_5d", "5-D image"),
        ("bad_4d_short", "holds 1204224 bytes of voxel data, the header promises 3612672"),
        ("bad_datatype", "unsupported: datatype Rgb24"),
        ("bad_nifti2", "expected \"n+2\""),
        ("bad_no_label", "no label file labelsTr/bad_no_label.nii.gz"),
        ("bad_shape_mismatch", "image shape [112, 112, 48], label shape"),
        ("bad_affine_mismatch", "affines differ by up to 5.0000 mm"),
        ("bad_empty_label", "is empty"),
    ];
    for (case, why) in expect {
        let got = reasons.get(case).unwrap_or_else(|| panic!("{case} not quarantined: {reasons:?}"));
        assert!(got.contains(why), "{case}: reason {got:?} should mention {why:?}");
    }
    assert_eq!(reasons.len(), expect.len(), "{reasons:?}");
    let cases = manifest_ct["cases"]["default"].as_object().unwrap();
    assert_eq!(cases.len(), 3 + expect.len(), "every source case has a fate");
    assert_eq!(cases.values().filter(|f| f["fate"] == "ingested").count(), 3);

    let manifest_mr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels/PhantomMR.json")).unwrap()).unwrap();
    let q = &manifest_mr["quarantine"][0];
    assert_eq!(q["case_id"], "bad_nan");
    assert!(q["reason"].as_str().unwrap().contains("50 NaN/Inf voxels"), "{q}");

    // The summary counts them and the bad cases never reach a shard.
    assert!(text.contains("quarantined PhantomCT/bad_5d"), "{text}");
    let total = text.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    let cols: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cols[1..5], ["18", "6", "0", "12"], "{total}");

    let o = run(&["--strict"], &tmp.path().join("strict"));
    assert_eq!(o.status.code(), Some(1), "--strict fails on quarantines");
}
