//! The one way a job ends: time the body, classify its failure, fill one report (exit class
//! and code, duration, the failure's line, and the job's own fields flattened beside
//! them), print it as text or JSON. Every job's `run` is this call.

use std::time::Instant;

use cairn_core::Exit;
use cairn_core::exit::report_failure;
use serde::Serialize;

use crate::metrics::SourceRun;

/// A job's own report fields, and how they read as text.
pub trait JobReport: Serialize {
    /// The human summary printed when `--json` is not given (may be empty, e.g. after a
    /// failure: the failure itself is already on stderr).
    fn render(report: &Report<Self>) -> String
    where
        Self: Sized;

    /// What the run did, per source, for the metrics ([`crate::metrics::record_runs`]).
    /// By default one entry for the job as a whole: its outcome and duration.
    fn runs(report: &Report<Self>) -> Vec<SourceRun>
    where
        Self: Sized,
    {
        vec![report.run_facts(None, None)]
    }
}

/// What every job reports.
#[derive(Debug, Serialize)]
pub struct Report<T> {
    /// `success`, `partial`, `retryable`, ... ([`Exit::as_str`]).
    pub exit: &'static str,
    pub exit_code: u8,
    pub duration_ms: u64,
    /// The failure, one line: what was being done, then why.
    pub error: Option<String>,
    #[serde(flatten)]
    pub job: T,
}

impl<T> Report<T> {
    pub fn exit_class(&self) -> Exit {
        Exit::from_code(self.exit_code)
    }

    pub fn seconds(&self) -> f64 {
        self.duration_ms as f64 / 1000.0
    }
}

/// A report reads as its job's fields too (`report.objects`), beside its own.
impl<T> std::ops::Deref for Report<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.job
    }
}

impl<T> Report<T> {
    /// The run's outcome and duration for one source: fill in what the job read and stored.
    pub fn run_facts(&self, cluster: Option<&str>, source: Option<&str>) -> SourceRun {
        SourceRun {
            cluster: cluster.map(str::to_string),
            source: source.map(str::to_string),
            outcome: self.exit.to_string(),
            seconds: self.seconds(),
            ..SourceRun::default()
        }
    }
}

impl<T: JobReport> Report<T> {
    /// The end of a run: record its metrics (pushed when telemetry shuts down), and print
    /// the report on stdout: pretty JSON, or the job's text.
    pub fn print(&self, prog: &str, json: bool) {
        crate::metrics::record_runs(&T::runs(self));
        if json {
            print_json(prog, self);
        } else {
            print!("{}", T::render(self));
        }
    }
}

/// Pretty JSON on stdout; a value that cannot be serialised is reported on stderr, never
/// silently dropped.
pub fn print_json<V: Serialize + ?Sized>(prog: &str, value: &V) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("{prog}: cannot print the report as JSON: {e}"),
    }
}

/// Run a job's body and report it: its `Ok` exit, or its failure reported the one way
/// (`prog: context: cause` on stderr) and classified by [`Exit::from_error`].
pub async fn run<T>(
    prog: &str,
    mut job: T,
    body: impl AsyncFnOnce(&mut T) -> anyhow::Result<Exit>,
) -> Report<T> {
    let started = Instant::now();
    let result = body(&mut job).await;
    let (exit, error) = match result {
        Ok(exit) => (exit, None),
        Err(e) => {
            let (exit, line) = report_failure(prog, &e);
            (exit, Some(line))
        }
    };
    Report {
        exit: exit.as_str(),
        exit_code: exit.code(),
        duration_ms: started.elapsed().as_millis() as u64,
        error,
        job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize)]
    struct Copy {
        files: u64,
    }

    impl JobReport for Copy {
        fn render(r: &Report<Self>) -> String {
            format!("{} files in {:.1}s\n", r.job.files, r.seconds())
        }
    }

    #[tokio::test]
    async fn a_report_carries_the_exit_the_error_and_the_job_fields() {
        let ok = run("t", Copy::default(), async |c: &mut Copy| {
            c.files = 3;
            Ok(Exit::Partial)
        })
        .await;
        let v = serde_json::to_value(&ok).unwrap();
        assert_eq!((v["exit"].as_str(), v["exit_code"].as_u64()), (Some("partial"), Some(3)));
        assert_eq!(v["files"], 3, "job fields are flattened: {v}");
        assert!(v["error"].is_null());
        assert_eq!(Copy::render(&ok).lines().next().unwrap().split(' ').next(), Some("3"));

        let failed = run("t", Copy::default(), async |_: &mut Copy| {
            Err(anyhow::Error::new(cairn_core::Error::Integrity("pack 0a: bad tag".into()))
                .context("restoring /etc"))
        })
        .await;
        assert_eq!(failed.exit_class(), Exit::Integrity);
        assert_eq!(
            failed.error.as_deref(),
            Some("restoring /etc: integrity: pack 0a: bad tag"),
            "one line, context first"
        );
    }
}
