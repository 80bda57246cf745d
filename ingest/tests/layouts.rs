//! The TotalSegmentator and `pairs` layouts on files rearranged from the phantom
//! corpus: the same cases give the same samples as through the nnU-Net layout.

use std::collections::BTreeMap;
use std::path::Path;

use s3_ingest::catalog::Catalog;
use s3_ingest::run::{IngestConfig, run};

fn samples(out: &Path) -> BTreeMap<String, String> {
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels/PhantomCT.json")).unwrap()).unwrap();
    idx["cases"]["default"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["fate"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn totalseg_and_pairs_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    s3_ingest::synth::write_corpus(&raw, 3, 2).unwrap();
    let ct = raw.join("PhantomCT");

    // TotalSegmentator: <case>/ct.nii.gz + <case>/segmentations/<structure>.nii.gz, one
    // binary mask per structure, merged by the structure list.
    let ts = tmp.path().join("ts");
    let names = ["liver", "spleen", "kidney_left"];
    for c in 0..3 {
        let case = format!("case{c:03}");
        let dir = ts.join(&case).join("segmentations");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(ct.join(format!("imagesTr/{case}_0000.nii.gz")), ts.join(&case).join("ct.nii.gz")).unwrap();
        let label =
            s3_ingest::nifti_io::read_nifti(&ct.join(format!("labelsTr/{case}.nii.gz")), &Default::default()).unwrap();
        for (v, name) in names.iter().enumerate() {
            let s3_ingest::nifti_io::Voxels::U8(data) = &label.voxels else { panic!("u8 labels") };
            let [nx, ny, nz] = label.shape;
            let arr = ndarray::Array3::from_shape_fn((nx, ny, nz), |(x, y, z)| {
                u8::from(data[x + nx * (y + ny * z)] == v as u8 + 1)
            });
            let a = label.affine;
            let header = nifti::NiftiHeader {
                sform_code: 1,
                pixdim: [1.0, 0.9, 0.9, 2.5, 1.0, 1.0, 1.0, 1.0],
                srow_x: [a[0][0] as f32, a[0][1] as f32, a[0][2] as f32, a[0][3] as f32],
                srow_y: [a[1][0] as f32, a[1][1] as f32, a[1][2] as f32, a[1][3] as f32],
                srow_z: [a[2][0] as f32, a[2][1] as f32, a[2][2] as f32, a[2][3] as f32],
                ..Default::default()
            };
            nifti::writer::WriterOptions::new(dir.join(format!("{name}.nii.gz")))
                .reference_header(&header)
                .write_nifti(&arr)
                .unwrap();
        }
    }
    // pairs: images/<case>_img.nii.gz with masks/<case>_seg.nii.gz
    let pairs = tmp.path().join("pairs");
    std::fs::create_dir_all(pairs.join("images")).unwrap();
    std::fs::create_dir_all(pairs.join("masks")).unwrap();
    for c in 0..3 {
        let case = format!("case{c:03}");
        std::fs::copy(ct.join(format!("imagesTr/{case}_0000.nii.gz")), pairs.join(format!("images/{case}_img.nii.gz")))
            .unwrap();
        std::fs::copy(ct.join(format!("labelsTr/{case}.nii.gz")), pairs.join(format!("masks/{case}_seg.nii.gz")))
            .unwrap();
    }
    std::fs::write(pairs.join("images/notes.txt"), "not an image").unwrap();

    let entry = |layout: &str, source: &Path, extra: &str| {
        format!(
            "[[datasets]]\nname = \"PhantomCT\"\nmodality = \"CT\"\npretrain = true\nfinetune = true\nlabels = {{ \"1\" = \"liver\", \"2\" = \"spleen\", \"3\" = \"kidney_left\" }}\n[[datasets.tasks]]\nname = \"default\"\nlayout = \"{layout}\"\nsource = \"{}\"\n{extra}",
            source.display()
        )
    };
    let reference = tmp.path().join("out-nnunet");
    let c = Catalog::parse(&entry("nnunet", &ct, ""), "t").unwrap();
    run(&c, &IngestConfig::new(reference.to_str().unwrap()), &|_| {}).unwrap();
    let out_ts = tmp.path().join("out-ts");
    let c = Catalog::parse(&entry("totalseg", &ts, "structures = [\"liver\", \"spleen\", \"kidney_left\"]\n"), "t")
        .unwrap();
    run(&c, &IngestConfig::new(out_ts.to_str().unwrap()), &|_| {}).unwrap();
    let out_pairs = tmp.path().join("out-pairs");
    let c = Catalog::parse(&entry("pairs", &pairs, "image_glob = \"images/*_img.nii.gz\"\nlabel_template = \"masks/{case}_seg.nii.gz\"\nimage_suffix = \"_img\"\n"), "t").unwrap();
    run(&c, &IngestConfig::new(out_pairs.to_str().unwrap()), &|_| {}).unwrap();

    let want = samples(&reference);
    assert_eq!(want.len(), 3);
    assert_eq!(samples(&out_ts), want, "totalseg gives the same cases and fates");
    assert_eq!(samples(&out_pairs), want, "pairs gives the same cases and fates");
    let count = |out: &Path| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
        v["shards"].as_array().unwrap().iter().map(|s| s["rows"].as_u64().unwrap()).sum()
    };
    assert_eq!(count(&out_ts), count(&reference));
    assert_eq!(count(&out_pairs), count(&reference));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_ts.join("labels/PhantomCT.json")).unwrap()).unwrap();
    let names: Vec<&str> = m["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["liver", "spleen", "kidney_left"]);
}

/// AMOS22 and WORD name cases `amos_0001.nii.gz` in imagesTr and labelsTr alike: four
/// trailing digits are the case's own, not a channel suffix (they were dropped, every
/// case of both datasets lost). nnU-Net's `_0000`/`_0001` channel files still group.
#[test]
fn four_digit_case_ids_are_cases_and_channel_suffixes_still_group() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("raw");
    s3_ingest::synth::write_corpus(&raw, 3, 5).unwrap();
    let ct = raw.join("PhantomCT");
    let amos = tmp.path().join("amos22");
    let multi = tmp.path().join("multi");
    for d in [&amos, &multi] {
        std::fs::create_dir_all(d.join("imagesTr")).unwrap();
        std::fs::create_dir_all(d.join("labelsTr")).unwrap();
    }
    for c in 0..3 {
        let (img, lab) =
            (ct.join(format!("imagesTr/case{c:03}_0000.nii.gz")), ct.join(format!("labelsTr/case{c:03}.nii.gz")));
        let id = format!("amos_{:04}", c + 1);
        std::fs::copy(&img, amos.join(format!("imagesTr/{id}.nii.gz"))).unwrap();
        std::fs::copy(&lab, amos.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
        let id = format!("mr_{:04}", c + 1);
        for ch in ["0000", "0001"] {
            std::fs::copy(&img, multi.join(format!("imagesTr/{id}_{ch}.nii.gz"))).unwrap();
        }
        std::fs::copy(&lab, multi.join(format!("labelsTr/{id}.nii.gz"))).unwrap();
    }
    let entry = |name: &str, source: &Path| {
        format!(
            "[[datasets]]\nname = \"{name}\"\nmodality = \"CT\"\npretrain = true\nfinetune = false\n[[datasets.tasks]]\nname = \"default\"\nlayout = \"nnunet\"\nsource = \"{}\"\n",
            source.display()
        )
    };
    let c = Catalog::parse(&(entry("AMOS22", &amos) + &entry("Multi", &multi)), "t").unwrap();
    let out = tmp.path().join("out");
    run(&c, &IngestConfig::new(out.to_str().unwrap()), &|_| {}).unwrap();
    let fates = |ds: &str| -> BTreeMap<String, serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(format!("labels/{ds}.json"))).unwrap()).unwrap();
        v["cases"]["default"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let amos_fates = fates("AMOS22");
    assert_eq!(amos_fates.keys().collect::<Vec<_>>(), ["amos_0001", "amos_0002", "amos_0003"]);
    assert!(amos_fates.values().all(|f| f["fate"] == "ingested"), "{amos_fates:?}");
    let multi_fates = fates("Multi");
    assert_eq!(multi_fates.keys().collect::<Vec<_>>(), ["mr_0001", "mr_0002", "mr_0003"]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels/Multi.json")).unwrap()).unwrap();
    let channels = &m["classes"][0]["channels"];
    assert_eq!(channels.as_object().unwrap().keys().collect::<Vec<_>>(), ["0", "1"], "{m}");
}
