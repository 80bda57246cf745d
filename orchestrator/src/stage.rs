//! The pipeline's stages, their order and what each waits for, defined once.

/// A stage of the pipeline, as the ledger names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Source datasets → published shards.
    Ingest,
    /// Pre-training from scratch.
    Stage1,
    /// Fine-tuning from stage 1's final checkpoint.
    Stage2,
    /// Evaluation of stage 2's final weights.
    Eval,
    /// Stage 2's final weights on a benchmarks catalogue (`launch eval --benchmarks`):
    /// not a step of the pipeline unless asked for, recorded beside `eval`.
    Benchmarks,
}

impl Stage {
    /// The whole pipeline, in order.
    pub const PIPELINE: [Stage; 4] = [Stage::Ingest, Stage::Stage1, Stage::Stage2, Stage::Eval];

    /// The name in the ledger, the run folder and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Stage1 => "stage1",
            Stage::Stage2 => "stage2",
            Stage::Eval => "eval",
            Stage::Benchmarks => "benchmarks",
        }
    }

    /// The stage named `name`.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::PIPELINE.into_iter().chain([Stage::Benchmarks]).find(|s| s.name() == name)
    }

    /// An evaluation of trained weights (`eval` or `benchmarks`), not a training stage.
    pub fn evaluates(self) -> bool {
        matches!(self, Stage::Eval | Stage::Benchmarks)
    }

    /// The report an evaluation writes in the evaluated stage's folder (`eval/<name>.json`).
    pub fn report(self) -> &'static str {
        if self == Stage::Benchmarks { "benchmarks" } else { "val" }
    }

    /// The stage before it in the pipeline: the one its scheduler job waits for.
    pub fn previous(self) -> Option<Stage> {
        let i = Stage::PIPELINE.iter().position(|s| *s == self)?;
        i.checked_sub(1).map(|i| Stage::PIPELINE[i])
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_names() {
        for s in Stage::PIPELINE {
            assert_eq!(Stage::parse(s.name()), Some(s));
        }
        assert_eq!(Stage::Stage1.previous(), Some(Stage::Ingest));
        assert_eq!(Stage::Eval.previous(), Some(Stage::Stage2));
        assert_eq!(Stage::Ingest.previous(), None);
        assert_eq!(Stage::parse("stage3"), None);
        assert_eq!(Stage::parse("benchmarks"), Some(Stage::Benchmarks));
        assert_eq!(Stage::Benchmarks.previous(), None, "not a pipeline step: it waits for nothing");
        assert!(!Stage::PIPELINE.contains(&Stage::Benchmarks));
    }
}
