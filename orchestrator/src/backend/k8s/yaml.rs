//! JSON values as block-style YAML, enough for manifests: no YAML dependency, and no
//! YAML type guessing either, because every string is double-quoted (`"on"`, `"1.10"`
//! and `"0755"` stay strings) with escapes that YAML 1.1 and 1.2 readers both accept.
//! A multi-line string (a script) is a literal block instead, when it can be one
//! exactly, so it reads as the script it is.

use serde_json::Value;

/// `docs` as one YAML stream, each document after a `---` line.
pub fn documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        match d {
            Value::Object(m) if !m.is_empty() => map(m, 0, false, &mut out),
            Value::Array(a) if !a.is_empty() => list(a, 0, &mut out),
            v => {
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
    out
}

fn pad(indent: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar, or an empty container in flow style.
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
        _ => false,
    }
}

/// `inline`: the first key goes on the list item's `- ` line.
fn map(m: &serde_json::Map<String, Value>, indent: usize, inline: bool, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !inline {
            pad(indent, out);
        }
        out.push_str(&key(k));
        out.push(':');
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                map(inner, indent + 2, false, out);
            }
            // Kubernetes' own style: a list under a key at the key's indentation.
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                list(items, indent, out);
            }
            Value::String(text) if literal_block(text) => {
                out.push(' ');
                block(text, indent + 2, out);
            }
            v => {
                out.push(' ');
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

fn list(items: &[Value], indent: usize, out: &mut String) {
    for v in items {
        pad(indent, out);
        match v {
            Value::Object(m) if is_block(v) => {
                out.push_str("- ");
                map(m, indent + 2, true, out);
            }
            Value::Array(a) if is_block(v) => {
                out.push_str("-\n");
                list(a, indent + 2, out);
            }
            Value::String(text) if literal_block(text) => {
                out.push_str("- ");
                block(text, indent + 2, out);
            }
            v => {
                out.push_str("- ");
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

/// Whether `text` reads back exactly from a literal block: several lines, nothing a
/// block would lose (trailing blanks, a leading space that would set the indentation,
/// `\r`, tabs, characters YAML wants escaped).
fn literal_block(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\n'])
        && text.chars().all(|c| c == '\n' || (printable(c) && c != '\u{85}'))
        && text.split('\n').all(|l| !l.ends_with(' '))
}

/// `|`, `|-` or `|+` (by how `text` ends) and its lines at `indent`.
fn block(text: &str, indent: usize, out: &mut String) {
    let body = text.trim_end_matches('\n');
    let chomp = match text.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    out.push('|');
    out.push_str(chomp);
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            pad(indent, out);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..text.len() - body.len() {
        out.push('\n');
    }
}

/// A mapping key: plain when no YAML reader could take it for anything but a string.
fn key(k: &str) -> String {
    let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        // YAML 1.1 booleans and null.
        && !matches!(k.to_ascii_lowercase().as_str(), "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null");
    if plain { k.to_string() } else { quoted(k) }
}

/// A double-quoted scalar. JSON's escapes are a subset of YAML's; what YAML does not
/// allow unescaped (C0/C1 controls, DEL, BOM, non-characters) is written `\uXXXX`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// YAML 1.2's `c-printable`, less the byte-order mark.
fn printable(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && c != '\u{FEFF}'
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn block_style_with_every_string_quoted() {
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"labels": {"s3/run": "r1", "on": "yes"}},
            "spec": {
                "containers": [{"name": "rank", "args": ["--n", "1.10"], "env": [], "resources": {}}],
                "n": 3,
                "ok": true,
                "nested": [[1, 2], []],
            },
        });
        let want = r#"---
apiVersion: "v1"
kind: "Pod"
metadata:
  labels:
    "on": "yes"
    s3/run: "r1"
spec:
  containers:
  - args:
    - "--n"
    - "1.10"
    env: []
    name: "rank"
    resources: {}
  "n": 3
  nested:
  -
    - 1
    - 2
  - []
  ok: true
"#;
        assert_eq!(documents(&[doc]), want);
    }

    #[test]
    fn scripts_are_literal_blocks_when_that_is_exact() {
        let doc =
            json!({"a": "x=1\n\nexit \"$$x\"\n", "b": ["one\ntwo"], "c": "kept\n\n", "d": " lead\n", "e": "tail \n"});
        let want = "---\na: |\n  x=1\n\n  exit \"$$x\"\nb:\n- |-\n  one\n  two\nc: |+\n  kept\n\nd: \" lead\\n\"\ne: \"tail \\n\"\n";
        assert_eq!(documents(&[doc]), want);
    }

    #[test]
    fn awkward_strings_are_escaped() {
        assert_eq!(quoted("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(quoted("\u{7}\u{7F}\u{9F}\u{FEFF}é😀"), r#""\u0007\u007F\u009F\uFEFFé😀""#);
        assert_eq!(key("1st"), "\"1st\"");
        assert_eq!(key("nvidia.com/gpu"), "nvidia.com/gpu");
    }
}
