//! Secret writes over an owned-Secret cache that is behind the API server (`store::put_secret`
//! writes on the cached resourceVersion first): a Secret deleted meanwhile is created again, one
//! changed meanwhile is written on a fresh read, and one taken over meanwhile by someone else is
//! a `SecretConflict`, never overwritten.

mod support;

use std::collections::BTreeMap;

use confluence_auth_operator::crd::ConfluenceUserAuth;
use confluence_auth_operator::known::Known;
use confluence_auth_operator::store::{self, StoreError};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PartialObjectMeta, PostParams};
use kube::runtime::{reflector, watcher};
use support::*;

fn data(token: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([("access_token".to_string(), ByteString(token.as_bytes().to_vec()))])
}

/// A `Known` whose Secret cache holds `secret`'s metadata as it is now, and never hears more.
async fn frozen_cache(secrets: &Api<Secret>, ns: &str, name: &str) -> Known {
    let (cache, mut writer) = reflector::store::<PartialObjectMeta<Secret>>();
    let meta = secrets.get_metadata(name).await.unwrap();
    writer.apply_watcher_event(&watcher::Event::InitApply(meta));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let known = Known::default();
    known.add_secrets(cache);
    assert!(known.synced() && known.secret(ns, name).is_some());
    known
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_a_stale_cache_recreate_retry_and_never_take_over() {
    let env = Env::start().await;
    let ns = env.namespace("store-cache").await;
    let users: Api<ConfluenceUserAuth> = create_user(&env.client, &ns, "u1").await;
    let owner = users.get("u1").await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let write = |known: Known, token: &'static str| {
        let (client, owner) = (env.client.clone(), owner.clone());
        async move { store::write_token_secret(&client, &known, &owner, "u1-token", data(token)).await }
    };
    let token_of = |secret: Secret| secret.data.unwrap()["access_token"].0.clone();

    // Deleted behind the cache's back: created again.
    write(Known::default(), "first").await.unwrap();
    let known = frozen_cache(&secrets, &ns, "u1-token").await;
    secrets.delete("u1-token", &DeleteParams::default()).await.unwrap();
    let put = write(known, "second").await.unwrap();
    assert_eq!(put.replaced, None, "created, not replaced");
    assert_eq!(token_of(secrets.get("u1-token").await.unwrap()), b"second");

    // Changed behind the cache's back (another replica's write): written on a fresh read.
    let known = frozen_cache(&secrets, &ns, "u1-token").await;
    let mut changed = secrets.get("u1-token").await.unwrap();
    changed.data = Some(data("someone else's"));
    let changed = secrets
        .replace("u1-token", &PostParams::default(), &changed)
        .await
        .unwrap();
    let put = write(known, "third").await.unwrap();
    assert_eq!(
        put.replaced, changed.metadata.resource_version,
        "replaced the current version"
    );
    assert_eq!(token_of(secrets.get("u1-token").await.unwrap()), b"third");

    // Taken over behind the cache's back (deleted, then created by someone else under the same
    // name): the cache still says it is ours, the API server does not; it is left alone.
    let known = frozen_cache(&secrets, &ns, "u1-token").await;
    secrets.delete("u1-token", &DeleteParams::default()).await.unwrap();
    let squatter = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("u1-token".into()),
            ..Default::default()
        },
        data: Some(data("squatter")),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &squatter).await.unwrap();
    let refused = write(known, "fourth").await;
    assert!(matches!(refused, Err(StoreError::SecretConflict(_))), "{refused:?}");
    assert_eq!(token_of(secrets.get("u1-token").await.unwrap()), b"squatter");
}
