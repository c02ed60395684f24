//! The README's main command: `confluence-auth-operator demo` runs the whole product on the
//! embedded test control plane and ends with both credentials Ready; on a configured cluster it
//! stays in its namespace.

mod support;

use std::process::Command;

use confluence_auth_operator::crd::ConfluenceInstallation;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::Env;

#[test]
fn the_demo_walks_both_consents_on_the_embedded_control_plane() {
    let output = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
        .args(["demo", "--exit-when-ready"])
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for line in [
        "no cluster configured: embedded test control plane",
        "this demo touches only namespace `demo`",
        // Each resource names the account that consented for it, and the names match.
        "ConfluenceInstallation demo/acme is Ready: installed by Ada Admin (557058:aaaaaaaa-0000-4000-8000-000000000001) for https://acme.atlassian.net",
        "ConfluenceUserAuth demo/alice is Ready: consented by Alice Example (557058:bbbbbbbb-0000-4000-8000-000000000002), user id user_123",
        "Secret demo/alice-token (what pods mount) has keys: access_token, account_id, api_base_url, cloud_id, expires_at, scopes, site_url, token_type",
        "demo finished: both credentials Ready",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The story is the demo's own lines; without --operator-logs the operator stays quiet.
    assert!(
        stdout.lines().all(|l| l.starts_with("==> ") || l.starts_with("    ")),
        "{stdout}"
    );
    assert!(!stderr.contains("INFO"), "operator INFO lines by default:\n{stderr}");
    assert!(
        !stdout.contains("atl_at_") && !stdout.contains("atl_rt_"),
        "the demo printed a token"
    );
}

/// A cluster that already holds another team's installation (Ready, with its token Secret) and
/// a running operator's Lease: the demo refuses to start, naming the holder; told to go on, it
/// finishes and leaves the other namespace exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_configured_cluster_the_demo_stays_in_its_namespace() {
    let env = Env::start().await;
    // The demo creates `demo`; against a real cluster it goes with this test's namespaces.
    env.delete_on_drop("demo");
    let other = env.namespace("team").await;
    env.apply_examples(&other, &["client-secret.yaml", "installation.yaml"]);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &other);
    let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 1800).unwrap();
    installations
        .patch_status(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "phase": "Ready", "siteUrl": "https://acme.atlassian.net",
                "accessTokenExpiresAt": expires.to_string(), "secretName": "acme-token"}})),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &other);
    let token: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "acme-token"}, "type": "confluence-auth.dev/access-token",
        "stringData": {"access_token": "the-other-teams-token"}}))
    .unwrap();
    secrets.create(&PostParams::default(), &token).await.unwrap();
    let before = installations.get("acme").await.unwrap();
    let secrets_of = |list: Vec<Secret>| -> Vec<(String, Option<String>)> {
        list.into_iter()
            .map(|s| (s.metadata.name.unwrap_or_default(), s.metadata.resource_version))
            .collect()
    };
    let secrets_before = secrets_of(secrets.list(&Default::default()).await.unwrap().items);

    // Another operator holds the default Lease in its namespace.
    let system = env.namespace("operator").await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &system);
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "confluence-auth-operator"},
        "spec": {"holderIdentity": "confluence-auth-operator-7d9f-abcd", "leaseDurationSeconds": 3600,
                 "renewTime": jiff::Timestamp::now().to_string()}}))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();

    let demo = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
            .arg("demo")
            .args(extra)
            .env("KUBECONFIG", &env.kubeconfig)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let refused = demo(&["--exit-when-ready"]);
    let refused_text = String::from_utf8_lossy(&refused.stdout).to_string() + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "the demo started beside a running operator:\n{refused_text}"
    );
    assert!(
        refused_text.contains(&format!(
            "confluence-auth-operator-7d9f-abcd holds the Lease {system}/confluence-auth-operator"
        )),
        "{refused_text}"
    );

    let output = demo(&["--exit-when-ready", "--ignore-running-operator", "--operator-logs"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let first_lines: Vec<&str> = stdout.lines().take(2).collect();
    assert!(
        first_lines[0].starts_with("==> using the cluster in KUBECONFIG="),
        "{stdout}"
    );
    assert!(
        first_lines[1].starts_with("==> this demo touches only namespace `demo`"),
        "{stdout}"
    );
    assert!(stdout.contains("demo finished: both credentials Ready"), "{stdout}");
    assert!(
        stderr.contains("INFO"),
        "--operator-logs shows the operator's INFO lines:\n{stderr}"
    );

    let after = installations.get("acme").await.unwrap();
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version);
    assert_eq!(after.status, before.status);
    assert_eq!(
        secrets_of(secrets.list(&Default::default()).await.unwrap().items),
        secrets_before
    );
    // The demo's own keys stayed in its namespace, under its own name.
    let demo_secrets: Api<Secret> = Api::namespaced(env.client.clone(), "demo");
    assert!(
        demo_secrets
            .get_opt("confluence-auth-demo-keys")
            .await
            .unwrap()
            .is_some()
    );
    let all_secrets: Api<Secret> = Api::all(env.client.clone());
    let keys_elsewhere: Vec<String> = all_secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.metadata.name.as_deref().is_some_and(|n| n.ends_with("-keys")))
        .filter_map(|s| s.metadata.namespace)
        .filter(|ns| ns != "demo")
        .collect();
    assert!(
        keys_elsewhere.is_empty(),
        "keys Secrets outside demo: {keys_elsewhere:?}"
    );
}

/// Without `--exit-when-ready` the demo keeps going: short tokens, and one line per refresh,
/// health check and phase change. Two refreshes show within two minutes of the start.
#[test]
fn the_demo_keeps_refreshing_and_prints_each_refresh() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"))
        .arg("demo")
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(120);
    let mut lines = Vec::new();
    let mut refreshes = 0;
    while refreshes < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains(" refreshed: the new access token expires at ") {
                    refreshes += 1;
                }
                lines.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    assert!(refreshes >= 2, "fewer than two refreshes within two minutes:\n{all}");
    assert!(all.contains("ConfluenceUserAuth demo/alice is Ready"), "{all}");
    assert!(
        !all.contains("atl_at_") && !all.contains("atl_rt_"),
        "the demo printed a token"
    );
}
