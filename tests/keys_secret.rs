//! The master-key Secret on start-up (DESIGN §3, README "Back up and rotate the master keys"):
//! created when missing and no vault exists, never minted over existing vaults, and created
//! exactly once when replicas start together.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use confluence_auth_operator::operator::{StartError, load_or_create_keys};
use confluence_auth_operator::store::{MANAGER, VAULT_TYPE};
use confluence_auth_operator::vault::{Binding, KeyRing};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use support::{Env, WAIT};

const KEYS: &str = "confluence-auth-operator-keys";

const BINDING: Binding<'static> = Binding {
    namespace: "tenant",
    kind: "ConfluenceInstallation",
    name: "acme",
    uid: "0e9b3f4c-0000-4000-8000-000000000001",
};

/// A vault Secret as the operator writes it (type and managed-by label).
async fn put_vault(env: &Env, namespace: &str, name: &str) {
    env.ensure_namespace(namespace).await;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(VAULT_TYPE.to_string()),
        data: Some(BTreeMap::from([(
            "envelope".to_string(),
            ByteString(b"sealed".to_vec()),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(env.client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

async fn keys_secret(env: &Env, namespace: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(env.client.clone(), namespace)
        .get_opt(KEYS)
        .await
        .unwrap()
}

/// The namespaces a start searches for vaults: all of them (`[]`) on the testbed; on a real
/// cluster only this test's, since other tests' vaults live there too.
fn every_namespace(env: &Env, own: &[&String]) -> Vec<String> {
    if env.real_cluster() {
        own.iter().map(|n| n.to_string()).collect()
    } else {
        Vec::new()
    }
}

/// `true` when `reader` opens what `writer` sealed: both hold the same key.
fn same_key(writer: &KeyRing, reader: &KeyRing) -> bool {
    let envelope = writer.seal(&BINDING, b"token set").unwrap();
    reader.open(&BINDING, &envelope).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_when_absent_and_no_vault_exists_then_reused() {
    let env = Env::start().await;
    let ns = env.namespace("keys").await;
    let scope = every_namespace(&env, &[&ns]);

    let first = load_or_create_keys(&env.client, &ns, KEYS, &scope).await.unwrap();
    let stored = keys_secret(&env, &ns).await.expect("the keys Secret was created");
    let data = stored.data.clone().unwrap_or_default();
    let mut names: Vec<&str> = data.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["key-1", "primary"]);
    assert_eq!(data["key-1"].0.len(), 32, "a master key is 32 random bytes");
    assert_eq!(data["primary"].0, b"1");
    assert_eq!(
        stored.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some(MANAGER)
    );

    // A restart reads the same key and does not write the Secret again.
    let again = load_or_create_keys(&env.client, &ns, KEYS, &scope).await.unwrap();
    assert!(same_key(&first, &again), "a restart must read the stored key");
    let after = keys_secret(&env, &ns).await.unwrap();
    assert_eq!(after.metadata.resource_version, stored.metadata.resource_version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_mint_a_key_when_vaults_exist_and_the_key_is_gone() {
    let env = Env::start().await;
    let ns = env.namespace("keys").await;
    let tenant = env.namespace("tenant").await;
    put_vault(&env, &tenant, "acme-vault").await;
    put_vault(&env, &tenant, "alice-vault").await;

    let scope = every_namespace(&env, &[&ns, &tenant]);
    let error = load_or_create_keys(&env.client, &ns, KEYS, &scope).await.unwrap_err();
    assert!(
        matches!(&error, StartError::KeysLost { vaults: 2, example, .. } if *example == format!("{tenant}/acme-vault")),
        "{error:?}"
    );
    let message = error.to_string();
    for part in [
        format!("the keys Secret {ns}/{KEYS} is missing, but 2 vault Secret(s) sealed with its keys exist"),
        format!("(for example {tenant}/acme-vault)"),
        "refusing to create a new master key, which could never open them".to_string(),
        "Restore the keys Secret from your backup".to_string(),
        "and restart the operator".to_string(),
    ] {
        assert!(message.contains(&part), "missing {part:?} in: {message}");
    }
    assert!(keys_secret(&env, &ns).await.is_none(), "no key was minted");

    // Watching only the tenant namespace finds the same vaults.
    let scoped = load_or_create_keys(&env.client, &ns, KEYS, std::slice::from_ref(&tenant)).await;
    assert!(
        matches!(scoped, Err(StartError::KeysLost { vaults: 2, .. })),
        "{scoped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaults_outside_the_watched_namespaces_do_not_block_a_first_start() {
    let env = Env::start().await;
    let ns = env.namespace("keys").await;
    let elsewhere = env.namespace("other").await;
    let watched = env.namespace("watched").await;
    put_vault(&env, &elsewhere, "acme-vault").await;
    // A token Secret (same label, another type) in the watched namespace is not a vault.
    let token = Secret {
        metadata: ObjectMeta {
            name: Some("acme-token".into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("confluence-auth.dev/access-token".into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(env.client.clone(), &watched)
        .create(&PostParams::default(), &token)
        .await
        .unwrap();

    load_or_create_keys(&env.client, &ns, KEYS, &[watched]).await.unwrap();
    assert!(keys_secret(&env, &ns).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_end_with_one_key() {
    let env = Env::start().await;
    let ns = env.namespace("keys").await;
    let scope = every_namespace(&env, &[&ns]);
    // Every request waits 200 ms first, so all replicas see "missing" before any create lands
    // (a real cluster has no such knob: there only the outcome is checked).
    if let Some(api) = &env.api {
        api.faults().set_latency(Duration::from_millis(200));
    }
    let replicas: Vec<_> = (0..6)
        .map(|_| {
            let client = env.client.clone();
            let (ns, scope) = (ns.clone(), scope.clone());
            tokio::spawn(async move { load_or_create_keys(&client, &ns, KEYS, &scope).await })
        })
        .collect();
    let mut rings = Vec::new();
    for replica in replicas {
        rings.push(replica.await.unwrap().expect("every replica starts"));
    }
    if let Some(api) = &env.api {
        api.faults().clear();
        let creates: Vec<u16> = api
            .request_log()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == format!("/api/v1/namespaces/{ns}/secrets"))
            .map(|r| r.status)
            .collect();
        assert_eq!(creates.iter().filter(|s| **s == 201).count(), 1, "{creates:?}");
        assert!(
            creates.contains(&409),
            "the replicas did not race (creates: {creates:?})"
        );
    }
    let stored = keys_secret(&env, &ns).await.unwrap();
    assert_eq!(stored.data.unwrap_or_default().len(), 2, "one key and `primary`");
    for ring in &rings {
        assert!(same_key(&rings[0], ring), "every replica holds the one stored key");
    }
}

/// The operator binary itself refuses to start, and says why, on stderr and with a failure code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_binary_refuses_to_start_over_orphaned_vaults() {
    let env = Env::start().await;
    let ns = env.namespace("keys").await;
    let tenant = env.namespace("tenant").await;
    put_vault(&env, &tenant, "acme-vault").await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
        .args(["--log-format", "json", "run", "--public-url", "http://127.0.0.1:1"])
        .args(["--webhook-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .args(["--operator-namespace", &ns])
        // Only this test's tenant: on a real cluster other tests' vaults exist elsewhere.
        .args(["--namespaces", &tenant])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the operator kept running without its keys");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains(&format!(
            "the keys Secret {ns}/{KEYS} is missing, but 1 vault Secret(s) sealed with its keys exist (for example {tenant}/acme-vault)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Restore the keys Secret from your backup"), "{stderr}");
    assert!(keys_secret(&env, &ns).await.is_none(), "no key was minted");
}
