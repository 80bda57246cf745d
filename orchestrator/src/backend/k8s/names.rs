//! Object names and label values that Kubernetes accepts, made from run ids and stage
//! names that may hold anything. A value that had to change gets a hash of the
//! original, so two runs never share a name (`a_b` and `a-b`).

use xxhash_rust::xxh3::xxh3_64;

/// Longest object name: the pods of an Indexed Job are `<name>-<index>`, a JobSet's
/// `<name>-ranks-<job>-<index>`, and a pod hostname is one DNS label (63).
pub const NAME_MAX: usize = 40;

/// Label values are at most 63 characters.
const LABEL_MAX: usize = 63;

fn hash8(s: &str) -> String {
    format!("{:08x}", xxh3_64(s.as_bytes()) as u32)
}

/// `raw` cut to `max` characters with a hash of `raw` at the end, when `clean` (its
/// sanitised form) differs from it or is too long.
fn with_hash(raw: &str, clean: String, max: usize, ok_end: fn(char) -> bool) -> String {
    if clean == raw && clean.len() <= max {
        return clean;
    }
    let mut head: String = clean.chars().take(max - 9).collect();
    while head.ends_with(|c: char| !ok_end(c)) {
        head.pop();
    }
    if head.is_empty() { hash8(raw) } else { format!("{head}-{}", hash8(raw)) }
}

/// A DNS-1035 label (Services need one; Jobs take it too): lower-case letters, digits
/// and `-`, starting with a letter, at most [`NAME_MAX`] long.
pub fn object_name(raw: &str) -> String {
    let mut clean = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (clean.is_empty() || clean.ends_with('-'))) {
            clean.push(c);
        }
    }
    while clean.ends_with('-') {
        clean.pop();
    }
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert_str(0, "s3-");
    }
    let name = with_hash(raw, clean, NAME_MAX, |c| c.is_ascii_alphanumeric());
    if name.starts_with(|c: char| c.is_ascii_lowercase()) { name } else { format!("s3-{name}") }
}

/// A label value: letters, digits, `-`, `_`, `.`, alphanumeric at both ends, at most 63.
pub fn label_value(raw: &str) -> String {
    let mapped: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    let clean = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    with_hash(raw, clean, LABEL_MAX, |c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_1035(s: &str) -> bool {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn names_are_valid_and_do_not_collide() {
        assert_eq!(object_name("demo-stage1-a1"), "demo-stage1-a1");
        for raw in ["a_b-stage1-a1", "a-b_stage1-a1", "9lives", "Run 1/x", "--", &"x".repeat(80), "é"] {
            let n = object_name(raw);
            assert!(dns_1035(&n) && n.len() <= NAME_MAX, "{raw:?} → {n:?}");
        }
        assert_ne!(object_name("a_b-stage1-a1"), object_name("a-b_stage1-a1"));
        assert_ne!(object_name(&"x".repeat(80)), object_name(&"x".repeat(81)));
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("run-20250101T120000"), "run-20250101T120000");
        assert_eq!(label_value("stage1"), "stage1");
        for raw in ["a/b", "_x_", &"y".repeat(70), "", "é"] {
            let v = label_value(raw);
            assert!(v.len() <= 63, "{v}");
            assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{raw:?} → {v:?}");
            assert!(v.is_empty() || (v.starts_with(char::is_alphanumeric) && v.ends_with(char::is_alphanumeric)));
        }
        assert_ne!(label_value("a/b"), label_value("a:b"));
    }
}
