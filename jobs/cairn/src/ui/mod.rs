//! `cairn ui`: a read-only web view of a repository, served from the operator's machine.
//!
//! The page (three static files compiled into the binary, no CDN) talks to a small JSON API
//! under `/api/`. Every handler reads; nothing here can write to the repository. Listing is
//! paginated and directory listings are cached by their blob ids (they never change), so a
//! click on a 50k-object snapshot reads a few listing blobs and one page of objects, never the
//! whole snapshot.
//!
//! Without an identity (write key only) the API serves metadata (snapshots, names, sizes,
//! times) and refuses contents with 403 and the reason; the page says so on every view.

mod api;
mod cluster;
mod metrics;
mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_core::exit::{Exit, usage};
use cairn_core::repo::{BlobId, Node, NodeKind, Repository, Snapshot, SnapshotEntry};
use cairn_job::config::{Need, RepoArgs};
use parking_lot::Mutex;

/// Why contents are hidden when the UI runs with the write key only.
pub const METADATA_ONLY: &str = "no identity given (--identity, CAIRN_IDENTITY or \
    CAIRN_PASSPHRASE): showing metadata only. File contents and manifests are encrypted to the \
    repository's age recipients; the write key reads names, sizes and times, not contents.";

/// Snapshot records are immutable, but new ones arrive while the UI runs.
const SNAPSHOT_TTL: Duration = Duration::from_secs(10);
/// Bound on cached directory entries (a node is a few hundred bytes): ~100 MB at most.
const DIR_CACHE_NODES: usize = 300_000;

pub struct State {
    repo: Arc<Repository>,
    /// `Some(reason)` when contents cannot be read.
    locked: Option<String>,
    repo_url: String,
    snapshots: tokio::sync::Mutex<Option<(Instant, Arc<Snapshots>)>>,
    dirs: Mutex<DirCache>,
}

/// The repository's snapshots, ordered by (time, id), and records that failed to open.
pub struct Snapshots {
    pub entries: Vec<SnapshotEntry>,
    pub unreadable: Vec<String>,
}

#[derive(Default)]
struct DirCache {
    map: HashMap<Vec<BlobId>, Arc<Vec<Node>>>,
    nodes: usize,
}

impl State {
    async fn snapshots(&self, refresh: bool) -> cairn_core::Result<Arc<Snapshots>> {
        let mut cached = self.snapshots.lock().await;
        if let Some((at, list)) = cached.as_ref()
            && !refresh
            && at.elapsed() < SNAPSHOT_TTL
        {
            return Ok(list.clone());
        }
        // A damaged record must not hide the rest: list what opens, report what does not.
        // Records never change: only new names are fetched.
        let known = cached.as_ref().map(|(_, list)| list.entries.as_slice()).unwrap_or(&[]);
        let (entries, failures) = self.repo.snapshots_refresh(known).await?;
        let unreadable = failures.into_iter().map(|(name, e)| format!("{name}: {e}")).collect();
        let list = Arc::new(Snapshots { entries, unreadable });
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// A directory's entries, from the cache when its listing blobs were read before.
    async fn dir(&self, subtree: &[BlobId]) -> cairn_core::Result<Arc<Vec<Node>>> {
        if let Some(hit) = self.dirs.lock().map.get(subtree) {
            return Ok(hit.clone());
        }
        let nodes = Arc::new(self.repo.read_dir(subtree).await?);
        let mut cache = self.dirs.lock();
        if cache.nodes + nodes.len() > DIR_CACHE_NODES {
            *cache = DirCache::default();
        }
        cache.nodes += nodes.len();
        cache.map.insert(subtree.to_vec(), nodes.clone());
        Ok(nodes)
    }

    /// The node at `path` (`/`-separated, relative to the snapshot root).
    async fn node_at(&self, snapshot: &Snapshot, path: &str) -> cairn_core::Result<Node> {
        let mut node = snapshot.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if node.kind != NodeKind::Dir {
                return Err(cairn_core::Error::NotFound(format!("{path}: not a directory")));
            }
            let children = self.dir(&node.subtree).await?;
            node = children
                .iter()
                .find(|n| n.name.as_bytes() == part.as_bytes())
                .cloned()
                .ok_or_else(|| cairn_core::Error::NotFound(format!("{path} in this snapshot")))?;
        }
        Ok(node)
    }

    /// Like [`State::node_at`], but a missing path is `None`.
    async fn node_opt(&self, snapshot: &Snapshot, path: &str) -> cairn_core::Result<Option<Node>> {
        match self.node_at(snapshot, path).await {
            Ok(n) => Ok(Some(n)),
            Err(cairn_core::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Serve until SIGINT/SIGTERM.
pub async fn serve(
    args: &RepoArgs,
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
) -> Result<Exit> {
    let repo = args.open(Need::Write).await?;
    repo.load_index().await.context("loading the index")?;
    let locked = (!repo.can_read_data()).then(|| METADATA_ONLY.to_string());
    let state = Arc::new(State {
        repo: Arc::new(repo),
        locked,
        repo_url: redact_url(args.url()?),
        snapshots: tokio::sync::Mutex::new(None),
        dirs: Mutex::new(DirCache::default()),
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| usage(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "listening beyond loopback: anyone who reaches this address can read what the \
             identity decrypts; prefer 127.0.0.1 with kubectl port-forward or an SSH tunnel"
        );
    }
    if let Some(m) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(m)
            .await
            .map_err(|e| usage(format!("cannot listen on {m} for metrics: {e}")))?;
        let app = metrics::router(state.clone());
        println!("cairn ui: metrics at http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "cairn ui: the metrics listener stopped");
            }
        });
    }
    let access = if state.locked.is_some() { "metadata only: no identity" } else { "identity" };
    // The one line a user (or a test) needs: where to point the browser.
    println!("cairn ui: serving http://{addr}/ ({access}); Ctrl-C stops it");
    tracing::info!(%addr, access, "cairn ui started");
    axum::serve(listener, router(state, addr))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the UI")?;
    Ok(Exit::Success)
}

fn router(state: Arc<State>, addr: SocketAddr) -> Router {
    let loopback = loopback_only(addr);
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/info", get(api::info))
        .route("/api/snapshots", get(api::snapshots))
        .route("/api/snapshot", get(api::snapshot))
        .route("/api/ls", get(api::ls))
        .route("/api/file", get(api::file))
        .route("/api/tar", get(api::tar))
        .route("/api/resources", get(api::resources))
        .route("/api/cluster", get(api::cluster_view))
        .route("/api/neighbors", get(api::neighbors))
        .route("/api/diff", get(api::diff))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            guard(loopback, req, next)
        }))
        .with_state(state)
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// Whether requests must name a loopback host. A page on another site could otherwise reach
/// a loopback UI through DNS rebinding (its own name resolving to 127.0.0.1) and read
/// decrypted data. Any port is accepted: `kubectl port-forward 8080:7070` and SSH tunnels
/// change it.
fn loopback_only(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

/// Refuse foreign Host headers and writes; add headers that keep the page self-contained.
async fn guard(loopback: bool, req: Request, next: Next) -> Response {
    if loopback {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !is_loopback_host(host) {
            return (StatusCode::FORBIDDEN, format!("cairn ui: unexpected Host {host:?}"))
                .into_response();
        }
    }
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "cairn ui is read-only").into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// The repository URL as shown on the page: no user info or query (keys, tokens).
fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
    let which = cairn_job::signal::shutdown().await;
    tracing::info!("cairn ui: stopping ({which})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(redact_url("s3://bucket/prefix"), "s3://bucket/prefix");
        assert_eq!(redact_url("https://user:pw@host/x?sig=abc"), "https://host/x");
        assert_eq!(redact_url("/var/backups/repo"), "/var/backups/repo");
    }

    #[test]
    fn loopback_listeners_only_answer_to_loopback_names() {
        for ok in ["localhost:7070", "127.0.0.1:8080", "[::1]:7070", "localhost"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example:7070", "127.0.0.1.evil.example", "", "[::2]:7070", "localhost.:1"]
        {
            assert!(!is_loopback_host(bad), "{bad}");
        }
        assert!(loopback_only("127.0.0.1:7070".parse().unwrap()));
        assert!(!loopback_only("0.0.0.0:7070".parse().unwrap()));
    }
}
