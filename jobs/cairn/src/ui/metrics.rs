//! `GET /metrics` on the UI's own metrics listener (`--metrics-listen`): what the repository
//! holds per source, in the Prometheus text format, for a ServiceMonitor to scrape.
//!
//! The backup jobs push their metrics when they end; a job killed before it could push
//! leaves a gap there. This endpoint reads the repository itself, so the freshness alert
//! (the newest snapshot of a source is too old) holds whatever happened to the jobs. It
//! serves the same names the maintenance job pushes ([`cairn_job::metrics`]), names of
//! sources and clusters and times only: nothing a snapshot's contents could reveal.

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_job::metrics::{NEWEST, REPO_SNAPSHOTS, SourceState};

use super::State;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics here") })
        .with_state(state)
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> Response {
    match state.snapshots(false).await {
        Ok(list) => {
            let sources = SourceState::of(list.entries.iter().map(|e| &e.snapshot));
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                exposition(&sources, list.unreadable.len()),
            )
                .into_response()
        }
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("listing snapshots: {e}\n")).into_response()
        }
    }
}

/// A label value escaped as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn exposition(sources: &[SourceState], unreadable: usize) -> String {
    let mut out = String::new();
    for (def, pick) in [
        (REPO_SNAPSHOTS, (|s: &SourceState| s.snapshots as f64) as fn(&SourceState) -> f64),
        (NEWEST, |s: &SourceState| s.newest),
    ] {
        let _ = writeln!(out, "# HELP {} {}", def.prometheus, def.description);
        let _ = writeln!(out, "# TYPE {} gauge", def.prometheus);
        for s in sources {
            let _ = writeln!(
                out,
                "{}{{cairn_cluster=\"{}\",cairn_source=\"{}\"}} {}",
                def.prometheus,
                escape(s.cluster.as_deref().unwrap_or_default()),
                escape(&s.source),
                pick(s)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP cairn_repository_unreadable_snapshots Snapshot records that do not open"
    );
    let _ = writeln!(out, "# TYPE cairn_repository_unreadable_snapshots gauge");
    let _ = writeln!(out, "cairn_repository_unreadable_snapshots {unreadable}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_counted_with_their_newest_time_and_labels_escaped() {
        let s = [SourceState {
            cluster: Some("a\"b".into()),
            source: "pvc/ns/x".into(),
            snapshots: 3,
            newest: 1_700_000_000.5,
        }];
        let text = exposition(&s, 1);
        assert!(
            text.contains(
                "cairn_repository_snapshots{cairn_cluster=\"a\\\"b\",cairn_source=\"pvc/ns/x\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("cairn_repository_newest_snapshot_timestamp_seconds{cairn_cluster=\"a\\\"b\",cairn_source=\"pvc/ns/x\"} 1700000000.5\n"), "{text}");
        assert!(text.contains("cairn_repository_unreadable_snapshots 1\n"));
        assert_eq!(text.matches("# TYPE").count(), 3);
    }
}
