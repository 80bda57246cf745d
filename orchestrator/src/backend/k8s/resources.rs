//! Settings shared with Slurm, read the way Kubernetes needs them: memory per rank as
//! a quantity to multiply by the ranks of a pod, the time limit in seconds.

use crate::error::{OrchError, Result};

/// A Kubernetes quantity such as `64Gi` or `1.5G`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    number: f64,
    suffix: String,
}

const SUFFIXES: &[&str] = &["", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

impl Quantity {
    /// Parses `text` (`mem_per_rank`).
    pub fn parse(text: &str) -> Result<Quantity> {
        let t = text.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        match num.parse::<f64>() {
            Ok(number) if number >= 0.0 && SUFFIXES.contains(&suffix) => {
                Ok(Quantity { number, suffix: suffix.to_string() })
            }
            _ => Err(OrchError::Setting {
                name: "mem_per_rank",
                value: text.to_string(),
                expected: format!(
                    "a Kubernetes quantity (e.g. 64Gi, 64G: a number and one of {})",
                    SUFFIXES[1..].join(", ")
                ),
            }),
        }
    }

    /// `self × n`, as Kubernetes writes it.
    pub fn times(&self, n: usize) -> String {
        let v = self.number * n as f64;
        let num =
            if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.3}").trim_end_matches('0').to_string() };
        format!("{num}{}", self.suffix)
    }
}

/// Seconds of a time limit: `48h`, `90m`, `2days` (humantime), or Slurm's
/// `D-HH:MM:SS`, `D-HH:MM`, `D-HH`, `HH:MM:SS`, `MM:SS` (the setting serves both
/// backends).
pub fn seconds(text: &str) -> Result<u64> {
    let t = text.trim();
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(d.as_secs());
    }
    let bad = || OrchError::Setting {
        name: "time_limit",
        value: text.to_string(),
        expected: "a duration (48h, 90m, or Slurm's D-HH:MM:SS, HH:MM:SS)".into(),
    };
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (num(d)?, r),
        None => (0, t),
    };
    let parts = rest.split(':').map(num).collect::<Result<Vec<u64>>>()?;
    let hms = match (t.contains('-'), parts.as_slice()) {
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        (_, [h, m, s]) => h * 3600 + m * 60 + s,
        (false, [m, s]) => m * 60 + s,
        _ => return Err(bad()),
    };
    Ok(days * 86400 + hms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_multiplies_by_the_ranks_of_a_pod() {
        assert_eq!(Quantity::parse("64Gi").unwrap().times(4), "256Gi");
        assert_eq!(Quantity::parse("1.5G").unwrap().times(3), "4.5G");
        assert_eq!(Quantity::parse("512Mi").unwrap().times(1), "512Mi");
        assert_eq!(Quantity::parse("1000").unwrap().times(2), "2000");
        for bad in ["64GB", "lots", "", "-1Gi", "1.2.3G"] {
            assert!(Quantity::parse(bad).unwrap_err().to_string().contains("mem_per_rank"), "{bad}");
        }
    }

    #[test]
    fn time_limits_in_both_notations() {
        assert_eq!(seconds("48h").unwrap(), 172_800);
        assert_eq!(seconds("90m").unwrap(), 5_400);
        assert_eq!(seconds("2-00:00:00").unwrap(), 172_800);
        assert_eq!(seconds("1-12").unwrap(), 129_600);
        assert_eq!(seconds("1-00:30").unwrap(), 88_200);
        assert_eq!(seconds("01:30:00").unwrap(), 5_400);
        assert_eq!(seconds("10:30").unwrap(), 630);
        for bad in ["soon", "1:2:3:4", "x-01:00:00", "60"] {
            assert!(seconds(bad).unwrap_err().to_string().contains("time_limit"), "{bad}");
        }
    }
}
