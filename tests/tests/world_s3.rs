//! The S3 server of the test world behaves as AWS does where cairn relies on it: conditional
//! create is atomic under a race, If-Match rejects a stale ETag, listings paginate, multipart
//! uploads assemble.

use std::sync::Arc;

use bytes::Bytes;
use cairn_tests::{s3, unique};
use futures::{StreamExt, TryStreamExt};
use object_store::{
    Error as StoreError, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion, path::Path,
};

#[tokio::test]
async fn conditional_create_race_has_exactly_one_winner() {
    let store = Arc::new(s3::store());
    for trial in 0..5 {
        let key = Path::from(format!("{}/race-{trial}", unique("world-s3")));
        let attempts = (0..30).map(|i| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                store.put_opts(&key, PutPayload::from(format!("writer {i}")), opts).await
            })
        });
        let results = futures::future::join_all(attempts).await;
        let mut winners = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r.unwrap() {
                Ok(_) => winners.push(i),
                Err(StoreError::AlreadyExists { .. } | StoreError::Precondition { .. }) => {}
                Err(e) => panic!("unexpected error from a conditional create: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "trial {trial}: winners {winners:?}");
        let body = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(
            body,
            Bytes::from(format!("writer {}", winners[0])),
            "the winner's bytes are stored"
        );
    }
}

#[tokio::test]
async fn if_match_rejects_a_stale_etag() {
    let store = s3::store();
    let key = Path::from(format!("{}/cas", unique("world-s3")));
    let first = store.put(&key, PutPayload::from_static(b"v1")).await.unwrap();
    let v1 = UpdateVersion { e_tag: first.e_tag.clone(), version: None };
    let update = PutOptions { mode: PutMode::Update(v1.clone()), ..Default::default() };
    let second = store
        .put_opts(&key, PutPayload::from_static(b"v2"), update)
        .await
        .expect("fresh ETag wins");
    assert_ne!(first.e_tag, second.e_tag);
    let stale = PutOptions { mode: PutMode::Update(v1), ..Default::default() };
    match store.put_opts(&key, PutPayload::from_static(b"v3"), stale).await {
        Err(StoreError::Precondition { .. }) => {}
        other => panic!("a stale ETag must be refused with 412, got {other:?}"),
    }
    assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), Bytes::from_static(b"v2"));
}

#[tokio::test]
async fn listing_paginates_past_one_thousand_keys() {
    let store = Arc::new(s3::store());
    let prefix = unique("world-s3-list");
    futures::stream::iter(0..1005)
        .map(|i| {
            let store = store.clone();
            let key = Path::from(format!("{prefix}/k{i:05}"));
            async move { store.put(&key, PutPayload::from_static(b"x")).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("put 1005 keys");
    // S3 returns at most 1000 keys a page, so all 1005 arrive only if the client follows the
    // continuation token and the server honours it.
    let mut keys: Vec<String> = store
        .list(Some(&Path::from(prefix.as_str())))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 1005);
    assert_eq!(keys[0], format!("{prefix}/k00000"));
    assert_eq!(keys[1004], format!("{prefix}/k01004"));
}

#[tokio::test]
async fn multipart_upload_assembles_parts_in_order() {
    let store = s3::store();
    let key = Path::from(format!("{}/multipart", unique("world-s3")));
    let part = |b: u8| vec![b; 5 * 1024 * 1024];
    let mut upload = store.put_multipart(&key).await.expect("start multipart");
    for b in [1u8, 2, 3] {
        upload.put_part(PutPayload::from(part(b))).await.expect("upload part");
    }
    upload.complete().await.expect("complete multipart");
    let body = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), 15 * 1024 * 1024);
    assert_eq!(body[0], 1);
    assert_eq!(body[5 * 1024 * 1024], 2);
    assert_eq!(body[15 * 1024 * 1024 - 1], 3);
}
