//! The worker's report: one serde type, written by the worker into its termination message
//! ([`write_termination_message`]) and read back by whoever ran its Job
//! ([`parse_termination_message`]).
//!
//! The message is the report's JSON object, plus `"truncated": true` when the report had to
//! be slimmed ([`Slim::slim`]) to fit what the kubelet keeps ([`TERMINATION_MESSAGE_MAX`]);
//! the full report is in the worker's log. A message that does not parse as the report (a
//! report cut as a last resort, or the tail of the log the kubelet substitutes when the
//! worker wrote nothing and failed: `FallbackToLogsOnError`) is returned as text.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::podjob::TERMINATION_MESSAGE_MAX;

/// A report that can be made smaller when its JSON does not fit the termination message.
pub trait Slim: Serialize + Clone {
    /// Drop what whoever reads the message can do without (per-item lists, long texts): the
    /// worker's log keeps the full report.
    fn slim(&mut self);
}

/// What a worker reports through its termination message.
pub trait Report: Slim + DeserializeOwned {
    /// The exit code the worker ended with (cairn's scheme: [`cairn_core::Exit`]).
    fn exit_code(&self) -> u8;
}

/// For workers that still hand over their report as a JSON value: `failures` goes.
impl Slim for serde_json::Value {
    fn slim(&mut self) {
        if let Some(obj) = self.as_object_mut() {
            obj.remove("failures");
        }
    }
}

/// The message as written: the report's fields, and `truncated` when it was slimmed.
#[derive(Serialize)]
struct Written<'a, R> {
    #[serde(flatten)]
    report: &'a R,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// The message as read.
#[derive(Deserialize)]
#[serde(bound = "R: DeserializeOwned")]
struct Read<R> {
    #[serde(flatten)]
    report: R,
    #[serde(default)]
    truncated: bool,
}

/// What a termination message holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<R> {
    /// The worker's report; `truncated`: slimmed to fit (the full one is in its log).
    Report { report: R, truncated: bool },
    /// Text that is not a report: the tail of the worker's log, or a report cut short.
    Text(String),
    /// Nothing (or only white space).
    Absent,
}

/// Read a termination message as `R`.
pub fn parse_termination_message<R: Report>(message: Option<&str>) -> Message<R> {
    let Some(text) = message.map(str::trim).filter(|m| !m.is_empty()) else {
        return Message::Absent;
    };
    match serde_json::from_str::<Read<R>>(text) {
        Ok(Read { report, truncated }) => Message::Report { report, truncated },
        Err(_) => Message::Text(text.to_string()),
    }
}

/// The text of a report's termination message: its JSON; when that is longer than the
/// kubelet keeps, the JSON of the slimmed report marked `truncated`; when even that is too
/// long, the latter cut at [`TERMINATION_MESSAGE_MAX`] (it no longer parses: the reader
/// gets it as text).
pub fn termination_text<R: Slim>(report: &R) -> String {
    let json = |report: &R, truncated: bool| {
        serde_json::to_string(&Written { report, truncated }).unwrap_or_else(|e| {
            tracing::warn!("cannot serialise the report: {e}");
            String::new()
        })
    };
    let text = json(report, false);
    if text.len() <= TERMINATION_MESSAGE_MAX {
        return text;
    }
    let mut slim = report.clone();
    slim.slim();
    let mut text = json(&slim, true);
    if text.len() > TERMINATION_MESSAGE_MAX {
        tracing::warn!(
            bytes = text.len(),
            "the report does not fit the termination message even slimmed: cut"
        );
        cut(&mut text, TERMINATION_MESSAGE_MAX);
    }
    text
}

/// Write a worker's report where the kubelet reads the termination message
/// ([`termination_text`]). Missing directory (running outside a pod): nothing is written.
pub fn write_termination_message<R: Slim>(path: &Path, report: &R) {
    let text = termination_text(report);
    if path.parent().is_some_and(|p| p.is_dir())
        && let Err(e) = std::fs::write(path, text)
    {
        tracing::warn!(path = %path.display(), "cannot write the termination message: {e}");
    }
}

/// Cut `s` to at most `max` bytes, at a character boundary.
pub fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let end = (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct TestReport {
        exit_code: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failures: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }

    impl Slim for TestReport {
        fn slim(&mut self) {
            self.failures.clear();
            if let Some(e) = &mut self.error {
                cut(e, 1024);
            }
        }
    }

    impl Report for TestReport {
        fn exit_code(&self) -> u8 {
            self.exit_code
        }
    }

    fn report(failures: usize) -> TestReport {
        TestReport {
            exit_code: 3,
            snapshot: Some("ab".into()),
            failures: (0..failures).map(|i| format!("/some/long/path/{i}: denied")).collect(),
            error: None,
        }
    }

    #[test]
    fn a_report_that_fits_is_written_whole_and_reads_back() {
        let r = report(2);
        let text = termination_text(&r);
        assert!(!text.contains("truncated"), "{text}");
        assert_eq!(
            parse_termination_message::<TestReport>(Some(&format!("\n{text}  \n"))),
            Message::Report { report: r, truncated: false }
        );
    }

    #[test]
    fn a_long_report_is_slimmed_and_marked_truncated() {
        let r = report(500);
        let text = termination_text(&r);
        assert!(text.len() <= TERMINATION_MESSAGE_MAX);
        let Message::Report { report, truncated } =
            parse_termination_message::<TestReport>(Some(&text))
        else {
            panic!("not a report: {text}")
        };
        assert!(truncated);
        assert_eq!(report, TestReport { failures: Vec::new(), ..r });
    }

    #[test]
    fn a_report_too_long_even_slimmed_is_cut_at_a_character_boundary() {
        // Multi-byte characters straddle the cut: it must not split one (nor panic).
        let r = TestReport { error: None, snapshot: Some("żółw🐢".repeat(1000)), ..report(0) };
        let text = termination_text(&r);
        assert!(text.len() <= TERMINATION_MESSAGE_MAX && text.len() > TERMINATION_MESSAGE_MAX - 4);
        assert!(matches!(parse_termination_message::<TestReport>(Some(&text)), Message::Text(_)));
        let mut s = "aé".to_string();
        cut(&mut s, 2);
        assert_eq!(s, "a");
    }

    #[test]
    fn what_is_not_a_report_is_text_or_absent() {
        assert_eq!(parse_termination_message::<TestReport>(None), Message::Absent);
        assert_eq!(parse_termination_message::<TestReport>(Some(" \n")), Message::Absent);
        let log = "thread 'main' panicked at src/main.rs:1:1\nboom";
        assert_eq!(
            parse_termination_message::<TestReport>(Some(log)),
            Message::Text(log.to_string())
        );
        // What the kubelet keeps of a longer message: cut mid-way.
        let cut_short = &termination_text(&report(2))[..20];
        assert_eq!(
            parse_termination_message::<TestReport>(Some(cut_short)),
            Message::Text(cut_short.to_string())
        );
        // Another worker's report (a field missing).
        assert!(matches!(
            parse_termination_message::<TestReport>(Some(r#"{"files": 3}"#)),
            Message::Text(_)
        ));
    }

    #[test]
    fn a_json_value_report_is_slimmed_like_before() {
        let failures: Vec<String> = (0..500).map(|i| format!("/some/long/path/{i}")).collect();
        let v = serde_json::json!({"exit_code": 3, "failures": failures, "snapshot": "ab"});
        let text = termination_text(&v);
        assert!(text.len() <= TERMINATION_MESSAGE_MAX);
        let Message::Report { report: got, truncated } =
            parse_termination_message::<TestReport>(Some(&text))
        else {
            panic!("not a report: {text}")
        };
        assert!(truncated);
        assert_eq!(got, TestReport { failures: Vec::new(), ..report(0) });
    }

    #[test]
    fn termination_messages_are_written_where_the_kubelet_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        write_termination_message(&path, &report(500));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= TERMINATION_MESSAGE_MAX);
        assert!(matches!(
            parse_termination_message::<TestReport>(Some(&text)),
            Message::Report { truncated: true, .. }
        ));
        // Outside a pod (no such directory): nothing, and no error.
        write_termination_message(&dir.path().join("missing/t"), &report(0));
    }
}
