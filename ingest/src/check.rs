//! `s3-ingest catalog --check`: what the catalogue finds in the raw data, read
//! from the listings alone (no voxel is read), before a multi-hour ingest.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, expand_env_with};
use crate::error::Result;
use crate::layout::{LabelSource, ListError, Listing, list_cases, unused_by_all};
use crate::run::unused_problem;
use crate::source::Source;
use s3_shards::StoreOptions;

/// What one task of the catalogue finds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskCheck {
    /// Dataset.
    pub dataset: String,
    /// Task.
    pub task: String,
    /// `ok`, `absent`, `unreadable`, `mismatch` (a layout problem) or `no source`.
    pub status: &'static str,
    /// The source as expanded.
    pub source: String,
    /// Wrapper folder the layout was found in ("" at the root).
    pub root: String,
    /// Cases matched.
    pub cases: usize,
    /// Of which with a label found.
    pub labelled: usize,
    /// Of which held out or excluded (listed, never read).
    pub held_out: usize,
    /// The first problem, if any.
    pub problem: Option<String>,
}

impl TaskCheck {
    /// Whether the task is a problem for `--strict`.
    pub fn failed(&self) -> bool {
        self.status == "mismatch"
    }
}

/// Lists every task of `catalog` (those of `only`, when given); `vars` override the
/// environment in `${VAR}` expansion.
pub fn check(
    catalog: &Catalog,
    vars: &BTreeMap<String, String>,
    only: Option<&[String]>,
    options: &StoreOptions,
) -> Result<Vec<TaskCheck>> {
    let rt = s3_shards::io_runtime::io_runtime()?;
    let mut out = Vec::new();
    for d in catalog.datasets.iter().filter(|d| only.is_none_or(|o| o.contains(&d.name))) {
        let first = out.len();
        let mut audits: Vec<Listing> = Vec::new();
        for t in &d.tasks {
            let mut c = TaskCheck {
                dataset: d.name.clone(),
                task: t.name.clone(),
                status: "ok",
                source: String::new(),
                root: String::new(),
                cases: 0,
                labelled: 0,
                held_out: 0,
                problem: None,
            };
            let Some(raw) = &t.source else {
                c.status = "no source";
                out.push(c);
                continue;
            };
            if let Some(why) = &t.unreadable {
                c.status = "unreadable";
                c.problem = Some(why.clone());
                out.push(c);
                continue;
            }
            let source = match expand_env_with(raw, vars) {
                Ok(url) => {
                    c.source = url.clone();
                    Source::open(&url, options)
                }
                Err(e) => Err(e),
            };
            let listing = match source {
                Ok(s) => rt.block_on(list_cases(&s, &d.name, t)),
                Err(e) => Err(ListError::NotPresent(e)),
            };
            match listing {
                Ok(l) => {
                    c.root = l.root.clone();
                    c.cases = l.cases.len();
                    c.held_out = l.cases.iter().filter(|k| k.skip.is_some()).count();
                    c.labelled = l.cases.iter().filter(|k| !matches!(k.label, LabelSource::Missing(_))).count();
                    if let Some((k, why)) = l.cases.iter().find_map(|k| match &k.label {
                        LabelSource::Missing(why) if k.skip.is_none() => Some((k, why)),
                        _ => None,
                    }) {
                        c.problem = Some(format!("case {}: {why}", k.case_id));
                    }
                    audits.push(Listing { cases: Vec::new(), ..l });
                }
                Err(ListError::NotPresent(why)) => {
                    c.status = "absent";
                    c.problem = Some(why);
                }
                Err(ListError::Unreadable(why)) => {
                    c.status = "unreadable";
                    c.problem = Some(why);
                }
                Err(ListError::Mismatch(why) | ListError::Source(why)) => {
                    c.status = "mismatch";
                    c.problem = Some(why);
                }
            }
            out.push(c);
        }
        // Files no task of the dataset uses: the verdict goes on its tasks' rows.
        let listed: usize = out[first..].iter().map(|c| c.cases).sum();
        let unused = unused_by_all(&audits);
        if let Some(p) = unused_problem(listed, &unused) {
            for c in out[first..].iter_mut().filter(|c| c.status == "ok") {
                c.status = "mismatch";
                c.problem = Some(p.clone());
            }
        } else if let Some(u) = unused.first() {
            for c in out[first..].iter_mut().filter(|c| c.status == "ok" && c.problem.is_none()) {
                c.problem = Some(format!("{} image file(s) no case uses, first {u}", unused.len()));
            }
        }
    }
    Ok(out)
}
