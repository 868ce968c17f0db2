//! The shutdown signal every long-running command honours.

/// Resolves on SIGTERM (what Kubernetes sends a pod it stops) or SIGINT, naming which. If
/// the handlers cannot be installed it never resolves: the job runs to its own end.
pub async fn shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
