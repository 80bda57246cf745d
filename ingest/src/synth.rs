//! The phantom corpus: small nnU-Net-layout datasets of NIfTI files with organ-like
//! shapes, written deterministically, plus a catalogue that points at them. What
//! the demo and the ingest tests run on.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use nifti::writer::WriterOptions;
use nifti::{NiftiHeader, NiftiType};
use s3_shards::synthetic::Rng;

use crate::geometry::Affine;

/// One organ-like ellipsoid: label value, name, intensity, radii (mm).
struct Organ {
    value: u8,
    name: &'static str,
    intensity: f64,
    radii: [f64; 3],
    offset: [f64; 3],
}

/// What a phantom dataset looks like.
struct Spec {
    name: &'static str,
    modality: &'static str,
    spacing: [f64; 3],
    shape: [usize; 3],
    /// Array axis → world axis sign (+1 or −1): a non-RAS orientation.
    flips: [f64; 3],
    /// Swap array axes 0 and 1 (so the array is not even axis-aligned with RAS order).
    swap01: bool,
    organs: Vec<Organ>,
    float_image: bool,
    msd_names: bool,
    /// In the catalogue's fine-tune selection (the demo's stage 2 trains on it).
    finetune: bool,
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "PhantomCT",
            modality: "CT",
            spacing: [0.9, 0.9, 2.5],
            shape: [112, 112, 48],
            flips: [-1.0, -1.0, 1.0], // LPS, like most DICOM-derived CT
            swap01: false,
            organs: vec![
                Organ { value: 1, name: "liver", intensity: 60.0, radii: [22.0, 16.0, 24.0], offset: [14.0, 4.0, 0.0] },
                Organ {
                    value: 2,
                    name: "spleen",
                    intensity: 45.0,
                    radii: [13.0, 14.0, 18.0],
                    offset: [-24.0, 10.0, 4.0],
                },
                Organ {
                    value: 3,
                    name: "kidney_left",
                    intensity: 30.0,
                    radii: [10.0, 11.0, 16.0],
                    offset: [-16.0, -18.0, -8.0],
                },
                Organ {
                    value: 4,
                    name: "lesion_small",
                    intensity: 120.0,
                    radii: [3.0, 3.0, 3.5],
                    offset: [8.0, -14.0, 10.0],
                },
            ],
            float_image: false,
            msd_names: false,
            finetune: true,
        },
        Spec {
            name: "PhantomMR",
            modality: "MR",
            spacing: [1.2, 1.1, 3.0],
            shape: [88, 96, 36],
            flips: [1.0, -1.0, -1.0],
            swap01: true, // array axis 0 runs anterior-posterior
            organs: vec![
                Organ { value: 1, name: "brain", intensity: 420.0, radii: [30.0, 36.0, 28.0], offset: [0.0, 0.0, 0.0] },
                Organ { value: 2, name: "tumour", intensity: 900.0, radii: [9.0, 8.0, 10.0], offset: [10.0, 8.0, 6.0] },
            ],
            float_image: true,
            msd_names: true,
            finetune: false,
        },
    ]
}

fn affine_of(spec: &Spec) -> Affine {
    let mut a = [[0.0; 4]; 4];
    for ax in 0..3 {
        let world = if spec.swap01 && ax < 2 { 1 - ax } else { ax };
        a[world][ax] = spec.spacing[ax] * spec.flips[ax];
    }
    // Centre the volume near the world origin.
    for r in 0..3 {
        a[r][3] = -(0..3).map(|c| a[r][c] * (spec.shape[c] as f64 - 1.0) / 2.0).sum::<f64>();
    }
    a[3][3] = 1.0;
    a
}

fn header_for(a: &Affine, spacing: [f64; 3], slope: f32) -> NiftiHeader {
    let row = |r: usize| [a[r][0] as f32, a[r][1] as f32, a[r][2] as f32, a[r][3] as f32];
    NiftiHeader {
        pixdim: [1.0, spacing[0] as f32, spacing[1] as f32, spacing[2] as f32, 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        qform_code: 0,
        srow_x: row(0),
        srow_y: row(1),
        srow_z: row(2),
        scl_slope: slope,
        scl_inter: 0.0,
        xyzt_units: 2,
        ..NiftiHeader::default()
    }
}

/// Writes `cases` cases of each phantom dataset under `dir` and a catalogue
/// `dir/datasets.toml` whose sources point at them. Returns the catalogue path.
pub fn write_corpus(dir: &Path, cases: usize, seed: u64) -> std::io::Result<PathBuf> {
    let dir = std::path::absolute(dir)?;
    let mut toml = String::from("# Phantom corpus written by `s3-ingest synth`.\n");
    for spec in specs() {
        let root = dir.join(spec.name);
        std::fs::create_dir_all(root.join("imagesTr"))?;
        std::fs::create_dir_all(root.join("labelsTr"))?;
        for c in 0..cases {
            write_case(&root, &spec, c, seed)?;
        }
        let labels: Vec<String> = spec.organs.iter().map(|o| format!("\"{}\": \"{}\"", o.value, o.name)).collect();
        let dataset_json = if spec.msd_names {
            // nnU-Net v2 form: name → value
            let v2: Vec<String> = spec.organs.iter().map(|o| format!("\"{}\": {}", o.name, o.value)).collect();
            format!("{{\"name\": \"{}\", \"labels\": {{\"background\": 0, {}}}}}\n", spec.name, v2.join(", "))
        } else {
            format!("{{\"name\": \"{}\", \"labels\": {{\"0\": \"background\", {}}}}}\n", spec.name, labels.join(", "))
        };
        std::fs::write(root.join("dataset.json"), dataset_json)?;
        toml.push_str(&format!(
            "\n[[datasets]]\nname = \"{}\"\nmodality = \"{}\"\npretrain = true\nfinetune = {}\nlicence = \"generated\"\n\n[[datasets.tasks]]\nname = \"default\"\nlayout = \"nnunet\"\nsource = \"{}\"\n",
            spec.name,
            spec.modality,
            spec.finetune,
            root.display()
        ));
    }
    let path = dir.join("datasets.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

fn write_case(root: &Path, spec: &Spec, case: usize, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed ^ (case as u64) << 16 ^ xxhash_rust::xxh3::xxh3_64(spec.name.as_bytes()));
    let a = affine_of(spec);
    let jitter: Vec<[f64; 4]> = spec
        .organs
        .iter()
        .map(|_| {
            [(rng.unit() - 0.5) * 8.0, (rng.unit() - 0.5) * 8.0, (rng.unit() - 0.5) * 8.0, 0.85 + rng.unit() * 0.3]
        })
        .collect();
    let [nx, ny, nz] = spec.shape;
    let mut image = Array3::<f32>::zeros((nx, ny, nz));
    let mut label = Array3::<u8>::zeros((nx, ny, nz));
    let body = [spec.shape[0] as f64 * spec.spacing[0] * 0.45, spec.shape[1] as f64 * spec.spacing[1] * 0.42];
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                let w = crate::geometry::apply(&a, [x as f64, y as f64, z as f64]);
                // Body: an elliptic cylinder along S in world space.
                let (bx, by) = if spec.swap01 { (w[1], w[0]) } else { (w[0], w[1]) };
                let in_body = (bx / body[0]).powi(2) + (by / body[1]).powi(2) < 1.0;
                let mut v = if spec.modality == "CT" {
                    if in_body { -60.0 } else { -1000.0 }
                } else if in_body {
                    150.0
                } else {
                    0.0
                };
                let mut l = 0u8;
                for (o, j) in spec.organs.iter().zip(&jitter) {
                    let d: f64 = (0..3).map(|k| ((w[k] - o.offset[k] - j[k]) / (o.radii[k] * j[3])).powi(2)).sum();
                    if d < 1.0 {
                        v = o.intensity;
                        l = o.value;
                    }
                }
                let noise = (rng.unit() - 0.5) * if spec.modality == "CT" { 30.0 } else { 40.0 };
                image[[x, y, z]] = if spec.float_image { (v + noise) as f32 } else { (v + noise).round() as f32 };
                label[[x, y, z]] = l;
            }
        }
    }
    let id = format!("case{case:03}");
    let image_name = if spec.msd_names { format!("{id}.nii.gz") } else { format!("{id}_0000.nii.gz") };
    let to_io = |e: nifti::NiftiError| std::io::Error::other(e.to_string());
    if spec.float_image {
        // MR-like: float32 written with a scale factor, to exercise scl_slope.
        let h = header_for(&a, spec.spacing, 2.0);
        let halved = image.mapv(|v| v / 2.0);
        WriterOptions::new(root.join("imagesTr").join(&image_name))
            .reference_header(&h)
            .write_nifti_with_type(&halved, NiftiType::Float32)
            .map_err(to_io)?;
    } else {
        let h = header_for(&a, spec.spacing, 1.0);
        let ints = image.mapv(|v| v as i16);
        WriterOptions::new(root.join("imagesTr").join(&image_name))
            .reference_header(&h)
            .write_nifti(&ints)
            .map_err(to_io)?;
    }
    let h = header_for(&a, spec.spacing, 1.0);
    WriterOptions::new(root.join("labelsTr").join(format!("{id}.nii.gz")))
        .reference_header(&h)
        .write_nifti(&label)
        .map_err(to_io)?;
    Ok(())
}
