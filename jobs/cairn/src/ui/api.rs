//! The JSON API behind the page. Every handler reads; errors are `{"error": "..."}` with a
//! status that says what kind: 400 bad request, 403 contents need the identity, 404 missing,
//! 422 damaged data, 503 the store failed (retry).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::fs::export::{NodeReader, Selection, export_tar};
use cairn_core::repo::diff::diff_trees;
use cairn_core::repo::{Node, NodeKind, SnapshotEntry};
use cairn_kube::compare::{CompareOptions, compare};
use cairn_kube::stored::{is_manifest_snapshot, load_changed_pair};
use cairn_kube::{ObjectPath, from_yaml, to_yaml};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::cluster::View;
use super::{Snapshots, State, stream};

type Shared = AxState<Arc<State>>;
type ApiResult<T> = Result<T, ApiError>;

const MAX_PAGE: usize = 2000;
const DEFAULT_PAGE: usize = 200;
/// A diff lists at most this many changes (the page says when it was cut).
const MAX_DIFF: usize = 5000;

pub struct ApiError(StatusCode, String);

impl From<cairn_core::Error> for ApiError {
    fn from(e: cairn_core::Error) -> Self {
        use cairn_core::Error as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::Denied(_) => StatusCode::FORBIDDEN,
            E::Integrity(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Contents need the identity: 403 with the reason the page shows.
fn need_identity(state: &State) -> ApiResult<()> {
    match &state.locked {
        Some(reason) => Err(ApiError(StatusCode::FORBIDDEN, reason.clone())),
        None => Ok(()),
    }
}

fn kind_of(e: &SnapshotEntry) -> &'static str {
    let s = &e.snapshot;
    if is_manifest_snapshot(s) {
        "manifests"
    } else if s.source == "etcd" {
        "etcd"
    } else if s.source.starts_with("pvc/") {
        "pvc"
    } else if s.source.starts_with("bucket/") {
        "bucket"
    } else {
        "files"
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn mtime(ns: i128) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns).ok().map(rfc3339)
}

/// A snapshot as `cairn snapshots --json` shows it, and what kind of source it is.
fn snapshot_brief(e: &SnapshotEntry) -> Value {
    let mut v = crate::snapshot_json(e);
    v["kind"] = json!(kind_of(e));
    v
}

fn find<'a>(list: &'a Snapshots, id: &str) -> ApiResult<&'a SnapshotEntry> {
    let id = id.to_ascii_lowercase();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("snapshot {id:?}: expected an id or id prefix")));
    }
    let mut hits = list.entries.iter().filter(|e| e.id.to_hex().starts_with(&id));
    match (hits.next(), hits.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(ApiError(StatusCode::NOT_FOUND, format!("snapshot {id} not found"))),
        _ => Err(bad(format!("snapshot prefix {id} is ambiguous"))),
    }
}

/// Snapshots of the same source and cluster as `e`, in time order.
fn series<'a>(list: &'a Snapshots, e: &SnapshotEntry) -> Vec<&'a SnapshotEntry> {
    list.entries
        .iter()
        .filter(|x| {
            x.snapshot.source == e.snapshot.source && x.snapshot.cluster == e.snapshot.cluster
        })
        .collect()
}

#[derive(Deserialize)]
pub struct Refresh {
    #[serde(default)]
    refresh: bool,
}

pub async fn info(AxState(state): Shared) -> ApiResult<Json<Value>> {
    let list = state.snapshots(false).await?;
    Ok(Json(json!({
        "repo": state.repo_url,
        "canReadData": state.locked.is_none(),
        "locked": state.locked,
        "snapshots": list.entries.len(),
        "unreadable": list.unreadable,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

pub async fn snapshots(AxState(state): Shared, Query(q): Query<Refresh>) -> ApiResult<Json<Value>> {
    let list = state.snapshots(q.refresh).await?;
    Ok(Json(Value::Array(list.entries.iter().map(snapshot_brief).collect())))
}

#[derive(Deserialize)]
pub struct SnapQuery {
    id: String,
}

pub async fn snapshot(
    AxState(state): Shared,
    Query(q): Query<SnapQuery>,
) -> ApiResult<Json<Value>> {
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.id)?;
    let s = &e.snapshot;
    let mut v = snapshot_brief(e);
    v["meta"] = s.meta.clone();
    let same = series(&list, e);
    let at = same.iter().position(|x| x.id == e.id).unwrap_or(0);
    v["previous"] = json!(at.checked_sub(1).map(|i| same[i].id.to_hex()));
    v["next"] = json!(same.get(at + 1).map(|x| x.id.to_hex()));
    Ok(Json(v))
}

#[derive(Deserialize)]
pub struct LsQuery {
    snap: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    /// Case-insensitive substring of the name.
    #[serde(default)]
    q: String,
}

fn entry_json(n: &Node) -> Value {
    let mut v = json!({
        "name": n.name.display(),
        "kind": n.kind,
        "size": n.size,
        "mode": format!("{:o}", n.mode),
        "uid": n.uid,
        "gid": n.gid,
        "mtime": mtime(n.mtime_ns),
    });
    if let Some(t) = &n.target {
        v["target"] = json!(t.display());
    }
    if n.kind == NodeKind::Dir {
        // Listing blobs hold up to 4096 entries each: a cheap upper bound without reading.
        v["listings"] = json!(n.subtree.len());
    }
    v
}

fn page(offset: usize, limit: Option<usize>) -> (usize, usize) {
    (offset, limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE))
}

pub async fn ls(AxState(state): Shared, Query(q): Query<LsQuery>) -> ApiResult<Json<Value>> {
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.snap)?;
    let node = state.node_at(&e.snapshot, &q.path).await?;
    let (offset, limit) = page(q.offset, q.limit);
    if node.kind != NodeKind::Dir {
        return Ok(Json(
            json!({"path": q.path, "node": entry_json(&node), "total": 1, "entries": [entry_json(&node)]}),
        ));
    }
    let children = state.dir(&node.subtree).await?;
    let needle = q.q.to_lowercase();
    let matching: Vec<&Node> = children
        .iter()
        .filter(|n| needle.is_empty() || n.name.display().to_lowercase().contains(&needle))
        .collect();
    let entries: Vec<Value> =
        matching.iter().skip(offset).take(limit).map(|n| entry_json(n)).collect();
    Ok(Json(json!({
        "path": q.path,
        "node": entry_json(&node),
        "total": matching.len(),
        "offset": offset,
        "entries": entries,
    })))
}

#[derive(Deserialize)]
pub struct FileQuery {
    snap: String,
    path: String,
    #[serde(default)]
    download: bool,
    /// Show Secret values (hidden by default, even with the identity).
    #[serde(default)]
    reveal: bool,
}

fn base_name(path: &str) -> String {
    let name = path.rsplit('/').find(|p| !p.is_empty()).unwrap_or("snapshot");
    // Content-Disposition is a quoted string: keep it printable ASCII without quotes.
    name.chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' })
        .collect()
}

pub async fn file(AxState(state): Shared, Query(q): Query<FileQuery>) -> ApiResult<Response> {
    need_identity(&state)?;
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.snap)?;
    let node = state.node_at(&e.snapshot, &q.path).await?;
    if node.kind != NodeKind::File {
        return Err(bad(format!("{} is not a file", q.path)));
    }
    // Secrets in manifest snapshots are shown with their values hidden unless asked.
    let secret = is_manifest_snapshot(&e.snapshot)
        && ObjectPath::parse(q.path.trim_start_matches('/'))
            .is_some_and(|p| p.group.is_empty() && p.resource == "secrets");
    if secret && !q.reveal && !q.download {
        let text = state.repo.read_file(&node).await?;
        let mut obj = from_yaml(&text, &q.path)?;
        redact_secret(&mut obj);
        return Ok(
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], to_yaml(&obj)?).into_response()
        );
    }
    let (mut writer, body) = stream::channel();
    let repo = state.repo.clone();
    let handle = tokio::runtime::Handle::current();
    let size = node.size;
    tokio::task::spawn_blocking(move || {
        let mut reader = NodeReader::new(&repo, handle, &node);
        let result = std::io::copy(&mut reader, &mut writer).and_then(|_| {
            use std::io::Write;
            writer.flush()
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "ui download failed");
            writer.fail(e.to_string());
        }
    });
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, size.into());
    if q.download {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let cd = format!("attachment; filename=\"{}\"", base_name(&q.path));
        h.insert(header::CONTENT_DISPOSITION, cd.parse().map_err(|_| bad("file name"))?);
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    Ok(res)
}

fn redact_secret(obj: &mut Value) {
    for key in ["data", "stringData"] {
        if let Some(map) = obj.get_mut(key).and_then(Value::as_object_mut) {
            for v in map.values_mut() {
                let len = v.as_str().map_or(0, str::len);
                *v = json!(format!("<hidden: {len} characters; reveal to show>"));
            }
        }
    }
}

#[derive(Deserialize)]
pub struct TarQuery {
    snap: String,
    #[serde(default)]
    path: String,
}

pub async fn tar(AxState(state): Shared, Query(q): Query<TarQuery>) -> ApiResult<Response> {
    need_identity(&state)?;
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.snap)?;
    let node = state.node_at(&e.snapshot, &q.path).await?;
    let name = if q.path.trim_matches('/').is_empty() {
        format!("{}-{}", base_name(&e.snapshot.source), &e.id.to_hex()[..8])
    } else {
        base_name(&q.path)
    };
    let (writer, body) = stream::channel();
    // export_tar owns the writer on its own blocking thread; a failure after the first
    // bytes is reported by breaking the body through a second handle.
    let failer = writer.failer();
    let repo = state.repo.clone();
    tokio::spawn(async move {
        if let Err(e) = export_tar(repo, node, Selection::default(), writer).await {
            tracing::warn!(error = %e, "ui tar download failed");
            failer.fail(e.to_string()).await;
        }
    });
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    let cd = format!("attachment; filename=\"{name}.tar\"");
    h.insert(header::CONTENT_DISPOSITION, cd.parse().map_err(|_| bad("file name"))?);
    Ok(res)
}

#[derive(Deserialize)]
pub struct ResourcesQuery {
    snap: String,
    /// A namespace, or empty for cluster-scoped resources.
    #[serde(default)]
    ns: String,
}

/// The resource directories of a namespace (or of the cluster scope) with object counts.
pub async fn resources(
    AxState(state): Shared,
    Query(q): Query<ResourcesQuery>,
) -> ApiResult<Json<Value>> {
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.snap)?;
    let base = if q.ns.is_empty() { "cluster".to_string() } else { format!("namespaces/{}", q.ns) };
    let top = state.node_at(&e.snapshot, &base).await?;
    let mut out = Vec::new();
    for group in state.dir(&top.subtree).await?.iter().filter(|n| n.kind == NodeKind::Dir) {
        for res in state.dir(&group.subtree).await?.iter().filter(|n| n.kind == NodeKind::Dir) {
            let count = state.dir(&res.subtree).await?.len();
            out.push(json!({
                "group": group.name.display(),
                "resource": res.name.display(),
                "count": count,
                "path": format!("{base}/{}/{}", group.name.display(), res.name.display()),
            }));
        }
    }
    Ok(Json(json!({"base": base, "resources": out})))
}

#[derive(Deserialize)]
pub struct ClusterQuery {
    snap: String,
    view: String,
    #[serde(default)]
    ns: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    #[serde(default)]
    q: String,
}

/// One page of an "at this time" table: the names come from listings (cheap), and only the
/// objects of the page are read and parsed.
pub async fn cluster_view(
    AxState(state): Shared,
    Query(q): Query<ClusterQuery>,
) -> ApiResult<Json<Value>> {
    let view = View::find(&q.view).ok_or_else(|| bad(format!("unknown view {:?}", q.view)))?;
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.snap)?;
    let snap = &e.snapshot;
    if !is_manifest_snapshot(snap) {
        return Err(bad("not a manifest snapshot"));
    }
    // (namespace, directory holding the objects)
    let mut dirs: Vec<(Option<String>, String)> = Vec::new();
    if !view.namespaced {
        dirs.push((None, format!("cluster/{}/{}", view.group_dir, view.resource)));
    } else if !q.ns.is_empty() {
        dirs.push((
            Some(q.ns.clone()),
            format!("namespaces/{}/{}/{}", q.ns, view.group_dir, view.resource),
        ));
    } else if let Some(nss) = state.node_opt(snap, "namespaces").await? {
        for ns in state.dir(&nss.subtree).await?.iter() {
            let ns = ns.name.display();
            let dir = format!("namespaces/{ns}/{}/{}", view.group_dir, view.resource);
            dirs.push((Some(ns), dir));
        }
    }
    let needle = q.q.to_lowercase();
    let mut items: Vec<(Option<String>, String, Node)> = Vec::new();
    for (ns, dir) in dirs {
        let Some(d) = state.node_opt(snap, &dir).await? else { continue };
        for n in state.dir(&d.subtree).await?.iter().filter(|n| n.kind == NodeKind::File) {
            let file = n.name.display();
            let name = file.strip_suffix(".yaml").unwrap_or(&file).to_string();
            let hay = format!("{}/{name}", ns.as_deref().unwrap_or("")).to_lowercase();
            if needle.is_empty() || hay.contains(&needle) {
                items.push((ns.clone(), format!("{dir}/{file}"), n.clone()));
            }
        }
    }
    let total = items.len();
    let (offset, limit) = page(q.offset, q.limit);
    let shown: Vec<_> = items.into_iter().skip(offset).take(limit).collect();
    let locked = state.locked.is_some();
    let repo = &state.repo;
    let rows: Vec<Value> = futures::stream::iter(shown)
        .map(|(ns, path, node)| async move {
            let name = path.rsplit('/').next().unwrap_or("").trim_end_matches(".yaml").to_string();
            let mut row = if locked {
                json!({})
            } else {
                let text = repo.read_file(&node).await?;
                view.row(&from_yaml(&text, &path)?)
            };
            row["namespace"] = json!(ns);
            row["name"] = json!(name);
            row["path"] = json!(path);
            row["created"] = json!(mtime(node.mtime_ns));
            Ok::<_, cairn_core::Error>(row)
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(Json(
        json!({"view": view.name, "total": total, "offset": offset, "rows": rows, "locked": locked}),
    ))
}

#[derive(Deserialize)]
pub struct NeighborsQuery {
    snap: String,
    path: String,
}

/// The same path in the previous and next snapshot of the same source and cluster: whether
/// it exists there and whether its content is the same.
pub async fn neighbors(
    AxState(state): Shared,
    Query(q): Query<NeighborsQuery>,
) -> ApiResult<Json<Value>> {
    let list = state.snapshots(false).await?;
    let e = find(&list, &q.snap)?;
    let here = state.node_opt(&e.snapshot, &q.path).await?;
    let same = series(&list, e);
    let at = same.iter().position(|x| x.id == e.id).unwrap_or(0);
    let mut out = json!({});
    for (key, other) in
        [("previous", at.checked_sub(1).map(|i| same[i])), ("next", same.get(at + 1).copied())]
    {
        let Some(other) = other else {
            out[key] = Value::Null;
            continue;
        };
        let there = state.node_opt(&other.snapshot, &q.path).await?;
        out[key] = json!({
            "id": other.id.to_hex(),
            "time": rfc3339(other.snapshot.time),
            "exists": there.is_some(),
            "same": matches!((&here, &there), (Some(a), Some(b)) if a.same_content(b)),
        });
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct DiffQuery {
    a: String,
    b: String,
    #[serde(default)]
    ns: String,
    #[serde(default)]
    status: bool,
    #[serde(default)]
    all: bool,
}

/// Between two manifest snapshots (with the identity): objects added, removed and changed,
/// with their fields. Otherwise: paths added, removed and changed (metadata only).
pub async fn diff(AxState(state): Shared, Query(q): Query<DiffQuery>) -> ApiResult<Json<Value>> {
    let list = state.snapshots(false).await?;
    let a = find(&list, &q.a)?;
    let b = find(&list, &q.b)?;
    let manifests = is_manifest_snapshot(&a.snapshot) && is_manifest_snapshot(&b.snapshot);
    let ends = json!({"a": snapshot_brief(a), "b": snapshot_brief(b)});
    if manifests && state.locked.is_none() {
        let ns = q.ns.clone();
        let keep =
            move |p: &ObjectPath| ns.is_empty() || p.namespace.as_deref() == Some(ns.as_str());
        let (ma, mb) = load_changed_pair(&state.repo, &a.snapshot, &b.snapshot, &keep).await?;
        let mut changes = compare(&ma, &mb, CompareOptions { with_status: q.status, all: q.all });
        let truncated = changes.len() > MAX_DIFF;
        changes.truncate(MAX_DIFF);
        return Ok(Json(
            json!({"mode": "objects", "ends": ends, "changes": changes, "truncated": truncated}),
        ));
    }
    let mut changes = diff_trees(&state.repo, &a.snapshot.root, &b.snapshot.root).await?;
    if !q.ns.is_empty() {
        let prefix = format!("namespaces/{}/", q.ns);
        changes.retain(|c| c.path.trim_start_matches('/').starts_with(&prefix));
    }
    let truncated = changes.len() > MAX_DIFF;
    changes.truncate(MAX_DIFF);
    Ok(Json(json!({
        "mode": "paths",
        "ends": ends,
        "changes": changes,
        "truncated": truncated,
        "note": if manifests { state.locked.clone() } else { None },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_are_safe_header_values() {
        assert_eq!(base_name("/a/b/report \"q\".pdf"), "report__q_.pdf");
        assert_eq!(base_name("/"), "snapshot");
        assert_eq!(base_name("pvc/ns/data"), "data");
    }

    #[test]
    fn secret_values_are_hidden() {
        let mut s = json!({"kind": "Secret", "data": {"password": "aHVudGVyMg=="}, "stringData": {"x": "y"}});
        redact_secret(&mut s);
        assert!(!s.to_string().contains("aHVudGVyMg=="));
        assert!(s["data"]["password"].as_str().unwrap().contains("12 characters"));
        assert_eq!(s["kind"], "Secret");
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page(0, None), (0, DEFAULT_PAGE));
        assert_eq!(page(5, Some(1_000_000)), (5, MAX_PAGE));
        assert_eq!(page(0, Some(0)), (0, 1));
    }
}
