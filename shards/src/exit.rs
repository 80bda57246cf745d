//! Exit codes of the workspace's programs (DESIGN §10), defined once: the trainer,
//! ingest and `s3-orch` exit with them, and every launcher backend reads them back.

/// Done.
pub const OK: u8 = 0;
/// The job's own check failed (`--strict`, a gate).
pub const CHECK_FAILED: u8 = 1;
/// An error (bad flags, a store that cannot be read or written, ...).
pub const ERROR: u8 = 2;
/// `s3-orch job end` asks the scheduler script to requeue its job: a preemption the
/// user did not ask for, resumed from the checkpoint.
pub const REQUEUE: u8 = 3;
/// Preempted after a checkpoint (SIGTERM/SIGUSR2): resume, not a failure.
pub const PREEMPTED: u8 = 75;

/// Whether a rank's exit status is a failure (neither done nor preempted); `None`
/// (killed by a signal) is one.
pub fn is_failure(code: Option<i32>) -> bool {
    !matches!(code, Some(c) if c == i32::from(OK) || c == i32::from(PREEMPTED))
}

/// Whether a rank's exit status is a preemption.
pub fn is_preempted(code: Option<i32>) -> bool {
    code == Some(i32::from(PREEMPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures() {
        assert!(!is_failure(Some(0)) && !is_failure(Some(75)));
        assert!(is_failure(Some(1)) && is_failure(Some(137)) && is_failure(None));
        assert!(is_preempted(Some(75)) && !is_preempted(Some(0)));
    }
}
