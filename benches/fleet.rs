//! Benchmarks 1 and 3 of issue 10: one operator process carrying 10,000 user auths (and their
//! installation), all Ready, against the test control plane and the Atlassian stand-in, which
//! run inside this process on loopback.
//!
//! ```text
//! cargo bench --bench fleet                       # this build's operator, 10,000 users
//! cargo bench --bench fleet -- --users 2000 --refreshes 500
//! cargo bench --bench fleet -- --operator before=/tmp/cao-before --operator after=target/release/confluence-auth-operator
//! ```
//!
//! Seeding: every user gets a real grant from the stand-in (authorize + code exchange, its own
//! Atlassian account and token family), stored with the operator's own store code (vault, token
//! Secret) and a Ready status, as the callback would leave it; browsers are skipped, nothing
//! else. Then, per operator binary (side by side, same fleet):
//!
//! 1. **First start** over the seeded fleet: until the request log is quiet.
//! 2. **Steady state**: resident memory (VmRSS, and VmHWM, the peak) and idle CPU.
//! 3. **Cold start** (SIGTERM, start again): time to `/readyz` and to a quiet request log, the
//!    API requests made by verb and resource, token calls (none is due).
//! 4. **Refreshes**: `--refreshes` users get a fresh grant with 120-second tokens (at about 40 per
//!    second, so they come due spread out, 80 s later); CPU seconds the operator spends from then
//!    until all of them are refreshed and the log is quiet, minus its idle rate, per 1,000.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use confluence_auth_operator::crd::conditions::{self, reason};
use confluence_auth_operator::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use confluence_auth_operator::oauth::atlassian::{AccessibleResource, AtlassianClient, ClientCredentials, Endpoints};
use confluence_auth_operator::store;
use confluence_auth_operator::token_set::TokenSet;
use confluence_auth_operator::vault::KeyRing;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::Digest;
use testbed::apiserver::{ApiServer, RequestRecord};
use testbed::atlassian::{Account, DEMO_ADMIN_ACCOUNT_ID, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, StandIn};

const OPERATOR_NS: &str = "confluence-auth-system";
const FLEET_NS: &str = "fleet";
const SITE: &str = "acme.atlassian.net";
const SEED_REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";
const SCOPES: [&str; 3] = ["offline_access", "read:me", "read:confluence-content.all"];
/// The request log is "quiet" after this long without a request that does work.
const QUIET: Duration = Duration::from_secs(5);
/// No phase waits longer.
const PHASE_LIMIT: Duration = Duration::from_secs(900);
/// Lifetime of the tokens of the refresh phase (refreshed `lifetime / 3` before they expire).
const SHORT_LIFETIME: Duration = Duration::from_secs(120);
/// Re-grants per second in the refresh phase.
const REGRANT_RATE: f64 = 40.0;

struct Args {
    users: usize,
    refreshes: usize,
    operators: Vec<(String, PathBuf)>,
}

fn args() -> Args {
    let mut args = Args {
        users: 10_000,
        refreshes: 2_000,
        operators: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--users" => args.users = it.next().and_then(|v| v.parse().ok()).expect("--users N"),
            "--refreshes" => args.refreshes = it.next().and_then(|v| v.parse().ok()).expect("--refreshes N"),
            "--operator" => {
                let value = it.next().expect("--operator LABEL=PATH");
                let (label, path) = value.split_once('=').expect("--operator LABEL=PATH");
                args.operators.push((label.to_string(), PathBuf::from(path)));
            }
            // cargo bench passes --bench; nothing else is expected.
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    if args.operators.is_empty() {
        args.operators.push((
            "this build".into(),
            PathBuf::from(env!("CARGO_BIN_EXE_confluence-auth-operator")),
        ));
    }
    args.refreshes = args.refreshes.min(args.users);
    args
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(args));
}

/// The control plane, the stand-in and what seeding needs.
struct World {
    api: ApiServer,
    atlassian: StandIn,
    client: Client,
    kubeconfig: PathBuf,
    ring: KeyRing,
    oauth: AtlassianClient,
    site: AccessibleResource,
    dir: tempfile::TempDir,
    /// One authorize at a time: the stand-in consents as one chosen account.
    consent: tokio::sync::Mutex<()>,
}

async fn run(args: Args) {
    let machine = machine();
    println!(
        "# fleet benchmark: {} users, {} refreshes; {machine}",
        args.users, args.refreshes
    );
    let world = Arc::new(world().await);
    let started = Instant::now();
    seed(&world, args.users).await;
    println!(
        "seeded {} user auths + 1 installation (Ready, real grants) in {:.1} s; {} objects stored",
        args.users,
        started.elapsed().as_secs_f64(),
        world.api.object_count()
    );
    let mut rows = Vec::new();
    for (label, path) in &args.operators {
        rows.push(measure(&world, label, path, &args).await);
    }
    println!();
    println!(
        "| operator | first start to quiet | steady RSS | peak RSS (VmHWM) | idle CPU | cold start: /readyz | cold start: quiet | cold start: API requests | cold start: token calls | cold start RSS | CPU per 1,000 refreshes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

async fn world() -> World {
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        serde_yaml_ng::from_str(&api.kubeconfig_yaml()).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in confluence_auth_operator::crd::all() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [OPERATOR_NS, FLEET_NS] {
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &object).await.unwrap();
    }
    let ring = KeyRing::generate("1").unwrap();
    let keys = Secret {
        metadata: ObjectMeta {
            name: Some("confluence-auth-operator-keys".into()),
            ..Default::default()
        },
        data: Some(ring.to_secret_data()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NS)
        .create(&PostParams::default(), &keys)
        .await
        .unwrap();
    let app = Secret {
        metadata: ObjectMeta {
            name: Some("atlassian-app".into()),
            ..Default::default()
        },
        string_data: Some([("client-secret".to_string(), DEMO_CLIENT_SECRET.to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), FLEET_NS)
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    let atlassian = StandIn::demo_world().await.unwrap();
    atlassian.add_callback(DEMO_CLIENT_ID, SEED_REDIRECT);
    let endpoints = Endpoints {
        auth_url: atlassian.url(),
        api_url: atlassian.url(),
        tenant_info_url: format!("{}/site/{{site}}/_edge/tenant_info", atlassian.url()),
    };
    let oauth = AtlassianClient::new(endpoints, Duration::from_secs(10)).unwrap();
    let mut world = World {
        api,
        atlassian,
        client,
        kubeconfig,
        ring,
        oauth,
        site: AccessibleResource {
            id: String::new(),
            url: String::new(),
            name: String::new(),
            scopes: Vec::new(),
        },
        dir,
        consent: tokio::sync::Mutex::new(()),
    };
    // The site as a real grant lists it.
    let grant = world.grant(DEMO_ADMIN_ACCOUNT_ID).await;
    world.site = world
        .oauth
        .accessible_resources(&grant.access_token)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.url.contains(SITE))
        .expect("the demo admin reaches acme");
    world
}

impl World {
    /// A real grant of `account`: authorize (auto-consent) and exchange the code.
    async fn grant(&self, account: &str) -> confluence_auth_operator::oauth::atlassian::TokenResponse {
        let verifier = format!("bench-verifier-{account}-0123456789abcdef0123456789abcdef");
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let mut url = url::Url::parse(&format!("{}/authorize", self.atlassian.url())).unwrap();
        url.query_pairs_mut()
            .append_pair("audience", "api.atlassian.com")
            .append_pair("client_id", DEMO_CLIENT_ID)
            .append_pair("scope", &SCOPES.join(" "))
            .append_pair("redirect_uri", SEED_REDIRECT)
            .append_pair("state", "bench")
            .append_pair("response_type", "code")
            .append_pair("prompt", "consent")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let location = {
            let _one = self.consent.lock().await;
            self.atlassian.consent_as(account);
            let http = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let answer = http.get(url.as_str()).send().await.unwrap();
            assert_eq!(
                answer.status(),
                302,
                "authorize: {}",
                answer.text().await.unwrap_or_default()
            );
            answer.headers()["location"].to_str().unwrap().to_string()
        };
        let code = url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code");
        let credentials = ClientCredentials {
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.to_string().into(),
        };
        self.oauth
            .exchange_code(&credentials, &code, SEED_REDIRECT, &verifier)
            .await
            .unwrap()
    }

    /// Stores a grant for `obj` the way the callback does: vault, token Secret, Ready status.
    async fn store<K: CredentialResource>(&self, obj: &K, account: &str, installation: Option<&str>) {
        let grant = self.grant(account).await;
        let now = jiff::Timestamp::now();
        let set = TokenSet {
            access_token: grant.access_token.clone(),
            refresh_token: grant.refresh_token.clone(),
            expires_at: grant.expires_at(now),
            scopes: grant.scopes(),
            cloud_id: self.site.id.clone(),
            site_url: self.site.url.clone(),
            account_id: account.to_string(),
            obtained_at: now,
            consented_at: now,
            installation: installation.map(str::to_string),
        };
        let token_secret = format!("{}-token", obj.name_any());
        let api_base = self.oauth.api_base_url(&set.cloud_id);
        let known = confluence_auth_operator::known::Known::default();
        let written = store::write_tokens(&self.client, &known, &self.ring, obj, &set, &token_secret, &api_base)
            .await
            .unwrap();
        let site = self.site.clone();
        store::update_status(&self.client, obj, |obj: &mut K| {
            let generation = obj.meta().generation;
            let status = obj.credential_mut();
            status.phase = Some(Phase::Ready);
            status.cloud_id = Some(site.id.clone());
            status.site_url = Some(site.url.clone());
            status.site_name = Some(site.name.clone());
            status.installed_by = Some(account.to_string());
            status.granted_scopes = Some(set.scopes.clone());
            status.access_token_expires_at = Some(Time(set.expires_at));
            status.refresh_token_expires_at = Some(Time(
                set.consented_at + confluence_auth_operator::token::REFRESH_TOKEN_MAX_AGE,
            ));
            status.secret_name = Some(token_secret.clone());
            status.vault_secret_version = written.vault.version.clone();
            status.token_secret_version = written.token.version.clone();
            status.observed_generation = generation;
            let message = format!("authorized by Atlassian account {account} on {}", site.url);
            conditions::set_condition(
                &mut status.conditions,
                conditions::AUTHORIZED,
                true,
                reason::AUTHORIZED,
                message,
                generation,
                now,
            );
            conditions::set_condition(
                &mut status.conditions,
                conditions::READY,
                true,
                reason::TOKEN_VALID,
                "the access token is in the token Secret",
                generation,
                now,
            );
        })
        .await
        .unwrap();
    }
}

fn account_of(i: usize) -> String {
    format!("557058:f1ee7000-0000-4000-8000-{i:012}")
}

async fn seed(world: &Arc<World>, users: usize) {
    let installations: Api<ConfluenceInstallation> = Api::namespaced(world.client.clone(), FLEET_NS);
    let cfi: ConfluenceInstallation = serde_json::from_value(json!({
        "apiVersion": "confluence-auth.dev/v1alpha1", "kind": "ConfluenceInstallation",
        "metadata": {"name": "acme"},
        "spec": {"clientId": DEMO_CLIENT_ID, "clientSecretRef": {"name": "atlassian-app", "key": "client-secret"},
                 "scopes": SCOPES, "site": SITE},
    }))
    .unwrap();
    let cfi = installations.create(&PostParams::default(), &cfi).await.unwrap();
    world.store(&cfi, DEMO_ADMIN_ACCOUNT_ID, None).await;
    for i in 0..users {
        world.atlassian.add_account(Account {
            account_id: account_of(i),
            name: format!("Fleet user {i}"),
            email: format!("user{i}@acme.example"),
            sites: vec![SITE.into()],
        });
    }
    futures::stream::iter(0..users)
        .map(|i| {
            let world = world.clone();
            async move {
                let users: Api<ConfluenceUserAuth> = Api::namespaced(world.client.clone(), FLEET_NS);
                let obj: ConfluenceUserAuth = serde_json::from_value(json!({
                    "apiVersion": "confluence-auth.dev/v1alpha1", "kind": "ConfluenceUserAuth",
                    "metadata": {"name": format!("u{i:05}")},
                    "spec": {"installationRef": {"name": "acme"}, "userId": format!("user_{i}")},
                }))
                .unwrap();
                let obj = users.create(&PostParams::default(), &obj).await.unwrap();
                world.store(&obj, &account_of(i), Some("acme")).await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// The operator binary, running over the fleet.
struct Operator {
    child: Child,
    log: PathBuf,
    metrics: String,
}

impl Operator {
    fn start(world: &World, path: &PathBuf, n: usize) -> Operator {
        let log = world.dir.path().join(format!("operator-{n}.log"));
        let child = Command::new(path)
            .args(["--log-format", "json", "run"])
            .args(["--public-url", "http://127.0.0.1:0"])
            .args(["--webhook-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .args(["--atlassian-auth-url", &world.atlassian.url()])
            .args(["--atlassian-api-url", &world.atlassian.url()])
            .args(["--operator-namespace", OPERATOR_NS])
            .args(["--lease-name", "fleet-bench"])
            .env("KUBECONFIG", &world.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let metrics = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text.lines().filter(|l| l.contains("\"listening\"")).find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l).ok()?["metrics"]
                    .as_str()
                    .map(String::from)
            }) {
                break format!("http://{addr}");
            }
            assert!(Instant::now() < deadline, "the operator did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Operator { child, log, metrics }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + PHASE_LIMIT;
        let url = format!("{}/readyz", self.metrics);
        while reqwest::get(&url).await.ok().filter(|r| r.status() == 200).is_none() {
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let _ = self.child.wait();
    }

    fn warnings(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .count()
    }
}

/// (VmRSS, VmHWM) in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A request that does work (not a watch staying open, not the Lease's renewals).
fn is_work(r: &RequestRecord) -> bool {
    !r.query.contains("watch=true") && !r.path.contains("/leases")
}

/// `verb resource` of a request: `list secrets`, `watch confluenceuserauths`, `get secrets`,
/// `update confluenceuserauths/status`, ….
fn describe(r: &RequestRecord) -> String {
    let path = r.path.trim_start_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => &parts,
    };
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, named) = match rest {
        [plural] => (plural.to_string(), false),
        [plural, _name] => (plural.to_string(), true),
        [plural, _name, sub, ..] => (format!("{plural}/{sub}"), true),
        _ => (path.to_string(), false),
    };
    let verb = match (r.method.as_str(), named) {
        ("GET", _) if r.query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("PUT", _) => "update",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (m, _) => m,
    };
    format!("{verb} {resource}")
}

/// Waits until no work request arrived for [`QUIET`]; returns when the last one came.
async fn quiet(api: &ApiServer, from: usize) -> Instant {
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut seen = from;
    let mut last = Instant::now();
    loop {
        let new = api.requests_since(seen);
        seen += new.len();
        if new.iter().any(is_work) {
            last = Instant::now();
        }
        if last.elapsed() >= QUIET {
            return last;
        }
        assert!(Instant::now() < deadline, "the request log never went quiet");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn measure(world: &Arc<World>, label: &str, path: &PathBuf, args: &Args) -> String {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let next = || STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    println!("\n## {label} ({})", path.display());

    // 1. First start over the seeded fleet.
    let from = world.api.request_count();
    let t0 = Instant::now();
    let operator = Operator::start(world, path, next());
    operator.ready().await;
    let settled = quiet(&world.api, from).await;
    let first_start = settled - t0;
    println!("first start: quiet after {:.1} s", first_start.as_secs_f64());

    // 2. Steady state: memory, idle CPU over 20 s.
    let cpu_before = cpu_seconds(operator.pid());
    let idle_from = Instant::now();
    let mut rss = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(memory(operator.pid()).0);
    }
    let idle_rate = (cpu_seconds(operator.pid()) - cpu_before) / idle_from.elapsed().as_secs_f64();
    rss.sort_by(f64::total_cmp);
    let steady_rss = rss[rss.len() / 2];
    let peak = memory(operator.pid()).1;
    println!(
        "steady state: RSS {steady_rss:.1} MiB (median of 10 samples), peak {peak:.1} MiB, idle CPU {:.2}%",
        idle_rate * 100.0
    );
    let warnings = operator.warnings();
    operator.stop();

    // 3. Cold start over the same, now fully reconciled, fleet.
    let from = world.api.request_count();
    let token_calls_before = world.atlassian.counters().grants("refresh_token");
    let t0 = Instant::now();
    let operator = Operator::start(world, path, next());
    operator.ready().await;
    let to_ready = t0.elapsed();
    let settled = quiet(&world.api, from).await;
    let cold = settled - t0;
    let mut requests: BTreeMap<String, usize> = BTreeMap::new();
    for r in world
        .api
        .requests_since(from)
        .iter()
        .filter(|r| !r.path.contains("/leases"))
    {
        *requests.entry(describe(r)).or_default() += 1;
    }
    let total: usize = requests.values().sum();
    let token_calls = world.atlassian.counters().grants("refresh_token") - token_calls_before;
    let cold_rss = memory(operator.pid()).0;
    println!(
        "cold start: /readyz after {:.2} s, quiet after {:.1} s, {total} API requests (Lease aside), {token_calls} token calls, RSS {cold_rss:.1} MiB",
        to_ready.as_secs_f64(),
        cold.as_secs_f64()
    );
    for (what, count) in &requests {
        println!("  {count:>7}  {what}");
    }

    // 4. Refreshes: `args.refreshes` users get 120-second grants, spread out.
    world.atlassian.set_access_token_lifetime(SHORT_LIFETIME);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(world.client.clone(), FLEET_NS);
    let regrant_from = Instant::now();
    let pace = Duration::from_secs_f64(1.0 / REGRANT_RATE);
    for i in 0..args.refreshes {
        let due = regrant_from + pace * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let obj = users.get(&format!("u{i:05}")).await.unwrap();
        world.store(&obj, &account_of(i), Some("acme")).await;
    }
    world.atlassian.set_access_token_lifetime(Duration::from_secs(3600));
    let from = world.api.request_count();
    quiet(&world.api, from).await;
    let refreshed_before = world.atlassian.counters().grants("refresh_token");
    let cpu_from = cpu_seconds(operator.pid());
    let window = Instant::now();
    let deadline = Instant::now() + PHASE_LIMIT;
    while world.atlassian.counters().grants("refresh_token") - refreshed_before < args.refreshes as u64 {
        assert!(Instant::now() < deadline, "the re-granted users were not all refreshed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let from = world.api.request_count();
    quiet(&world.api, from).await;
    let seconds = window.elapsed().as_secs_f64();
    let cpu = cpu_seconds(operator.pid()) - cpu_from;
    let refreshes = world.atlassian.counters().grants("refresh_token") - refreshed_before;
    let per_thousand = (cpu - idle_rate * seconds) / refreshes as f64 * 1000.0;
    let reuse = world.atlassian.reuse_counters();
    println!(
        "refreshes: {refreshes} in a {seconds:.0} s window, {cpu:.2} CPU s ({per_thousand:.2} s per 1,000 beyond idle); refresh-token reuse {reuse:?}; RSS {:.1} MiB",
        memory(operator.pid()).0
    );
    let warnings = warnings + operator.warnings();
    operator.stop();
    if warnings > 0 {
        println!("({warnings} WARN/ERROR log lines)");
    }
    format!(
        "| {label} | {:.1} s | {steady_rss:.1} MiB | {peak:.1} MiB | {:.2}% | {:.2} s | {:.1} s | {total} | {token_calls} | {cold_rss:.1} MiB | {per_thousand:.2} s |",
        first_start.as_secs_f64(),
        idle_rate * 100.0,
        to_ready.as_secs_f64(),
        cold.as_secs_f64()
    )
}
