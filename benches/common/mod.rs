//! Shared harness of the benches: the test control plane and the Atlassian stand-in in this
//! process (as `tests/support` starts them), the release binary of the operator (or of `proxy` /
//! `gateway`) as a process, a browser-like client, latency statistics and waits that end.
#![allow(dead_code)] // each bench uses a different part of the harness

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use testbed::apiserver::ApiServer;
use testbed::atlassian::StandIn;

#[path = "../../tests/support/browser.rs"]
mod browser;
pub use browser::Browser;

/// The operator's own namespace in the benches.
pub const OPERATOR_NS: &str = "confluence-auth-system";
/// The demo world's site every bench account can use.
pub const ACME: &str = "acme.atlassian.net";
/// The demo admin (consents for the installation).
pub const ADA: &str = "557058:aaaaaaaa-0000-4000-8000-000000000001";

/// An integer parameter from the environment, or `default`.
pub fn param(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The API server, the stand-in, a client and a kubeconfig for processes.
pub struct Plane {
    pub api: ApiServer,
    pub atlassian: StandIn,
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Plane {
    /// Starts both servers (demo world) and installs the CRDs.
    pub async fn start() -> Plane {
        let api = ApiServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let atlassian = StandIn::demo_world().await.unwrap();
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = Client::try_from(config).unwrap();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in confluence_auth_operator::crd::all() {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        Plane {
            api,
            atlassian,
            client,
            kubeconfig,
            dir,
        }
    }

    /// Creates a namespace.
    pub async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns).await.unwrap();
    }

    /// The demo app's client secret as `atlassian-app` in `ns` (what `examples/client-secret.yaml` holds).
    pub async fn client_secret(&self, ns: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("atlassian-app".into()),
                ..Default::default()
            },
            string_data: Some([("client-secret".to_string(), "demo-secret".to_string())].into()),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }

    /// The stand-in's clock URL (`--clock-url`).
    pub fn clock_url(&self) -> String {
        format!("{}/_testbed/clock", self.atlassian.url())
    }
}

/// The release binary, running; killed when dropped.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

/// The binary under test (built in the bench profile with the bench).
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_confluence-auth-operator")
}

impl Process {
    /// Starts `confluence-auth-operator --log-format json ARGS` with `env`, logging to a file in `dir`.
    pub fn spawn(dir: &std::path::Path, label: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let log = dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(binary());
        command.args(["--log-format", "json"]).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("the operator binary starts");
        Process { child, log }
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of JSON field `key` in the first log line containing `marker`, once it appears.
    pub async fn log_field(&mut self, marker: &str, key: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(marker))
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
                && let Some(found) = find_key(&value, key)
            {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}); its log:\n{logs}", binary());
            }
            assert!(Instant::now() < deadline, "no {marker:?} line; the log:\n{logs}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process has used so far (Linux `/proc`).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.child.id())
    }

    /// Resident memory in MiB (Linux `/proc`).
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// SIGTERM, then waits for the exit (a clean stop releases the Lease).
    pub async fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "no exit on SIGTERM; log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of process `pid` so far; 0 when unreadable.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

fn find_key(value: &serde_json::Value, key: &str) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(|v| v.as_str().map(str::to_string))
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        _ => None,
    }
}

/// The operator (`run`) watching `namespaces`, on ports it binds itself.
pub struct Operator {
    pub process: Process,
    pub public_url: String,
    pub metrics_url: String,
}

impl Operator {
    /// Starts the operator and waits until `/readyz` answers 200 and its callback is registered.
    pub async fn start(plane: &Plane, label: &str, namespaces: &str, extra: &[&str]) -> Operator {
        let atlassian = plane.atlassian.url();
        let tenant = format!("{atlassian}/site/{{site}}/_edge/tenant_info");
        let clock = plane.clock_url();
        let kubeconfig = plane.kubeconfig.to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "--public-url",
            "http://127.0.0.1:0",
            "--atlassian-auth-url",
            &atlassian,
            "--atlassian-api-url",
            &atlassian,
            "--atlassian-tenant-info-url",
            &tenant,
            "--webhook-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--operator-namespace",
            OPERATOR_NS,
            "--lease-name",
            "bench",
            "--namespaces",
            namespaces,
            // One client (this bench) opens every link: no per-client limit.
            "--webhook-rate-limit",
            "0",
            "--clock-url",
            &clock,
        ];
        args.extend_from_slice(extra);
        let mut process = Process::spawn(
            plane.dir.path(),
            label,
            &args,
            &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")],
        );
        let webhook = process.log_field("listening", "webhook").await;
        let metrics = process.log_field("listening", "metrics").await;
        let operator = Operator {
            process,
            public_url: format!("http://{webhook}"),
            metrics_url: format!("http://{metrics}"),
        };
        plane.atlassian.add_callback(
            testbed::atlassian::DEMO_CLIENT_ID,
            &format!("{}/oauth/callback", operator.public_url),
        );
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", operator.metrics_url);
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(&url).send().await.ok().filter(|r| r.status() == 200).is_none() {
            assert!(
                Instant::now() < deadline,
                "not ready; log:\n{}",
                operator.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        operator
    }
}

/// Polls `check` every `every` until it yields, panicking after `limit`.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Latency figures of one series.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Stats {
    /// Percentiles (nearest rank) of `samples`.
    pub fn of(samples: &[Duration]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let rank = |p: f64| {
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[i]
        };
        Stats {
            n: sorted.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: *sorted.last().unwrap(),
        }
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

impl Browser {
    /// Start link → confirmation page → its button → the stand-in's consent page → accept as
    /// `account`: the callback URL the stand-in sends the browser to (not yet opened).
    pub async fn consent(&mut self, start_link: &str, account: &str) -> String {
        let page = self.get(start_link).await;
        assert_eq!(page.status, 200, "start link answered {}: {}", page.status, page.body);
        let origin = start_link.split("/oauth/").next().unwrap();
        let action = format!("{origin}{}", attr(&page.body, "action=\""));
        let nonce = attr(&page.body, "name=\"nonce\" value=\"");
        let csrf = attr(&page.body, "name=\"csrf\" value=\"");
        let start = self.post_form(&action, &[("nonce", &nonce), ("csrf", &csrf)]).await;
        assert_eq!(
            start.status, 303,
            "the confirmation answered {}: {}",
            start.status, start.body
        );
        let authorize = start.location.unwrap();
        let consent_page = self.get(&authorize).await;
        assert_eq!(
            consent_page.status, 200,
            "the stand-in's consent page: {}",
            consent_page.body
        );
        let request = attr(&consent_page.body, "name=\"request\" value=\"");
        let stand_in = authorize.split("/authorize").next().unwrap();
        let accepted = self
            .post_form(
                &format!("{stand_in}/authorize/consent"),
                &[
                    ("request", &request),
                    ("account_id", account),
                    ("site", ACME),
                    ("decision", "accept"),
                ],
            )
            .await;
        assert_eq!(
            accepted.status, 302,
            "the consent answered {}: {}",
            accepted.status, accepted.body
        );
        accepted.location.unwrap()
    }
}

/// An attribute value after `marker` in an HTML page.
fn attr(html: &str, marker: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page: {html}"))
        + marker.len();
    let rest = &html[start..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&")
}

/// Account `i` of a bench (`group` keeps the benches' account ranges apart), with access to acme.
pub fn bench_account(atlassian: &StandIn, group: u32, i: usize) -> String {
    let id = format!("557058:{group:08x}-0000-4000-8000-{i:012}");
    atlassian.add_account(testbed::atlassian::Account {
        account_id: id.clone(),
        name: format!("Bench user {i}"),
        email: format!("bench{i}@acme.example"),
        sites: vec![ACME.into()],
    });
    id
}
