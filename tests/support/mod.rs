//! Shared harness of the end-to-end tests: the test control plane (or a real cluster when
//! `E2E_KUBECONFIG` is set), the Atlassian stand-in, the operator binary as a process, a
//! browser-like client, and waits that always end.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use confluence_auth_operator::crd::{CredentialResource, Phase};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use testbed::apiserver::ApiServer;
use testbed::atlassian::StandIn;

mod browser;
pub use browser::{Browser, Seen};

/// Every wait gives up after this long.
pub const WAIT: Duration = Duration::from_secs(30);
/// Demo world accounts of the stand-in: Ada Admin (acme and globex) and Alice Example (acme).
pub const ADA: &str = "557058:aaaaaaaa-0000-4000-8000-000000000001";
pub const ALICE: &str = "557058:bbbbbbbb-0000-4000-8000-000000000002";
/// The same account as [`ALICE`], under the name older tests use.
pub const BOB: &str = ALICE;
pub const ACME_CLOUD_ID: &str = "11111111-1111-4111-8111-111111111111";

/// The cluster side and the Atlassian side of one test.
pub struct Env {
    pub api: Option<ApiServer>,
    pub atlassian: StandIn,
    pub kubeconfig: PathBuf,
    pub client: Client,
    pub dir: tempfile::TempDir,
    /// The operator's own namespace in this test: [`OPERATOR_NS`] on the testbed; on a real
    /// cluster one per test, so that tests running at once neither share a Lease nor keys.
    pub operator_ns: String,
    /// Namespaces this test created (deleted when it ends against a real cluster).
    created: std::sync::Mutex<Vec<String>>,
}

/// The project's CRDs, which every test applies.
const CRDS: [&str; 2] = [
    "confluenceinstallations.confluence-auth.dev",
    "confluenceuserauths.confluence-auth.dev",
];

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (api, kubeconfig, operator_ns) = match std::env::var("E2E_KUBECONFIG") {
            Ok(path) if !path.is_empty() => {
                eprintln!("end-to-end against the cluster in E2E_KUBECONFIG={path}");
                let operator_ns = format!("cao-system-{}", &uuid_like()[..8]);
                (None, PathBuf::from(path), operator_ns)
            }
            _ => {
                let api = ApiServer::start().await.unwrap();
                let path = dir.path().join("kubeconfig");
                api.write_kubeconfig(&path).unwrap();
                eprintln!("end-to-end against the testbed API server at {}", api.url());
                (Some(api), path, OPERATOR_NS.to_string())
            }
        };
        let atlassian = StandIn::demo_world().await.unwrap();
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).unwrap(),
            &KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let client = Client::try_from(config).unwrap();
        let env = Env {
            api,
            atlassian,
            kubeconfig,
            client,
            dir,
            operator_ns,
            created: Default::default(),
        };
        // Tests starting at once on a fresh cluster race to create the CRDs: the losers' apply
        // fails with AlreadyExists and succeeds when repeated.
        let crds = repo("crds").to_string_lossy().into_owned();
        for attempt in 1.. {
            let out = env.kubectl(&["apply", "-f", &crds]);
            if out.status.success() {
                break;
            }
            assert!(
                attempt < 5,
                "kubectl apply of the CRDs keeps failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200 * attempt));
        }
        // A real server serves a new CRD's resources only once it is Established.
        let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        let names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
        wait.extend(names.iter().map(String::as_str));
        env.kubectl_ok(&wait);
        env
    }

    /// True against a real cluster (`E2E_KUBECONFIG`), false on the testbed.
    pub fn real_cluster(&self) -> bool {
        self.api.is_none()
    }

    /// Runs kubectl against this environment.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl and insists it succeeds.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A fresh namespace for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &uuid_like()[..8]);
        self.ensure_namespace(&name).await;
        name
    }

    /// Creates a namespace unless it exists.
    pub async fn ensure_namespace(&self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => self.created.lock().unwrap().push(name.to_string()),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("creating namespace {name}: {e}"),
        }
    }

    /// Deletes `namespace` with this test's own when it ends (against a real cluster).
    pub fn delete_on_drop(&self, namespace: &str) {
        self.created.lock().unwrap().push(namespace.to_string());
    }

    /// The namespaces this test created, except the operator's own.
    pub fn test_namespaces(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n != self.operator_ns)
            .cloned()
            .collect()
    }
}

impl Drop for Env {
    /// Against a real cluster, deletes the namespaces this test created (and with them
    /// everything in them). The CRDs are shared by the tests running at once:
    /// `scripts/test` removes them after the run when it installed them.
    fn drop(&mut self) {
        if !self.real_cluster() {
            return;
        }
        let created = std::mem::take(&mut *self.created.lock().unwrap());
        if created.is_empty() {
            return;
        }
        let mut args = vec!["delete", "namespace", "--ignore-not-found", "--wait=false"];
        args.extend(created.iter().map(String::as_str));
        let out = self.kubectl(&args);
        if !out.status.success() {
            eprintln!(
                "cleaning up namespaces {created:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn uuid_like() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// The Lease of the tests' operators (in each test's operator namespace).
pub const E2E_LEASE: &str = "confluence-auth-operator-e2e";

/// Which namespaces a spawned operator watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The test's own namespaces (all it created so far), unless the flags name some.
    TestNamespaces,
    /// Every namespace (only on the testbed: on a real cluster it would touch other tests).
    AllNamespaces,
}

/// The operator binary, running.
pub struct Operator {
    child: Child,
    pub public_url: String,
    pub metrics_url: String,
    pub log: PathBuf,
}

impl Operator {
    pub fn spawn(env: &Env, operator_namespace: &str) -> Operator {
        Self::spawn_with(env, operator_namespace, &[])
    }

    /// Like [`Operator::spawn`], with extra `run` flags.
    pub fn spawn_with(env: &Env, operator_namespace: &str, extra: &[&str]) -> Operator {
        Self::spawn_logging(env, operator_namespace, "json", extra)
    }

    /// Like [`Operator::spawn_with`], watching every namespace (testbed only).
    pub fn spawn_all_namespaces(env: &Env, operator_namespace: &str, extra: &[&str]) -> Operator {
        assert!(
            !env.real_cluster(),
            "an all-namespaces operator would reconcile the other tests' resources on a real cluster"
        );
        Self::spawn_scoped(env, operator_namespace, "json", extra, Scope::AllNamespaces)
    }

    /// Like [`Operator::spawn_with`], logging in `log_format` (`plain` or `json`).
    pub fn spawn_logging(env: &Env, operator_namespace: &str, log_format: &str, extra: &[&str]) -> Operator {
        Self::spawn_scoped(env, operator_namespace, log_format, extra, Scope::TestNamespaces)
    }

    /// Starts the operator on ports it binds itself (port 0) and waits for its `listening` log
    /// line, which names them.
    pub fn spawn_scoped(
        env: &Env,
        operator_namespace: &str,
        log_format: &str,
        extra: &[&str],
        scope: Scope,
    ) -> Operator {
        let mut operator = Self::start_process(env, operator_namespace, log_format, extra, scope);
        operator.await_listening(env);
        operator
    }

    /// Starts an operator that is expected to refuse to start (no `listening` line is awaited):
    /// follow with [`Operator::wait_exit`].
    pub fn spawn_expecting_refusal(env: &Env, operator_namespace: &str, extra: &[&str]) -> Operator {
        Self::start_process(env, operator_namespace, "json", extra, Scope::TestNamespaces)
    }

    fn start_process(env: &Env, operator_namespace: &str, log_format: &str, extra: &[&str], scope: Scope) -> Operator {
        static SPAWNED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = env.dir.path().join(format!("operator-{n}.log"));
        let watched = env.test_namespaces().join(",");
        let mut command = Command::new(env!("CARGO_BIN_EXE_confluence-auth-operator"));
        command
            .args(["--log-format", log_format, "run"])
            .args(["--public-url", "http://127.0.0.1:0"])
            .args(["--atlassian-auth-url", &env.atlassian.url()])
            .args(["--atlassian-api-url", &env.atlassian.url()])
            .args([
                "--atlassian-tenant-info-url",
                &format!("{}/site/{{site}}/_edge/tenant_info", env.atlassian.url()),
            ])
            .args(["--webhook-addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--operator-namespace", operator_namespace]);
        if !extra.contains(&"--atlassian-timeout") {
            command.args(["--atlassian-timeout", "2s"]);
        }
        if !extra.contains(&"--lease-name") {
            // Not the default name: a demo (tests/demo.rs) looks for that one cluster-wide.
            command.args(["--lease-name", E2E_LEASE]);
        }
        if scope == Scope::TestNamespaces && !extra.contains(&"--namespaces") {
            assert!(
                !watched.is_empty(),
                "create the test's namespaces before its operator: it watches only those"
            );
            command.args(["--namespaces", &watched]);
        }
        let child = command
            .args(extra)
            .env("KUBECONFIG", &env.kubeconfig)
            // The tests fire dozens of requests from one address in a second; the limiter stays
            // on, with a burst no test reaches (a `--webhook-rate-burst` flag overrides this).
            .env("WEBHOOK_RATE_BURST", "100000")
            .env("RUST_LOG", "info,confluence_auth_operator=debug")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("the operator binary starts");
        Operator {
            child,
            public_url: String::new(),
            metrics_url: String::new(),
            log,
        }
    }

    fn await_listening(&mut self, env: &Env) {
        let operator = self;
        // The operator binds before it talks to the cluster, so waiting here (blocking) does
        // not hold up an in-process API server.
        let deadline = std::time::Instant::now() + WAIT;
        let (webhook, metrics) = loop {
            if let Some(found) = listening_line(&operator.logs()) {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the operator did not log its listening addresses; its log:\n{}",
                operator.logs()
            );
            if let Ok(Some(exit)) = operator.child.try_wait() {
                panic!("the operator exited ({exit}); its log:\n{}", operator.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        operator.public_url = format!("http://{webhook}");
        operator.metrics_url = format!("http://{metrics}");
        // Callback URLs are exact on the stand-in, as on Atlassian: register this operator's.
        env.atlassian.add_callback(
            testbed::atlassian::DEMO_CLIENT_ID,
            &format!("{}/oauth/callback", operator.public_url),
        );
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", self.metrics_url);
        let deadline = tokio::time::Instant::now() + WAIT;
        while http.get(&url).send().await.ok().filter(|r| r.status() == 200).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the operator did not become ready; its log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Operator {
    /// Sends SIGTERM (what the kubelet sends first) without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Stops the process cleanly (SIGTERM: reconciles finish, the Lease is released) and waits.
    pub fn stop(&mut self) {
        self.terminate();
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the operator did not stop on SIGTERM; its log:\n{}", self.logs());
    }

    /// Kills the process (SIGKILL: no cleanup at all).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it yields a value, panicking after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(WAIT, what, check).await
}

/// Polls `check` until it yields a value, panicking after `limit`.
pub async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens the current link of `name` as `account` (auto-consent at the stand-in) and waits for
/// Ready.
pub async fn consent<K: CredentialResource>(env: &Env, api: &Api<K>, name: &str, account: &str) -> K {
    let link = link_of(api, name).await;
    env.atlassian.consent_as(account);
    let page = Browser::new().authorize(&link).await;
    assert_eq!(page.status, 200, "{name}: {}", page.body);
    ready(api, name).await
}

/// Adds stand-in account `i` of a group (`group`: 8 hex digits that keep tests' ids apart)
/// with access to acme, named `{who} {i}`; returns its account id.
pub fn acme_account(env: &Env, group: &str, who: &str, i: usize) -> String {
    let id = format!("557058:{group}-0000-4000-8000-{i:012}");
    env.atlassian.add_account(testbed::atlassian::Account {
        account_id: id.clone(),
        name: format!("{who} {i}"),
        email: format!(
            "{}{i}@acme.example",
            who.split(' ').next().unwrap_or(who).to_lowercase()
        ),
        sites: vec!["acme.atlassian.net".into()],
    });
    id
}

impl Browser {
    /// Opens a start link: the confirmation page, then its button (a POST of the page's form).
    /// Returns the answer to the POST (a 303 to Atlassian when all is well).
    pub async fn confirm(&mut self, start_link: &str) -> Seen {
        let page = self.get(start_link).await;
        assert_eq!(page.status, 200, "start link answered {}: {}", page.status, page.body);
        let form = ConfirmForm::parse(&page.body);
        let origin = start_link.split("/oauth/").next().unwrap();
        let action = format!("{origin}{}", form.action);
        self.post_form(&action, &[("nonce", &form.nonce), ("csrf", &form.csrf)])
            .await
    }

    /// Start link → confirmation → Atlassian consent → the callback URL Atlassian sends the
    /// browser to (not yet opened).
    pub async fn consent(&mut self, start_link: &str) -> String {
        let start = self.confirm(start_link).await;
        assert_eq!(
            start.status, 303,
            "the confirmation answered {}: {}",
            start.status, start.body
        );
        let consent = self.get(start.location.as_deref().unwrap()).await;
        assert_eq!(
            consent.status, 302,
            "Atlassian consent answered {}: {}",
            consent.status, consent.body
        );
        consent.location.unwrap()
    }

    /// The whole flow: start link → confirmation → consent → callback page.
    pub async fn authorize(&mut self, start_link: &str) -> Seen {
        let callback = self.consent(start_link).await;
        self.get(&callback).await
    }
}

/// The form of a confirmation page.
#[derive(Debug, Clone)]
pub struct ConfirmForm {
    pub action: String,
    pub nonce: String,
    pub csrf: String,
}

impl ConfirmForm {
    /// Reads the form's action and hidden fields out of the page.
    pub fn parse(html: &str) -> ConfirmForm {
        let attr = |marker: &str| -> String {
            let start = html
                .find(marker)
                .unwrap_or_else(|| panic!("no {marker} in the page: {html}"))
                + marker.len();
            let rest = &html[start..];
            rest[..rest.find('"').unwrap()].replace("&amp;", "&")
        };
        ConfirmForm {
            action: attr("action=\""),
            nonce: attr("name=\"nonce\" value=\""),
            csrf: attr("name=\"csrf\" value=\""),
        }
    }
}

/// The operator's own namespace in the end-to-end tests on the testbed (see [`Env::operator_ns`]).
pub const OPERATOR_NS: &str = "confluence-auth-system";

/// A control plane, a fresh namespace for the test, and a running operator watching it.
pub async fn with_operator(prefix: &str) -> (Env, Operator, String) {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace(prefix).await;
    let operator = Operator::spawn(&env, &env.operator_ns);
    operator.ready().await;
    (env, operator, ns)
}

/// The `webhook` and `metrics` addresses of the operator's `listening` log line (JSON or plain).
fn listening_line(log: &str) -> Option<(String, String)> {
    let line = log
        .lines()
        .find(|l| l.contains("listening") && l.contains("webhook") && l.contains("metrics"))?;
    let field = |key: &str| -> Option<String> {
        let start = [format!("\"{key}\":\""), format!("{key}=")]
            .iter()
            .find_map(|marker| line.find(marker.as_str()).map(|i| i + marker.len()))?;
        let addr: String = line[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
            .collect();
        (!addr.is_empty()).then_some(addr)
    };
    Some((field("webhook")?, field("metrics")?))
}

impl Env {
    /// `kubectl apply -n <ns>` of files under `examples/`.
    pub fn apply_examples(&self, ns: &str, files: &[&str]) {
        let paths: Vec<String> = files
            .iter()
            .map(|f| repo("examples").join(f).to_string_lossy().into_owned())
            .collect();
        let mut args = vec!["apply", "-n", ns];
        for path in &paths {
            args.extend(["-f", path.as_str()]);
        }
        self.kubectl_ok(&args);
    }
}

/// The authorization link once the operator publishes it.
pub async fn link_of<K: CredentialResource>(api: &Api<K>, name: &str) -> String {
    eventually("an authorization link in status", || async {
        api.get(name)
            .await
            .ok()
            .and_then(|o| o.credential().and_then(|c| c.authorization_url.clone()))
    })
    .await
}

/// The object once its phase is Ready.
pub async fn ready<K: CredentialResource>(api: &Api<K>, name: &str) -> K {
    eventually("phase Ready", || async {
        api.get(name)
            .await
            .ok()
            .filter(|o| o.credential().and_then(|c| c.phase) == Some(Phase::Ready))
    })
    .await
}

pub mod leaks;

impl Operator {
    /// The exit status once the process has ended (`None` while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (up to [`WAIT`]) for the process to end by itself, and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the operator kept running; its log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Creates the user auth `name` (user id `user_<name>`) in installation `acme` of `ns`.
pub async fn create_user(
    client: &Client,
    ns: &str,
    name: &str,
) -> Api<confluence_auth_operator::crd::ConfluenceUserAuth> {
    let api = Api::namespaced(client.clone(), ns);
    let obj = serde_json::from_value(serde_json::json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceUserAuth",
        "metadata": {"name": name},
        "spec": {"installationRef": {"name": "acme"}, "userId": format!("user_{name}")},
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    api
}

/// Creates the installation `acme` in `ns` with this spec.
pub async fn create_installation(
    client: &Client,
    ns: &str,
    spec: serde_json::Value,
) -> Api<confluence_auth_operator::crd::ConfluenceInstallation> {
    let api = Api::namespaced(client.clone(), ns);
    let obj = serde_json::from_value(serde_json::json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceInstallation",
        "metadata": {"name": "acme"},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    api
}

/// Creates `acme`, a 3LO installation of the example app for acme.atlassian.net, with these
/// durations.
pub async fn installation(
    client: &Client,
    ns: &str,
    refresh_before: &str,
    health_check_interval: &str,
) -> Api<confluence_auth_operator::crd::ConfluenceInstallation> {
    create_installation(
        client,
        ns,
        serde_json::json!({
            "clientId": "demo-client",
            "clientSecretRef": {"name": "atlassian-app", "key": "client-secret"},
            "scopes": ["offline_access", "read:me", "read:confluence-content.all"],
            "site": "acme.atlassian.net",
            "refreshBefore": refresh_before,
            "healthCheckInterval": health_check_interval,
        }),
    )
    .await
}
