//! The mTLS etcd of the test world: client certificates are required, and the Maintenance
//! snapshot stream ends with the sha256 of the database, which the etcd job relies on.

use cairn_tests::{etcd, unique};
use etcd_client::Client;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn mtls_etcd_accepts_a_client_certificate() {
    let mut client = etcd::client().await;
    let key = unique("/cairn-test/world");
    client.put(key.as_str(), "value", None).await.expect("put over mTLS");
    let got = client.get(key.as_str(), None).await.expect("get over mTLS");
    assert_eq!(got.kvs()[0].value(), b"value");
    client.delete(key.as_str(), None).await.unwrap();
}

#[tokio::test]
async fn mtls_etcd_rejects_a_connection_without_client_certificate() {
    let result = async {
        let mut client = Client::connect(etcd::endpoints(), Some(etcd::tls_options(false))).await?;
        client.get("/anything", None).await
    }
    .await;
    let err = result.expect_err("etcd must refuse a client without a certificate");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("certificate")
            || text.contains("transport")
            || text.contains("tls")
            || text.contains("connect")
            || text.contains("handshake")
            || text.contains("broken pipe"),
        "unexpected error for a missing client cert: {err}"
    );
}

#[tokio::test]
async fn maintenance_snapshot_streams_with_a_matching_sha256_trailer() {
    let mut client = etcd::client().await;
    let prefix = unique("/cairn-test/snap");
    for i in 0..200 {
        client.put(format!("{prefix}/{i:04}"), vec![b'x'; 1024], None).await.unwrap();
    }
    let mut stream = client.maintenance_client().snapshot().await.expect("open snapshot stream");
    let mut data = Vec::new();
    while let Some(msg) = stream.message().await.expect("snapshot stream") {
        data.extend_from_slice(msg.blob());
    }
    assert!(data.len() > 200 * 1024, "snapshot is only {} bytes", data.len());
    let (db, trailer) = data.split_at(data.len() - 32);
    assert_eq!(Sha256::digest(db).as_slice(), trailer, "trailing sha256 must cover the db bytes");
    // A bolt database starts with its meta page: magic 0xED0CDAED at offset 16 (little endian).
    assert_eq!(&db[16..20], &0xED0C_DAEDu32.to_le_bytes());
    client
        .delete(prefix.as_str(), Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
}
