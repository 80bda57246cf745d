//! Evaluation results, `eval/<name>.json` in a stage's run folder: one report type
//! for both protocols (`shards`, on the store's val crops; `source`, on the source
//! images in their own geometry), written by `s3-train eval` and read by `s3-orch
//! status` and the demo. Its tables: `eval/<name>.csv` (a row per sample, or per case
//! and class) and `eval/<name>-groups.csv` (means per group).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an evaluation measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalReport {
    /// `shards` or `source`.
    pub protocol: String,
    /// Click counts reported.
    pub clicks: Vec<usize>,
    /// One row per sample (shards) or per case and class (source).
    pub samples: Vec<DiceRow>,
    /// Means per dataset, per dataset and label, and (source) per Table-2 category.
    pub groups: Vec<DiceGroup>,
    /// Samples or cases that could not be read or preprocessed, with the reason.
    pub skipped: Vec<String>,
}

/// The Dice of one sample (one class of one case) after each click count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiceRow {
    /// The sample's id (`dataset/task/case/value` in both protocols, so that rows
    /// of the two compare by id).
    pub sample_id: String,
    /// Dataset.
    pub dataset: String,
    /// Label name.
    pub label: String,
    /// Where the source protocol found the class.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceClass>,
    /// Dice per click count (the order of [`EvalReport::clicks`]).
    pub dice: Vec<f64>,
}

/// The source protocol's detail of a row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceClass {
    /// Task.
    pub task: String,
    /// Case.
    pub case_id: String,
    /// Label value.
    pub label_value: i32,
    /// Table-2 category.
    pub category: String,
    /// The benchmark group (`seen`, `unseen`, `lesion`) of an evaluation catalogue's dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Source voxels of the class.
    pub voxels: usize,
    /// The best Dice over every pass up to the largest click count.
    pub max: f64,
}

/// Mean Dice of a group of rows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiceGroup {
    /// `dataset`, `dataset/label` or `category`.
    pub by: String,
    /// The dataset, `dataset/label` or the category.
    pub key: String,
    /// Rows in the group (classes of cases, or samples).
    pub n: usize,
    /// Distinct cases behind the rows.
    #[serde(default)]
    pub cases: usize,
    /// Mean Dice per click count.
    pub dice: Vec<f64>,
    /// Mean of the rows' best Dice (source protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl DiceRow {
    /// The case a row belongs to (`dataset/task/case`).
    pub fn case_key(&self) -> String {
        match &self.source {
            Some(s) => format!("{}/{}/{}", self.dataset, s.task, s.case_id),
            // `dataset/task/case/value` (or `.../value/channel`): the first three parts.
            None => self.sample_id.splitn(4, '/').take(3).collect::<Vec<_>>().join("/"),
        }
    }
}

impl EvalReport {
    /// An empty report of `protocol` at `clicks`.
    pub fn new(protocol: &str, clicks: &[usize]) -> EvalReport {
        EvalReport {
            protocol: protocol.into(),
            clicks: clicks.to_vec(),
            samples: Vec::new(),
            groups: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Mean Dice over all rows at `clicks`.
    pub fn mean_at(&self, clicks: usize) -> Option<f64> {
        let i = self.clicks.iter().position(|&c| c == clicks)?;
        (!self.samples.is_empty()).then(|| {
            self.samples.iter().map(|s| s.dice.get(i).copied().unwrap_or(f64::NAN)).sum::<f64>()
                / self.samples.len() as f64
        })
    }

    /// Mean Dice at each click count, as `dice@N`.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.clicks.iter().filter_map(|&c| Some((format!("dice@{c}"), self.mean_at(c)?))).collect()
    }

    /// Fills [`EvalReport::groups`] from the rows: per dataset, per dataset and label,
    /// per benchmark group and per category where the rows have them.
    pub fn group(&mut self) {
        let mut by: BTreeMap<(&str, String), Vec<&DiceRow>> = BTreeMap::new();
        for r in &self.samples {
            by.entry(("dataset", r.dataset.clone())).or_default().push(r);
            by.entry(("dataset/label", format!("{}/{}", r.dataset, r.label))).or_default().push(r);
            if let Some(s) = &r.source {
                by.entry(("category", s.category.clone())).or_default().push(r);
                if let Some(g) = &s.group {
                    by.entry(("group", g.clone())).or_default().push(r);
                }
            }
        }
        let clicks = self.clicks.len();
        self.groups = by
            .into_iter()
            .map(|((kind, key), v)| {
                let n = v.len() as f64;
                let maxima: Option<Vec<f64>> = v.iter().map(|r| r.source.as_ref().map(|s| s.max)).collect();
                let cases: std::collections::BTreeSet<String> = v.iter().map(|r| r.case_key()).collect();
                DiceGroup {
                    by: kind.into(),
                    key,
                    n: v.len(),
                    cases: cases.len(),
                    dice: (0..clicks)
                        .map(|i| v.iter().map(|r| r.dice.get(i).copied().unwrap_or(f64::NAN)).sum::<f64>() / n)
                        .collect(),
                    max: maxima.map(|m| m.iter().sum::<f64>() / n),
                }
            })
            .collect();
    }

    /// The paper's table as Markdown: mean Dice at each click count by benchmark group,
    /// by Table-2 category and by dataset, each cell's rows counted (`cases / classes`).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let head: Vec<String> = self.clicks.iter().map(|c| format!("Dice@{c}")).collect();
        for (kind, title) in [("group", "Group"), ("category", "Category"), ("dataset", "Dataset")] {
            let groups: Vec<&DiceGroup> = self.groups.iter().filter(|g| g.by == kind).collect();
            if groups.is_empty() {
                continue;
            }
            out.push_str(&format!("| {title} | cases | classes | {} |\n", head.join(" | ")));
            out.push_str(&format!("|---|---:|---:|{}\n", "---:|".repeat(head.len())));
            for g in groups {
                let dice: Vec<String> = g.dice.iter().map(|d| format!("{d:.4}")).collect();
                out.push_str(&format!("| {} | {} | {} | {} |\n", g.key, g.cases, g.n, dice.join(" | ")));
            }
            out.push('\n');
        }
        out
    }

    fn with_max(&self) -> bool {
        self.samples.iter().any(|r| r.source.is_some())
    }

    /// `eval/<name>.csv`: one row per sample, with the source protocol's case and
    /// class columns when it has them.
    pub fn rows_csv(&self) -> String {
        let source = self.with_max();
        let head: &[&str] = if source {
            &["dataset", "task", "case", "label_value", "label", "category", "voxels"]
        } else {
            &["sample_id", "dataset", "label"]
        };
        let rows = self.samples.iter().map(|r| {
            let mut row = match &r.source {
                Some(s) => vec![
                    r.dataset.clone(),
                    s.task.clone(),
                    s.case_id.clone(),
                    s.label_value.to_string(),
                    r.label.clone(),
                    s.category.clone(),
                    s.voxels.to_string(),
                ],
                None if source => vec![
                    r.dataset.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    r.label.clone(),
                    String::new(),
                    String::new(),
                ],
                None => vec![r.sample_id.clone(), r.dataset.clone(), r.label.clone()],
            };
            row.extend(r.dice.iter().map(|d| format!("{d:.4}")));
            if source {
                row.push(r.source.as_ref().map_or_else(String::new, |s| format!("{:.4}", s.max)));
            }
            row
        });
        self.table(head, rows)
    }

    /// `eval/<name>-groups.csv`: one row per group.
    pub fn groups_csv(&self) -> String {
        let rows = self.groups.iter().map(|g| {
            let mut row = vec![g.by.clone(), g.key.clone(), g.n.to_string(), g.cases.to_string()];
            row.extend(g.dice.iter().chain(g.max.as_ref()).map(|d| format!("{d:.4}")));
            row
        });
        self.table(&["by", "key", "n", "cases"], rows)
    }

    /// A header (then `dice@N` per click count, and `max` for the source protocol) and
    /// rows as CSV, quoted where a field needs it (a label name with a comma).
    fn table(&self, head: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
        let mut header: Vec<String> = head.iter().map(|h| h.to_string()).collect();
        header.extend(self.clicks.iter().map(|c| format!("dice@{c}")));
        if self.with_max() {
            header.push("max".into());
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to memory cannot fail, and every row has the header's length.
        w.write_record(header).expect("in memory");
        for row in rows {
            w.write_record(row).expect("in memory");
        }
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 fields")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, dice: Vec<f64>, source: Option<SourceClass>) -> DiceRow {
        DiceRow { sample_id: format!("D/t/c1/{label}"), dataset: "D".into(), label: label.into(), source, dice }
    }

    #[test]
    fn a_label_name_with_a_comma_stays_one_field() {
        let class = SourceClass {
            task: "t".into(),
            case_id: "c1".into(),
            label_value: 3,
            category: "abdomen&thorax".into(),
            group: None,
            voxels: 10,
            max: 0.8,
        };
        let mut report = EvalReport::new("source", &[1, 5]);
        report.samples.push(row("kidney, left", vec![0.5, 0.75], Some(class)));
        report.group();
        let csv = report.rows_csv();
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>()[7..], ["dice@1", "dice@5", "max"]);
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!((&rec[4], &rec[7], &rec[9]), ("kidney, left", "0.5000", "0.8000"));
        let groups = report.groups_csv();
        assert!(groups.lines().any(|l| l == "dataset/label,\"D/kidney, left\",1,1,0.5000,0.7500,0.8000"), "{groups}");
        assert!(groups.lines().any(|l| l.starts_with("category,abdomen&thorax,1,")), "{groups}");
    }

    #[test]
    fn the_shards_protocol_groups_by_dataset_and_label_and_reads_back() {
        let mut report = EvalReport::new("shards", &[1, 3]);
        report.samples.push(row("liver", vec![0.2, 0.6], None));
        report.samples.push(row("liver", vec![0.4, 0.8], None));
        report.samples.push(row("spleen", vec![0.6, 1.0], None));
        report.group();
        let whole = report.groups.iter().find(|g| g.by == "dataset").unwrap();
        assert_eq!((whole.n, whole.max), (3, None));
        assert!((whole.dice[1] - 0.8).abs() < 1e-12);
        let liver = report.groups.iter().find(|g| g.key == "D/liver").unwrap();
        assert!((liver.dice[0] - 0.3).abs() < 1e-12);
        assert!(report.rows_csv().starts_with("sample_id,dataset,label,dice@1,dice@3\n"));
        let back: EvalReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert!(back.samples.iter().all(|r| r.source.is_none()));
        assert!((back.means()["dice@3"] - 0.8).abs() < 1e-12);
    }

    #[test]
    fn benchmark_groups_and_categories_match_a_table_by_hand() {
        let class = |ds: &str, case: &str, v: i32, cat: &str, group: &str, dice: [f64; 2]| DiceRow {
            sample_id: format!("{ds}/default/{case}/{v}"),
            dataset: ds.into(),
            label: format!("l{v}"),
            source: Some(SourceClass {
                task: "default".into(),
                case_id: case.into(),
                label_value: v,
                category: cat.into(),
                group: Some(group.into()),
                voxels: 100,
                max: dice[1],
            }),
            dice: dice.to_vec(),
        };
        let mut report = EvalReport::new("source", &[1, 10]);
        report.samples = vec![
            class("BTCV", "0001", 1, "abdomen&thorax", "seen", [0.5, 0.75]),
            class("BTCV", "0001", 2, "abdomen&thorax", "seen", [0.25, 0.5]),
            class("BTCV", "0002", 1, "abdomen&thorax", "seen", [0.75, 1.0]),
            class("iSeg17", "subject-1", 1, "unseen organ", "unseen", [0.125, 0.25]),
            class("KiTS21-Val", "00210", 1, "abdomen&thorax", "lesion", [1.0, 1.0]),
            class("KiTS21-Val", "00210", 2, "lesion", "lesion", [0.0, 0.5]),
        ];
        report.group();
        let get = |by: &str, key: &str| report.groups.iter().find(|g| g.by == by && g.key == key).unwrap();
        // By hand: seen = BTCV's 3 classes of 2 cases, (0.5+0.25+0.75)/3 = 0.5 and (0.75+0.5+1)/3 = 0.75.
        let seen = get("group", "seen");
        assert_eq!((seen.cases, seen.n, seen.dice.clone()), (2, 3, vec![0.5, 0.75]));
        let lesion = get("group", "lesion");
        assert_eq!((lesion.cases, lesion.n, lesion.dice.clone()), (1, 2, vec![0.5, 0.75]));
        // abdomen&thorax spans two groups: BTCV's 3 and KiTS's kidney, 3 cases, (0.5+0.25+0.75+1)/4.
        let at = get("category", "abdomen&thorax");
        assert_eq!((at.cases, at.n, at.dice.clone()), (3, 4, vec![0.625, 0.8125]));
        let md = report.markdown();
        let want = "| Group | cases | classes | Dice@1 | Dice@10 |\n|---|---:|---:|---:|---:|\n\
                    | lesion | 1 | 2 | 0.5000 | 0.7500 |\n| seen | 2 | 3 | 0.5000 | 0.7500 |\n\
                    | unseen | 1 | 1 | 0.1250 | 0.2500 |\n\n";
        assert!(md.starts_with(want), "{md}");
        assert!(md.contains("| abdomen&thorax | 3 | 4 | 0.6250 | 0.8125 |\n"), "{md}");
        assert!(
            md.contains("| Dataset | cases | classes |") && md.contains("| iSeg17 | 1 | 1 | 0.1250 | 0.2500 |"),
            "{md}"
        );
        assert!(
            report.groups_csv().lines().any(|l| l == "group,seen,3,2,0.5000,0.7500,0.7500"),
            "{}",
            report.groups_csv()
        );
    }
}
