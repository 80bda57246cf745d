//! Learning-rate schedules (DESIGN §8).

use serde::{Deserialize, Serialize};

/// How the learning rate changes with the epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The paper's: ×gamma at each milestone of every `cycle`-epoch cycle, restored at each cycle start.
    Cyclic {
        /// Epochs per cycle (200).
        cycle: u64,
        /// Milestones within a cycle ([120, 160, 190]).
        milestones: Vec<u64>,
        /// Factor per milestone (0.1).
        gamma: f64,
    },
    /// The reference code's MultiStepLR: ×gamma at each milestone, never restored.
    Multistep {
        /// Milestones.
        milestones: Vec<u64>,
        /// Factor.
        gamma: f64,
    },
    /// Constant. (A struct variant: serde ignores unknown keys beside the tag of a
    /// unit variant, and a stage key misplaced under `[schedule]` must be an error.)
    Constant {},
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Cyclic { cycle: 200, milestones: vec![120, 160, 190], gamma: 0.1 }
    }
}

impl Schedule {
    /// Multiplier of the base learning rate in `epoch` (0-based).
    pub fn factor(&self, epoch: u64) -> f64 {
        match self {
            Schedule::Cyclic { cycle, milestones, gamma } => {
                let e = epoch % (*cycle).max(1);
                gamma.powi(milestones.iter().filter(|&&m| e >= m).count() as i32)
            }
            Schedule::Multistep { milestones, gamma } => {
                gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            Schedule::Constant {} => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cyclic_values_at_the_milestones() {
        let s = Schedule::default();
        let f = |e| s.factor(e);
        assert_eq!(f(0), 1.0);
        assert_eq!(f(119), 1.0);
        assert!((f(120) - 0.1).abs() < 1e-12);
        assert!((f(160) - 0.01).abs() < 1e-12);
        assert!((f(190) - 0.001).abs() < 1e-12);
        assert_eq!(f(200), 1.0, "restored each cycle");
        assert!((f(320) - 0.1).abs() < 1e-12);
        assert!((f(799) - 0.001).abs() < 1e-12);
        let m = Schedule::Multistep { milestones: vec![120, 160, 190], gamma: 0.1 };
        assert!((m.factor(320) - 0.001).abs() < 1e-12, "MultiStepLR never restores");
    }
}
