//! Running `kubectl`: the only way this backend talks to a cluster (its context,
//! credentials and namespace defaults are the user's own).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{OrchError, Result};

/// The `kubectl` program.
#[derive(Clone, Debug)]
pub struct Kubectl {
    program: PathBuf,
}

/// What `kubectl get` found.
#[derive(Debug)]
pub enum Got {
    /// The object.
    Found(Value),
    /// No such object.
    NotFound,
}

impl Kubectl {
    /// `program` (normally `kubectl` on PATH).
    pub fn new(program: impl Into<PathBuf>) -> Kubectl {
        Kubectl { program: program.into() }
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    fn spawn_error(&self, source: std::io::Error) -> OrchError {
        let what = if source.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the k8s backend runs {} and it is not installed or not on PATH (install kubectl and set its context to the cluster)",
                self.program.display()
            )
        } else {
            format!("running {}", self.program.display())
        };
        OrchError::Process { what, source }
    }

    /// Runs `kubectl args` with `stdin`; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A kubectl that exits early closes the pipe; its stderr says why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| self.spawn_error(e))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(OrchError::Process {
            what: format!(
                "kubectl {} exited with {}",
                args.join(" "),
                out.status.code().map_or("a signal".to_string(), |c| format!("code {c}"))
            ),
            source: std::io::Error::other(if stderr.is_empty() { "no message".to_string() } else { stderr }),
        })
    }

    /// `kubectl get <kind> <name> -n <namespace> -o json`.
    pub fn get(&self, kind: &str, name: &str, namespace: &str) -> Result<Got> {
        match self.run(&["get", kind, name, "-n", namespace, "-o", "json"], None) {
            Ok(text) => parse(&text).map(Got::Found),
            Err(OrchError::Process { source, .. }) if is_not_found(&source.to_string()) => Ok(Got::NotFound),
            Err(e) => Err(e),
        }
    }

    /// `kubectl get pods -l <selector> -n <namespace> -o json`.
    pub fn pods(&self, selector: &str, namespace: &str) -> Result<Value> {
        parse(&self.run(&["get", "pods", "-l", selector, "-n", namespace, "-o", "json"], None)?)
    }
}

fn parse(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| OrchError::Process {
        what: "reading kubectl's JSON output".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// `Error from server (NotFound): jobs.batch "x" not found`.
fn is_not_found(stderr: &str) -> bool {
    stderr.contains("(NotFound)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kubectl_is_named() {
        let e = Kubectl::new("/nonexistent/kubectl").run(&["version"], None).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("/nonexistent/kubectl") && shown.contains("not installed or not on PATH"), "{shown}");
    }

    #[test]
    fn not_found_is_told_apart_from_other_errors() {
        assert!(is_not_found("Error from server (NotFound): jobs.batch \"r-stage1-a1\" not found"));
        assert!(!is_not_found("error: You must be logged in to the server (Unauthorized)"));
    }
}
