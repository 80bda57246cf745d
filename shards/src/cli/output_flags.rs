//! `-q` and `-v`, meaning the same in every program.

/// How much a program says on stderr. Results (tables, JSON, paths written) go to
/// stdout whatever these say.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
#[command(next_help_heading = "Output")]
pub struct OutputFlags {
    /// Errors and results only: no progress bars, no progress lines, no notes.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log lines on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, when set, wins).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl OutputFlags {
    /// The log filter these flags ask for when `RUST_LOG` is not set.
    pub fn log_filter(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            _ => "trace",
        }
    }

    /// Whether progress (bars, per-step lines, notes) is shown.
    pub fn progress(&self) -> bool {
        !self.quiet
    }

    /// A sink for progress lines: stderr, or nothing under `-q`.
    pub fn say(&self) -> impl Fn(&str) + Copy {
        let on = self.progress();
        move |m: &str| {
            if on {
                eprintln!("{m}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        out: OutputFlags,
    }

    fn parse(args: &[&str]) -> Result<OutputFlags, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.out)
    }

    #[test]
    fn quiet_and_verbose_set_the_log_level_and_progress() {
        assert_eq!(parse(&[]).unwrap().log_filter(), "warn");
        assert_eq!(parse(&["-v"]).unwrap().log_filter(), "info");
        assert_eq!(parse(&["-vv"]).unwrap().log_filter(), "debug");
        let q = parse(&["-q"]).unwrap();
        assert_eq!((q.log_filter(), q.progress()), ("error", false));
        assert!(parse(&["-q", "-v"]).is_err(), "quiet and verbose at once is a usage error");
    }
}
