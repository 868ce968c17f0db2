//! The integration suite's view of the test world started by `tests/env/up`.
//!
//! Every test reads the world from the environment variables `up` prints, and isolates
//! itself (unique namespace, bucket prefix, etcd key prefix) so that tests run in parallel
//! against one world. A missing variable is a failure that says how to start the world,
//! never a silent skip.

use std::path::PathBuf;

pub mod faults;
pub mod node;
pub mod trees;

/// Reads a variable the world exports, panicking with directions when it is absent.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the integration suite needs the test world. Run `tests/run` \
             (or `eval \"$(tests/env/up)\"` and then `cargo test -p cairn-tests`)."
        ),
    }
}

/// A name unique to this test run and call, usable as a namespace, prefix or key part.
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}-{}-{n:08x}", std::process::id())
}

/// Copy a directory tree (fixtures into scratch space).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Path to a binary of the world (`kubectl`, `etcdctl`, `etcdutl`, ...).
pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(env("CAIRN_TEST_BIN")).join(name)
}

/// A binary of this workspace (`cairn`, ...), built by `tests/run` next to the test
/// executables.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` (tests/run does)",
        bin.display()
    );
    bin
}

/// The read-only fixtures handed to the project (`../shared/fixtures` beside the checkout;
/// `CAIRN_SHARED_FIXTURES` overrides, for a clone elsewhere).
pub fn shared_fixtures() -> PathBuf {
    if let Ok(d) = std::env::var("CAIRN_SHARED_FIXTURES") {
        return PathBuf::from(d);
    }
    let beside = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    for candidate in [beside, PathBuf::from("/work/shared/fixtures")] {
        if candidate.join("crds").is_dir() {
            return candidate;
        }
    }
    panic!(
        "the shared fixtures (third-party CRDs) are not beside the checkout: set \
         CAIRN_SHARED_FIXTURES to the directory holding crds/"
    )
}

pub mod etcd {
    use super::env;
    use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

    /// Options for the mTLS etcd, with or without the client certificate.
    pub fn tls_options(with_client_cert: bool) -> ConnectOptions {
        let ca = std::fs::read(env("CAIRN_TEST_ETCD_CACERT")).expect("read etcd CA");
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if with_client_cert {
            let cert = std::fs::read(env("CAIRN_TEST_ETCD_CERT")).expect("read etcd cert");
            let key = std::fs::read(env("CAIRN_TEST_ETCD_KEY")).expect("read etcd key");
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(30))
    }

    pub fn endpoints() -> Vec<String> {
        env("CAIRN_TEST_ETCD_ENDPOINTS").split(',').map(str::to_owned).collect()
    }

    pub async fn client() -> Client {
        Client::connect(endpoints(), Some(tls_options(true))).await.expect("connect to mTLS etcd")
    }
}

pub mod kube_world {
    use super::env;
    use kube::{Client, Config, config::KubeConfigOptions, config::Kubeconfig};

    async fn client_from(path: &str) -> Client {
        let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig to config");
        Client::try_from(cfg).expect("kube client")
    }

    /// Client with the admin identity (`system:masters`).
    pub async fn admin() -> Client {
        client_from(&env("KUBECONFIG")).await
    }

    /// Client with the identity that has no rights beyond what a test grants it.
    pub async fn restricted() -> Client {
        client_from(&env("CAIRN_TEST_KUBECONFIG_RESTRICTED")).await
    }

    /// Client with the admin identity on the world's second cluster: a separate, empty
    /// kube-apiserver (own etcd) that restore-into-a-new-cluster tests restore into.
    pub async fn second() -> Client {
        client_from(&env("CAIRN_TEST_KUBECONFIG_SECOND")).await
    }

    /// The restricted identity's user name, as RBAC subjects name it.
    pub const RESTRICTED_USER: &str = "cairn-restricted";
}

pub mod s3 {
    use super::env;
    use object_store::aws::{AmazonS3, AmazonS3Builder};

    /// The variables that reach the world's S3 server, as `up` exports them: what a pod needs
    /// in its environment (or a Secret) to open a repository there.
    pub const STORE_ENV: [&str; 5] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ALLOW_HTTP",
    ];

    /// [`STORE_ENV`] with this process's values.
    pub fn store_env() -> Vec<(&'static str, String)> {
        STORE_ENV.iter().map(|v| (*v, env(v))).collect()
    }

    /// A client for the world's bucket. Credentials and region come from the standard
    /// AWS variables that `up` exports.
    pub fn store() -> AmazonS3 {
        AmazonS3Builder::from_env()
            .with_endpoint(env("CAIRN_TEST_S3_ENDPOINT"))
            .with_bucket_name(env("CAIRN_TEST_S3_BUCKET"))
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("S3 client")
    }
}

pub mod repos {
    use std::sync::Arc;

    use cairn_core::repo::{
        Access, InitOptions, KeyRecipient, Repository, Store, Unlock, WriteKey,
    };

    /// A fresh repository URL on each backend the suite covers.
    pub fn backends(tmp: &std::path::Path) -> Vec<String> {
        vec![
            format!("memory://{}", super::unique("mem")),
            format!("file://{}", tmp.join("repo").display()),
            format!("s3://{}/{}", super::env("CAIRN_TEST_S3_BUCKET"), super::unique("repo")),
        ]
    }

    pub struct TestRepo {
        pub url: String,
        pub identity: age::x25519::Identity,
        pub write_key: WriteKey,
    }

    /// Small packs so that tests exercise many of them.
    pub async fn init(url: &str) -> TestRepo {
        init_on(Store::open_or_create(url).unwrap()).await
    }

    pub async fn init_on(store: Store) -> TestRepo {
        let identity = age::x25519::Identity::generate();
        let recipient = KeyRecipient::parse(&identity.to_public().to_string()).unwrap();
        let opts = InitOptions { pack_size: 1 << 20, ..Default::default() };
        let url = store.url().to_string();
        let repo = Repository::init(store, &[recipient], opts).await.expect("init");
        TestRepo { url, identity, write_key: repo.write_key().clone() }
    }

    impl TestRepo {
        pub fn identity_text(&self) -> String {
            use age::secrecy::ExposeSecret;
            self.identity.to_string().expose_secret().to_string()
        }

        pub async fn open_full(&self) -> Arc<Repository> {
            let unlock = Unlock::from_identity_text(&self.identity_text(), "test").unwrap();
            Arc::new(
                Repository::open(Store::open(&self.url).unwrap(), Access::Unlock(unlock))
                    .await
                    .unwrap(),
            )
        }

        /// Open on a given store (a fault-injecting wrapper, a clone): full or write access.
        pub async fn open_on(
            &self,
            store: Store,
            full: bool,
        ) -> cairn_core::Result<Arc<Repository>> {
            let access = if full {
                Access::Unlock(Unlock::from_identity_text(&self.identity_text(), "test").unwrap())
            } else {
                Access::Write(self.write_key.clone())
            };
            Repository::open(store, access).await.map(Arc::new)
        }

        pub async fn open_write(&self) -> Arc<Repository> {
            Arc::new(
                Repository::open(
                    Store::open(&self.url).unwrap(),
                    Access::Write(self.write_key.clone()),
                )
                .await
                .unwrap(),
            )
        }
    }
}

pub mod faulty {
    //! A store wrapper that lets the first N operations through and fails every later one,
    //! as a process that crashed after its N-th request would look to the store: nothing it
    //! does afterwards lands. Counting mode (no limit) measures how many operations a step
    //! makes, so a test can sweep N over all of them.

    use std::fmt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use futures::StreamExt;
    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
        PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };

    #[derive(Debug, Default)]
    pub struct Gate {
        /// Operations allowed before failing; u64::MAX counts without failing.
        pub limit: AtomicU64,
        pub ops: AtomicU64,
        /// Fail everything from now on (a test can pull the plug at any moment).
        pub down: AtomicBool,
        /// Refuse deletes the way a bucket with Object Lock retention does.
        pub deny_deletes: AtomicBool,
        /// Past the limit, hang (never answer) instead of failing.
        pub hang: AtomicBool,
        /// Fail every GET of a key under this prefix (listings still answer).
        pub fail_gets_under: std::sync::Mutex<Option<String>>,
        /// Delete this object just before serving its first GET: what a reader sees of a
        /// `forget` that ran between its listing and its fetch.
        pub vanish_on_get: std::sync::Mutex<Option<String>>,
    }

    impl Gate {
        fn pass(&self, what: &str, path: &Path) -> Result<()> {
            let n = self.ops.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) || n >= self.limit.load(Ordering::SeqCst) {
                return Err(object_store::Error::Generic {
                    store: "faulty",
                    source: format!("injected failure: {what} {path} (operation {n})").into(),
                });
            }
            Ok(())
        }

        /// Like `pass`, but a hanging gate never returns past the limit.
        async fn enter(&self, what: &str, path: &Path) -> Result<()> {
            let r = self.pass(what, path);
            if r.is_err() && self.hang.load(Ordering::SeqCst) {
                futures::future::pending::<()>().await;
            }
            r
        }

        pub fn ops(&self) -> u64 {
            self.ops.load(Ordering::SeqCst)
        }
    }

    #[derive(Debug)]
    pub struct Faulty {
        inner: Arc<dyn ObjectStore>,
        pub gate: Arc<Gate>,
    }

    impl Faulty {
        pub fn new(inner: Arc<dyn ObjectStore>, limit: u64) -> Faulty {
            let gate = Gate { limit: AtomicU64::new(limit), ..Default::default() };
            Faulty { inner, gate: Arc::new(gate) }
        }
    }

    impl fmt::Display for Faulty {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "Faulty({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Faulty {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> Result<PutResult> {
            self.gate.enter("put", location).await?;
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.gate.enter("put_multipart", location).await?;
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            self.gate.enter("get", location).await?;
            let failing = self.gate.fail_gets_under.lock().unwrap().clone();
            if failing.is_some_and(|p| location.as_ref().starts_with(&p)) {
                return Err(object_store::Error::Generic {
                    store: "faulty",
                    source: format!("injected read failure: {location}").into(),
                });
            }
            let vanish = {
                let mut v = self.gate.vanish_on_get.lock().unwrap();
                if v.as_deref() == Some(location.as_ref()) { v.take() } else { None }
            };
            if let Some(key) = vanish {
                object_store::ObjectStoreExt::delete(&self.inner, &Path::from(key)).await?;
            }
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            // One pass per object, so a sweep can stop between two deletes.
            let gate = self.gate.clone();
            let gated = locations.then(move |p| {
                let gate = gate.clone();
                async move {
                    let p = p?;
                    gate.enter("delete", &p).await?;
                    if gate.deny_deletes.load(Ordering::SeqCst) && !p.as_ref().starts_with("locks/")
                    {
                        return Err(object_store::Error::PermissionDenied {
                            path: p.to_string(),
                            source: "object is under retention (injected)".into(),
                        });
                    }
                    Ok(p)
                }
            });
            self.inner.delete_stream(gated.boxed())
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            match self.gate.pass("list", prefix.unwrap_or(&Path::from(""))) {
                Ok(()) => self.inner.list(prefix),
                Err(_) if self.gate.hang.load(Ordering::SeqCst) => {
                    futures::stream::pending().boxed()
                }
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.gate.enter("list", prefix.unwrap_or(&Path::from(""))).await?;
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.gate.enter("copy", to).await?;
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// A copy of every object of `from` in a new in-memory store (a fresh starting point
    /// for each step of a sweep).
    pub async fn clone_memory(from: &Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let to: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let metas: Vec<ObjectMeta> = from.list(None).map(|m| m.unwrap()).collect::<Vec<_>>().await;
        for m in metas {
            let bytes = from
                .get_opts(&m.location, GetOptions::default())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            to.put_opts(&m.location, bytes.into(), PutOptions::default()).await.unwrap();
        }
        to
    }
}

pub mod manifests {
    //! The manifest test world: the third-party CRDs installed once per process, and the
    //! fixture application (`tests/fixtures/manifests`) applied into a namespace.

    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::{bin, env, shared_fixtures};

    /// Run kubectl against a kubeconfig; panics with its output on failure.
    pub fn kubectl(kubeconfig: &str, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new(bin("kubectl"));
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    static CRDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Install the third-party CRDs (cert-manager, CSI snapshots) into a cluster, once per
    /// process and cluster, and wait until they are Established.
    pub fn install_crds(kubeconfig: &str) {
        let mut done = CRDS.lock().unwrap_or_else(|e| e.into_inner());
        if done.iter().any(|k| k == kubeconfig) {
            return;
        }
        let root = shared_fixtures().join("crds");
        let mut files: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in &files {
            let f = f.to_str().unwrap();
            kubectl(kubeconfig, &["apply", "--server-side", "--force-conflicts", "-f", f], None);
        }
        kubectl(
            kubeconfig,
            &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
            None,
        );
        done.push(kubeconfig.to_string());
    }

    /// The fixture files with `__NS__` replaced.
    pub fn fixture(name: &str, ns: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/manifests").join(name);
        std::fs::read_to_string(&p).unwrap().replace("__NS__", ns)
    }

    /// Apply the fixture application (and its custom resources) into namespace `ns` of the
    /// first cluster, and wait until the controllers have acted on it (ReplicaSet, default
    /// ServiceAccount), so that exports see owned objects too.
    pub fn apply_app(ns: &str) {
        let kc = env("KUBECONFIG");
        install_crds(&kc);
        kubectl(&kc, &["apply", "-f", "-"], Some(&fixture("app.yaml", ns)));
        kubectl(&kc, &["apply", "-f", "-"], Some(&fixture("custom.yaml", ns)));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rs = kubectl(&kc, &["get", "replicasets", "-n", ns, "-o", "name"], None);
            let sa = kubectl(&kc, &["get", "serviceaccounts", "-n", ns, "-o", "name"], None);
            if !rs.trim().is_empty() && sa.contains("serviceaccount/default") {
                return;
            }
            assert!(Instant::now() < deadline, "controllers did not act on {ns} within 60 s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Delete a namespace and wait until it is gone.
    pub fn delete_namespace(kubeconfig: &str, ns: &str) {
        kubectl(kubeconfig, &["delete", "namespace", ns, "--wait=true", "--timeout=180s"], None);
    }

    /// Remove the cluster-scoped objects the custom fixture makes for `ns`.
    pub fn delete_cluster_fixtures(kubeconfig: &str, ns: &str) {
        let issuer = format!("clusterissuer/{ns}-ca");
        let class = format!("volumesnapshotclass/{ns}-snapclass");
        kubectl(kubeconfig, &["delete", "--ignore-not-found", &issuer, &class], None);
    }

    /// Render `dir` (an overlay or the restore kustomization) into namespace `ns`, with
    /// cluster-scoped names suffixed so that parallel runs do not collide.
    pub fn render(dir: &Path, ns: &str, suffix: &str) -> String {
        let tmp = tempfile::tempdir().unwrap();
        // Kustomize takes bases only by relative path.
        let up = "../".repeat(tmp.path().components().count() - 1);
        let rel = format!("{up}{}", dir.display().to_string().trim_start_matches('/'));
        let k = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\n\
             nameSuffix: \"{suffix}\"\nresources:\n  - {rel}\n"
        );
        std::fs::write(tmp.path().join("kustomization.yaml"), k).unwrap();
        let out = kubectl(&env("KUBECONFIG"), &["kustomize", tmp.path().to_str().unwrap()], None);
        let mut docs = Vec::new();
        for doc in out.split("\n---\n") {
            let mut obj = cairn_kube::from_yaml(doc.as_bytes(), "kustomize output").unwrap();
            match obj["kind"].as_str() {
                // The test makes the namespace itself.
                Some("Namespace") => continue,
                // Kustomize renames neither the namespace nor the name of binding subjects.
                Some("ClusterRoleBinding" | "RoleBinding") => {
                    for subject in obj["subjects"].as_array_mut().unwrap() {
                        if subject["kind"] == "ServiceAccount" {
                            let name = format!("{}{suffix}", subject["name"].as_str().unwrap());
                            subject["name"] = name.into();
                            subject["namespace"] = ns.into();
                        }
                    }
                }
                // Applied for real on a cluster with a node: tests trigger the jobs themselves.
                Some("CronJob") => obj["spec"]["suspend"] = true.into(),
                _ => {}
            }
            docs.push(cairn_kube::to_yaml(&obj).unwrap());
        }
        docs.join("\n---\n")
    }

    /// `kubectl create secret generic NAME -n NS`, one key per entry (values may span lines:
    /// certificates, identities).
    pub fn create_secret(ns: &str, name: &str, data: &[(&str, String)]) {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["create".to_string(), "secret".into(), "generic".into(), name.into()];
        args.extend(["-n".to_string(), ns.to_string()]);
        for (key, value) in data {
            let file = dir.path().join(key);
            std::fs::write(&file, value).unwrap();
            args.push(format!("--from-file={key}={}", file.display()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(&env("KUBECONFIG"), &args, None);
    }

    /// A kubeconfig holding a token of ServiceAccount `ns/name`.
    pub fn token_kubeconfig(ns: &str, name: &str, dir: &Path) -> String {
        let kc = env("KUBECONFIG");
        let token = kubectl(&kc, &["create", "token", name, "-n", ns, "--duration=1h"], None);
        let admin: serde_json::Value =
            serde_json::from_str(&kubectl(&kc, &["config", "view", "--raw", "-o", "json"], None))
                .unwrap();
        let cluster = &admin["clusters"][0]["cluster"];
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            cluster["server"].as_str().unwrap(),
            cluster["certificate-authority-data"].as_str().unwrap(),
            token.trim()
        );
        let path = dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

/// The test world's Prometheus (`CAIRN_TEST_PROMETHEUS`), asked over its HTTP API.
pub mod prometheus {
    use std::collections::BTreeMap;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::env;

    /// One instant PromQL query: each series' labels and value.
    pub fn query(promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("{}/api/v1/query", env("CAIRN_TEST_PROMETHEUS")))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .expect("curl");
        let body: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{promql}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Wait (bounded) until a query returns something: a push through the collector takes a
    /// batch interval to arrive.
    pub fn wait_for(promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = query(promql);
            if !r.is_empty() {
                return r;
            }
            assert!(Instant::now() < deadline, "{promql}: nothing in Prometheus after 30 s");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The value of a query that must return exactly one series.
    pub fn one(promql: &str) -> f64 {
        let r = wait_for(promql);
        assert_eq!(r.len(), 1, "{promql}: {r:?}");
        r[0].1
    }
}
