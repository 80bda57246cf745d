//! Where the pods may run, from two one-line settings (so a flag or an
//! `S3_ORCH_<NAME>` variable sets them as easily as the profile):
//! `node_selector = "pool=gpu,nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"` and
//! `tolerations = "nvidia.com/gpu:NoSchedule,dedicated=ml"`, the latter in
//! `kubectl taint`'s `key[=value][:effect]` notation.

use serde_json::{Map, Value, json};

use crate::error::{OrchError, Result};

const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `key=value,...` → the pod's `nodeSelector`.
pub fn node_selector(text: &str) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for item in items(text) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.trim().into());
            }
            _ => {
                return Err(OrchError::Setting {
                    name: "node_selector",
                    value: item.to_string(),
                    expected: "KEY=VALUE (e.g. \"pool=gpu,nvidia.com/gpu.present=true\")".into(),
                });
            }
        }
    }
    Ok(out)
}

/// `key[=value][:effect],...` → the pod's `tolerations`: `Equal` with a value,
/// `Exists` without; no effect tolerates every effect of the taint.
pub fn tolerations(text: &str) -> Result<Vec<Value>> {
    items(text)
        .map(|item| {
            let (taint, effect) = match item.rsplit_once(':') {
                Some((t, e)) => (t, Some(e.trim())),
                None => (item, None),
            };
            let (key, value) = match taint.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (taint.trim(), None),
            };
            if key.is_empty() || effect.is_some_and(|e| !EFFECTS.contains(&e)) {
                return Err(OrchError::Setting {
                    name: "tolerations",
                    value: item.to_string(),
                    expected: format!(
                        "KEY[=VALUE][:EFFECT] with EFFECT one of {} (e.g. \"nvidia.com/gpu:NoSchedule\")",
                        EFFECTS.join(", ")
                    ),
                });
            }
            let mut t = match value {
                Some(v) => json!({"key": key, "operator": "Equal", "value": v}),
                None => json!({"key": key, "operator": "Exists"}),
            };
            if let Some(e) = effect {
                t["effect"] = e.into();
            }
            Ok(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selectors_and_tolerations_in_one_line_each() {
        let s = node_selector("pool=gpu, nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3").unwrap();
        assert_eq!(Value::Object(s), json!({"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}));
        assert!(node_selector("").unwrap().is_empty());
        assert!(node_selector("pool").unwrap_err().to_string().contains("KEY=VALUE"));

        let t = tolerations("nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute,spot").unwrap();
        assert_eq!(
            Value::Array(t),
            json!([
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
                {"key": "spot", "operator": "Exists"},
            ])
        );
        for bad in ["gpu:Never", "=x", ":NoSchedule"] {
            assert!(tolerations(bad).unwrap_err().to_string().contains("KEY[=VALUE][:EFFECT]"), "{bad}");
        }
    }
}
