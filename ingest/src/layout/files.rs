//! The general layout: image path patterns with captures, and label, mask and
//! channel paths built from what they capture.

use std::collections::{BTreeMap, BTreeSet};

use super::{CaseRef, Channels, LabelSource, ListError, Listing, ValueMap, file_name, image_stem};
use crate::catalog::TaskEntry;
use crate::pattern::{Captures, Pattern};
use crate::source::Source;

/// Where the archive's folders were found relative to the source: `prefix` is a
/// wrapper folder above them, `strip` a first folder the user's copy lacks.
#[derive(Clone, Debug)]
struct Root {
    prefix: String,
    strip: Option<String>,
}

impl Root {
    fn adapt(&self, template: &str) -> String {
        let t = match &self.strip {
            Some(first) => template.strip_prefix(&format!("{first}/")).unwrap_or(template),
            None => template,
        };
        format!("{}{t}", self.prefix)
    }
}

/// The source's files and folders (a folder ends in `/`).
struct Tree<'a> {
    keys: &'a BTreeSet<String>,
    folders: BTreeSet<String>,
}

impl<'a> Tree<'a> {
    fn new(keys: &'a BTreeSet<String>) -> Tree<'a> {
        let mut folders = BTreeSet::new();
        for k in keys {
            let mut at = k.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                if !folders.insert(format!("{parent}/")) {
                    break;
                }
                at = parent;
            }
        }
        Tree { keys, folders }
    }

    fn exists(&self, key: &str) -> bool {
        if key.ends_with('/') { self.folders.contains(key) } else { self.keys.contains(key) }
    }

    /// Files (or folders, for a pattern ending in `/`) matching `pattern`, with captures.
    fn matching(&self, pattern: &Pattern, folder: bool, bound: &Captures) -> Vec<(String, Captures)> {
        let prefix = pattern.literal_prefix();
        let from = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let set = if folder { &self.folders } else { self.keys };
        set.range(from.clone()..)
            .take_while(|k| k.starts_with(&from))
            .filter_map(|k| Some((k.clone(), pattern.matches(k, bound)?)))
            .collect()
    }

    /// The one path `template` names given `caps`: Ok(None) when there is none.
    fn resolve(&self, template: &str, caps: &Captures) -> Result<Option<String>, String> {
        let folder = template.ends_with('/');
        let filled = Pattern::parse(template)?.fill(caps);
        let p = Pattern::parse(&filled)?;
        if p.is_literal() {
            return Ok(self.exists(&filled).then_some(filled));
        }
        let found = self.matching(&p, folder, &Captures::new());
        match found.as_slice() {
            [] => Ok(None),
            [(k, _)] => Ok(Some(k.clone())),
            more => Err(format!(
                "{filled} matches {} files ({}, {}, ...): make the catalogue's pattern tell them apart",
                more.len(),
                more[0].0,
                more[1].0
            )),
        }
    }
}

/// The case id of an image's captures.
fn case_id(task: &TaskEntry, pattern: &Pattern, key: &str, caps: &Captures) -> String {
    if let Some(t) = &task.case_id {
        return Pattern::parse(t).map(|p| p.fill(caps)).unwrap_or_else(|_| t.clone());
    }
    if let Some(id) = caps.get("case").or_else(|| caps.get("id")) {
        return id.clone();
    }
    let parts: Vec<&str> =
        pattern.captures().iter().filter(|c| *c != "channel").filter_map(|c| caps.get(c).map(String::as_str)).collect();
    if !parts.is_empty() {
        return parts.join("_");
    }
    let name = file_name(key);
    let stem = image_stem(name).unwrap_or(name);
    task.image_suffix.as_deref().and_then(|s| stem.strip_suffix(s)).unwrap_or(stem).to_string()
}

/// One case being assembled: (channel → key) and the captures of its first file.
struct Found {
    files: BTreeMap<String, String>,
    caps: Captures,
}

pub(super) async fn list(source: &Source, keys: &BTreeSet<String>, task: &TaskEntry) -> Result<Listing, ListError> {
    let bad = |e: String| ListError::Mismatch(e);
    let tree = Tree::new(keys);
    let root = find_root(&tree, task).ok_or_else(|| {
        let top: BTreeSet<&str> = keys.iter().map(|k| k.split('/').next().unwrap_or(k)).take(200).collect();
        let top: Vec<&str> = top.into_iter().take(6).collect();
        ListError::Mismatch(format!(
            "{}: no file matches {:?} (at the root or one folder down); the source holds {}",
            source.url(),
            task.image_glob,
            top.join(", ")
        ))
    })?;
    let images: Vec<(Pattern, bool)> = task
        .image_glob
        .iter()
        .map(|p| Ok((Pattern::parse(&root.adapt(p))?, p.ends_with('/'))))
        .collect::<Result<_, String>>()
        .map_err(bad)?;
    // A file goes to the first pattern it matches.
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for (pattern, folder) in &images {
        for (key, caps) in tree.matching(pattern, *folder, &Captures::new()) {
            if !taken.insert(key.clone()) {
                continue;
            }
            let channel = caps.get("channel").cloned().unwrap_or_default();
            if !channel.is_empty() && !task.channels.is_empty() && !task.channels.contains(&channel) {
                continue;
            }
            let id = case_id(task, pattern, &key, &caps);
            let entry = found.entry(id.clone()).or_insert_with(|| Found { files: BTreeMap::new(), caps: caps.clone() });
            if let Some(prev) = entry.files.insert(channel.clone(), key.clone()) {
                return Err(bad(format!(
                    "{}: case id {id:?}{} comes from two files ({prev} and {key}); make the image pattern, \
                     image_suffix or case_id tell them apart",
                    source.url(),
                    if channel.is_empty() { String::new() } else { format!(", channel {channel:?},") },
                )));
            }
        }
    }
    let label_templates: Vec<String> = task.label_template.iter().map(|t| root.adapt(t)).collect();
    let masks = task.masks.as_ref().map(|m| root.adapt(m));
    let stack = task.label_png.as_ref().map(|p| p.stack()).transpose().map_err(bad)?;
    let values = ValueMap::from_catalogue(&task.label_values);
    let mut structures = task.structures.clone();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut cases = Vec::new();
    for (case_id, f) in found {
        let mut caps = f.caps.clone();
        caps.remove("channel");
        caps.insert("case".into(), case_id.clone());
        let mut problems = Vec::new();
        // Channels: from `{channel}` captures or from `channel_files`.
        let mut files: Vec<(String, String)> = Vec::new();
        if task.channel_files.is_empty() {
            if f.files.len() > 1 || !f.files.contains_key("") {
                files = f.files.iter().map(|(c, k)| (c.clone(), k.clone())).collect();
                for want in &task.channels {
                    if !f.files.contains_key(want) {
                        problems.push(format!("no {want} channel file"));
                    }
                }
            }
        } else {
            for (name, t) in &task.channel_files {
                match tree.resolve(&root.adapt(t), &caps) {
                    Ok(Some(k)) => files.push((name.clone(), k)),
                    Ok(None) => problems.push(format!("no {name} channel file {}", fill(&root.adapt(t), &caps))),
                    Err(e) => problems.push(e),
                }
            }
        }
        used.extend(f.files.values().cloned());
        used.extend(files.iter().map(|(_, k)| k.clone()));
        let image =
            files.first().map_or_else(|| f.files.values().next().cloned().unwrap_or_default(), |(_, k)| k.clone());
        let label = if !problems.is_empty() {
            LabelSource::Missing(problems.join("; "))
        } else if let Some(m) = &masks {
            if structures.is_empty() {
                structures = discover_structures(&tree, m, &caps);
            }
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for (i, s) in structures.iter().enumerate() {
                let mut c = caps.clone();
                c.insert("structure".into(), s.clone());
                match tree.resolve(m, &c) {
                    Ok(Some(k)) => found.push((i as i32 + 1, k)),
                    Ok(None) => missing.push(s.clone()),
                    Err(e) => missing.push(e),
                }
            }
            used.extend(found.iter().map(|(_, k)| k.clone()));
            // A structure a case has no mask for is absent from it where the
            // dataset delineates only what each patient shows (HaN-Seg).
            if found.is_empty() || !missing.is_empty() && !task.masks_optional {
                LabelSource::Missing(format!("missing masks: {}", missing.join(", ")))
            } else {
                LabelSource::Structures(found)
            }
        } else {
            resolve_label(&tree, &label_templates, &caps, stack.as_ref(), &mut used)
        };
        let channels = Channels { files, names: task.channel_names.clone(), keep: task.channels.clone() };
        cases.push(CaseRef::new(case_id, image, channels, label, values.clone()));
    }
    // Flat layouts name labels like images (`Case00.mhd`, `Case00_segmentation.mhd`):
    // a file another case uses as its label, mask or channel is not a case itself.
    let used_by_cases: BTreeSet<&String> = cases
        .iter()
        .flat_map(|c| {
            let label: Vec<&String> = match &c.label {
                LabelSource::File(k) | LabelSource::PngStack(k, _) => vec![k],
                LabelSource::Structures(v) => v.iter().map(|(_, k)| k).collect(),
                LabelSource::Missing(_) => vec![],
            };
            label.into_iter().chain(c.channels.files.iter().filter(|(_, k)| *k != c.image).map(|(_, k)| k))
        })
        .collect();
    let as_labels: BTreeSet<String> =
        cases.iter().filter(|c| used_by_cases.contains(&c.image)).map(|c| c.case_id.clone()).collect();
    cases.retain(|c| !as_labels.contains(&c.case_id));
    let labels = if masks.is_some() {
        structures.iter().enumerate().map(|(i, s)| (i as i32 + 1, s.clone())).collect()
    } else {
        BTreeMap::new()
    };
    let unused = audit(&tree, &images, &root, task, &used)?;
    Ok(Listing { cases, labels, root: root.prefix.clone(), unused, used })
}

fn fill(template: &str, caps: &Captures) -> String {
    Pattern::parse(template).map(|p| p.fill(caps)).unwrap_or_else(|_| template.to_string())
}

/// The first label template that names a file (a folder, for PNG stacks).
fn resolve_label(
    tree: &Tree,
    templates: &[String],
    caps: &Captures,
    stack: Option<&crate::formats::png_stack::PngStack>,
    used: &mut BTreeSet<String>,
) -> LabelSource {
    let mut tried = Vec::new();
    for t in templates {
        let t = if stack.is_some() { format!("{}/", t.trim_end_matches('/')) } else { t.clone() };
        // A template for another image pattern's cases (captures this one lacks).
        if Pattern::parse(&t).is_ok_and(|p| p.captures().iter().any(|c| !caps.contains_key(c))) {
            continue;
        }
        match tree.resolve(&t, caps) {
            Ok(Some(k)) => {
                used.insert(k.clone());
                return match stack {
                    Some(s) => LabelSource::PngStack(k, s.clone()),
                    None => LabelSource::File(k),
                };
            }
            Ok(None) => tried.push(fill(&t, caps)),
            Err(e) => return LabelSource::Missing(e),
        }
    }
    let what = if stack.is_some() { "folder" } else { "file" };
    LabelSource::Missing(format!("no label {what} {}", tried.join(" or ")))
}

/// The structure names of the first case's mask files, sorted.
fn discover_structures(tree: &Tree, masks: &str, caps: &Captures) -> Vec<String> {
    let Ok(p) = Pattern::parse(masks) else { return Vec::new() };
    let Ok(p) = Pattern::parse(&p.fill(caps)) else { return Vec::new() };
    let mut s: Vec<String> = tree
        .matching(&p, false, &Captures::new())
        .into_iter()
        .filter_map(|(_, c)| c.get("structure").cloned())
        .collect();
    s.sort();
    s.dedup();
    s
}

/// Where the image patterns match: as written, inside one wrapper folder, or without
/// their first folder (contents moved up a level), in that order.
fn find_root(tree: &Tree, task: &TaskEntry) -> Option<Root> {
    let first = task.image_glob.first()?.split('/').next().filter(|c| !c.contains(['*', '?', '{', '[']));
    let strip = first.filter(|f| task.image_glob.iter().all(|p| p.starts_with(&format!("{f}/"))));
    let tops: BTreeSet<String> =
        tree.keys.iter().filter_map(|k| k.split_once('/').map(|(top, _)| format!("{top}/"))).collect();
    let mut candidates = vec![Root { prefix: String::new(), strip: None }];
    candidates.extend(tops.iter().map(|t| Root { prefix: t.clone(), strip: None }));
    if let Some(s) = strip {
        candidates.push(Root { prefix: String::new(), strip: Some(s.to_string()) });
        candidates.extend(tops.iter().map(|t| Root { prefix: t.clone(), strip: Some(s.to_string()) }));
    }
    candidates.into_iter().find(|root| {
        task.image_glob.iter().any(|p| {
            Pattern::parse(&root.adapt(p))
                .is_ok_and(|pat| !tree.matching(&pat, p.ends_with('/'), &Captures::new()).is_empty())
        })
    })
}

/// Image files under the image patterns' folders that no case uses and no `ignore`
/// pattern names.
fn audit(
    tree: &Tree,
    images: &[(Pattern, bool)],
    root: &Root,
    task: &TaskEntry,
    used: &BTreeSet<String>,
) -> Result<Vec<String>, ListError> {
    let ignore: Vec<Pattern> = task
        .ignore
        .iter()
        .map(|p| Pattern::parse(&root.adapt(p)))
        .collect::<Result<_, _>>()
        .map_err(ListError::Mismatch)?;
    let used_folders: Vec<&String> = used.iter().filter(|k| k.ends_with('/')).collect();
    let scopes: BTreeSet<String> = images
        .iter()
        .map(|(p, _)| {
            let l = p.literal_prefix();
            if l.is_empty() { String::new() } else { format!("{l}/") }
        })
        .collect();
    let mut unused = Vec::new();
    for scope in &scopes {
        for k in tree.keys.range(scope.clone()..).take_while(|k| k.starts_with(scope.as_str())) {
            if image_stem(file_name(k)).is_none()
                || used.contains(k)
                || used_folders.iter().any(|f| k.starts_with(f.as_str()))
                || ignore.iter().any(|p| ancestry(k).any(|a| p.matches(a, &Captures::new()).is_some()))
            {
                continue;
            }
            unused.push(k.clone());
        }
    }
    unused.sort();
    unused.dedup();
    Ok(unused)
}

/// `a/b/c.nii` → `a/b/c.nii`, `a/b`, `a`: an `ignore` pattern may name a folder.
fn ancestry(key: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(key), |k| k.rsplit_once('/').map(|(p, _)| p))
}
