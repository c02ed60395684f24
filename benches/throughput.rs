//! Issue 10, benchmarks 2, 4 and 5: the operator's release binary against the test control
//! plane and the Atlassian stand-in (both in this process, on loopback).
//!
//! - Benchmark 4, callback latency: `BENCH_CONSENTS` (200) consents walked up to the stand-in's
//!   redirect, then every callback opened at once; p50/p99 side by side with the stand-in's own
//!   time for the same calls (code exchange, accessible-resources, `/me`), also 200 at once.
//! - Benchmark 2, burst: `BENCH_USERS` (2,000) consented user auths with one-hour tokens; the
//!   operator stops, the stand-in's clock (which the operator follows, `--clock-url`) moves 48
//!   minutes ahead, and the operator starts again: every token is due at once. Refreshes per
//!   second, side by side with a bare loop in this process that makes the same HTTP calls (token
//!   call, vault Secret, token Secret, status) for as many other credentials, 32 at once like the
//!   operator's controller (its default `--max-concurrent-reconciles`; `BENCH_BARE_CONCURRENCY`
//!   changes it). The bare loop's writes carry the operator's own bodies (copied from one of its
//!   credentials: Secret labels, annotations, owner reference and sizes; the full status).
//!   Both processes' CPU time is taken over the burst's window.
//! - Benchmark 4 also measures a floor: the stand-in's calls followed by the four writes
//!   DESIGN.md's flow cannot do without (consume the link, vault, token Secret, Ready status),
//!   straight to the API server, 200 at once.
//! - Benchmark 5: API writes and token calls per refresh during that burst, counted by the API
//!   server (`request_counts`) and the stand-in's counters.
//!
//! `cargo bench --bench throughput` (release). Prints a report (markdown) at the end.
//! `BENCH_PERF=<file>` also records the operator during the burst with `perf record` (DWARF call
//! graphs: the release binary has no frame pointers).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use futures::{StreamExt as _, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use testbed::atlassian::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};

/// The operator's namespace of credentials.
const NS: &str = "bench";
/// The bare loop's credentials (not watched by the operator).
const BARE_NS: &str = "bench-bare";
/// Where the stand-in sends codes meant for this bench itself (never opened).
const DIRECT_CALLBACK: &str = "http://127.0.0.1:9/bench/callback";
const SCOPES: &str = "offline_access read:me read:confluence-content.all";
/// Account groups (see `bench_account`).
const USERS: u32 = 0xb0;
const DIRECT: u32 = 0xb1;
const BARE: u32 = 0xb2;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let users = param("BENCH_USERS", 2000).max(1);
    let consents = param("BENCH_CONSENTS", 200).clamp(1, users);
    let setup = param("BENCH_SETUP_CONCURRENCY", 32);
    let bare_concurrency = param("BENCH_BARE_CONCURRENCY", 32).max(1);
    let mut report = Vec::new();
    let started = Instant::now();

    let plane = Plane::start().await;
    plane.atlassian.set_access_token_lifetime(Duration::from_secs(3600));
    // Each browser picks its account on the consent page: consents run concurrently.
    plane.atlassian.set_consent_page(true);
    plane.atlassian.add_callback(DEMO_CLIENT_ID, DIRECT_CALLBACK);
    for ns in [OPERATOR_NS, NS, BARE_NS] {
        plane.namespace(ns).await;
    }
    plane.client_secret(NS).await;
    let mut operator = Operator::start(&plane, "operator-setup", NS, &[]).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // The installation, consented by its admin.
    let installations: Api<ConfluenceInstallation> = Api::namespaced(plane.client.clone(), NS);
    let cfi: ConfluenceInstallation = serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceInstallation",
        "metadata": {"name": "acme"},
        "spec": {
            "clientId": DEMO_CLIENT_ID,
            "clientSecretRef": {"name": "atlassian-app", "key": "client-secret"},
            "scopes": SCOPES.split(' ').collect::<Vec<_>>(),
            "site": ACME,
            "refreshBefore": "15m",
            "healthCheckInterval": "24h",
        },
    }))
    .unwrap();
    installations.create(&PostParams::default(), &cfi).await.unwrap();
    let link = until(
        "the installation's link",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            installations
                .get("acme")
                .await
                .ok()
                .and_then(|o| o.credential().and_then(|c| c.authorization_url.clone()))
        },
    )
    .await;
    let mut admin = Browser::with_client(&http);
    let callback = admin.consent(&link, ADA).await;
    let page = admin.get(&callback).await;
    assert_eq!(page.status, 200, "{}", page.body);

    // The user auths, each with its own account, and their links.
    let users_api: Api<ConfluenceUserAuth> = Api::namespaced(plane.client.clone(), NS);
    let accounts: Vec<String> = (0..users).map(|i| bench_account(&plane.atlassian, USERS, i)).collect();
    stream::iter(0..users)
        .for_each_concurrent(setup, |i| {
            let users_api = users_api.clone();
            async move {
                let obj: ConfluenceUserAuth = serde_json::from_value(json!({
                    "apiVersion": "confluence-auth.dev/v1alpha1",
                    "kind": "ConfluenceUserAuth",
                    "metadata": {"name": format!("u{i}")},
                    "spec": {"installationRef": {"name": "acme"}, "userId": format!("user_{i}")},
                }))
                .unwrap();
                users_api.create(&PostParams::default(), &obj).await.unwrap();
            }
        })
        .await;
    let links: Vec<String> = until(
        "every user's link",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async {
            let list = users_api.list(&ListParams::default()).await.ok()?;
            let mut links = vec![String::new(); users];
            for u in &list.items {
                let i: usize = u.name_any()[1..].parse().unwrap();
                links[i] = u.credential()?.authorization_url.clone()?;
            }
            Some(links)
        },
    )
    .await;
    eprintln!(
        "setup: {users} users with links after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Benchmark 4: callback latency, side by side with the stand-in's own time.
    let direct_before = stand_in_time(&plane, &http, consents).await;
    let counts_before = plane.api.request_counts();
    let cpu_before = (operator.process.cpu_seconds(), cpu_seconds_of(std::process::id()));
    let callbacks = callback_latency(&http, &links[..consents], &accounts[..consents]).await;
    // What the callbacks and the reconciles they hand over to asked of the API server.
    settle(&plane).await;
    let counts = plane.api.request_counts().since(&counts_before);
    let cpu = (
        operator.process.cpu_seconds() - cpu_before.0,
        cpu_seconds_of(std::process::id()) - cpu_before.1,
    );
    let direct_after = stand_in_time(&plane, &http, consents).await;
    let floor = bare_callback_time(&plane, &http, consents).await;
    report.push(callback_report(
        consents,
        &callbacks,
        &direct_before,
        &direct_after,
        &floor,
        &counts,
        cpu,
    ));

    // The other users consent (not measured).
    stream::iter(consents..users)
        .for_each_concurrent(setup, |i| {
            let (http, link, account) = (http.clone(), links[i].clone(), accounts[i].clone());
            async move {
                let mut browser = Browser::with_client(&http);
                let callback = browser.consent(&link, &account).await;
                let page = browser.get(&callback).await;
                assert_eq!(page.status, 200, "{}", page.body);
            }
        })
        .await;
    until(
        "every user Ready",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async {
            let list = users_api.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|u| u.credential().and_then(|c| c.phase) == Some(Phase::Ready))
                .then_some(())
        },
    )
    .await;
    settle(&plane).await;
    eprintln!(
        "setup: {users} users Ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The bare loop's credentials: grants of their own, the same objects and Secrets.
    plane.atlassian.set_consent_page(false);
    let bare = Bare::prepare(&plane, &http, users).await;
    let bare_first = bare.run(&plane, &http, bare_concurrency).await;

    // Benchmark 2 (and 5): every operator credential due at once.
    operator.process.stop().await;
    let burst = burst(&plane, users, &users_api, &installations).await;
    let bare_second = bare.run(&plane, &http, bare_concurrency).await;
    report.push(burst_report(users, bare_concurrency, &burst, &bare_first, &bare_second));
    report.push(writes_report(users + 1, &burst));

    println!(
        "\n# throughput bench ({} users, {} concurrent consents), {:.0} s in all\n",
        users,
        consents,
        started.elapsed().as_secs_f64()
    );
    for section in report {
        println!("{section}\n");
    }
}

/// Waits until the API server has seen no write for two seconds.
async fn settle(plane: &Plane) {
    let mut last = plane.api.request_counts().writes(|_| true);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = plane.api.request_counts().writes(|_| true);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

/// A code of the stand-in for `account`, issued for this bench's own redirect URI, with the
/// PKCE verifier it was issued against (what the operator's start sends too).
async fn direct_code(plane: &Plane, http: &reqwest::Client, account: &str) -> (String, String) {
    let verifier = format!("bench-verifier-{account}-0123456789abcdefghijklmnopqrstuvwxyz");
    let challenge = testbed::atlassian::tokens::s256_challenge(&verifier);
    let mut url = url::Url::parse(&format!("{}/authorize", plane.atlassian.url())).unwrap();
    url.query_pairs_mut()
        .append_pair("audience", "api.atlassian.com")
        .append_pair("client_id", DEMO_CLIENT_ID)
        .append_pair("scope", SCOPES)
        .append_pair("redirect_uri", DIRECT_CALLBACK)
        .append_pair("state", "bench")
        .append_pair("response_type", "code")
        .append_pair("prompt", "consent")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut browser = Browser::with_client(http);
    let page = browser.get(url.as_str()).await;
    let location = if page.status == 302 {
        page.location.unwrap()
    } else {
        assert_eq!(page.status, 200, "{}", page.body);
        let marker = "name=\"request\" value=\"";
        let start = page.body.find(marker).unwrap() + marker.len();
        let request = &page.body[start..start + page.body[start..].find('"').unwrap()];
        let accepted = browser
            .post_form(
                &format!("{}/authorize/consent", plane.atlassian.url()),
                &[
                    ("request", request),
                    ("account_id", account),
                    ("site", ACME),
                    ("decision", "accept"),
                ],
            )
            .await;
        assert_eq!(accepted.status, 302, "{}", accepted.body);
        accepted.location.unwrap()
    };
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    (code, verifier)
}

/// The token call of a grant (JSON body, as the operator sends it).
async fn token_call(plane: &Plane, http: &reqwest::Client, body: Value) -> Value {
    let answer = http
        .post(format!("{}/oauth/token", plane.atlassian.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

/// The stand-in's own share of a callback, `n` at once: code exchange, accessible-resources,
/// `/me` (the calls the operator's callback makes to Atlassian).
async fn stand_in_time(plane: &Plane, http: &reqwest::Client, n: usize) -> Vec<Duration> {
    direct_callbacks(plane, http, n, None).await
}

/// The floor under any callback that keeps DESIGN.md's flow, `n` at once: the stand-in's three
/// calls, then the four writes the flow cannot do without, straight to the API server and
/// nothing else: consume the link (a status write), create the vault and the token Secret,
/// write the Ready status. No reads, no account claim, no Event.
async fn bare_callback_time(plane: &Plane, http: &reqwest::Client, n: usize) -> Vec<Duration> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(plane.client.clone(), BARE_NS);
    let mut credentials = Vec::new();
    for _ in 0..n {
        let name = format!("floor{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let obj: ConfluenceUserAuth = serde_json::from_value(json!({
            "apiVersion": "confluence-auth.dev/v1alpha1",
            "kind": "ConfluenceUserAuth",
            "metadata": {"name": name},
            "spec": {"installationRef": {"name": "acme"}, "userId": name},
        }))
        .unwrap();
        let created = users.create(&PostParams::default(), &obj).await.unwrap();
        // The link the callback consumes.
        let link = json!({"status": {"authorizationUrl": format!("http://127.0.0.1:9/oauth/start/{BARE_NS}/user/{name}?nonce=n"), "authorizationNonceHash": "h"}});
        users
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(link))
            .await
            .unwrap();
        credentials.push(BareCredential {
            owner: created.controller_owner_ref(&()).unwrap(),
            name,
        });
    }
    let template = Arc::new(Template::read(plane).await);
    direct_callbacks(plane, http, n, Some((users, credentials, template))).await
}

/// `n` callbacks' calls to the stand-in at once, each followed by the flow's four writes when
/// `writes` names the user auths (and the vault's length) to write for.
async fn direct_callbacks(
    plane: &Plane,
    http: &reqwest::Client,
    n: usize,
    writes: Option<(Api<ConfluenceUserAuth>, Vec<BareCredential>, Arc<Template>)>,
) -> Vec<Duration> {
    // Fresh accounts on every call: one grant per account, as the operator's users have.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut prepared = Vec::new();
    for _ in 0..n {
        let account = bench_account(&plane.atlassian, DIRECT, NEXT.fetch_add(1, Ordering::Relaxed));
        prepared.push(direct_code(plane, http, &account).await);
    }
    let base = plane.atlassian.url();
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let secrets: Api<Secret> = Api::namespaced(plane.client.clone(), BARE_NS);
    let tasks: Vec<_> = prepared
        .into_iter()
        .enumerate()
        .map(|(i, (code, verifier))| {
            let (http, base, gate) = (http.clone(), base.clone(), gate.clone());
            let writes = writes.as_ref().map(|(users, credentials, template)| {
                (users.clone(), secrets.clone(), credentials[i].clone(), template.clone())
            });
            tokio::spawn(async move {
                gate.wait().await;
                let t = Instant::now();
                let tokens: Value = http
                    .post(format!("{base}/oauth/token"))
                    .json(&json!({
                        "grant_type": "authorization_code",
                        "client_id": DEMO_CLIENT_ID,
                        "client_secret": DEMO_CLIENT_SECRET,
                        "code": code,
                        "redirect_uri": DIRECT_CALLBACK,
                        "code_verifier": verifier,
                    }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let token = tokens["access_token"].as_str().expect("an access token").to_string();
                for path in ["/oauth/token/accessible-resources", "/me"] {
                    let answer = http
                        .get(format!("{base}{path}"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 200, "{path}");
                    let _ = answer.bytes().await.unwrap();
                }
                if let Some((users, secrets, credential, template)) = writes {
                    let name = &credential.name;
                    let pp = PostParams::default();
                    let until = (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(10)).to_string();
                    let consumed = json!({"status": {"authorizationUrl": null, "authorizationNonceHash": null,
                        "pendingAuthorization": {"nonceHash": "h", "expiresAt": until}}});
                    users
                        .patch_status(name, &PatchParams::default(), &Patch::Merge(consumed))
                        .await
                        .unwrap();
                    secrets.create(&pp, &template.vault(&credential)).await.unwrap();
                    secrets.create(&pp, &template.token(&credential, &token)).await.unwrap();
                    let mut ready = template.status();
                    ready["status"]["pendingAuthorization"] = Value::Null;
                    users
                        .patch_status(name, &PatchParams::default(), &Patch::Merge(ready))
                        .await
                        .unwrap();
                }
                t.elapsed()
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.push(task.await.unwrap());
    }
    samples
}

/// Walks `links` up to the stand-in's redirect, then opens every callback at once.
async fn callback_latency(http: &reqwest::Client, links: &[String], accounts: &[String]) -> Vec<Duration> {
    let prepared: Vec<(Browser, String)> = stream::iter(links.iter().zip(accounts))
        .map(|(link, account)| {
            let http = http.clone();
            async move {
                let mut browser = Browser::with_client(&http);
                let callback = browser.consent(link, account).await;
                (browser, callback)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let gate = Arc::new(tokio::sync::Barrier::new(prepared.len()));
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(mut browser, callback)| {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.wait().await;
                let t = Instant::now();
                let page = browser.get(&callback).await;
                let took = t.elapsed();
                assert_eq!(page.status, 200, "the callback answered {}: {}", page.status, page.body);
                took
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.push(task.await.unwrap());
    }
    samples
}

fn callback_report(
    n: usize,
    callbacks: &[Duration],
    before: &[Duration],
    after: &[Duration],
    floor: &[Duration],
    counts: &testbed::apiserver::RequestCounts,
    cpu: (f64, f64),
) -> String {
    let (c, b, a, f) = (
        Stats::of(callbacks),
        Stats::of(before),
        Stats::of(after),
        Stats::of(floor),
    );
    let direct = |f: fn(&Stats) -> Duration| f(&b).max(f(&a));
    let beyond = |f: fn(&Stats) -> Duration| f(&c).saturating_sub(direct(f));
    let row = |name: &str, s: &Stats| {
        format!(
            "| {name} | {} | {} | {} | {} |",
            ms(s.p50),
            ms(s.p90),
            ms(s.p99),
            ms(s.max)
        )
    };
    [
        format!("## Benchmark 4: callback latency ({n} consents at once)"),
        String::new(),
        "| series | p50 ms | p90 ms | p99 ms | max ms |".into(),
        "|---|---|---|---|---|".into(),
        row("operator callback (`GET /oauth/callback`)", &c),
        row("stand-in's own time, before (code + accessible-resources + /me)", &b),
        row("stand-in's own time, after", &a),
        row("floor: the stand-in's calls + the flow's four writes, nothing else", &f),
        String::new(),
        format!(
            "Beyond the stand-in's own time (the slower of its two runs): p50 {} ms, p99 {} ms (target p99 <= 50 ms).",
            ms(beyond(|s| s.p50)),
            ms(beyond(|s| s.p99))
        ),
        format!(
            "The floor beyond the stand-in's own time: p50 {} ms, p99 {} ms (what a callback that only made the four writes would add).",
            ms(f.p50.saturating_sub(direct(|s| s.p50))),
            ms(f.p99.saturating_sub(direct(|s| s.p99)))
        ),
        format!(
            "API requests per consent (the callback and the reconcile it hands over to, until quiet): {:.1} ({:.1} gets, {:.1} lists, {:.1} writes, Events included).",
            counts.sum(&["get", "list", "create", "update", "patch", "delete"], |_| true) as f64 / n as f64,
            counts.sum(&["get"], |_| true) as f64 / n as f64,
            counts.sum(&["list"], |_| true) as f64 / n as f64,
            counts.writes(|_| true) as f64 / n as f64
        ),
        format!(
            "CPU per consent, from the first callback until quiet (2 cores): operator {:.1} ms, this process (API server, stand-in, browsers) {:.1} ms.",
            cpu.0 * 1000.0 / n as f64,
            cpu.1 * 1000.0 / n as f64
        ),
    ]
    .join("\n")
}

/// The bare loop: per credential, the token call and three writes, nothing else. The writes
/// carry what the operator's carry: its Secrets' labels, annotations, owner reference, type and
/// sizes, and its full status (conditions included), copied from one of its credentials.
struct Bare {
    credentials: Vec<BareCredential>,
    refresh_tokens: std::sync::Mutex<Vec<String>>,
    /// Each user auth as its last write left it: the status is replaced on its
    /// resourceVersion, as the operator replaces it on its cache's.
    objects: std::sync::Mutex<Vec<ConfluenceUserAuth>>,
    template: Template,
}

/// One bare credential: its name and the owner reference its Secrets carry.
#[derive(Clone)]
struct BareCredential {
    name: String,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
}

/// What the operator wrote for one of its credentials (`u0`), as the bare loop's model.
struct Template {
    vault: Secret,
    token: Secret,
    status: Value,
}

impl Template {
    async fn read(plane: &Plane) -> Template {
        let secrets: Api<Secret> = Api::namespaced(plane.client.clone(), NS);
        let users: Api<ConfluenceUserAuth> = Api::namespaced(plane.client.clone(), NS);
        let status = serde_json::to_value(users.get("u0").await.unwrap().status).unwrap();
        assert_eq!(status["phase"], "Ready", "{status}");
        Template {
            vault: secrets.get("u0-vault").await.unwrap(),
            token: secrets.get("u0-token").await.unwrap(),
            status,
        }
    }

    /// `model` as credential `owner`'s: its name, labels and owner, the data from `data`.
    fn secret(model: &Secret, owner: &BareCredential, suffix: &str, data: BTreeMap<String, ByteString>) -> Secret {
        let meta = &model.metadata;
        let mut labels = meta.labels.clone().unwrap_or_default();
        for value in labels.values_mut() {
            if value == "u0" {
                value.clone_from(&owner.name);
            }
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("{}-{suffix}", owner.name)),
                labels: Some(labels),
                annotations: meta.annotations.clone(),
                owner_references: Some(vec![owner.owner.clone()]),
                ..Default::default()
            },
            type_: model.type_.clone(),
            data: Some(data),
            ..Default::default()
        }
    }

    /// The vault Secret: the operator's, with a random envelope of its length.
    fn vault(&self, owner: &BareCredential) -> Secret {
        let data = self.vault.data.clone().unwrap_or_default();
        let data = data
            .into_iter()
            .map(|(k, v)| {
                let mut random = vec![0u8; v.0.len()];
                getrandom::fill(&mut random).unwrap();
                (k, ByteString(random))
            })
            .collect();
        Self::secret(&self.vault, owner, "vault", data)
    }

    /// The token Secret: the operator's, with this credential's access token.
    fn token(&self, owner: &BareCredential, access_token: &str) -> Secret {
        let mut data = self.token.data.clone().unwrap_or_default();
        data.insert("access_token".into(), ByteString(access_token.as_bytes().to_vec()));
        Self::secret(&self.token, owner, "token", data)
    }

    /// The status after a refresh: the operator's, with this refresh's times.
    fn status(&self) -> Value {
        let now = jiff::Timestamp::now();
        let mut status = self.status.clone();
        status["lastRefreshTime"] = json!(now.to_string());
        status["accessTokenExpiresAt"] = json!((now + jiff::SignedDuration::from_hours(1)).to_string());
        status["nextRefreshTime"] = json!((now + jiff::SignedDuration::from_mins(45)).to_string());
        json!({ "status": status })
    }

    /// `object` with the status after a refresh.
    fn refreshed(&self, object: &ConfluenceUserAuth) -> ConfluenceUserAuth {
        let mut object = object.clone();
        object.status = Some(serde_json::from_value(self.status()["status"].take()).unwrap());
        object
    }
}

impl Bare {
    /// Grants of their own (one account, many grants), user auths and their two Secrets.
    async fn prepare(plane: &Plane, http: &reqwest::Client, n: usize) -> Bare {
        let account = bench_account(&plane.atlassian, BARE, 0);
        plane.atlassian.consent_as(&account);
        let template = Template::read(plane).await;
        let users: Api<ConfluenceUserAuth> = Api::namespaced(plane.client.clone(), BARE_NS);
        let secrets: Api<Secret> = Api::namespaced(plane.client.clone(), BARE_NS);
        let model = &template;
        let prepared: Vec<((BareCredential, ConfluenceUserAuth), String)> = stream::iter(0..n)
            .map(|i| {
                let (users, secrets, http) = (users.clone(), secrets.clone(), http.clone());
                async move {
                    let name = format!("b{i}");
                    let (code, verifier) = direct_code(plane, &http, "").await;
                    let tokens = token_call(
                        plane,
                        &http,
                        json!({
                            "grant_type": "authorization_code",
                            "client_id": DEMO_CLIENT_ID,
                            "client_secret": DEMO_CLIENT_SECRET,
                            "code": code,
                            "redirect_uri": DIRECT_CALLBACK,
                            "code_verifier": verifier,
                        }),
                    )
                    .await;
                    let obj: ConfluenceUserAuth = serde_json::from_value(json!({
                        "apiVersion": "confluence-auth.dev/v1alpha1",
                        "kind": "ConfluenceUserAuth",
                        "metadata": {"name": name},
                        "spec": {"installationRef": {"name": "acme"}, "userId": format!("bare_{i}")},
                    }))
                    .unwrap();
                    let created = users.create(&PostParams::default(), &obj).await.unwrap();
                    let credential = BareCredential {
                        owner: created.controller_owner_ref(&()).unwrap(),
                        name,
                    };
                    for secret in [
                        model.vault(&credential),
                        model.token(&credential, tokens["access_token"].as_str().unwrap()),
                    ] {
                        secrets.create(&PostParams::default(), &secret).await.unwrap();
                    }
                    (
                        (credential, created),
                        tokens["refresh_token"].as_str().unwrap().to_string(),
                    )
                }
            })
            .buffered(32)
            .collect()
            .await;
        let (credentials, refresh_tokens): (Vec<_>, Vec<_>) = prepared.into_iter().unzip();
        let (credentials, objects) = credentials.into_iter().unzip();
        Bare {
            credentials,
            refresh_tokens: std::sync::Mutex::new(refresh_tokens),
            objects: std::sync::Mutex::new(objects),
            template,
        }
    }

    /// One refresh of every credential, `concurrency` at once: the seconds it took.
    async fn run(&self, plane: &Plane, http: &reqwest::Client, concurrency: usize) -> BareRun {
        let users: Api<ConfluenceUserAuth> = Api::namespaced(plane.client.clone(), BARE_NS);
        let secrets: Api<Secret> = Api::namespaced(plane.client.clone(), BARE_NS);
        let tokens = self.refresh_tokens.lock().unwrap().clone();
        let objects = self.objects.lock().unwrap().clone();
        let token_url = format!("{}/oauth/token", plane.atlassian.url());
        let counts_before = plane.api.request_counts();
        let grants_before = plane.atlassian.counters().grants("refresh_token");
        let cpu_before = cpu_seconds_of(std::process::id());
        let t = Instant::now();
        let rotated: Vec<(String, ConfluenceUserAuth)> = stream::iter(self.credentials.iter().zip(tokens).zip(objects))
            .map(|((credential, refresh_token), object)| {
                let (users, secrets, http, token_url) =
                    (users.clone(), secrets.clone(), http.clone(), token_url.clone());
                async move {
                    let answer: Value = http
                        .post(&token_url)
                        .json(&json!({
                            "grant_type": "refresh_token",
                            "client_id": DEMO_CLIENT_ID,
                            "client_secret": DEMO_CLIENT_SECRET,
                            "refresh_token": refresh_token,
                        }))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let access = answer["access_token"].as_str().expect("a refreshed token");
                    let pp = PostParams::default();
                    let name = &credential.name;
                    secrets
                        .replace(&format!("{name}-vault"), &pp, &self.template.vault(credential))
                        .await
                        .unwrap();
                    secrets
                        .replace(&format!("{name}-token"), &pp, &self.template.token(credential, access))
                        .await
                        .unwrap();
                    let written = users
                        .replace_status(name, &pp, &self.template.refreshed(&object))
                        .await
                        .unwrap();
                    (answer["refresh_token"].as_str().unwrap().to_string(), written)
                }
            })
            .buffered(concurrency)
            .collect()
            .await;
        let seconds = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds_of(std::process::id()) - cpu_before;
        let (rotated, written) = rotated.into_iter().unzip();
        *self.refresh_tokens.lock().unwrap() = rotated;
        *self.objects.lock().unwrap() = written;
        let counts = plane.api.request_counts().since(&counts_before);
        assert_eq!(
            plane.atlassian.counters().grants("refresh_token") - grants_before,
            self.credentials.len() as u64
        );
        BareRun {
            seconds,
            writes: counts.writes(|_| true),
            cpu,
        }
    }
}

/// One bare run.
struct BareRun {
    seconds: f64,
    writes: u64,
    /// CPU seconds of this whole process (the loop, the API server and the stand-in).
    cpu: f64,
}

/// What the burst showed.
struct Burst {
    /// Polls of this bench (each one list of users and one get of the installation).
    polls: u64,
    /// From the operator's start to its first token call.
    start_to_first_token: Duration,
    /// From the first token call to the last.
    tokens: Duration,
    /// From the first token call to the last status write of a refresh (the counter).
    refreshes: Duration,
    /// Token calls seen.
    token_calls: u64,
    /// Reuses of a rotated refresh token (the stand-in).
    reuses: u64,
    /// Requests to the API server from the operator's start until it was quiet again.
    counts: testbed::apiserver::RequestCounts,
    cpu: f64,
    /// CPU seconds of the operator and of this process from the first token call to the last
    /// status write.
    window_cpu: (f64, f64),
    rss_mib: f64,
}

/// One sample of the burst.
struct Sample {
    at: Duration,
    grants: u64,
    status: u64,
    cpu: (f64, f64),
}

/// Stops nothing: the operator was stopped. Moves the clock, starts the operator, watches.
async fn burst(
    plane: &Plane,
    users: usize,
    users_api: &Api<ConfluenceUserAuth>,
    installations: &Api<ConfluenceInstallation>,
) -> Burst {
    let due = users as u64 + 1; // the installation too
    plane.atlassian.advance_clock(Duration::from_secs(48 * 60));
    let burst_start = plane.atlassian.now();
    let counts_before = plane.api.request_counts();
    let grants_before = plane.atlassian.counters().grants("refresh_token");
    let reuse_before = plane.atlassian.reuse_counters();
    let done = AtomicBool::new(false);
    // The operator's pid once it runs, so the sampler can read its CPU time.
    let operator_pid = std::sync::atomic::AtomicU32::new(0);
    // This bench's own reads during the burst (one list of users and one get of the
    // installation per poll), told apart from the operator's in the report.
    let polls = std::sync::atomic::AtomicU64::new(0);
    let sampler = async {
        // Every 5 ms until the main flow is done: when, token calls, status writes, and the CPU
        // seconds of the operator and of this process (API server, stand-in) so far.
        let mut samples = Vec::new();
        let t0 = Instant::now();
        while !done.load(Ordering::Relaxed) {
            let grants = plane.atlassian.counters().grants("refresh_token") - grants_before;
            let counts = plane.api.request_counts().since(&counts_before);
            let status = counts.get("update", "confluenceuserauths/status")
                + counts.get("update", "confluenceinstallations/status");
            let pid = operator_pid.load(Ordering::Relaxed);
            let cpu = (
                if pid == 0 { 0.0 } else { cpu_seconds_of(pid) },
                cpu_seconds_of(std::process::id()),
            );
            samples.push(Sample {
                at: t0.elapsed(),
                grants,
                status,
                cpu,
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples
    };
    let flow = async {
        let operator = Operator::start(plane, "operator-burst", NS, &[]).await;
        operator_pid.store(operator.process.pid(), Ordering::Relaxed);
        // A profile of the burst on request: `perf record` of the operator from its start until
        // its last refresh.
        let perf = std::env::var("BENCH_PERF").ok().map(|out| {
            std::process::Command::new("perf")
                .args(["record", "-F", "999", "--call-graph", "dwarf,32768", "-o", &out, "-p"])
                .arg(operator.process.pid().to_string())
                .spawn()
                .expect("BENCH_PERF needs perf on PATH")
        });
        let cpu_before = operator.process.cpu_seconds();
        until(
            "every token call",
            Duration::from_secs(600),
            Duration::from_millis(50),
            || async { (plane.atlassian.counters().grants("refresh_token") - grants_before >= due).then_some(()) },
        )
        .await;
        // Status times are whole seconds.
        let since = jiff::Timestamp::from_second(burst_start.as_second()).unwrap();
        let refreshed = |s: Option<&confluence_auth_operator::crd::CredentialStatus>| {
            s.and_then(|c| c.last_refresh_time.as_ref())
                .is_some_and(|t| t.0 >= since)
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            polls.fetch_add(1, Ordering::Relaxed);
            let list = users_api.list(&ListParams::default()).await.unwrap();
            let cfi = installations.get("acme").await.unwrap();
            let behind: Vec<&ConfluenceUserAuth> = list.items.iter().filter(|u| !refreshed(u.credential())).collect();
            if list.items.len() == users && behind.is_empty() && refreshed(cfi.credential()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} users not refreshed since {since}, e.g. {:?}; installation: {:?}; log:\n{}",
                behind.len(),
                behind.first().map(|u| u.credential()),
                cfi.credential(),
                operator.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Some(mut perf) = perf {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
        settle(plane).await;
        let cpu = operator.process.cpu_seconds() - cpu_before;
        let rss = operator.process.rss_mib();
        done.store(true, Ordering::Relaxed);
        (operator, cpu, rss)
    };
    let (samples, (mut operator, cpu, rss_mib)) = tokio::join!(sampler, flow);
    let counts = plane.api.request_counts().since(&counts_before);
    let token_calls = plane.atlassian.counters().grants("refresh_token") - grants_before;
    let reuse = plane.atlassian.reuse_counters();
    let reuses = (reuse.within_leeway + reuse.after_leeway) - (reuse_before.within_leeway + reuse_before.after_leeway);
    operator.process.stop().await;
    let first = samples.iter().find(|s| s.grants > 0).unwrap();
    let last_token = samples.iter().find(|s| s.grants >= due).unwrap_or(first);
    let last_status = samples
        .iter()
        .find(|s| s.grants >= due && s.status >= due)
        .unwrap_or(last_token);
    let window_cpu = (last_status.cpu.0 - first.cpu.0, last_status.cpu.1 - first.cpu.1);
    let (first, last_token, last_status) = (first.at, last_token.at, last_status.at);
    Burst {
        window_cpu,
        polls: polls.load(Ordering::Relaxed),
        start_to_first_token: first,
        tokens: last_token - first,
        refreshes: last_status - first,
        token_calls,
        reuses,
        counts,
        cpu,
        rss_mib,
    }
}

fn burst_report(users: usize, concurrency: usize, burst: &Burst, first: &BareRun, second: &BareRun) -> String {
    let due = (users + 1) as f64;
    let operator_rate = due / burst.refreshes.as_secs_f64();
    let bare_rate = |b: &BareRun| users as f64 / b.seconds;
    let best_bare = bare_rate(first).max(bare_rate(second));
    [
        format!("## Benchmark 2: burst ({users} user auths + their installation due at once)"),
        String::new(),
        "| series | refreshes | seconds | refreshes/s |".into(),
        "|---|---|---|---|".into(),
        format!(
            "| operator (first token call → last refresh's status write) | {} | {:.2} | {:.0} |",
            users + 1,
            burst.refreshes.as_secs_f64(),
            operator_rate
        ),
        format!(
            "| bare loop, before the burst ({concurrency} at once) | {users} | {:.2} | {:.0} |",
            first.seconds,
            bare_rate(first)
        ),
        format!(
            "| bare loop, after the burst | {users} | {:.2} | {:.0} |",
            second.seconds,
            bare_rate(second)
        ),
        String::new(),
        format!(
            "Ratio operator / faster bare run: {:.2} (target >= 0.7). Operator start → first token call {:.2} s; token calls spread over {:.2} s.",
            operator_rate / best_bare,
            burst.start_to_first_token.as_secs_f64(),
            burst.tokens.as_secs_f64()
        ),
        format!(
            "Operator process during the burst: {:.1} CPU s ({:.2} CPU s per 1,000 refreshes), RSS {:.0} MiB afterwards. Bare loop: {:.1} / {:.1} CPU s of this whole process (loop, API server and stand-in), {} / {} writes.",
            burst.cpu,
            burst.cpu / due * 1000.0,
            burst.rss_mib,
            first.cpu,
            second.cpu,
            first.writes,
            second.writes
        ),
        format!(
            "From the first token call to the last status write: operator {:.2} CPU s, this process (API server, stand-in, sampling) {:.2} CPU s, {:.2} of {:.2} core-seconds; per refresh {:.2} ms and {:.2} ms (the bare loop's whole process: {:.2} ms).",
            burst.window_cpu.0,
            burst.window_cpu.1,
            burst.window_cpu.0 + burst.window_cpu.1,
            std::thread::available_parallelism().map_or(2, usize::from) as f64 * burst.refreshes.as_secs_f64(),
            burst.window_cpu.0 / due * 1000.0,
            burst.window_cpu.1 / due * 1000.0,
            first.cpu.min(second.cpu) / users as f64 * 1000.0
        ),
    ]
    .join("\n")
}

fn writes_report(refreshes: usize, burst: &Burst) -> String {
    let ours = |r: &str| r.starts_with("secrets") || r.starts_with("confluence");
    let writes = burst.counts.writes(ours);
    // Without this bench's own polls.
    let reads = burst.counts.sum(&["get"], ours) - burst.polls;
    let lists = burst.counts.sum(&["list", "watch"], |_| true) - burst.polls;
    let n = refreshes as f64;
    let mut lines = vec![
        format!("## Benchmark 5: writes and token calls per refresh ({refreshes} refreshes of the burst)"),
        String::new(),
        "| figure | total | per refresh | target |".into(),
        "|---|---|---|---|".into(),
        format!(
            "| token calls (`grant_type=refresh_token`, stand-in) | {} | {:.3} | exactly 1 |",
            burst.token_calls,
            burst.token_calls as f64 / n
        ),
        format!(
            "| refresh-token reuses (stand-in) | {} | {:.3} | 0 |",
            burst.reuses,
            burst.reuses as f64 / n
        ),
        format!(
            "| API writes on Secrets and credentials (create/update/patch/delete) | {writes} | {:.3} | <= 3 |",
            writes as f64 / n
        ),
        format!(
            "| API gets of Secrets and credentials | {reads} | {:.3} | — |",
            reads as f64 / n
        ),
        format!("| lists and watches (all kinds, the restart) | {lists} | — | — |"),
        String::new(),
        format!(
            "Every request of the burst (operator start until quiet), by verb and resource; {} gets of confluenceinstallations and {} lists of confluenceuserauths are this bench's polling, the rest the operator's:",
            burst.polls, burst.polls
        ),
        String::new(),
        "| verb | resource | requests |".into(),
        "|---|---|---|".into(),
    ];
    for (verb, resource, count) in burst.counts.iter() {
        lines.push(format!("| {verb} | {resource} | {count} |"));
    }
    lines.join("\n")
}
