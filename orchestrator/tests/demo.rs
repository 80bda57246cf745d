//! `s3-orch demo` end to end, shortened: the pipeline on the local backend with real
//! `s3-ingest` and `s3-train` processes (2 ingest workers + merge, 2 ranks per stage),
//! the model learning in stage 1, stage 2 started from stage 1's final checkpoint,
//! the ledger and the outputs in place.

use std::path::Path;
use std::process::Command;

use s3_ingest::geometry;
use s3_ingest::nifti_io::{ReadOptions, Volume, read_nifti};

/// Epochs of the shortened stages (a fixed amount of work, whatever the machine).
const STAGE1_EPOCHS: &str = "80";
const STAGE2_EPOCHS: &str = "6";
/// Dice@5 the trained model must reach on the val split (untrained: ~0.01).
const FLOOR: f64 = 0.5;
/// Dice of one structure's prediction (untrained: ~0.01; measured 0.4–0.7).
const CLICK_FLOOR: f64 = 0.3;
/// Largest gap between the two protocols' mean Dice@5 on the same val classes: they
/// see the same crop and the same clicks, and differ by the scoring grid (the
/// nearest-neighbour round trip through 1.5 mm; measured 0.0003 on the demo).
const PROTOCOL_TOLERANCE: f64 = 0.03;

fn bin(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_s3-orch")).with_file_name(name);
    assert!(p.exists(), "{} missing: `cargo test --workspace` builds it", p.display());
    p
}

#[test]
fn the_demo_runs_the_pipeline_and_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .args(["demo", "--cases", "4", "--stage1-epochs", STAGE1_EPOCHS, "--stage2-epochs", STAGE2_EPOCHS, "--dir"])
        .arg(&dir)
        .env("S3_TRAIN_BIN", bin("s3-train"))
        .env("S3_INGEST_BIN", bin("s3-ingest"))
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{out}");
    assert!(o.status.success(), "{out}");
    assert!(out.contains("after stage 1") && out.contains("after stage 2"), "{out}");

    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch"))
        .args(["status", "--run", "demo", "--json", "--runs"])
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stage = |name: &str| s["stages"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap().clone();
    for name in ["ingest", "stage1", "stage2", "eval"] {
        assert_eq!(stage(name)["state"], "succeeded", "{name}: {s}");
    }
    assert_eq!(stage("ingest")["attempts"][0]["exit_codes"].as_array().unwrap().len(), 3, "2 workers + merge");
    assert_eq!(stage("stage1")["attempts"][0]["job_ids"].as_array().unwrap().len(), 2, "2 ranks");
    assert_eq!(stage("stage2")["init"], stage("stage1")["final_checkpoint"]["url"]);
    assert_eq!(stage("eval")["init"], stage("stage2")["final_checkpoint"]["url"], "eval reads stage 2's weights");

    // Dice at every click count after each stage, and the model learned in stage 1.
    let stage1_eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("runs/demo/stage1/eval/val.json")).unwrap()).unwrap();
    assert!(!stage1_eval["samples"].as_array().unwrap().is_empty(), "there are val samples");
    let eval = &stage("eval")["attempts"][0]["metrics"];
    for c in [1, 3, 5, 10] {
        let d = eval[format!("dice@{c}")].as_f64().unwrap_or_else(|| panic!("dice@{c} in {eval}"));
        assert!((0.0..=1.0).contains(&d), "Dice@{c} = {d}");
    }
    let dice5 = eval["dice@5"].as_f64().unwrap();
    assert!(dice5 >= FLOOR, "Dice@5 after both stages {dice5:.3} (floor {FLOOR})");
    // Stage 2 fine-tunes the selection the phantom catalogue marks: CT only.
    let stage2_eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("runs/demo/stage2/eval/val.json")).unwrap()).unwrap();
    let datasets: std::collections::BTreeSet<&str> =
        stage2_eval["samples"].as_array().unwrap().iter().map(|x| x["dataset"].as_str().unwrap()).collect();
    assert_eq!(datasets.into_iter().collect::<Vec<_>>(), ["PhantomCT"]);
    // `eval --json` prints what eval/val.json holds, with the step, and nothing else on stdout.
    let o = Command::new(bin("s3-train"))
        .args(["-q", "eval", "--clicks", "1", "--json", "--run"])
        .arg(dir.join("runs/demo/stage2"))
        .arg("--data")
        .arg(dir.join("store"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&o.stdout).expect("eval --json prints one JSON document");
    assert_eq!(printed["samples"].as_array().unwrap().len(), stage2_eval["samples"].as_array().unwrap().len());
    assert_eq!(printed["clicks"], serde_json::json!([1]));
    assert!(printed["step"].as_u64().unwrap() > 0, "{}", printed["step"]);

    for f in ["stage1/metrics.png", "stage2/metrics.png", "stage1/config.json", "stage2/checkpoints/latest.json"] {
        assert!(dir.join("runs/demo").join(f).exists(), "{f} written");
    }
    assert!(dir.join("store/index.json").exists());

    source_geometry(&dir, &stage2_eval);
    benchmarks(&dir, &stage2_eval);

    // A rerun starts afresh in its own folder, and a folder no demo made is refused.
    let other = tmp.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious.txt"), "keep").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_s3-orch")).args(["demo", "--dir"]).arg(&other).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no demo made it"));
    assert!(other.join("precious.txt").exists());
}

/// Dice of `mask == fg` against `label == value`, both on the source grid.
fn dice(mask: &Volume, fg: f64, label: &Volume, value: f64) -> f64 {
    let (mut inter, mut a, mut b) = (0usize, 0usize, 0usize);
    for n in 0..label.len() {
        let (p, t) = (mask.value(n) == fg, label.value(n) == value);
        inter += usize::from(p && t);
        a += usize::from(p);
        b += usize::from(t);
    }
    2.0 * inter as f64 / (a + b) as f64
}

/// `s3-train predict` and `eval --protocol source` with the demo's stage-2 weights, on
/// the raw phantom cases (DESIGN §8): the masks land on the source grid with the
/// source's affine, they overlap the source label, and the source protocol's Dice
/// agrees with the crop protocol's on the same cases.
fn source_geometry(dir: &Path, crop_eval: &serde_json::Value) {
    let run = dir.join("runs/demo/stage2");
    let first = crop_eval["samples"][0]["sample_id"].as_str().unwrap();
    let parts: Vec<&str> = first.split('/').collect();
    let (case, value) = (parts[2], parts[3].parse::<f64>().unwrap());
    let raw = dir.join("raw/PhantomCT");
    let image = raw.join(format!("imagesTr/{case}_0000.nii.gz"));
    let label_path = raw.join(format!("labelsTr/{case}.nii.gz"));
    let label = read_nifti(&label_path, &ReadOptions::default()).unwrap();
    let run_predict = |extra: &[&str], out: &Path| {
        Command::new(bin("s3-train"))
            .arg("predict")
            .arg("--run")
            .arg(&run)
            .arg("--image")
            .arg(&image)
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let predict = |extra: &[&str], out: &Path| {
        let o = run_predict(extra, out);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{text}");
        let mask = read_nifti(out, &ReadOptions::default()).unwrap();
        assert_eq!(mask.shape, label.shape, "the mask is on the source grid");
        assert_eq!(geometry::max_abs_diff(&mask.affine, &label.affine), 0.0, "the source's affine");
        (mask, text)
    };

    // Clicks simulated from the label, as evaluation makes them.
    let tmp = tempfile::tempdir().unwrap();
    let label_arg = label_path.display().to_string();
    let png = tmp.path().join("from-label.png");
    let png_arg = png.display().to_string();
    let (single, text) = predict(
        &["--clicks-from-label", &label_arg, "--label-value", parts[3], "--clicks", "5", "--preview", &png_arg],
        &tmp.path().join("from-label.nii.gz"),
    );
    eprintln!("{text}");
    // The preview: the class's label (red) beside the prediction (green over red).
    let picture = image::open(&png).unwrap().to_rgb8();
    let count = |c: image::Rgb<u8>| picture.pixels().filter(|p| **p == c).count();
    let (red, green) = (count(s3_shards::preview::LABEL_RED), count(s3_shards::preview::PREDICTION_GREEN));
    assert!(red > 100 && green > 100, "label outline {red} px, prediction outline {green} px");
    assert!(picture.width() > 2 * picture.height(), "two crops side by side: {:?}", picture.dimensions());
    // With a label the mask holds the class's value, as the reference writes it.
    let d = dice(&single, value, &label, value);
    // One structure's Dice swings with each click; the mean over the val split is what
    // FLOOR holds. Here: a floor for the mask written, and FLOOR for the best pass.
    assert!(d >= CLICK_FLOOR, "predict from the label: Dice {d:.3} against {first} (floor {CLICK_FLOOR})");
    let best = text
        .lines()
        .filter_map(|l| l.strip_prefix("click ")?.split_once(": Dice ")?.1.split(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(best >= FLOOR, "predict from the label: best Dice over 5 clicks {best:.3} (floor {FLOOR})\n{text}");
    assert!(text.contains(&format!("click 5: Dice {d:.4}")), "the printed Dice is the file's: {d:.4} in {text}");

    // One click of one's own, at the structure's voxel nearest its centroid.
    let voxels: Vec<[usize; 3]> = (0..label.len())
        .filter(|&n| label.value(n) == value)
        .map(|n| [n % label.shape[0], n / label.shape[0] % label.shape[1], n / (label.shape[0] * label.shape[1])])
        .collect();
    let mean: [f64; 3] = std::array::from_fn(|a| voxels.iter().map(|v| v[a] as f64).sum::<f64>() / voxels.len() as f64);
    let near = voxels
        .iter()
        .min_by(|p, q| {
            let d = |v: &[usize; 3]| (0..3).map(|a| (v[a] as f64 - mean[a]).powi(2)).sum::<f64>();
            d(p).total_cmp(&d(q))
        })
        .unwrap();
    let click = format!("{},{},{}", near[0], near[1], near[2]);
    let (mask, text) = predict(&["--click", &click], &tmp.path().join("one-click.nii.gz"));
    let d = dice(&mask, 1.0, &label, value);
    assert!(d >= CLICK_FLOOR, "predict from one click at {click}: Dice {d:.3} (floor {CLICK_FLOOR})\n{text}");
    let o = run_predict(&["--click", &click, "--click", "100000,0,0"], &tmp.path().join("far.nii.gz"));
    assert!(!o.status.success(), "a click outside the crop is refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the 128³ crop"));

    // Every class of the label in one map, as the reference's script writes it: each
    // class prompted on its own (the same clicks as alone), a higher class winning.
    let (merged, text) = predict(&["--clicks-from-label", &label_arg], &tmp.path().join("all.nii.gz"));
    let mut classes: Vec<f64> = (0..label.len()).map(|n| label.value(n)).filter(|&c| c != 0.0).collect();
    classes.sort_by(f64::total_cmp);
    classes.dedup();
    assert!(classes.len() >= 2, "the phantom has several classes: {classes:?}");
    for c in &classes {
        assert!(text.contains(&format!("against class {c} ")), "class {c} was predicted:\n{text}");
    }
    let mut written: Vec<f64> = (0..merged.len()).map(|n| merged.value(n)).filter(|&m| m != 0.0).collect();
    written.sort_by(f64::total_cmp);
    written.dedup();
    assert!(written.len() >= 2, "the map holds the class values, not one foreground value: {written:?}");
    let o =
        run_predict(&["--clicks-from-label", &label_arg, "--label-value", "1,99"], &tmp.path().join("absent.nii.gz"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("class 99 is not in the label"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("Dice"), "refused before any class ran: {out}");
    let top = *classes.last().unwrap();
    let (alone, _) = predict(
        &["--clicks-from-label", &label_arg, "--label-value", &top.to_string()],
        &tmp.path().join("top.nii.gz"),
    );
    for n in 0..label.len() {
        let m = merged.value(n);
        assert!(m == 0.0 || classes.contains(&m), "voxel {n}: {m} is not a class");
        // The highest class is never overwritten; a lower one only by a higher one.
        assert_eq!(m == top, alone.value(n) == top, "voxel {n}: class {top} merged {m}, alone {}", alone.value(n));
        if single.value(n) == value {
            assert!(m >= value, "voxel {n}: class {value} predicted alone, merged {m}");
        }
        if m == value {
            assert_eq!(single.value(n), value, "voxel {n}: class {value} merged where it was not predicted alone");
        }
    }

    // The source protocol on the val cases of the stage's selection.
    let o = Command::new(bin("s3-train"))
        .args(["eval", "--protocol", "source", "--run"])
        .arg(&run)
        .arg("--data")
        .arg(dir.join("store"))
        .arg("--manifest")
        .arg(dir.join("raw/datasets.toml"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    eprintln!("{text}");
    let source: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval/source.json")).unwrap()).unwrap();
    let csv = std::fs::read_to_string(run.join("eval/source.csv")).unwrap();
    assert!(csv.starts_with("dataset,task,case,label_value,label,category,voxels,dice@1,dice@3,dice@5,dice@10,max"));
    let by_id: std::collections::BTreeMap<String, &serde_json::Value> = source["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = format!(
                "{}/{}/{}/{}",
                c["dataset"].as_str().unwrap(),
                c["task"].as_str().unwrap(),
                c["case_id"].as_str().unwrap(),
                c["label_value"]
            );
            (id, c)
        })
        .collect();
    assert_eq!(csv.lines().count(), by_id.len() + 1, "one CSV row per case and class");
    let (mut crop5, mut source5) = (Vec::new(), Vec::new());
    for s in crop_eval["samples"].as_array().unwrap() {
        let id = s["sample_id"].as_str().unwrap();
        let c = by_id.get(id).unwrap_or_else(|| panic!("{id}: a crop-protocol val sample the source protocol lacks"));
        assert!(!c["category"].as_str().unwrap().is_empty());
        let dice: Vec<f64> = c["dice"].as_array().unwrap().iter().map(|d| d.as_f64().unwrap()).collect();
        assert!(c["max"].as_f64().unwrap() >= dice.iter().copied().fold(0.0, f64::max) - 1e-12);
        crop5.push(s["dice"][2].as_f64().unwrap());
        source5.push(dice[2]);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (c, s) = (mean(&crop5), mean(&source5));
    eprintln!("Dice@5 on {} val classes: crop protocol {c:.4}, source protocol {s:.4}", crop5.len());
    assert!((c - s).abs() <= PROTOCOL_TOLERANCE, "crop {c:.4} vs source {s:.4} (tolerance {PROTOCOL_TOLERANCE})");
    for kind in ["dataset", "category", "dataset/label"] {
        assert!(source["groups"].as_array().unwrap().iter().any(|g| g["by"] == kind), "groups by {kind}");
    }
}

/// A benchmarks catalogue (`[evaluation]`) with the demo's stage-2 weights: val cases
/// copied under new names are scored and tabled by group, category and dataset; a
/// catalogue holding a case the run trained on is refused before any score, naming
/// it, whether it keeps the training name (`trained_as`) or hides under another.
fn benchmarks(dir: &Path, crop_eval: &serde_json::Value) {
    let run = dir.join("runs/demo/stage2");
    let raw = dir.join("raw/PhantomCT");
    let val: std::collections::BTreeSet<String> = crop_eval["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sample_id"].as_str().unwrap().split('/').nth(2).unwrap().to_string())
        .collect();
    let all: Vec<String> = std::fs::read_dir(raw.join("labelsTr"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".nii.gz").to_string())
        .collect();
    let trained = all.iter().find(|c| !val.contains(*c)).expect("a training case");
    let bench = dir.join("bench");
    let write = |name: &str, cases: &[(&str, String)], trained_as: &str| {
        let root = bench.join(name);
        std::fs::create_dir_all(root.join("imagesTr")).unwrap();
        std::fs::create_dir_all(root.join("labelsTr")).unwrap();
        std::fs::copy(raw.join("dataset.json"), root.join("dataset.json")).unwrap();
        for (from, to) in cases {
            std::fs::copy(
                raw.join(format!("imagesTr/{from}_0000.nii.gz")),
                root.join(format!("imagesTr/{to}_0000.nii.gz")),
            )
            .unwrap();
            std::fs::copy(raw.join(format!("labelsTr/{from}.nii.gz")), root.join(format!("labelsTr/{to}.nii.gz")))
                .unwrap();
        }
        let manifest = bench.join(format!("{name}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "[evaluation]\nsplit = \"test\"\n\n[[datasets]]\nname = \"{name}\"\nmodality = \"CT\"\ngroup = \"seen\"\n\
                 trained_as = [{trained_as}]\n\n[[datasets.tasks]]\nname = \"default\"\nlayout = \"nnunet\"\nsource = \"{}\"\n",
                root.display()
            ),
        )
        .unwrap();
        Command::new(bin("s3-train"))
            .args(["eval", "--protocol", "source", "--clicks", "1,3", "--run"])
            .arg(&run)
            .arg("--manifest")
            .arg(&manifest)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };

    let clean: Vec<(&str, String)> = val.iter().map(|c| (c.as_str(), format!("bench_{c}"))).collect();
    let o = write("Clean", &clean, "\"PhantomCT\"");
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("{}", text(&o));
    let md = std::fs::read_to_string(run.join("eval/benchmarks.md")).unwrap();
    let seen = md.lines().find(|l| l.starts_with("| seen |")).unwrap_or_else(|| panic!("no seen row: {md}"));
    let cells: Vec<&str> = seen.split('|').map(str::trim).collect();
    assert_eq!(cells[2], val.len().to_string(), "every val case counted: {seen}");
    assert!(md.contains("| Category | cases | classes | Dice@1 | Dice@3 |"), "{md}");
    assert!(text(&o).contains("| Dataset | cases | classes |"), "the table is printed");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval/benchmarks.json")).unwrap()).unwrap();
    assert!(report["samples"].as_array().unwrap().iter().all(|s| s["group"] == "seen"));

    // A training case under its own id, listed as trained under that dataset's name.
    let o = write("ById", &[(trained.as_str(), trained.clone())], "\"PhantomCT\"");
    assert!(!o.status.success());
    assert!(text(&o).contains(&format!("ById/default/{trained}: trained on as PhantomCT/{trained}")), "{}", text(&o));
    // The same scan renamed, under a dataset that claims no training name.
    let o = write("Renamed", &[(trained.as_str(), "fresh_case".into())], "");
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("Renamed/default/fresh_case") && t.contains(&format!("training case PhantomCT/{trained}")),
        "{t}"
    );
    assert!(t.contains("refusing to evaluate"), "{t}");

    // The launcher's `eval --benchmarks`: the ledger's `benchmarks` stage, beside `eval`.
    let launch = |manifest: &str| {
        Command::new(env!("CARGO_BIN_EXE_s3-orch"))
            .args(["launch", "eval", "--backend", "local", "--run", "demo", "--runs"])
            .arg(dir.join("runs"))
            .arg("--data")
            .arg(dir.join("store"))
            .arg("--stages")
            .arg(dir.join("stages"))
            .arg("--benchmarks")
            .arg(bench.join(manifest))
            .output()
            .unwrap()
    };
    let ledger = || -> serde_json::Value {
        let l: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("runs/demo/ledger.json")).unwrap()).unwrap();
        l["stages"].as_array().unwrap().iter().find(|s| s["name"] == "benchmarks").cloned().unwrap_or_default()
    };
    let o = launch("ById.toml");
    assert!(!o.status.success(), "a leaking catalogue fails the stage: {}", text(&o));
    assert_eq!(ledger()["state"], "failed", "{}", ledger());
    let o = launch("Clean.toml");
    assert!(o.status.success(), "{}", text(&o));
    let b = ledger();
    assert_eq!((b["state"].as_str(), b["attempts"].as_array().unwrap().len()), (Some("succeeded"), 2), "{b}");
    let metrics = &b["attempts"][1]["metrics"];
    assert!((0.0..=1.0).contains(&metrics["dice@10"].as_f64().unwrap_or(-1.0)), "{metrics}");
    let stage2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("runs/demo/ledger.json")).unwrap()).unwrap();
    let stage2 = stage2["stages"].as_array().unwrap().iter().find(|s| s["name"] == "stage2").unwrap().clone();
    assert_eq!(b["init"], stage2["final_checkpoint"]["url"], "the checkpoint it evaluated");
    assert!(run.join("eval/benchmarks.md").exists() && run.join("eval/val.json").exists(), "beside the val report");
}
