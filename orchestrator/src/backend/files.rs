//! The launcher's local files a job reads (`--stage`, `--catalog`, `--manifest`,
//! and the catalogue a stage file names relative to itself) go with the attempt,
//! their relative layout kept: in a ConfigMap (Kubernetes), inside the batch
//! script (Slurm). The ranks train on the stage file as it is here, not on whatever
//! copy an image or a node holds, and no filesystem need be shared.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{OrchError, Result};

/// The flags whose value is a local file the process reads.
const FILE_FLAGS: &[&str] = &["--stage", "--catalog", "--manifest"];

/// What a ConfigMap holds at most (1 MiB), less room for its metadata; a batch
/// script carries no more.
const LIMIT: usize = 1000 * 1024;

/// The files of one attempt.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shipped {
    /// Key → file text (a ConfigMap's `data`).
    pub data: Map<String, Value>,
    /// Key → path below the folder the job finds them in (a ConfigMap volume's `items`).
    pub items: Vec<Value>,
    /// Each argument as given → its path below that folder.
    pub renamed: BTreeMap<String, String>,
}

/// `path` made absolute, `.` and `..` resolved by name (the file need not exist).
fn normal(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|source| OrchError::Io { file: path.display().to_string(), source })?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| OrchError::Io {
        file: format!("{} ({what}; it travels with the job)", path.display()),
        source,
    })
}

/// The catalogue a stage file names relative to itself (the trainer resolves it so).
fn stage_catalog(stage: &Path, text: &str) -> Option<PathBuf> {
    let v: toml::Table = toml::from_str(text).ok()?;
    let c = v.get("datasets")?.get("catalog")?.as_str()?;
    let p = Path::new(c);
    (p.is_relative()).then(|| stage.parent().unwrap_or(Path::new(".")).join(p)).filter(|p| p.is_file())
}

/// The local files `args` name, or None when there are none.
pub fn ship(args: &[String]) -> Result<Option<Shipped>> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut given: Vec<(String, PathBuf)> = Vec::new();
    let add = |path: PathBuf, text: String, files: &mut Vec<(PathBuf, String)>| {
        if !files.iter().any(|(p, _)| *p == path) {
            files.push((path, text));
        }
    };
    for w in args.windows(2) {
        let (flag, value) = (w[0].as_str(), w[1].as_str());
        // URLs are read through the object store; `<...>` is a dry run's placeholder.
        if !FILE_FLAGS.contains(&flag) || value.contains("://") || value.starts_with('<') {
            continue;
        }
        let path = normal(Path::new(value))?;
        let text = read(&path, flag)?;
        if flag == "--stage"
            && let Some(c) = stage_catalog(&path, &text)
        {
            let c = normal(&c)?;
            let ctext = read(&c, "the stage file's datasets.catalog")?;
            add(c, ctext, &mut files);
        }
        add(path.clone(), text, &mut files);
        given.push((value.to_string(), path));
    }
    if files.is_empty() {
        return Ok(None);
    }
    let size: usize = files.iter().map(|(_, t)| t.len()).sum();
    if size > LIMIT {
        return Err(OrchError::ConfigMapFull { files: files.len(), bytes: size, limit: LIMIT });
    }
    // The deepest folder holding them all: below it the layout stays as it is here.
    let mut root = files[0].0.parent().map(Path::to_path_buf).unwrap_or_default();
    while !files.iter().all(|(p, _)| p.starts_with(&root)) {
        root.pop();
    }
    let mut shipped = Shipped::default();
    for (i, (path, text)) in files.iter().enumerate() {
        let rel = path.strip_prefix(&root).unwrap_or(path).display().to_string();
        let name = path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let clean: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
        let key = if shipped.data.contains_key(&clean) { format!("{i}-{clean}") } else { clean };
        shipped.data.insert(key.clone(), text.clone().into());
        shipped.items.push(json!({"key": key, "path": rel}));
    }
    for (value, path) in given {
        let rel = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
        shipped.renamed.insert(value, rel);
    }
    Ok(Some(shipped))
}

/// `args` with the shipped files' paths as the job sees them, below `folder`.
pub fn rename(args: &[String], shipped: &Shipped, folder: &str) -> Vec<String> {
    let mut out = args.to_vec();
    for i in 1..out.len() {
        if FILE_FLAGS.contains(&args[i - 1].as_str())
            && let Some(new) = shipped.renamed.get(&args[i])
        {
            out[i] = format!("{}/{new}", folder.trim_end_matches('/'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_stage_file_travels_with_the_catalogue_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("m/stages")).unwrap();
        std::fs::write(d.join("m/stages/stage1.toml"), "name = \"s\"\n[datasets]\ncatalog = \"../datasets.toml\"\n")
            .unwrap();
        std::fs::write(d.join("m/datasets.toml"), "[[datasets]]\n").unwrap();
        let stage = d.join("m/stages/./stage1.toml").display().to_string();
        let a = args(&["train", "--stage", &stage, "--data", "s3://b/d", "--catalog", "<placeholder>"]);
        let s = ship(&a).unwrap().unwrap();
        let paths: Vec<&str> = s.items.iter().map(|i| i["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["datasets.toml", "stages/stage1.toml"], "the layout below their common folder");
        assert_eq!(s.data["datasets.toml"], "[[datasets]]\n");
        let renamed = rename(&a, &s, "/etc/s3-orch/files/");
        assert_eq!(renamed[2], "/etc/s3-orch/files/stages/stage1.toml");
        assert_eq!(renamed[6], "<placeholder>", "placeholders and URLs stay");

        assert!(ship(&args(&["merge", "--out", "store"])).unwrap().is_none());
        let e = ship(&args(&["--manifest", "/nonexistent/datasets.toml"])).unwrap_err();
        assert!(e.to_string().contains("travels with the job"), "{e}");
    }
}
