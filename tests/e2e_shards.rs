//! End to end: two operators split one fleet with `--selector` (issue 10, "Scale-out"). Each
//! refreshes only its shard (its log and its `/metrics` name only its credentials), and a
//! credential relabelled from shard `a` to shard `b` is handed over without a double refresh:
//! after the move only `b` refreshes it, every refresh is exactly one token call, and the
//! stand-in saw no refresh-token reuse, within the leeway or after it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;
use testbed::atlassian::Account;

const ACME: &str = "acme.atlassian.net";
/// Access tokens live this long; with `refreshBefore: 5s` each credential refreshes about every
/// 10 s.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15);
/// Longer than a few refresh rounds.
const ROUND_WAIT: Duration = Duration::from_secs(60);

/// Names the operator logged "renewed the access token" for, with how often.
fn renewals(operator: &Operator) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in operator.logs().lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if entry["message"] == "renewed the access token"
            && let Some(name) = entry["name"].as_str()
        {
            *counts.entry(name.to_string()).or_default() += 1;
        }
    }
    counts
}

/// Names with a time-to-expiry series on the operator's `/metrics`.
async fn tracked(operator: &Operator) -> BTreeSet<String> {
    operator
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("confluence_auth_access_token_expiry_seconds{"))
        .filter_map(|l| {
            let start = l.find("name=\"")? + "name=\"".len();
            Some(l[start..start + l[start..].find('"')?].to_string())
        })
        .collect()
}

fn last_refresh(obj: &impl CredentialResource) -> Option<jiff::Timestamp> {
    obj.credential()?.last_refresh_time.as_ref().map(|t| t.0)
}

async fn create_user(client: &Client, ns: &str, name: &str, shard: &str) {
    let api: Api<ConfluenceUserAuth> = Api::namespaced(client.clone(), ns);
    let obj = serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceUserAuth",
        "metadata": {"name": name, "labels": {"shard": shard}},
        "spec": {"installationRef": {"name": "acme"}, "userId": format!("user_{name}")},
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_refresh_only_their_own_and_a_relabel_hands_over_without_a_double_refresh() {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace("shards").await;
    env.atlassian.set_access_token_lifetime(TOKEN_LIFETIME);
    let shard_a = Operator::spawn_with(
        &env,
        &env.operator_ns,
        &["--selector", "shard=a", "--lease-name", "cao-shard-a"],
    );
    let shard_b = Operator::spawn_with(
        &env,
        &env.operator_ns,
        &["--selector", "shard=b", "--lease-name", "cao-shard-b"],
    );
    shard_a.ready().await;
    shard_b.ready().await;
    env.apply_examples(&ns, &["client-secret.yaml"]);
    let refreshes_before = env.atlassian.counters().grants("refresh_token");

    // The installation in shard a; two users in each shard (users of b depend on a's
    // installation: a shard only splits who refreshes).
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let cfi: ConfluenceInstallation = serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceInstallation",
        "metadata": {"name": "acme", "labels": {"shard": "a"}},
        "spec": {
            "clientId": "demo-client",
            "clientSecretRef": {"name": "atlassian-app", "key": "client-secret"},
            "scopes": ["offline_access", "read:me", "read:confluence-content.all"],
            "site": ACME,
            "refreshBefore": "5s",
            "healthCheckInterval": "10m",
        },
    }))
    .unwrap();
    installations.create(&PostParams::default(), &cfi).await.unwrap();
    consent(&env, &installations, "acme", ADA).await;
    let users: Api<ConfluenceUserAuth> = Api::namespaced(env.client.clone(), &ns);
    let shards = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")];
    for (i, (name, shard)) in shards.iter().enumerate() {
        create_user(&env.client, &ns, name, shard).await;
        let account = format!("557058:eeeeeeee-0000-4000-8000-{i:012}");
        env.atlassian.add_account(Account {
            account_id: account.clone(),
            name: format!("Shard user {name}"),
            email: format!("{name}@acme.example"),
            sites: vec![ACME.into()],
        });
        consent(&env, &users, name, &account).await;
    }

    // Every credential refreshes, each by its own shard only.
    within(ROUND_WAIT, "a refresh of every credential", || async {
        let (a, b) = (renewals(&shard_a), renewals(&shard_b));
        let refreshed: BTreeSet<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
        (refreshed == BTreeSet::from(["acme", "a1", "a2", "b1", "b2"])).then_some(())
    })
    .await;
    let (a, b) = (renewals(&shard_a), renewals(&shard_b));
    assert!(
        a.keys().all(|n| ["acme", "a1", "a2"].contains(&n.as_str())),
        "shard a refreshed {a:?}"
    );
    assert!(
        b.keys().all(|n| ["b1", "b2"].contains(&n.as_str())),
        "shard b refreshed {b:?}"
    );
    assert_eq!(
        tracked(&shard_a).await,
        BTreeSet::from(["acme".to_string(), "a1".into(), "a2".into()])
    );
    assert_eq!(tracked(&shard_b).await, BTreeSet::from(["b1".to_string(), "b2".into()]));
    // The Secrets carry their credential's shard, so each shard's Secret watch selects them.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    for (name, shard) in [("a1", "a"), ("b1", "b")] {
        for secret in [format!("{name}-vault"), format!("{name}-token")] {
            assert_eq!(secrets.get(&secret).await.unwrap().labels()["shard"], shard, "{secret}");
        }
    }

    // Hand a1 over right after a refresh (none in flight): relabel it into shard b.
    let before = last_refresh(&users.get("a1").await.unwrap());
    within(ROUND_WAIT, "the next refresh of a1", || async {
        (last_refresh(&users.get("a1").await.ok()?) != before).then_some(())
    })
    .await;
    let a_before_move = renewals(&shard_a).get("a1").copied().unwrap_or(0);
    users
        .patch(
            "a1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"shard": "b"}}})),
        )
        .await
        .unwrap();
    // Shard b takes it over and refreshes it twice; shard a never again.
    within(ROUND_WAIT, "two refreshes of a1 by shard b", || async {
        (renewals(&shard_b).get("a1").copied().unwrap_or(0) >= 2).then_some(())
    })
    .await;
    assert_eq!(
        renewals(&shard_a).get("a1").copied().unwrap_or(0),
        a_before_move,
        "shard a refreshed a1 after it left its shard"
    );
    // Its Secrets follow it into shard b (rewritten by b's refresh), and shard a forgets it.
    for secret in ["a1-vault", "a1-token"] {
        assert_eq!(secrets.get(secret).await.unwrap().labels()["shard"], "b", "{secret}");
    }
    within(WAIT, "shard a to drop a1 from its metrics", || async {
        (!tracked(&shard_a).await.contains("a1")).then_some(())
    })
    .await;
    assert!(tracked(&shard_b).await.contains("a1"));

    // Every refresh was exactly one token call, and no refresh token was ever sent twice.
    let mut shard_a = shard_a;
    let mut shard_b = shard_b;
    shard_a.stop();
    shard_b.stop();
    let logged: usize = renewals(&shard_a).values().chain(renewals(&shard_b).values()).sum();
    let token_calls = env.atlassian.counters().grants("refresh_token") - refreshes_before;
    assert_eq!(token_calls as usize, logged, "one token call per refresh");
    let reuse = env.atlassian.reuse_counters();
    assert_eq!((reuse.within_leeway, reuse.after_leeway), (0, 0), "{reuse:?}");
    let logs = shard_a.logs() + &shard_b.logs();
    for secret in env.atlassian.issued_secrets() {
        assert!(!logs.contains(&secret.value), "a {:?} leaked into a log", secret.kind);
    }
}
