//! A fault-injecting HTTP/1.1 reverse proxy, to prove cairn's retry layer against S3.
//!
//! cairn talks S3 through `object_store` (reqwest, plain HTTP on loopback). A test points
//! cairn at [`FaultProxy::url`] instead of the S3 server; the proxy forwards every request
//! unchanged to the real server, except that each request, independently (keep-alive
//! connections included), gets a [`Fault`] with the probability set by
//! [`FaultProxy::set_rate`]. Requests and responses are forwarded byte for byte (method,
//! path and query, headers, body) so that SigV4 signatures still verify: only the
//! hop-by-hop `Connection`/`Keep-Alive` headers are dropped, and no header is added.
//!
//! ```ignore
//! let proxy = FaultProxy::start(s3_addr).await?;
//! proxy.set_kinds(&[Fault::ResetAfter, Fault::SlowDown]);
//! proxy.set_rate(0.2);
//! // ... run cairn with AWS_ENDPOINT_URL=proxy.url(), then check proxy.stats().faults() > 0
//! ```
//!
//! Bodies are buffered whole (objects in the tests are at most 64 MiB), which keeps the
//! fault logic simple: a fault that comes "after" the upstream applied a request really does
//! come after it.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use rand::seq::IndexedRandom;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Bound on one upstream exchange (request sent, response head and body received), and on
/// reading a client's request body: a stuck peer fails the request instead of the test.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client connection may wait for a request head. Longer than reqwest's default
/// 90 s pool idle timeout, so the client always closes an idle keep-alive connection first
/// and never races the proxy closing it (which would be an unplanned fault).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long idle upstream connections are kept for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a truncated body waits, after its partial data, before the connection is
/// dropped: hyper discards unflushed output when a body fails, so the pause lets it flush
/// the head and the partial data to the client first.
const TRUNCATE_FLUSH_PAUSE: Duration = Duration::from_millis(250);

/// A fault the proxy can inject into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `500 InternalError` with an S3 XML error body; the request is not forwarded.
    ServerError,
    /// `503 SlowDown` with an S3 XML error body and `Retry-After: 1`; the request is not
    /// forwarded.
    SlowDown,
    /// The connection is dropped without a response; the request is not forwarded. The
    /// body is read first, so that the client always sees the same end of stream (an
    /// incomplete message) and not, depending on timing, a TCP reset from unread data.
    ResetBefore,
    /// The request is forwarded and the upstream applies it, then the connection is dropped
    /// without a response: the client cannot tell whether the request took effect.
    ResetAfter,
    /// The request is forwarded and applied; the response head is sent with the upstream's
    /// `Content-Length`, but only the first half of the body follows before the connection
    /// is dropped. A response without a body (HEAD, 204, empty object) has nothing to
    /// truncate, so it is dropped like [`Fault::ResetAfter`].
    TruncatedBody,
    /// The request is forwarded after a random delay drawn from [`FaultProxy::set_delay`]'s
    /// range (default 1–3 s); the response is intact.
    Delay,
}

impl Fault {
    /// Every fault, the default set to draw from.
    pub const ALL: [Fault; 6] = [
        Fault::ServerError,
        Fault::SlowDown,
        Fault::ResetBefore,
        Fault::ResetAfter,
        Fault::TruncatedBody,
        Fault::Delay,
    ];
}

/// What the proxy has seen and done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Requests whose head reached the proxy, faulted or not.
    pub requests: u64,
    /// Requests sent to the upstream (pass-through, `ResetAfter`, `TruncatedBody`, `Delay`).
    pub forwarded: u64,
    /// Forwarded requests that failed upstream (answered `502`/`504` by the proxy): not
    /// injected faults, but they look like ones to the client, so a test can check for them.
    pub upstream_errors: u64,
    // Faults injected, one count per kind (see `injected`).
    pub server_error: u64,
    pub slow_down: u64,
    pub reset_before: u64,
    pub reset_after: u64,
    pub truncated_body: u64,
    pub delay: u64,
}

impl FaultStats {
    /// How many times `fault` was injected.
    pub fn injected(&self, fault: Fault) -> u64 {
        match fault {
            Fault::ServerError => self.server_error,
            Fault::SlowDown => self.slow_down,
            Fault::ResetBefore => self.reset_before,
            Fault::ResetAfter => self.reset_after,
            Fault::TruncatedBody => self.truncated_body,
            Fault::Delay => self.delay,
        }
    }

    /// How many faults were injected, all kinds together.
    pub fn faults(&self) -> u64 {
        Fault::ALL.iter().map(|&f| self.injected(f)).sum()
    }
}

/// A running fault-injecting proxy in front of one upstream S3 server.
///
/// Dropping it stops accepting connections and aborts the open ones.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`, transparent (rate 0) until
    /// [`FaultProxy::set_rate`] says otherwise. Needs a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
            // With the server side's preserve_header_case, headers reach the upstream with
            // the client's spelling, and come back with the upstream's.
            .http1_preserve_header_case(true)
            .build(connector);
        let shared = Arc::new(Shared {
            upstream,
            client,
            config: Mutex::new(Config {
                rate: 0.0,
                kinds: Fault::ALL.to_vec(),
                delay: Duration::from_secs(1)..Duration::from_secs(3),
            }),
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FaultProxy { addr, shared, accept })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy as an S3 endpoint, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the probability, in `[0, 1]`, that a request gets a fault; 0 makes the proxy
    /// transparent. Takes effect for the next request, also on open connections.
    ///
    /// # Panics
    /// If `rate` is outside `[0, 1]` (or NaN).
    pub fn set_rate(&self, rate: f64) {
        assert!((0.0..=1.0).contains(&rate), "fault rate {rate} is not in [0, 1]");
        self.shared.config().rate = rate;
    }

    /// Sets which faults to draw from, uniformly (duplicates weigh more). Default: all.
    ///
    /// # Panics
    /// If `kinds` is empty: to inject nothing, set the rate to 0.
    pub fn set_kinds(&self, kinds: &[Fault]) {
        assert!(!kinds.is_empty(), "no fault kinds given; use set_rate(0.0) to disable faults");
        self.shared.config().kinds = kinds.to_vec();
    }

    /// Sets the range the [`Fault::Delay`] delay is drawn from (an empty range means its
    /// start). Default: 1–3 s.
    pub fn set_delay(&self, range: Range<Duration>) {
        self.shared.config().delay = range;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FaultStats {
        self.shared.counters.snapshot()
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.shared.config();
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("rate", &config.rate)
            .field("kinds", &config.kinds)
            .field("delay", &config.delay)
            .field("stats", &self.shared.counters.snapshot())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the listener and the JoinSet of connection tasks; dropping
        // it (which abort does, on the runtime) closes the listener and aborts them all.
        self.accept.abort();
    }
}

/// The tunables, changeable while the proxy runs.
struct Config {
    rate: f64,
    kinds: Vec<Fault>,
    delay: Range<Duration>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    upstream_errors: AtomicU64,
    /// Indexed like [`Fault::ALL`].
    injected: [AtomicU64; Fault::ALL.len()],
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FaultStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let fault = |f: Fault| get(&self.injected[f as usize]);
        FaultStats {
            requests: get(&self.requests),
            forwarded: get(&self.forwarded),
            upstream_errors: get(&self.upstream_errors),
            server_error: fault(Fault::ServerError),
            slow_down: fault(Fault::SlowDown),
            reset_before: fault(Fault::ResetBefore),
            reset_after: fault(Fault::ResetAfter),
            truncated_body: fault(Fault::TruncatedBody),
            delay: fault(Fault::Delay),
        }
    }
}

/// State shared by the handle and every connection task.
struct Shared {
    upstream: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    config: Mutex<Config>,
    counters: Counters,
}

impl Shared {
    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        // The guarded data stays consistent even if a holder panicked (plain stores).
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rolls the dice for one request.
    fn draw(&self) -> Option<Fault> {
        let config = self.config();
        let mut rng = rand::rng();
        if config.rate > 0.0 && rng.random_bool(config.rate) {
            config.kinds.choose(&mut rng).copied()
        } else {
            None
        }
    }

    fn delay(&self) -> Duration {
        let range = self.config().delay.clone();
        if range.is_empty() { range.start } else { rand::rng().random_range(range) }
    }

    /// Sends the request upstream unchanged (but for hop-by-hop headers) and buffers the
    /// response. An upstream failure comes back as the proxy's own `502`/`504` response.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Bytes>, Response<ProxyBody>> {
        Counters::bump(&self.counters.forwarded);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match Uri::try_from(format!("http://{}{path}", self.upstream)) {
            Ok(uri) => uri,
            Err(e) => return Err(self.upstream_failed(StatusCode::BAD_GATEWAY, &e)),
        };
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // Host stays the client's: the legacy client only sets it when absent.
        let request = Request::from_parts(parts, Full::new(body));
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok(mut response)) => {
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Ok(Err(e)) => Err(self.upstream_failed(StatusCode::BAD_GATEWAY, &*e)),
            Err(e) => Err(self.upstream_failed(StatusCode::GATEWAY_TIMEOUT, &e)),
        }
    }

    fn upstream_failed(&self, status: StatusCode, e: &dyn fmt::Display) -> Response<ProxyBody> {
        Counters::bump(&self.counters.upstream_errors);
        let mut response = Response::new(ProxyBody::full(Bytes::from(format!(
            "cairn fault proxy: upstream {} failed: {e}\n",
            self.upstream
        ))));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

/// Accepts connections until the task is aborted, which drops `conns` and so aborts every
/// connection task too.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve(stream, Arc::clone(&shared)));
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            // Reap finished connections so the set does not grow with the test.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    // Small S3 requests should not wait on Nagle; best effort.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .preserve_header_case(true)
        // The upstream's Date passes through; a response without one stays without.
        .auto_date_header(false);
    // The connection's error is the injected fault or the client leaving: nothing to do.
    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
}

/// One request: roll the dice, then forward and/or inject.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Dropped> {
    Counters::bump(&shared.counters.requests);
    let fault = shared.draw();
    if let Some(f) = fault {
        Counters::bump(&shared.counters.injected[f as usize]);
    }
    let (parts, body) = request.into_parts();
    // Read the body whatever the fault: a server that answers or closes while the client is
    // still sending makes the client see a broken pipe or a reset, depending on timing,
    // instead of the status or the end of stream the fault is meant to show.
    let body = match tokio::time::timeout(EXCHANGE_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        // The client went away or stalled: there is no one left to answer.
        Ok(Err(_)) | Err(_) => return Err(Dropped),
    };
    match fault {
        Some(Fault::ResetBefore) => return Err(Dropped),
        Some(Fault::ServerError) => {
            return Ok(s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ));
        }
        Some(Fault::SlowDown) => {
            let mut response = s3_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(response);
        }
        Some(Fault::Delay) => tokio::time::sleep(shared.delay()).await,
        _ => {}
    }
    let is_head = parts.method == Method::HEAD;
    let response = match shared.forward(parts, body).await {
        Ok(response) => response,
        Err(proxy_error) => return Ok(proxy_error),
    };
    match fault {
        Some(Fault::ResetAfter) => Err(Dropped),
        // Nothing to cut short: hyper would send the bodiless response whole.
        Some(Fault::TruncatedBody) if is_head || response.body().is_empty() => Err(Dropped),
        Some(Fault::TruncatedBody) => Ok(response.map(|body| {
            let half = body.slice(..body.len() / 2);
            ProxyBody::Truncated {
                data: Some(half),
                pause: Box::pin(tokio::time::sleep(TRUNCATE_FLUSH_PAUSE)),
            }
        })),
        _ => Ok(response.map(ProxyBody::full)),
    }
}

/// An S3-style error response (`<Error><Code>…`), as S3 sends it.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>cairn-fault-proxy</RequestId></Error>"
    );
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    headers.insert("x-amz-request-id", HeaderValue::from_static("cairn-fault-proxy"));
    response
}

/// Drops the headers that describe one hop's connection, not the message. SigV4 never signs
/// these (they are not the client's to promise end to end), and forwarding a `Connection:
/// close` would make the other hop close a connection it wants to keep.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The service error that makes hyper drop the client connection without (the rest of) a
/// response, which the client sees as a reset or an incomplete message.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cairn fault proxy dropped the connection")
    }
}

impl std::error::Error for Dropped {}

/// A response body: whole, or cut short by [`Fault::TruncatedBody`].
enum ProxyBody {
    Full(Option<Bytes>),
    /// Sends `data`, pauses so hyper flushes it, then fails, which drops the connection.
    Truncated {
        data: Option<Bytes>,
        pause: Pin<Box<tokio::time::Sleep>>,
    },
}

impl ProxyBody {
    fn full(body: Bytes) -> ProxyBody {
        // An empty body must say it is at its end, or hyper would poll it for a frame.
        ProxyBody::Full(Some(body).filter(|b| !b.is_empty()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Dropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Dropped>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Truncated { data, pause } => {
                if let Some(d) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                pause.as_mut().poll(cx).map(|()| Some(Err(Dropped)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ProxyBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len()) as u64)
            }
            // Unknown, so hyper frames the body by the upstream's Content-Length header,
            // which promises more than will come.
            ProxyBody::Truncated { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::time::Instant;

    /// Bound on every step a test waits for.
    const STEP: Duration = Duration::from_secs(10);

    /// What the test upstream received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        uri: String,
        headers: HeaderMap,
        body: Bytes,
    }

    /// A tiny S3-ish server: PUT stores (honouring `If-None-Match: *`), GET and HEAD read,
    /// GET with `list-type=2` lists, DELETE removes (204 even when absent).
    #[derive(Default)]
    struct Store {
        objects: Mutex<HashMap<String, Bytes>>,
        seen: Mutex<Vec<Seen>>,
    }

    impl Store {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn object(&self, key: &str) -> Option<Bytes> {
            self.objects.lock().unwrap().get(key).cloned()
        }
    }

    struct Upstream {
        addr: SocketAddr,
        store: Arc<Store>,
        task: JoinHandle<()>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn upstream() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(Store::default());
        let state = Arc::clone(&store);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = Arc::clone(&state);
                let service = service_fn(move |r| store_handle(Arc::clone(&state), r));
                conns.spawn(async move {
                    // No Date header: responses then compare byte for byte across runs.
                    let mut builder = http1::Builder::new();
                    builder.auto_date_header(false);
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Upstream { addr, store, task }
    }

    fn xml_error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
        let body = format!("<Error><Code>{code}</Code></Error>");
        Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .header("x-amz-request-id", "upstream")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    async fn store_handle(
        store: Arc<Store>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        store.seen.lock().unwrap().push(Seen {
            method: parts.method.clone(),
            uri: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        let key = parts.uri.path().to_owned();
        let etag = |b: &Bytes| format!("\"etag-{}\"", b.len());
        let mut objects = store.objects.lock().unwrap();
        let ok = Response::builder().header("x-amz-request-id", "upstream");
        let response = match parts.method {
            Method::PUT => {
                let create_only =
                    parts.headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == "*");
                if create_only && objects.contains_key(&key) {
                    xml_error(StatusCode::PRECONDITION_FAILED, "PreconditionFailed")
                } else {
                    let response = ok.header("etag", etag(&body)).body(Full::default());
                    objects.insert(key, body);
                    response.unwrap()
                }
            }
            Method::GET if parts.uri.query().is_some_and(|q| q.contains("list-type=2")) => {
                let mut keys: Vec<&String> =
                    objects.keys().filter(|k| k.starts_with(&key)).collect();
                keys.sort();
                let listed: String = keys.iter().map(|k| format!("<Key>{k}</Key>")).collect();
                let body = format!("<ListBucketResult>{listed}</ListBucketResult>");
                ok.header("content-type", "application/xml")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
            // A response framed by chunks instead of a Content-Length.
            Method::GET if key == "/bucket/chunked" => ok
                .header(header::TRANSFER_ENCODING, "chunked")
                .body(Full::new(Bytes::from_static(b"chunky body")))
                .unwrap(),
            Method::GET => match objects.get(&key) {
                Some(b) => ok
                    .header("etag", etag(b))
                    .header("x-amz-meta-origin", "upstream")
                    .body(Full::new(b.clone()))
                    .unwrap(),
                None => xml_error(StatusCode::NOT_FOUND, "NoSuchKey"),
            },
            Method::HEAD => match objects.get(&key) {
                Some(b) => ok
                    .header("etag", etag(b))
                    .header("content-length", b.len())
                    .body(Full::default())
                    .unwrap(),
                None => ok.status(StatusCode::NOT_FOUND).body(Full::default()).unwrap(),
            },
            Method::DELETE => {
                objects.remove(&key);
                ok.status(StatusCode::NO_CONTENT).body(Full::default()).unwrap()
            }
            _ => xml_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        };
        Ok(response)
    }

    /// A proxy in front of a fresh upstream, with only `kind` at `rate`.
    async fn proxied(rate: f64, kind: Fault) -> (Upstream, FaultProxy) {
        let up = upstream().await;
        let proxy = FaultProxy::start(up.addr).await.unwrap();
        proxy.set_kinds(&[kind]);
        proxy.set_rate(rate);
        (up, proxy)
    }

    /// One request on a fresh connection with hyper's low-level client, which neither pools
    /// nor retries: what the proxy did is exactly what comes back.
    async fn send(
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, "AWS4-HMAC-SHA256 Signature=test")
            .body(Full::new(body.into()))
            .unwrap();
        send_request(addr, request).await
    }

    async fn send_request(
        addr: SocketAddr,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = tokio::time::timeout(
            STEP,
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)),
        )
        .await
        .unwrap()?;
        tokio::spawn(conn);
        tokio::time::timeout(STEP, sender.send_request(request)).await.unwrap()
    }

    async fn body_of(response: Response<Incoming>) -> Bytes {
        tokio::time::timeout(STEP, response.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes()
    }

    /// A raw HTTP/1.1 keep-alive connection: writes request bytes, returns response bytes.
    struct Raw {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Raw {
        async fn connect(addr: SocketAddr) -> Raw {
            Raw { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
        }

        /// Sends `request` and reads one response, framed by its Content-Length (no body for
        /// HEAD, 204 and 304), returning the response's raw bytes.
        async fn exchange(&mut self, request: &[u8]) -> Vec<u8> {
            tokio::time::timeout(STEP, self.exchange_unbounded(request)).await.unwrap()
        }

        async fn exchange_unbounded(&mut self, mut request: &[u8]) -> Vec<u8> {
            let head_only = request.starts_with(b"HEAD ");
            while !request.is_empty() {
                self.stream.writable().await.unwrap();
                match self.stream.try_write(request) {
                    Ok(n) => request = &request[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            let head_len = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                self.read_more().await;
            };
            let head = String::from_utf8_lossy(&self.buf[..head_len]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let body_len = if head_only || status == 204 || status == 304 { 0 } else { length };
            while self.buf.len() < head_len + body_len {
                self.read_more().await;
            }
            self.buf.drain(..head_len + body_len).collect()
        }

        async fn read_more(&mut self) {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                self.stream.readable().await.unwrap();
                match self.stream.try_read(&mut chunk) {
                    Ok(0) => panic!("connection closed mid-response"),
                    Ok(n) => return self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn status_of(raw: &[u8]) -> u16 {
        std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap()
    }

    /// The S3 calls cairn makes, spelled as SigV4-signed requests would be.
    fn s3_calls() -> Vec<Vec<u8>> {
        let signed = "Host: 127.0.0.1:7070\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=0123abcd\r\n\
             x-amz-date: 20260101T000000Z\r\n\
             x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n";
        let key = "/bucket/dir%2Fa%20b";
        [
            format!("PUT {key} HTTP/1.1\r\n{signed}If-None-Match: *\r\nContent-Length: 11\r\n\r\nhello world"),
            format!("PUT {key} HTTP/1.1\r\n{signed}If-None-Match: *\r\nContent-Length: 3\r\n\r\nbye"),
            format!("GET {key} HTTP/1.1\r\n{signed}If-Match: \"etag-11\"\r\n\r\n"),
            format!("HEAD {key} HTTP/1.1\r\n{signed}\r\n"),
            format!("GET /bucket?list-type=2&prefix=dir HTTP/1.1\r\n{signed}\r\n"),
            format!("DELETE /bucket/missing HTTP/1.1\r\n{signed}\r\n"),
            format!("GET /bucket/missing HTTP/1.1\r\n{signed}\r\n"),
            format!("HEAD /bucket/missing HTTP/1.1\r\n{signed}\r\n"),
        ]
        .map(String::into_bytes)
        .to_vec()
    }

    #[tokio::test]
    async fn rate_zero_is_byte_identical_to_the_upstream() {
        let direct = upstream().await;
        let (behind, proxy) = proxied(0.0, Fault::ServerError).await;
        proxy.set_kinds(&Fault::ALL);
        let mut to_direct = Raw::connect(direct.addr).await;
        let mut to_proxy = Raw::connect(proxy.addr()).await;
        let mut statuses = Vec::new();
        for call in s3_calls() {
            let expected = to_direct.exchange(&call).await;
            let got = to_proxy.exchange(&call).await;
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
            statuses.push(status_of(&got));
        }
        assert_eq!(statuses, [200, 412, 200, 200, 200, 204, 404, 404]);
        // What the upstream received is what the client sent.
        let (expected, got) = (direct.store.seen(), behind.store.seen());
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!((&g.method, &g.uri, &g.body), (&e.method, &e.uri, &e.body));
            assert_eq!(g.headers, e.headers, "{} {}", g.method, g.uri);
        }
        assert_eq!(got[0].uri, "/bucket/dir%2Fa%20b");
        assert_eq!(got[0].headers["if-none-match"], "*");
        assert!(got[0].headers["authorization"].to_str().unwrap().ends_with("Signature=0123abcd"));
        assert_eq!(got[2].headers["if-match"], "\"etag-11\"");
        assert_eq!(got[4].uri, "/bucket?list-type=2&prefix=dir");
        assert_eq!(behind.store.object("/bucket/dir%2Fa%20b").unwrap(), "hello world");
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.forwarded, stats.faults()), (8, 8, 0), "{stats:?}");
        assert_eq!(stats.upstream_errors, 0);
    }

    #[tokio::test]
    async fn rate_zero_passes_chunked_messages_through() {
        let (up, proxy) = proxied(0.0, Fault::ServerError).await;
        let response = send(proxy.addr(), Method::GET, "/bucket/chunked", Bytes::new()).await;
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(body_of(response).await, "chunky body");
        let request = Request::put("/bucket/streamed")
            .header(header::HOST, "s3")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(Full::new(Bytes::from_static(b"streamed")))
            .unwrap();
        let response = send_request(proxy.addr(), request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = up.store.seen();
        assert_eq!(seen[1].headers["transfer-encoding"], "chunked");
        assert!(!seen[1].headers.contains_key("content-length"));
        assert_eq!(up.store.object("/bucket/streamed").unwrap(), "streamed");
    }

    #[tokio::test]
    async fn server_error_answers_500_without_forwarding() {
        let (up, proxy) = proxied(1.0, Fault::ServerError).await;
        let response = send(proxy.addr(), Method::PUT, "/bucket/k", &b"data"[..]).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["content-type"], "application/xml");
        let body = body_of(response).await;
        assert!(contains(&body, b"<Code>InternalError</Code>"), "{body:?}");
        assert!(up.store.seen().is_empty());
        assert_eq!(up.store.object("/bucket/k"), None);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.server_error, stats.forwarded), (1, 1, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn slow_down_answers_503_with_retry_after_without_forwarding() {
        let (up, proxy) = proxied(1.0, Fault::SlowDown).await;
        let response = send(proxy.addr(), Method::GET, "/bucket/k", Bytes::new()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let body = body_of(response).await;
        assert!(contains(&body, b"<Code>SlowDown</Code>"), "{body:?}");
        assert!(up.store.seen().is_empty());
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.slow_down, stats.forwarded), (1, 1, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn reset_before_fails_the_request_without_forwarding() {
        let (up, proxy) = proxied(1.0, Fault::ResetBefore).await;
        let error = send(proxy.addr(), Method::PUT, "/bucket/k", &b"data"[..]).await.unwrap_err();
        eprintln!("ResetBefore: {error:?}");
        assert!(error.is_incomplete_message(), "{error:?}");
        // A body larger than the socket buffers: still an end of stream, not a reset.
        let big = vec![7u8; 8 << 20];
        let error = send(proxy.addr(), Method::PUT, "/bucket/big", big).await.unwrap_err();
        eprintln!("ResetBefore, 8 MiB PUT: {error:?}");
        assert!(error.is_incomplete_message(), "{error:?}");
        assert!(up.store.seen().is_empty());
        assert_eq!(up.store.object("/bucket/k"), None);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.reset_before, stats.forwarded), (2, 2, 0), "{stats:?}");
    }

    #[tokio::test]
    async fn reset_after_fails_the_request_after_the_upstream_applied_it() {
        let (up, proxy) = proxied(1.0, Fault::ResetAfter).await;
        let error = send(proxy.addr(), Method::PUT, "/bucket/k", &b"data"[..]).await.unwrap_err();
        eprintln!("ResetAfter: {error:?}");
        assert!(error.is_incomplete_message(), "{error:?}");
        assert_eq!(up.store.object("/bucket/k").unwrap(), "data");
        assert_eq!(up.store.seen().len(), 1);
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.reset_after, stats.forwarded), (1, 1, 1), "{stats:?}");
    }

    #[tokio::test]
    async fn truncated_body_stops_half_way_after_the_upstream_applied_it() {
        let (up, proxy) = proxied(1.0, Fault::TruncatedBody).await;
        let object: Bytes = (0..100_000u32).map(|i| i as u8).collect();
        up.store.objects.lock().unwrap().insert("/bucket/big".into(), object);
        let response = send(proxy.addr(), Method::GET, "/bucket/big", Bytes::new()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-length"], "100000");
        let mut body = response.into_body();
        let mut received = 0;
        let error = loop {
            match tokio::time::timeout(STEP, body.frame()).await.unwrap() {
                Some(Ok(frame)) => received += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(e)) => break e,
                None => panic!("body ended cleanly after {received} bytes"),
            }
        };
        eprintln!("TruncatedBody: {error:?} after {received} bytes");
        assert_eq!(received, 50_000);
        // A bodiless response (PUT's) has nothing to cut: the connection drops instead.
        let error = send(proxy.addr(), Method::PUT, "/bucket/k", &b"data"[..]).await.unwrap_err();
        eprintln!("TruncatedBody on PUT: {error:?}");
        assert_eq!(up.store.object("/bucket/k").unwrap(), "data");
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.truncated_body, stats.forwarded), (2, 2, 2), "{stats:?}");
    }

    #[tokio::test]
    async fn delay_forwards_late_but_intact() {
        let (up, proxy) = proxied(1.0, Fault::Delay).await;
        proxy.set_delay(Duration::from_millis(200)..Duration::from_millis(300));
        up.store.objects.lock().unwrap().insert("/bucket/k".into(), Bytes::from_static(b"data"));
        let started = Instant::now();
        let response = send(proxy.addr(), Method::GET, "/bucket/k", Bytes::new()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_of(response).await, "data");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.delay, stats.forwarded), (1, 1, 1), "{stats:?}");
    }

    #[tokio::test]
    async fn each_request_on_a_keep_alive_connection_rolls_the_dice() {
        let (up, proxy) = proxied(0.5, Fault::ServerError).await;
        up.store.objects.lock().unwrap().insert("/bucket/k".into(), Bytes::from_static(b"data"));
        let mut conn = Raw::connect(proxy.addr()).await;
        let get = b"GET /bucket/k HTTP/1.1\r\nHost: s3\r\n\r\n";
        let mut failed = 0;
        for _ in 0..64 {
            match status_of(&conn.exchange(get).await) {
                500 => failed += 1,
                200 => {}
                other => panic!("status {other}"),
            }
        }
        // Both outcomes on one connection (all-equal has probability 2^-63).
        assert!(0 < failed && failed < 64, "{failed} of 64 failed");
        let stats = proxy.stats();
        assert_eq!((stats.requests, stats.server_error), (64, failed), "{stats:?}");
        assert_eq!(up.store.seen().len() as u64, 64 - failed);
        // The rate changes for the next request, on the same connection.
        proxy.set_rate(0.0);
        for _ in 0..8 {
            assert_eq!(status_of(&conn.exchange(get).await), 200);
        }
        assert_eq!(proxy.stats().server_error, failed);
    }

    /// reqwest's pool is hyper-util's legacy client: a reset after the request was sent on a
    /// reused connection must surface, not be retried behind the caller's back.
    #[tokio::test]
    async fn pooled_client_sees_reset_after_once() {
        let (up, proxy) = proxied(0.0, Fault::ResetAfter).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let put = |body: &'static [u8]| {
            let request = Request::put(format!("{}/bucket/k", proxy.url()))
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            tokio::time::timeout(STEP, client.request(request))
        };
        assert_eq!(put(b"one").await.unwrap().unwrap().status(), StatusCode::OK);
        proxy.set_rate(1.0);
        let error = put(b"two").await.unwrap().unwrap_err();
        eprintln!("ResetAfter, pooled: {error:?}");
        assert_eq!(up.store.seen().len(), 2);
        assert_eq!(up.store.object("/bucket/k").unwrap(), "two");
    }

    #[tokio::test]
    async fn drop_stops_the_proxy() {
        let (up, proxy) = proxied(0.0, Fault::ServerError).await;
        let addr = proxy.addr();
        let mut conn = Raw::connect(addr).await;
        let get = b"GET /bucket/k HTTP/1.1\r\nHost: s3\r\n\r\n";
        assert_eq!(status_of(&conn.exchange(get).await), 404);
        drop(proxy);
        // Abort takes effect when the runtime next polls the task: wait for it, boundedly.
        let deadline = Instant::now() + STEP;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The open connection is closed too: a read sees end of stream.
        let mut chunk = [0u8; 1];
        let read = tokio::time::timeout(STEP, async {
            loop {
                conn.stream.readable().await.unwrap();
                match conn.stream.try_read(&mut chunk) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    other => return other.map_err(|e| e.kind()),
                }
            }
        });
        assert_eq!(read.await.unwrap(), Ok(0));
        assert_eq!(up.store.seen().len(), 1);
    }

    #[test]
    fn stats_sum_the_kinds() {
        let stats =
            FaultStats { server_error: 1, delay: 2, truncated_body: 4, ..FaultStats::default() };
        assert_eq!(stats.faults(), 7);
        assert_eq!(stats.injected(Fault::TruncatedBody), 4);
        assert_eq!(stats.injected(Fault::ResetAfter), 0);
    }
}
