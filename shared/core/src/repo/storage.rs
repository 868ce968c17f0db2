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
    pub fn open(url: &str) -> Result<Store> {
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
                std::fs::create_dir_all(path)
                    .map_err(|e| invalid(format!("cannot create directory: {e}")))?;
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
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
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
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                with_prefix(Arc::new(gcs), prefix)
            }
            "az" | "azure" => {
                let (container, prefix) = split_bucket(rest)
                    .ok_or_else(|| invalid("expected az://container[/prefix]".into()))?;
                let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
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
        Ok(Store { inner, url: url.to_string(), timeout: default_timeout() })
    }

    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: &str) -> Store {
        Store { inner, url: url.to_string(), timeout: default_timeout() }
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
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| map_err(e, key)),
            Err(_) => Err(Error::Retryable(format!(
                "object store, {key}: no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// Write a new object; an existing one is [`Error::AlreadyExists`], never overwritten.
    pub async fn create(&self, key: &str, data: Bytes) -> Result<()> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        self.timed(key, self.inner.put_opts(&Path::from(key), PutPayload::from(data), opts))
            .await?;
        Ok(())
    }

    /// Write or replace an object. Only lock objects are ever replaced (a lease refresh).
    pub async fn put_overwrite(&self, key: &str, data: Bytes) -> Result<()> {
        self.timed(key, self.inner.put(&Path::from(key), PutPayload::from(data))).await?;
        Ok(())
    }

    /// Size and the store's own last-modified time of one object.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let m = self.timed(key, self.inner.head(&Path::from(key))).await?;
        Ok(ObjectInfo { key: key.to_string(), size: m.size, modified: m.last_modified })
    }

    /// The store's clock, read off an object written now. Leases and grace periods are
    /// judged on this clock, never on the pod's: pods' clocks drift, the store's is one.
    pub async fn now(&self) -> Result<Timestamp> {
        let key = format!("locks/clock-{}", hex::encode(rand::random::<[u8; 8]>()));
        self.put_overwrite(&key, Bytes::from_static(b"clock")).await?;
        let info = self.head(&key).await;
        let _ = self.delete(&key).await;
        Ok(info?.modified)
    }

    /// Keys under a prefix with sizes and last-modified times (paginated by the client;
    /// each page must come within the timeout).
    pub async fn list_info(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
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
        let path = Path::from(key);
        self.timed(key, async { self.inner.get(&path).await?.bytes().await }).await
    }

    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.timed(key, self.inner.get_range(&Path::from(key), range)).await
    }

    pub async fn size(&self, key: &str) -> Result<u64> {
        Ok(self.head(key).await?.size)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.timed(key, self.inner.delete(&Path::from(key))).await {
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
}

fn split_bucket(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() { None } else { Some((bucket, prefix.trim_matches('/'))) }
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) }
}

/// Map a store error onto cairn's policy.
pub fn map_err(e: object_store::Error, key: &str) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::NotFound(format!("object {key}")),
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            Error::AlreadyExists(format!("object {key}"))
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            Error::Denied(format!("object store refused access to {key}: {e}"))
        }
        E::NotImplemented { .. } | E::NotSupported { .. } => {
            Error::Invalid(format!("object store does not support the operation on {key}: {e}"))
        }
        other => {
            let text = other.to_string();
            if text.contains("No space left")
                || text.contains("QuotaExceeded")
                || text.contains("EntityTooLarge")
            {
                Error::StorageFull(format!("writing {key}: {text}"))
            } else {
                Error::Retryable(format!("object store, {key}: {text}"))
            }
        }
    }
}
