//! Object storage through `object_store`: URL parsing, error mapping, and the few operations
//! the repository needs. Every object but locks is written with `PutMode::Create`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, memory::InMemory, path::Path,
    prefix::PrefixStore,
};

use crate::{Error, Result};

/// A point in time on the store's clock.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// What a listing or `head` says about one object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last-modified time, on the store's clock.
    pub modified: Timestamp,
}

/// A handle on the repository's storage location.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
    timeout: std::time::Duration,
    retry: RetryPolicy,
    /// Writes made for a lock holder: no attempt starts, and none outlives, its lease.
    lease: Option<super::lock::LeaseGuard>,
}

/// `CAIRN_STORE_TIMEOUT` (e.g. `2m`), else 5 minutes: long enough for a 16 MiB pack on a slow
/// link, short enough that a hung connection does not outlive a lock lease by much.
fn default_timeout() -> std::time::Duration {
    std::env::var("CAIRN_STORE_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(std::time::Duration::from_secs(300))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// `memory://name` stores live for the whole process, so that several opens of one URL
/// (a backup, then a restore, in one test) see the same objects.
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

fn env_true(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

impl Store {
    /// Open a repository location:
    /// * a path or `file:///path` (created if missing; the embedded default),
    /// * `s3://bucket/prefix` (credentials, region and endpoint the AWS way: env, web
    ///   identity/IRSA, instance metadata; `AWS_ENDPOINT_URL` for compatible stores, plain
    ///   HTTP only with `AWS_ALLOW_HTTP=true`),
    /// * `gs://bucket/prefix`, `az://container/prefix`,
    /// * `memory://name` for tests.
    ///
    /// A local directory must exist: a mistyped path is an error, never a new empty
    /// directory. [`Store::open_or_create`] is for writers of new locations.
    pub fn open(url: &str) -> Result<Store> {
        Store::open_with(url, false, None)
    }

    /// Open an `s3://` URL through `endpoint` instead of `AWS_ENDPOINT_URL` (a proxy in
    /// front of the store; the fault-injection suite), otherwise configured as [`Store::open`].
    pub fn open_s3_via(url: &str, endpoint: &str) -> Result<Store> {
        Store::open_with(url, false, Some(endpoint))
    }

    /// Like [`Store::open`], creating a missing local directory (`cairn init`, restore
    /// targets).
    pub fn open_or_create(url: &str) -> Result<Store> {
        Store::open_with(url, true, None)
    }

    fn open_with(url: &str, create: bool, endpoint: Option<&str>) -> Result<Store> {
        let invalid = |msg: String| Error::Invalid(format!("repository URL {url:?}: {msg}"));
        if url.is_empty() {
            return Err(invalid("empty".into()));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("file".to_string(), url),
        };
        let inner: Arc<dyn ObjectStore> = match scheme.as_str() {
            "file" => {
                let path = std::path::Path::new(if rest.is_empty() { "." } else { rest });
                if create {
                    std::fs::create_dir_all(path)
                        .map_err(|e| invalid(format!("cannot create directory: {e}")))?;
                } else if !path.is_dir() {
                    return Err(Error::NotFound(format!(
                        "no repository at {url}: {} is not a directory",
                        path.display()
                    )));
                }
                let path = path.canonicalize().map_err(|e| invalid(e.to_string()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&path)
                        .map_err(|e| invalid(e.to_string()))?
                        .with_automatic_cleanup(true),
                )
            }
            "memory" => memory_stores()
                .lock()
                .expect("memory store registry")
                .entry(rest.to_string())
                .or_default()
                .clone(),
            "s3" | "s3a" => {
                let (bucket, prefix) = split_bucket(rest)
                    .ok_or_else(|| invalid("expected s3://bucket[/prefix]".into()))?;
                let endpoint =
                    endpoint.map(str::to_string).or(std::env::var("AWS_ENDPOINT_URL").ok());
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(inner_retry());
                if let Some(endpoint) = endpoint {
                    refuse_plain_http(&endpoint, env_true("AWS_ALLOW_HTTP")).map_err(invalid)?;
                    b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
                }
                if env_true("AWS_ALLOW_HTTP") {
                    b = b.with_allow_http(true);
                }
                let s3 = b.build().map_err(|e| invalid(e.to_string()))?;
                with_prefix(Arc::new(s3), prefix)
            }
            "gs" => {
                let (bucket, prefix) = split_bucket(rest)
                    .ok_or_else(|| invalid("expected gs://bucket[/prefix]".into()))?;
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(inner_retry())
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                with_prefix(Arc::new(gcs), prefix)
            }
            "az" | "azure" => {
                let (container, prefix) = split_bucket(rest)
                    .ok_or_else(|| invalid("expected az://container[/prefix]".into()))?;
                let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(inner_retry())
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                with_prefix(Arc::new(az), prefix)
            }
            other => {
                return Err(invalid(format!(
                    "unknown scheme {other:?} (use file, s3, gs, az or memory)"
                )));
            }
        };
        Ok(Store::from_object_store(inner, url))
    }

    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: &str) -> Store {
        Store {
            inner,
            url: url.to_string(),
            timeout: default_timeout(),
            retry: RetryPolicy::from_env(),
            lease: None,
        }
    }

    /// This store, writing (creates, deletes) only while `lease` holds: each attempt is
    /// checked against it and bounded by the lease time left, so a retry never lands after
    /// the holder must have stopped (FORMAT.md §15.1 "Stop", §15.7).
    pub fn under_lease(&self, lease: Option<super::lock::LeaseGuard>) -> Store {
        Store { lease, ..self.clone() }
    }

    /// How long the next write attempt may take: the request timeout, cut to the lease
    /// time left; an error once the lease may be gone.
    fn write_window(&self) -> Result<std::time::Duration> {
        match &self.lease {
            Some(l) => Ok(l.remaining()?.min(self.timeout)),
            None => Ok(self.timeout),
        }
    }

    /// Retry failed requests this way instead of [`RetryPolicy::from_env`].
    pub fn with_retry(mut self, retry: RetryPolicy) -> Store {
        self.retry = retry;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Give up on any single request (or list page) after this long (default 5 min,
    /// `CAIRN_STORE_TIMEOUT`): a hung store fails the operation instead of hanging the job.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Store {
        self.timeout = timeout;
        self
    }

    async fn timed<T>(
        &self,
        key: &str,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        self.timed_for(self.timeout, key, fut).await
    }

    async fn timed_for<T>(
        &self,
        limit: std::time::Duration,
        key: &str,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|e| map_err(e, key)),
            Err(_) => Err(Error::Retryable(format!(
                "object store, {key}: no answer within {}",
                humantime::format_duration(secs(limit).max(std::time::Duration::from_secs(1)))
            ))),
        }
    }

    /// Run `attempt` until it ends in anything but [`Error::Retryable`] or the retry budget is
    /// spent; each retry is logged. Only idempotent attempts come here (see `create`).
    async fn retrying<T, F, Fut>(&self, op: &str, key: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let started = std::time::Instant::now();
        let mut failures = 0u32;
        loop {
            match attempt().await {
                Err(Error::Retryable(msg)) => {
                    // A lapsed lease is not retried: the holder must stop writing.
                    if let Some(lease) = &self.lease {
                        lease.remaining()?;
                    }
                    failures += 1;
                    let delay = self.retry.delay(failures, &msg);
                    if started.elapsed() + delay > self.retry.budget {
                        return Err(Error::Retryable(if failures > 1 {
                            format!(
                                "{msg} (gave up after {failures} attempts in {})",
                                humantime::format_duration(secs(started.elapsed()))
                            )
                        } else {
                            msg
                        }));
                    }
                    tracing::warn!(
                        op,
                        key,
                        attempt = failures,
                        retry_in = %humantime::format_duration(delay),
                        error = %msg,
                        "object store request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    /// Write a new object; an existing one is [`Error::AlreadyExists`], never overwritten.
    ///
    /// Safe to retry although a create is not idempotent: when a retry (ours or the
    /// client's) finds the key taken, the object is read back, and if it holds exactly
    /// `data` the create is ours whose answer was lost. Every created object's bytes are
    /// unique to its writer (random ids, nonces, sealed with random nonces), so equal bytes
    /// never mean someone else's object.
    pub async fn create(&self, key: &str, data: Bytes) -> Result<()> {
        self.retrying("create", key, || self.create_once(key, data.clone(), self.timeout)).await
    }

    /// One create attempt within `limit` (and the lease), with the read-back of
    /// [`Store::create`]; not retried: the caller decides what must happen before the next.
    pub async fn create_once(
        &self,
        key: &str,
        data: Bytes,
        limit: std::time::Duration,
    ) -> Result<()> {
        let window = self.write_window()?.min(limit);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        let path = Path::from(key);
        let put = self.inner.put_opts(&path, PutPayload::from(data.clone()), opts);
        match self.timed_for(window, key, put).await {
            Ok(_) => Ok(()),
            Err(Error::AlreadyExists(m)) => match self.get_once(key).await {
                Ok(b) if b == data => {
                    tracing::debug!(key, "create found its own object: an answer was lost");
                    Ok(())
                }
                Ok(_) => Err(Error::AlreadyExists(m)),
                Err(Error::NotFound(_)) => {
                    Err(Error::Retryable(format!("object store, {key}: vanished after a 412")))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// How this store retries.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Write or replace an object. Only lock objects are ever replaced (a lease refresh).
    /// Not retried here: the lock's refresher decides, against its lease, whether a late
    /// write is still safe.
    pub async fn put_overwrite(&self, key: &str, data: Bytes) -> Result<()> {
        self.timed(key, self.inner.put(&Path::from(key), PutPayload::from(data))).await?;
        Ok(())
    }

    /// Size and the store's own last-modified time of one object.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = Path::from(key);
        let m = self.retrying("head", key, || self.timed(key, self.inner.head(&path))).await?;
        Ok(ObjectInfo { key: key.to_string(), size: m.size, modified: m.last_modified })
    }

    /// The store's clock, read off an object written now. Leases and grace periods are
    /// judged on this clock, never on the pod's: pods' clocks drift, the store's is one.
    pub async fn now(&self) -> Result<Timestamp> {
        let key = format!("locks/clock-{}", hex::encode(rand::random::<[u8; 8]>()));
        let body = Bytes::from_static(b"clock");
        self.retrying("put", &key, || self.put_overwrite(&key, body.clone())).await?;
        let info = self.head(&key).await;
        let _ = self.delete(&key).await;
        Ok(info?.modified)
    }

    /// Keys under a prefix with sizes and last-modified times (paginated by the client;
    /// each page must come within the timeout). A listing that fails part-way (a reset, a
    /// truncated page) is started again.
    pub async fn list_info(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.retrying("list", prefix, || self.list_once(prefix)).await
    }

    async fn list_once(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let p = Path::from(prefix);
        let mut stream = self.inner.list(Some(&p));
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(self.timeout, stream.next()).await {
                Ok(None) => return Ok(out),
                Ok(Some(Ok(m))) => out.push(ObjectInfo {
                    key: m.location.to_string(),
                    size: m.size,
                    modified: m.last_modified,
                }),
                Ok(Some(Err(e))) => return Err(map_err(e, prefix)),
                Err(_) => {
                    return Err(Error::Retryable(format!(
                        "object store, listing {prefix}: no answer within {}",
                        humantime::format_duration(self.timeout)
                    )));
                }
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.retrying("get", key, || self.get_once(key)).await
    }

    /// One GET, body included: a body cut short is retryable like a failed request.
    async fn get_once(&self, key: &str) -> Result<Bytes> {
        let path = Path::from(key);
        self.timed(key, async { self.inner.get(&path).await?.bytes().await }).await
    }

    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let path = Path::from(key);
        let get = || self.timed(key, self.inner.get_range(&path, range.clone()));
        self.retrying("get", key, get).await
    }

    pub async fn size(&self, key: &str) -> Result<u64> {
        Ok(self.head(key).await?.size)
    }

    /// Delete an object; one already gone counts as deleted (a retry after a lost answer).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.retrying("delete", key, || self.delete_once(key)).await
    }

    /// One delete attempt, not retried (breaking an expired lock: a delete that lands late
    /// could remove a successor's fresh lock).
    pub async fn delete_once(&self, key: &str) -> Result<()> {
        let window = self.write_window()?;
        match self.timed_for(window, key, self.inner.delete(&Path::from(key))).await {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keys under a prefix with their sizes.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.list_info(prefix).await?.into_iter().map(|o| (o.key, o.size)).collect())
    }

    /// Fetch many objects with bounded concurrency.
    pub async fn get_many(
        &self,
        keys: Vec<String>,
        concurrency: usize,
    ) -> Result<Vec<(String, Bytes)>> {
        futures::stream::iter(keys)
            .map(|k| async move { self.get(&k).await.map(|b| (k, b)) })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await
    }

    /// Fetch the listed objects that still exist: one deleted between a listing and its
    /// fetch (a snapshot forgotten meanwhile) is left out, not an error.
    pub async fn get_existing(
        &self,
        keys: Vec<String>,
        concurrency: usize,
    ) -> Result<Vec<(String, Bytes)>> {
        let fetched: Vec<Option<(String, Bytes)>> = futures::stream::iter(keys)
            .map(|k| async move {
                match self.get(&k).await {
                    Ok(b) => Ok(Some((k, b))),
                    Err(Error::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        Ok(fetched.into_iter().flatten().collect())
    }
}

/// Whole seconds, for messages.
fn secs(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

/// How the store retries what fails transiently (5xx, throttling, resets, timeouts, bodies
/// cut short): exponential backoff with jitter within a total budget per operation, the way
/// restic (15 minutes) and kopia do. `object_store`'s own retries stay short underneath
/// ([`inner_retry`]) so that every retry of ours is logged.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up on an operation once this much time went by (no new attempt would start
    /// after it).
    pub budget: std::time::Duration,
    /// The first delay; it doubles up to `max_delay`.
    pub first_delay: std::time::Duration,
    pub max_delay: std::time::Duration,
}

impl RetryPolicy {
    /// Fail at the first transient error (tests that model a crashed process).
    pub const NONE: RetryPolicy = RetryPolicy {
        budget: std::time::Duration::ZERO,
        first_delay: std::time::Duration::ZERO,
        max_delay: std::time::Duration::ZERO,
    };

    /// `CAIRN_RETRY_BUDGET` (e.g. `30s`, `0` to never retry), else 15 minutes.
    pub fn from_env() -> RetryPolicy {
        let budget = std::env::var("CAIRN_RETRY_BUDGET")
            .ok()
            .and_then(|v| {
                if v.trim() == "0" {
                    Some(std::time::Duration::ZERO)
                } else {
                    humantime::parse_duration(v.trim()).ok()
                }
            })
            .unwrap_or(std::time::Duration::from_secs(15 * 60));
        RetryPolicy {
            budget,
            first_delay: std::time::Duration::from_millis(500),
            max_delay: std::time::Duration::from_secs(30),
        }
    }

    /// The pause before retry number `failures` (1-based): `first_delay · 2^(n-1)`, capped,
    /// with "equal jitter" (half fixed, half random) so that many jobs failing together do
    /// not retry together. A store asking to slow down gets at least two seconds.
    pub fn delay(&self, failures: u32, error: &str) -> std::time::Duration {
        let exp = self.first_delay.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let mut d = exp.min(self.max_delay);
        if error.contains("SlowDown") || matches!(http_status(error), Some(429 | 503)) {
            d = d.max(std::time::Duration::from_secs(2).min(self.max_delay.max(self.first_delay)));
        }
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// `object_store`'s own retry loop, kept short: two quick retries within 15 s. Ours above it
/// does the long, logged backoff.
fn inner_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(15),
    }
}

/// object_store refuses a plain-HTTP endpoint at the first request with "builder error";
/// say so at open, with the fix.
fn refuse_plain_http(endpoint: &str, allowed: bool) -> std::result::Result<(), String> {
    if endpoint.to_ascii_lowercase().starts_with("http://") && !allowed {
        return Err(format!(
            "AWS_ENDPOINT_URL {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to allow it \
             (requests then cross the network without TLS)"
        ));
    }
    Ok(())
}

fn split_bucket(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() { None } else { Some((bucket, prefix.trim_matches('/'))) }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) }
}

/// Map a store error onto cairn's policy, in one readable line.
pub fn map_err(e: object_store::Error, key: &str) -> Error {
    use object_store::Error as E;
    // A local filesystem's refusal says what it is in its io::Error kind.
    if let Some(kind) = io_kind(&e) {
        use std::io::ErrorKind as K;
        let text = summarize(&e.to_string());
        match kind {
            K::PermissionDenied | K::ReadOnlyFilesystem => {
                return Error::Denied(format!("cannot write or read {key}: {text}"));
            }
            K::StorageFull | K::QuotaExceeded => {
                return Error::StorageFull(format!("writing {key}: {text}"));
            }
            K::FileTooLarge => return Error::Invalid(format!("writing {key}: {text}")),
            _ => {}
        }
    }
    match e {
        E::NotFound { .. } => Error::NotFound(format!("object {key}")),
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            Error::AlreadyExists(format!("object {key}"))
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Error::Denied(format!(
            "object store refused access to {key}: {}",
            summarize(&e.to_string())
        )),
        E::NotImplemented { .. } | E::NotSupported { .. } => Error::Invalid(format!(
            "object store does not support the operation on {key}: {}",
            summarize(&e.to_string())
        )),
        other => {
            let full = other.to_string();
            let text = summarize(&full);
            let status = http_status(&full);
            let code = s3_code(&full);
            let is = |c: &str| code.as_deref() == Some(c);
            if full.contains("No space left") || is("QuotaExceeded") || status == Some(507) {
                Error::StorageFull(format!("writing {key}: {text}"))
            } else if is("EntityTooLarge") {
                Error::Invalid(format!("object store refused {key} as too large: {text}"))
            } else if full.contains("builder error") || full.contains("URL scheme is not allowed") {
                Error::Invalid(format!("object store client, {key}: {text}"))
            } else if is("RequestTimeout")
                || is("IncompleteBody")
                || is("BadDigest")
                || is("ExpiredToken")
                || is("InternalError")
                || is("SlowDown")
            {
                // 400s that a flaky link or a credential refresh causes: worth another try.
                Error::Retryable(format!("object store, {key}: {text}"))
            } else if matches!(status, Some(401 | 403)) {
                // S3 answers a wrong secret with 403 SignatureDoesNotMatch.
                Error::Denied(format!("object store refused access to {key}: {text}"))
            } else if matches!(status, Some(300..=399)) || full.contains("Received redirect") {
                Error::Invalid(format!(
                    "object store redirected the request for {key} (wrong region or \
                     endpoint?): {text}"
                ))
            } else if matches!(status, Some(400..=499))
                && !matches!(status, Some(408 | 409 | 425 | 429 | 499))
            {
                // A 400 (a malformed bucket name), 405, 411...: the request itself is wrong.
                Error::Invalid(format!("object store rejected the request for {key}: {text}"))
            } else if is_local_range_error(&full) {
                Error::Integrity(format!("object {key}: {text}"))
            } else {
                Error::Retryable(format!("object store, {key}: {text}"))
            }
        }
    }
}

/// The `<Code>` of an S3-style XML error body.
fn s3_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].trim().to_string())
}

/// A local store asked for a range past an object's end: the object is shorter than its
/// reader was told (a truncated pack), not a network problem.
fn is_local_range_error(text: &str) -> bool {
    text.contains("LocalFileSystem")
        && (text.contains("Out of range of file") || text.contains("Requested range was invalid"))
}

/// The io::Error kind underneath a store error, if any.
fn io_kind(e: &object_store::Error) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// The HTTP status in an `object_store` error text ("... status code: 400 Bad Request ...").
fn http_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// One line out of an error text: an S3/GCS/Azure XML error body becomes `Code: Message`,
/// and what is left is cut to a readable length (a wrong secret otherwise prints a 2.5 KB
/// XML document with the string-to-sign).
pub fn summarize(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_string())
    };
    let head = text.split('<').next().unwrap_or(text).trim_end_matches([' ', ':']).trim();
    let line = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{head}: {c}: {m}"),
        (Some(c), None) => format!("{head}: {c}"),
        _ => text.to_string(),
    };
    let line = line.replace(['\n', '\r'], " ");
    const MAX: usize = 400;
    if line.len() <= MAX {
        return line;
    }
    let mut cut = MAX;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &line[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_error_body_becomes_one_line() {
        let xml = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" \
                   encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The \
                   request signature we calculated does not match the signature you provided.\
                   </Message><StringToSign>AWS4-HMAC-SHA256\n20261130T000000Z</StringToSign>\
                   </Error>";
        let line = summarize(xml);
        assert_eq!(
            line,
            "Server returned non-2xx status code: 403 Forbidden: SignatureDoesNotMatch: The \
             request signature we calculated does not match the signature you provided."
        );
        assert!(!line.contains('\n'));
        assert!(summarize(&"x".repeat(3000)).chars().count() <= 401);
        assert_eq!(http_status(xml), Some(403));
    }

    #[test]
    fn client_errors_are_not_retried_and_full_buckets_are_not_network_trouble() {
        let generic = |msg: &str| object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        };
        let bad_bucket = generic(
            "Error performing PUT in 1ms - Server returned non-2xx status code: 400 Bad Request: \
             <Error><Code>InvalidBucketName</Code><Message>The specified bucket is not valid.\
             </Message></Error>",
        );
        assert!(matches!(map_err(bad_bucket, "k"), Error::Invalid(_)));
        let wrong_secret = generic(
            "Server returned non-2xx status code: 403 Forbidden: <Error><Code>\
             SignatureDoesNotMatch</Code><Message>no</Message></Error>",
        );
        assert!(matches!(map_err(wrong_secret, "k"), Error::Denied(_)));
        let slow =
            generic("Server returned non-2xx status code: 503 Service Unavailable: SlowDown");
        assert!(matches!(map_err(slow, "k"), Error::Retryable(_)));
        let throttled = generic("Server returned non-2xx status code: 429 Too Many Requests");
        assert!(matches!(map_err(throttled, "k"), Error::Retryable(_)));
        let reset = generic("error sending request: connection reset by peer");
        assert!(matches!(map_err(reset, "k"), Error::Retryable(_)));
        let full = generic("Server returned non-2xx status code: 507 Insufficient Storage");
        assert!(matches!(map_err(full, "k"), Error::StorageFull(_)));
        let io = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(matches!(map_err(io, "k"), Error::Denied(_)));
        let rofs = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem)),
        };
        assert!(matches!(map_err(rofs, "k"), Error::Denied(_)));
    }

    #[test]
    fn backoff_grows_is_capped_and_slows_down_for_throttling() {
        let p = RetryPolicy {
            budget: std::time::Duration::from_secs(60),
            first_delay: std::time::Duration::from_millis(500),
            max_delay: std::time::Duration::from_secs(30),
        };
        let ms = |n, e| p.delay(n, e).as_millis();
        assert!((250..=500).contains(&ms(1, "reset")), "{}", ms(1, "reset"));
        assert!((2000..=4000).contains(&ms(4, "reset")));
        assert!((15_000..=30_000).contains(&ms(30, "reset")));
        assert!(ms(1, "503 SlowDown") >= 1000);
        assert_eq!(RetryPolicy::NONE.delay(3, "x"), std::time::Duration::ZERO);
    }

    /// A store that fails each operation's first `n` attempts with a 500, once applying the
    /// write before failing (a lost answer).
    #[tokio::test]
    async fn a_create_whose_answer_was_lost_is_found_by_its_content() {
        let inner = Arc::new(InMemory::new());
        let store =
            Store::from_object_store(inner.clone(), "memory://lost").with_retry(RetryPolicy {
                budget: std::time::Duration::from_secs(5),
                first_delay: std::time::Duration::from_millis(1),
                max_delay: std::time::Duration::from_millis(2),
            });
        // The first attempt "landed" (the object is there), its answer never came back:
        // the retry meets a 412 and must recognise its own bytes.
        inner.put(&Path::from("snapshots/a"), PutPayload::from_static(b"mine")).await.unwrap();
        store.create("snapshots/a", Bytes::from_static(b"mine")).await.unwrap();
        // Someone else's object under the key is still a conflict.
        let err = store.create("snapshots/a", Bytes::from_static(b"theirs")).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        // Deleting what is gone is done.
        store.delete("snapshots/none").await.unwrap();
    }

    #[test]
    fn a_missing_local_directory_is_not_created_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo");
        let err = Store::open(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert!(!missing.exists());
        Store::open_or_create(missing.to_str().unwrap()).unwrap();
        assert!(missing.is_dir());
    }

    #[test]
    fn plain_http_without_allow_http_is_a_usage_error() {
        let err = refuse_plain_http("http://127.0.0.1:9", false).unwrap_err();
        assert!(err.contains("AWS_ALLOW_HTTP"), "{err}");
        refuse_plain_http("http://127.0.0.1:9", true).unwrap();
        refuse_plain_http("https://s3.example", false).unwrap();
    }
}
