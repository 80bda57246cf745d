//! Path patterns with named captures, as the catalogue writes them:
//! `data/case_{id}/imaging.nii.gz`, `Training Batch */volume-{id}.nii`,
//! `{grade}/{id}/{id}_{channel}.nii.gz`.
//!
//! A pattern is matched against a whole relative key, component by component (no
//! token crosses a `/`). Tokens: `{name}` captures one or more characters (the same
//! name twice must capture the same text), `*` any run of characters, `?` one,
//! `{a,b}` one of the alternatives; everything else is literal. Globs alone cannot
//! carry the captures from an image path into its label's path, hence this module.

use std::collections::BTreeMap;

/// Captured values by name.
pub type Captures = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Star,
    One,
    Capture(String),
    Alt(Vec<String>),
}

/// A parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    comps: Vec<Vec<Tok>>,
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Pattern {
    /// Parses `text`; an unclosed `{` or an empty component is an error.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("path pattern {text:?}: {why}");
        if text.is_empty() {
            return Err(bad("empty"));
        }
        let mut comps = Vec::new();
        for comp in text.trim_end_matches('/').split('/') {
            if comp.is_empty() {
                return Err(bad("empty folder name (`//` or a leading `/`)"));
            }
            let mut toks = Vec::new();
            let mut chars = comp.chars();
            while let Some(c) = chars.next() {
                match c {
                    '*' => toks.push(Tok::Star),
                    '?' => toks.push(Tok::One),
                    '{' => {
                        let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
                        if !comp.contains('}') {
                            return Err(bad("unclosed `{`"));
                        }
                        if inner.contains(',') {
                            toks.push(Tok::Alt(inner.split(',').map(str::to_string).collect()));
                        } else if is_name(&inner) {
                            toks.push(Tok::Capture(inner));
                        } else {
                            return Err(bad(&format!("`{{{inner}}}` is neither a capture name nor `{{a,b}}`")));
                        }
                    }
                    c => toks.push(Tok::Lit(c)),
                }
            }
            comps.push(toks);
        }
        Ok(Pattern { text: text.to_string(), comps })
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The capture names, in order of first appearance.
    pub fn captures(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.comps.iter().flatten() {
            if let Tok::Capture(n) = t
                && !out.contains(n)
            {
                out.push(n.clone());
            }
        }
        out
    }

    /// Whether it has wildcards or captures left (else it names one key).
    pub fn is_literal(&self) -> bool {
        self.comps.iter().flatten().all(|t| matches!(t, Tok::Lit(_)))
    }

    /// The leading folders without wildcards or captures: where to list.
    pub fn literal_prefix(&self) -> String {
        let n = self.comps[..self.comps.len() - 1]
            .iter()
            .take_while(|c| c.iter().all(|t| matches!(t, Tok::Lit(_))))
            .count();
        self.text.split('/').take(n).collect::<Vec<_>>().join("/")
    }

    /// The captures of `key` (a relative path), if it matches. `bound` are values
    /// the captures must take (from an image's path when matching its label).
    pub fn matches(&self, key: &str, bound: &Captures) -> Option<Captures> {
        let parts: Vec<&str> = key.trim_end_matches('/').split('/').collect();
        if parts.len() != self.comps.len() {
            return None;
        }
        let mut caps = bound.clone();
        for (toks, part) in self.comps.iter().zip(&parts) {
            let chars: Vec<char> = part.chars().collect();
            if !match_comp(toks, &chars, &mut caps) {
                return None;
            }
        }
        Some(caps)
    }

    /// The pattern with `caps` substituted for its captures (others stay).
    pub fn fill(&self, caps: &Captures) -> String {
        let mut out = self.text.clone();
        for (k, v) in caps {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }
}

/// Backtracking match of one component; on success `caps` holds the new captures.
fn match_comp(toks: &[Tok], s: &[char], caps: &mut Captures) -> bool {
    let Some((first, rest)) = toks.split_first() else { return s.is_empty() };
    match first {
        Tok::Lit(c) => s.first() == Some(c) && match_comp(rest, &s[1..], caps),
        Tok::One => !s.is_empty() && match_comp(rest, &s[1..], caps),
        Tok::Star => (0..=s.len()).any(|n| match_comp(rest, &s[n..], caps)),
        Tok::Alt(alts) => alts.iter().any(|a| {
            let a: Vec<char> = a.chars().collect();
            s.starts_with(&a) && match_comp(rest, &s[a.len()..], caps)
        }),
        Tok::Capture(name) => {
            if let Some(v) = caps.get(name) {
                let v: Vec<char> = v.chars().collect();
                return s.starts_with(&v) && match_comp(rest, &s[v.len()..], caps);
            }
            // Shortest first: `MR_{channel}.*` takes `T1` from `MR_T1.54`.
            for n in 1..=s.len() {
                caps.insert(name.clone(), s[..n].iter().collect());
                if match_comp(rest, &s[n..], caps) {
                    return true;
                }
            }
            caps.remove(name);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(p: &str, k: &str) -> Option<Vec<(String, String)>> {
        Pattern::parse(p).unwrap().matches(k, &Captures::new()).map(|c| c.into_iter().collect())
    }

    fn pairs(v: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())
    }

    #[test]
    fn captures_cross_folders_and_must_agree() {
        assert_eq!(caps("data/case_{id}/imaging.nii.gz", "data/case_00012/imaging.nii.gz"), pairs(&[("id", "00012")]));
        assert_eq!(
            caps("{grade}/{id}/{id}_{channel}.nii.gz", "HGG/B_1/B_1_t1ce.nii.gz"),
            pairs(&[("channel", "t1ce"), ("grade", "HGG"), ("id", "B_1")])
        );
        assert_eq!(caps("{grade}/{id}/{id}_{channel}.nii.gz", "HGG/B_1/B_2_t1.nii.gz"), None);
        assert_eq!(caps("Training Batch */volume-{id}.nii", "Training Batch 2/volume-7.nii"), pairs(&[("id", "7")]));
        assert_eq!(caps("Training Batch */volume-{id}.nii", "Training Batch 2/x/volume-7.nii"), None);
        assert_eq!(caps("a/{id}.nii", "a/.nii"), None, "a capture is never empty");
    }

    #[test]
    fn shortest_capture_and_alternatives() {
        assert_eq!(
            caps("{id}/VSD.MR_{channel}.*/*.mha", "7/VSD.MR_T1c.54/VSD.MR_T1c.54.mha"),
            pairs(&[("channel", "T1c"), ("id", "7")])
        );
        assert_eq!(
            caps("Part{1,2,3}/Case_{id}_0000.nii.gz", "Part2/Case_00001_0000.nii.gz"),
            pairs(&[("id", "00001")])
        );
        assert_eq!(caps("Part{1,2}/x", "Part3/x"), None);
        assert_eq!(caps("c?se", "case"), pairs(&[]));
    }

    #[test]
    fn fill_prefix_and_errors() {
        let p = Pattern::parse("{grade}/{id}/{id}_seg.nii.gz").unwrap();
        let c = Captures::from([("grade".into(), "LGG".into()), ("id".into(), "X".into())]);
        assert_eq!(p.fill(&c), "LGG/X/X_seg.nii.gz");
        assert_eq!(p.captures(), ["grade", "id"]);
        assert_eq!(Pattern::parse("Train_Sets/CT/{id}/DICOM_anon/").unwrap().literal_prefix(), "Train_Sets/CT");
        assert_eq!(Pattern::parse("*.mhd").unwrap().literal_prefix(), "");
        assert!(Pattern::parse("a/{id").is_err());
        assert!(Pattern::parse("a//b").is_err());
        assert!(Pattern::parse("a/{bad name}").is_err());
        let bound = Captures::from([("id".into(), "3".into())]);
        assert!(Pattern::parse("m/{id}.nii").unwrap().matches("m/3.nii", &bound).is_some());
        assert!(Pattern::parse("m/{id}.nii").unwrap().matches("m/4.nii", &bound).is_none());
    }
}
