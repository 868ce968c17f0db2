//! The integration suite's view of the test world started by `tests/env/up`.
//!
//! Every test reads the world from the environment variables `up` prints, and isolates
//! itself (unique namespace, bucket prefix, etcd key prefix) so that tests run in parallel
//! against one world. A missing variable is a failure that says how to start the world,
//! never a silent skip.

use std::path::PathBuf;

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

    /// The restricted identity's user name, as RBAC subjects name it.
    pub const RESTRICTED_USER: &str = "cairn-restricted";
}

pub mod s3 {
    use super::env;
    use object_store::aws::{AmazonS3, AmazonS3Builder};

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

    use cairn_shared::repo::{
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
        let identity = age::x25519::Identity::generate();
        let recipient = KeyRecipient::parse(&identity.to_public().to_string()).unwrap();
        let opts = InitOptions { pack_size: 1 << 20, ..Default::default() };
        let repo =
            Repository::init(Store::open(url).unwrap(), &[recipient], opts).await.expect("init");
        TestRepo { url: url.to_string(), identity, write_key: repo.write_key().clone() }
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
