//! One exit-code scheme for every cairn binary, so that a Kubernetes `podFailurePolicy` and a
//! CI pipeline can act on the code alone. The README documents the same table.

use std::process::ExitCode;

/// What a run ended as. The numeric values are part of cairn's public interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// 0: everything asked for was done.
    Success = 0,
    /// 1: a failure that a retry may fix (network, 5xx, timeouts).
    Retryable = 1,
    /// 2: bad usage or configuration; retrying the same command will not help.
    Usage = 2,
    /// 3: partial success: the snapshot is saved and marked partial, some items failed.
    Partial = 3,
    /// 4: integrity or authentication failure (corrupt data, wrong key, denied credentials).
    Integrity = 4,
    /// 5: another run holds the lock for this source.
    Locked = 5,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// A short word for summaries and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Retryable => "retryable",
            Exit::Usage => "usage",
            Exit::Partial => "partial",
            Exit::Integrity => "integrity",
            Exit::Locked => "locked",
        }
    }

    /// The exit for a numeric code (unknown codes count as retryable).
    pub fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Success,
            2 => Exit::Usage,
            3 => Exit::Partial,
            4 => Exit::Integrity,
            5 => Exit::Locked,
            _ => Exit::Retryable,
        }
    }

    /// Classify an error chain: the first typed cairn [`crate::Error`] found decides; an
    /// error with none (I/O at the edge, say) counts as retryable.
    pub fn from_error(err: &anyhow::Error) -> Exit {
        for cause in err.chain() {
            if let Some(e) = cause.downcast_ref::<crate::Error>() {
                return e.exit();
            }
            if let Some(e) = cause.downcast_ref::<ExitError>() {
                return e.0;
            }
        }
        Exit::Retryable
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// Wraps an error with an explicit exit class when no typed cairn error carries one, e.g.
/// a usage problem found while parsing flags in a job.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
pub struct ExitError(pub Exit, pub String);

/// Shorthand for a usage error at the edge of a job.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    ExitError(Exit::Usage, msg.into()).into()
}

/// An error and its causes on one line: `context: cause: root cause`.
pub fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

/// A job's failure, reported the one way: `prog: context: cause` on stderr. Returns the exit
/// code and the line (for the JSON summary).
pub fn report_failure(prog: &str, e: &anyhow::Error) -> (Exit, String) {
    let line = one_line(e);
    eprintln!("{prog}: {line}");
    (Exit::from_error(e), line)
}

/// The end of a job's run: `ok` when `result` succeeded, else the failure reported the one
/// way, with its line for the summary.
pub fn conclude(prog: &str, result: anyhow::Result<()>, ok: Exit) -> (Exit, Option<String>) {
    match result {
        Ok(()) => (ok, None),
        Err(e) => {
            let (exit, line) = report_failure(prog, &e);
            (exit, Some(line))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn typed_error_decides_the_code_through_context() {
        let err = Err::<(), _>(crate::Error::Integrity("pack 00ff: bad tag".into()))
            .context("restoring /etc/hosts")
            .unwrap_err();
        assert_eq!(Exit::from_error(&err), Exit::Integrity);
        assert_eq!(Exit::from_error(&usage("bad flag")), Exit::Usage);
        assert_eq!(Exit::from_error(&anyhow::anyhow!("connection reset")), Exit::Retryable);
    }

    #[test]
    fn numeric_values_are_stable() {
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::Retryable,
            Exit::Usage,
            Exit::Partial,
            Exit::Integrity,
            Exit::Locked,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5]);
    }
}
