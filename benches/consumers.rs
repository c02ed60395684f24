//! Issue 11, acceptance 4: what the sidecar proxy (`confluence-auth-operator proxy`) and the
//! per-namespace gateway (`confluence-auth-operator gateway`) add to a call, against the same
//! call made straight to the Atlassian stand-in, side by side in one run.
//!
//! The stand-in and the test control plane run in this process; the proxy and the gateway are
//! the release binary as processes (as they are deployed: a sidecar, a Deployment). Every target
//! answers `GET …/wiki/rest/api/user/current` with the same token. For each concurrency (1, then
//! `BENCH_CONCURRENCY`, default 32) the three targets take turns for `BENCH_ROUNDS` (3) rounds of
//! `BENCH_SECONDS` (3) seconds each, so drift on the machine touches all three alike.
//!
//! `cargo bench --bench consumers` (release). Prints a report (markdown) at the end.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use confluence_auth_operator::crd::ConfluenceInstallation;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testbed::atlassian::{DEMO_SERVICE_CLIENT_ID, DEMO_SERVICE_CLIENT_SECRET};

const NS: &str = "apps";
const ACME_CLOUD_ID: &str = "11111111-1111-4111-8111-111111111111";
const PATH: &str = "/wiki/rest/api/user/current";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

/// One target of the load.
struct Target {
    name: &'static str,
    url: String,
    bearer: Option<String>,
}

async fn run() {
    let concurrency = param("BENCH_CONCURRENCY", 32).max(1);
    let rounds = param("BENCH_ROUNDS", 3).max(1);
    let seconds = param("BENCH_SECONDS", 3).max(1) as u64;
    let plane = Plane::start().await;
    plane
        .atlassian
        .set_service_token_lifetime(Duration::from_secs(24 * 3600));
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{}/oauth/token", plane.atlassian.url()))
        .json(&json!({
            "grant_type": "client_credentials",
            "client_id": DEMO_SERVICE_CLIENT_ID,
            "client_secret": DEMO_SERVICE_CLIENT_SECRET,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().expect("a service token").to_string();
    let base = format!("{}/ex/confluence/{ACME_CLOUD_ID}", plane.atlassian.url());
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(23)).to_string();

    // The sidecar: a mounted token Secret (one file per key) and the proxy on it.
    let token_dir = plane.dir.path().join("token");
    std::fs::create_dir_all(&token_dir).unwrap();
    for (key, value) in [
        ("access_token", token.as_str()),
        ("token_type", "Bearer"),
        ("expires_at", expires.as_str()),
        ("api_base_url", base.as_str()),
        ("cloud_id", ACME_CLOUD_ID),
    ] {
        std::fs::write(token_dir.join(key), value).unwrap();
    }
    let token_dir_text = token_dir.to_string_lossy().into_owned();
    let mut proxy = Process::spawn(
        plane.dir.path(),
        "proxy",
        &["proxy", "--token-dir", &token_dir_text, "--listen", "127.0.0.1:0"],
        &[("RUST_LOG", "info")],
    );
    let proxy_addr = proxy.log_field("token proxy listening", "addr").await;

    // The gateway: an installation whose token Secret the operator would have written, and an
    // allowed ServiceAccount's token.
    plane.namespace(NS).await;
    gateway_credentials(&plane, &token, &base, &expires).await;
    let caller = service_account_token(&plane, "app").await;
    let kubeconfig = plane.kubeconfig.to_string_lossy().into_owned();
    let allow = format!("system:serviceaccount:{NS}:app");
    let mut gateway = Process::spawn(
        plane.dir.path(),
        "gateway",
        &[
            "gateway",
            "--namespace",
            NS,
            "--allow",
            &allow,
            "--listen",
            "127.0.0.1:0",
        ],
        &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
    );
    let gateway_addr = gateway.log_field("gateway listening", "addr").await;

    let targets = [
        Target {
            name: "direct to the stand-in",
            url: format!("{base}{PATH}"),
            bearer: Some(token.clone()),
        },
        Target {
            name: "through the proxy",
            url: format!("http://{proxy_addr}{PATH}"),
            bearer: None,
        },
        Target {
            name: "through the gateway",
            url: format!("http://{gateway_addr}/acme{PATH}"),
            bearer: Some(caller),
        },
    ];
    // Each target answers as the service account (and warms its connections and caches).
    for target in &targets {
        let body: Value = until(
            target.name,
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let mut request = http.get(&target.url);
                if let Some(bearer) = &target.bearer {
                    request = request.bearer_auth(bearer);
                }
                let answer = request.send().await.ok()?;
                if answer.status() != 200 {
                    return None;
                }
                answer.json::<Value>().await.ok()
            },
        )
        .await;
        assert!(
            body["accountId"].as_str().is_some_and(|a| a.starts_with("712020:")),
            "{body}"
        );
        load(&http, target, concurrency, Duration::from_millis(500)).await;
    }

    let mut report = vec![format!(
        "# consumers bench: {rounds} rounds of {seconds} s per target and concurrency, targets taking turns\n"
    )];
    for c in [1, concurrency] {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
        let mut busy = vec![0.0f64; targets.len()];
        let mut cpu = vec![(0.0f64, 0.0f64); targets.len()];
        for _ in 0..rounds {
            for (i, target) in targets.iter().enumerate() {
                let before = (proxy.cpu_seconds(), gateway.cpu_seconds());
                let t = Instant::now();
                samples[i].extend(load(&http, target, c, Duration::from_secs(seconds)).await);
                busy[i] += t.elapsed().as_secs_f64();
                cpu[i].0 += proxy.cpu_seconds() - before.0;
                cpu[i].1 += gateway.cpu_seconds() - before.1;
            }
        }
        let stats: Vec<Stats> = samples.iter().map(|s| Stats::of(s)).collect();
        let direct = stats[0];
        let mut lines = vec![
            format!("## concurrency {c}"),
            String::new(),
            "| target | requests | requests/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU ms per request (proxy / gateway process) |".into(),
            "|---|---|---|---|---|---|---|---|".into(),
        ];
        for (i, target) in targets.iter().enumerate() {
            let s = stats[i];
            let own_cpu = match i {
                1 => format!("{:.3}", cpu[i].0 * 1000.0 / s.n as f64),
                2 => format!("{:.3}", cpu[i].1 * 1000.0 / s.n as f64),
                _ => "—".into(),
            };
            lines.push(format!(
                "| {} | {} | {:.0} | {} | {} | {} | {} | {own_cpu} |",
                target.name,
                s.n,
                s.n as f64 / busy[i],
                ms(s.p50),
                ms(s.p99),
                if i == 0 {
                    "—".into()
                } else {
                    signed_ms(s.p50, direct.p50)
                },
                if i == 0 {
                    "—".into()
                } else {
                    signed_ms(s.p99, direct.p99)
                },
            ));
        }
        report.push(lines.join("\n"));
    }
    println!();
    for section in report {
        println!("{section}\n");
    }
}

/// `a - b` in milliseconds, signed.
fn signed_ms(a: Duration, b: Duration) -> String {
    format!("{:+.2}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

/// `concurrency` callers, each sending one request after the other for `duration`: every
/// request's latency (each must answer 200).
async fn load(http: &reqwest::Client, target: &Target, concurrency: usize, duration: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + duration;
    let url = Arc::new(target.url.clone());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, bearer) = (http.clone(), url.clone(), target.bearer.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut request = http.get(url.as_str());
                    if let Some(bearer) = &bearer {
                        request = request.bearer_auth(bearer);
                    }
                    let answer = request.send().await.unwrap();
                    let status = answer.status();
                    let _ = answer.bytes().await.unwrap();
                    samples.push(t.elapsed());
                    assert_eq!(status, 200, "{url}");
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    samples
}

/// Installation `acme` in [`NS`], Ready, with its token Secret as the operator writes it.
async fn gateway_credentials(plane: &Plane, token: &str, base: &str, expires: &str) {
    plane.client_secret(NS).await;
    let installations: Api<ConfluenceInstallation> = Api::namespaced(plane.client.clone(), NS);
    let cfi: ConfluenceInstallation = serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceInstallation",
        "metadata": {"name": "acme"},
        "spec": {
            "grant": "ClientCredentials",
            "clientId": DEMO_SERVICE_CLIENT_ID,
            "clientSecretRef": {"name": "atlassian-app", "key": "client-secret"},
            "scopes": ["read:confluence-user"],
            "site": ACME,
        },
    }))
    .unwrap();
    installations.create(&PostParams::default(), &cfi).await.unwrap();
    let data: BTreeMap<String, ByteString> = [
        ("access_token", token),
        ("token_type", "Bearer"),
        ("expires_at", expires),
        ("api_base_url", base),
        ("cloud_id", ACME_CLOUD_ID),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("acme-token".into()),
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by", "confluence-auth-operator"),
                    ("confluence-auth.dev/owner-kind", "ConfluenceInstallation"),
                    ("confluence-auth.dev/owner-name", "acme"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        },
        type_: Some("confluence-auth.dev/access-token".into()),
        data: Some(data),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(plane.client.clone(), NS);
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    installations
        .patch_status(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready", "secretName": "acme-token"}})),
        )
        .await
        .unwrap();
}

/// A token of ServiceAccount `name` in [`NS`] (the `token` subresource, as `kubectl create token`).
async fn service_account_token(plane: &Plane, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(plane.client.clone(), NS);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let answer: Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/{NS}/serviceaccounts/{name}/token",
            plane.api.url()
        ))
        .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["status"]["token"]
        .as_str()
        .expect("a ServiceAccount token")
        .to_string()
}
