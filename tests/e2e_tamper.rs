//! Tamper and loss (issue 10): someone with rights in a namespace (or over the operator's keys)
//! breaks what the operator stored, and the operator notices, says so with a named reason in a
//! condition and an Event, repairs what the vault allows, decrypts nothing for the wrong owner,
//! and keeps running for everyone else. One operator (restarted for the key cases), one
//! namespace, one resource per case; a leak scan at the end.
//!
//! | case | expected |
//! |---|---|
//! | a flipped vault byte | `Ready=False`, reason `VaultUnreadable`, Event; token Secret untouched |
//! | a deleted vault Secret | `Ready`/`Authorized=False`, reason `VaultMissing`, Event, a new link; consenting again recovers (`VaultRestored`) |
//! | a deleted token Secret | rewritten from the vault (same token), Event `TokenSecretRestored` |
//! | an edited token Secret | the same |
//! | a token Secret hand-edited (extra key, other fields changed) | rewritten to exactly the vault's data, Event |
//! | a vault copied into another resource's vault Secret | that resource `VaultUnreadable` (AAD binding), its token Secret keeps its own token; the source is unaffected |
//! | arbitrary callback queries | a clean 4xx page each, never a 5xx |
//! | a replaced keys Secret (restart) | every vault `VaultUnreadable`, the operator keeps running and reconciling |
//! | a deleted keys Secret (restart) | the operator refuses to start, naming the fix, and mints no key |
//! | the keys Secret restored (restart) | everything readable is Ready again without a new consent |
//! | a token Secret edited while no operator ran | restored by the next operator, Event `TokenSecretRestored` |

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use confluence_auth_operator::crd::conditions;
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use confluence_auth_operator::vault::KeyRing;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use proptest::strategy::{Strategy, ValueTree};
use support::*;

const KEYS: &str = "confluence-auth-operator-keys";

fn spawn(env: &Env) -> Operator {
    Operator::spawn_with(env, OPERATOR_NS, &["--lease-duration", "6s"])
}

/// Opens the current link as `account`, keeps the page for the leak scan, waits for Ready.
async fn consent<K: CredentialResource>(env: &Env, api: &Api<K>, name: &str, account: &str, pages: &mut Vec<String>) {
    let link = link_of(api, name).await;
    env.atlassian.consent_as(account);
    let page = Browser::new().authorize(&link).await;
    assert_eq!(page.status, 200, "{name}: {}", page.body);
    pages.push(page.body);
    ready(api, name).await;
}

/// The data of a Secret, as text.
async fn data(secrets: &Api<Secret>, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let secret = secrets.get_opt(name).await.unwrap()?;
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    )
}

async fn set_data(secrets: &Api<Secret>, name: &str, entries: BTreeMap<String, Vec<u8>>) {
    let mut secret = secrets.get(name).await.unwrap();
    secret.data = Some(entries.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    secrets.replace(name, &PostParams::default(), &secret).await.unwrap();
}

/// Waits until `name` has condition `type_` False with `reason`; returns its message.
async fn condition_with<K: CredentialResource>(api: &Api<K>, name: &str, type_: &str, reason: &str) -> String {
    eventually(&format!("{name}: {type_}=False with reason {reason}"), || async {
        let obj = api.get(name).await.ok()?;
        let c = conditions::find(&obj.credential()?.conditions, type_)?;
        (c.reason == reason && c.status == "False").then(|| c.message.clone())
    })
    .await
}

/// Waits for an Event about `name` with `reason`; returns its note.
async fn event(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually(&format!("an Event {reason} about {name}"), || async {
        api.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .map(|e| e.note.unwrap_or_default())
    })
    .await
}

fn phase<K: CredentialResource>(obj: &K) -> Option<Phase> {
    obj.credential().and_then(|s| s.phase)
}

/// Arbitrary query strings for `/oauth/callback`, from proptest's generator (seeded per run).
fn arbitrary_queries(n: usize) -> Vec<String> {
    let strategy = proptest::prop_oneof![
        ".{0,300}",
        "(code=[^&]{0,40}&)?state=[A-Za-z0-9_%-]{0,400}(&error=[a-z_]{0,20})?",
        "state=AQ[A-Za-z0-9_-]{60,200}&code=atl_code_[a-z0-9]{8}",
        "[%&=a-z0-9]{0,200}",
    ];
    let mut runner = proptest::test_runner::TestRunner::default();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_and_loss_are_detected_reported_and_repaired() {
    let env = Env::start().await;
    env.ensure_namespace(OPERATOR_NS).await;
    let ns = env.namespace("tamper").await;
    let mut operator = spawn(&env);
    operator.ready().await;
    let client = env.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let keys_api: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NS);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(client.clone(), &ns);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(client.clone(), &ns);
    let mut pages = Vec::new();
    let mut old_logs = Vec::new();

    env.apply_examples(&ns, &["client-secret.yaml", "installation.yaml"]);
    consent(&env, &installations, "acme", ADA, &mut pages).await;
    // One bystander refreshes every ~25 s throughout: the operator must keep serving it.
    env.atlassian.set_access_token_lifetime(Duration::from_secs(40));
    create_user(&client, &ns, "bystander").await;
    consent(
        &env,
        &users,
        "bystander",
        &acme_account(&env, "eeeeeeee", "Tamper User", 0),
        &mut pages,
    )
    .await;
    env.atlassian.set_access_token_lifetime(Duration::from_secs(3600));
    let cases = ["flip", "novault", "notoken", "edited", "handedit", "source", "copy"];
    for (i, name) in cases.iter().enumerate() {
        create_user(&client, &ns, name).await;
        consent(
            &env,
            &users,
            name,
            &acme_account(&env, "eeeeeeee", "Tamper User", i + 1),
            &mut pages,
        )
        .await;
    }
    let mut tokens = BTreeMap::new();
    for name in cases {
        tokens.insert(name, data(&secrets, &format!("{name}-token")).await.unwrap());
    }

    // A flipped vault byte: unreadable, reported, the token Secret left as it was.
    let mut vault = data(&secrets, "flip-vault").await.unwrap();
    let envelope = vault.get_mut("envelope").unwrap();
    let middle = envelope.len() / 2;
    envelope[middle] ^= 0x20;
    set_data(&secrets, "flip-vault", vault).await;
    let message = condition_with(&users, "flip", conditions::READY, "VaultUnreadable").await;
    assert!(message.contains("does not decrypt"), "{message}");
    assert_eq!(phase(&users.get("flip").await.unwrap()), Some(Phase::Failed));
    event(&client, &ns, "flip", "VaultUnreadable").await;
    assert_eq!(data(&secrets, "flip-token").await.as_ref(), Some(&tokens["flip"]));

    // A deleted vault Secret: the grant is gone; named, announced, and a link to consent again.
    // Restoring the Secret from a backup brings the grant back without a consent.
    let vault_backup = secrets.get("novault-vault").await.unwrap();
    secrets.delete("novault-vault", &DeleteParams::default()).await.unwrap();
    let message = condition_with(&users, "novault", conditions::READY, "VaultMissing").await;
    assert!(message.contains("\"novault-vault\" was deleted"), "{message}");
    condition_with(&users, "novault", conditions::AUTHORIZED, "VaultMissing").await;
    event(&client, &ns, "novault", "VaultMissing").await;
    let obj = users.get("novault").await.unwrap();
    assert_eq!(phase(&obj), Some(Phase::AwaitingAuthorization));
    assert!(
        obj.credential().unwrap().authorization_url.is_some(),
        "no link to consent again"
    );
    let codes = env.atlassian.counters().grants("authorization_code");
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: vault_backup.metadata.name.clone(),
                    labels: vault_backup.metadata.labels.clone(),
                    owner_references: vault_backup.metadata.owner_references.clone(),
                    ..Default::default()
                },
                type_: vault_backup.type_.clone(),
                data: vault_backup.data.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    ready(&users, "novault").await;
    event(&client, &ns, "novault", "VaultRestored").await;
    assert_eq!(env.atlassian.counters().grants("authorization_code"), codes);

    // A deleted token Secret comes back with the vault's token.
    secrets.delete("notoken-token", &DeleteParams::default()).await.unwrap();
    let restored = eventually("notoken-token to come back", || async {
        data(&secrets, "notoken-token").await
    })
    .await;
    assert_eq!(restored, tokens["notoken"]);
    let note = event(&client, &ns, "notoken", "TokenSecretRestored").await;
    assert!(note.contains("was deleted"), "{note}");

    // An edited token Secret (a forged access token) is put back.
    let mut forged = tokens["edited"].clone();
    forged.insert("access_token".into(), b"forged-token".to_vec());
    set_data(&secrets, "edited-token", forged).await;
    eventually("edited-token to hold the vault's token again", || async {
        (data(&secrets, "edited-token").await.as_ref() == Some(&tokens["edited"])).then_some(())
    })
    .await;
    let note = event(&client, &ns, "edited", "TokenSecretRestored").await;
    assert!(note.contains("was edited"), "{note}");

    // A user's hand edit: an extra key, another API base, a later expiry.
    let mut hand = tokens["handedit"].clone();
    hand.insert("note".into(), b"added by hand".to_vec());
    hand.insert("api_base_url".into(), b"https://elsewhere.example".to_vec());
    hand.insert("expires_at".into(), b"2099-01-01T00:00:00Z".to_vec());
    set_data(&secrets, "handedit-token", hand).await;
    eventually("handedit-token to hold exactly the vault's data again", || async {
        (data(&secrets, "handedit-token").await.as_ref() == Some(&tokens["handedit"])).then_some(())
    })
    .await;
    event(&client, &ns, "handedit", "TokenSecretRestored").await;

    // Another resource's vault copied in: it does not open (AAD), nothing of the source's is
    // decrypted for the copy, and the source is unaffected.
    let source = data(&secrets, "source-vault").await.unwrap();
    set_data(&secrets, "copy-vault", source).await;
    condition_with(&users, "copy", conditions::READY, "VaultUnreadable").await;
    event(&client, &ns, "copy", "VaultUnreadable").await;
    assert_eq!(data(&secrets, "copy-token").await.as_ref(), Some(&tokens["copy"]));
    assert_ne!(tokens["copy"]["access_token"], tokens["source"]["access_token"]);
    ready(&users, "source").await;
    assert_eq!(data(&secrets, "source-token").await.as_ref(), Some(&tokens["source"]));

    // Arbitrary callback queries: a clean 4xx page each.
    let mut browser = Browser::new();
    for query in arbitrary_queries(64) {
        let mut url = url::Url::parse(&format!("{}/oauth/callback", operator.public_url)).unwrap();
        url.set_query(Some(&query)); // percent-encodes what a URL cannot carry raw
        let page = browser.get(url.as_str()).await;
        assert!(
            (400..500).contains(&page.status),
            "{query:?} answered {}: {}",
            page.status,
            page.body
        );
        pages.push(page.body);
    }

    // No crash loop: the same process runs, serves, refreshes the bystander and links a newcomer.
    assert!(
        operator.exited().is_none(),
        "the operator died; its log:\n{}",
        operator.logs()
    );
    eventually("the bystander to refresh", || async {
        let obj = users.get("bystander").await.ok()?;
        obj.credential()?.last_refresh_time.as_ref().map(|_| ())
    })
    .await;
    ready(&users, "bystander").await;
    create_user(&client, &ns, "newcomer").await;
    link_of(&users, "newcomer").await;

    // A replaced keys Secret (a new key under the same id), then a restart: every vault is
    // unreadable and says so; the operator keeps running and reconciling.
    let backup = keys_api.get(KEYS).await.unwrap();
    let mut replaced = backup.clone();
    let impostor_keys = KeyRing::generate("1").unwrap().to_secret_data();
    replaced.data = Some(impostor_keys.clone());
    keys_api.replace(KEYS, &PostParams::default(), &replaced).await.unwrap();
    let codes_before = env.atlassian.counters().grants("authorization_code");
    operator.stop();
    old_logs.push(operator.logs());
    operator = spawn(&env);
    operator.ready().await;
    condition_with(&installations, "acme", conditions::READY, "VaultUnreadable").await;
    condition_with(&users, "bystander", conditions::READY, "VaultUnreadable").await;
    event(&client, &ns, "acme", "VaultUnreadable").await;
    assert!(
        operator.exited().is_none(),
        "the operator died; its log:\n{}",
        operator.logs()
    );
    create_user(&client, &ns, "latecomer").await;
    eventually("the latecomer to be reconciled", || async {
        let obj = users.get("latecomer").await.ok()?;
        obj.credential().and_then(|s| s.phase).map(|_| ())
    })
    .await;

    // A deleted keys Secret, then a restart: the operator refuses to start over vaults it
    // cannot open, says how to fix it, and mints no key that would orphan them for good.
    keys_api.delete(KEYS, &DeleteParams::default()).await.unwrap();
    operator.stop();
    old_logs.push(operator.logs());
    operator = Operator::spawn_expecting_refusal(&env, OPERATOR_NS, &["--lease-duration", "6s"]);
    let status = operator.wait_exit().await;
    assert!(!status.success(), "{status}");
    let log = operator.logs();
    assert!(log.contains("Restore the keys Secret from your backup"), "{log}");
    assert!(keys_api.get_opt(KEYS).await.unwrap().is_none(), "a key was minted");
    old_logs.push(log);

    // While no operator runs: a forged access token in a token Secret. The next operator finds
    // that Secret at another resourceVersion than the status records, and restores it.
    let mut forged = tokens["source"].clone();
    forged.insert("access_token".into(), b"forged-while-stopped".to_vec());
    set_data(&secrets, "source-token", forged).await;

    // The backup restored: everything whose vault is intact is Ready again, with no consent.
    keys_api
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(KEYS.into()),
                    labels: backup.metadata.labels.clone(),
                    ..Default::default()
                },
                data: backup.data.clone(),
                type_: backup.type_.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    operator = spawn(&env);
    operator.ready().await;
    ready(&installations, "acme").await;
    for name in ["bystander", "novault", "notoken", "edited", "handedit", "source"] {
        ready(&users, name).await;
    }
    event(&client, &ns, "acme", "VaultReadable").await;
    eventually(
        "source-token, edited while stopped, to hold the vault's token again",
        || async { (data(&secrets, "source-token").await.as_ref() == Some(&tokens["source"])).then_some(()) },
    )
    .await;
    let note = event(&client, &ns, "source", "TokenSecretRestored").await;
    assert!(note.contains("was edited"), "{note}");
    assert_eq!(
        env.atlassian.counters().grants("authorization_code"),
        codes_before,
        "recovering from the key loss took a new consent"
    );
    // The genuinely broken vaults stay reported.
    for name in ["flip", "copy"] {
        condition_with(&users, name, conditions::READY, "VaultUnreadable").await;
    }

    // No false alarm: a token Secret nobody touched was never "restored" (a first consent
    // writes the vault before the token Secret, which must not look like a deletion).
    let all_events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let restored: Vec<String> = all_events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("TokenSecretRestored"))
        .filter_map(|e| e.regarding.and_then(|r| r.name))
        .filter(|name| !["notoken", "edited", "handedit", "source"].contains(&name.as_str()))
        .collect();
    assert!(
        restored.is_empty(),
        "TokenSecretRestored about untouched resources: {restored:?}"
    );

    // Nothing secret anywhere the operator publishes.
    let mut haystacks = leaks::Haystacks::new();
    for (i, log) in old_logs.into_iter().enumerate() {
        haystacks.add(format!("log of operator run {i}"), log);
    }
    haystacks.add_operator(&operator).await;
    haystacks.add_cluster(&env).await;
    for (i, page) in pages.into_iter().enumerate() {
        haystacks.add(format!("page #{i}"), page);
    }
    let mut needles = leaks::stand_in_secrets(&env);
    needles.extend(leaks::master_keys(&env, OPERATOR_NS, KEYS).await);
    for (entry, key) in impostor_keys.iter().filter(|(k, _)| k.starts_with("key-")) {
        needles.push(leaks::Needle {
            what: format!("the impostor master key {entry}"),
            value: hex::encode(&key.0),
        });
    }
    haystacks.assert_clean(&needles);
    // The scan finds what it looks for: a token Secret's access token is one of the needles.
    let mut control = leaks::Haystacks::new();
    let token = String::from_utf8(tokens["source"]["access_token"].clone()).unwrap();
    control.add("the source token Secret", format!("access_token={token}"));
    assert_eq!(control.leaks(&needles).len(), 1, "the leak scan missed a planted token");
    eprintln!("leak scan: {} secrets in {} texts", needles.len(), haystacks.len());
}
