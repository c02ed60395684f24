//! `confluence-auth-operator demo`: the whole product on one machine. Without a configured
//! cluster it starts the embedded test control plane (testbed API server); Atlassian is always
//! the testbed stand-in. It applies the CRDs and the examples, runs the operator, walks the
//! browser consent for the installation and for a user, and shows what pods would mount.
//!
//! On a configured cluster it stays in its namespace: its operator watches only `demo`, keeps its
//! keys Secret and its Lease there under names of its own, installs the CRDs only when they are
//! missing, and refuses to start while another operator holds the default Lease (unless
//! `--ignore-running-operator`), since both would then reconcile `demo`.

use std::io::IsTerminal;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::{Client, Config, ResourceExt};
use testbed::apiserver::ApiServer;
use testbed::atlassian::{
    DEMO_ADMIN_ACCOUNT_ID, DEMO_ADMIN_NAME, DEMO_CLIENT_ID, DEMO_USER_ACCOUNT_ID, DEMO_USER_NAME, StandIn,
};

use crate::config::{DemoArgs, RunArgs};
use crate::crd::{
    self, ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus, Phase, conditions,
};
use crate::operator;

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAMESPACE: &str = "demo";
/// Lifetime of the stand-in's access tokens in the demo.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30);
/// The demo's operator keeps its keys Secret and its Lease in the demo namespace too: on a
/// real cluster nothing outside `demo` is written (besides missing CRDs).
const OPERATOR_NAMESPACE: &str = NAMESPACE;
/// The demo operator's keys Secret, named apart from a real operator's.
const KEYS_SECRET: &str = "confluence-auth-demo-keys";
/// The demo operator's Lease, named apart from a real operator's default Lease.
const LEASE_NAME: &str = "confluence-auth-demo";
const EXAMPLES: [(&str, &str); 3] = [
    ("client-secret.yaml", include_str!("../examples/client-secret.yaml")),
    ("installation.yaml", include_str!("../examples/installation.yaml")),
    ("user-auth.yaml", include_str!("../examples/user-auth.yaml")),
];

/// Runs the demo until Ctrl-C (or right after the flows with `--exit-when-ready`).
pub async fn run(args: DemoArgs) -> DemoResult<()> {
    let workdir = tempfile::tempdir()?;
    let (_apiserver, kubeconfig) = cluster(&workdir).await?;
    let client = Client::try_from(
        Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default()).await?,
    )?;
    say(&format!(
        "this demo touches only namespace `{NAMESPACE}`: its operator watches only `{NAMESPACE}` and keeps \
         its keys Secret `{KEYS_SECRET}` and Lease `{LEASE_NAME}` there; the CRDs are installed only if \
         missing; nothing else in the cluster is changed (`kubectl delete namespace {NAMESPACE}` removes it all)"
    ));
    if !args.ignore_running_operator {
        refuse_if_an_operator_runs(&client).await?;
    }
    let atlassian = StandIn::demo_world().await?;
    say(&format!("Atlassian stand-in at {}", atlassian.url()));

    install(&client).await?;
    // Short-lived tokens so the whole lifecycle shows within a minute.
    atlassian.set_access_token_lifetime(TOKEN_LIFETIME);
    let installations: Api<ConfluenceInstallation> = Api::namespaced(client.clone(), NAMESPACE);
    installations
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"refreshBefore": "10s", "healthCheckInterval": "20s"}})),
        )
        .await?;
    say(&format!(
        "access tokens live {}s here (Atlassian: 1h); refreshBefore 10s, healthCheckInterval 20s",
        TOKEN_LIFETIME.as_secs()
    ));
    // Port 0 for both servers: the public URL takes the port the web server binds.
    let run_args = RunArgs {
        public_url: "http://127.0.0.1:0".parse()?,
        atlassian_auth_url: atlassian.url().parse()?,
        atlassian_api_url: atlassian.url().parse()?,
        atlassian_tenant_info_url: format!(
            "{}/site/{{site}}/_edge/tenant_info",
            atlassian.url().trim_end_matches('/')
        ),
        atlassian_timeout: Duration::from_secs(10),
        webhook_addr: "127.0.0.1:0".parse()?,
        metrics_addr: "127.0.0.1:0".parse()?,
        operator_namespace: Some(OPERATOR_NAMESPACE.into()),
        keys_secret: KEYS_SECRET.into(),
        namespaces: vec![NAMESPACE.into()],
        selector: None,
        max_concurrent_reconciles: 32,
        require_client_secret_label: false,
        link_ttl: Duration::from_secs(24 * 3600),
        allowed_site_suffixes: crate::validation::DEFAULT_SITE_SUFFIXES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        webhook_rate_limit: 2.0,
        webhook_rate_burst: 20,
        trust_forwarded_for: false,
        webhook_max_connections: 1024,
        webhook_header_timeout: Duration::from_secs(10),
        lease_name: LEASE_NAME.into(),
        lease_duration: Duration::from_secs(15),
        shutdown_timeout: Duration::from_secs(25),
        clock_url: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator_client = client.clone();
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel::<operator::Listening>();
    let operator = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        operator::run(run_args, operator_client, stop, move |l| {
            say(&format!(
                "operator: OAuth web server on {}, metrics on {}",
                l.webhook, l.metrics
            ));
            let _ = listening_tx.send(l);
        })
        .await
    });
    let Ok(listening) = listening_rx.await else {
        // The operator stopped before it listened: its error says why.
        operator.await??;
        return Err("the operator stopped before it listened".into());
    };
    // The stand-in, like Atlassian, accepts only exactly registered callback URLs.
    atlassian.add_callback(DEMO_CLIENT_ID, &format!("http://{}/oauth/callback", listening.webhook));

    let users: Api<ConfluenceUserAuth> = Api::namespaced(client.clone(), NAMESPACE);
    let link = wait_for(&installations, "acme", |c| {
        c.credential().and_then(|s| s.authorization_url.clone())
    })
    .await?;
    say(&format!(
        "ConfluenceInstallation demo/acme is AwaitingAuthorization; its link:\n    {link}"
    ));
    say(&format!(
        "an admin of acme.atlassian.net opens that link: consenting as the stand-in's admin \"{DEMO_ADMIN_NAME}\"..."
    ));
    atlassian.consent_as(DEMO_ADMIN_ACCOUNT_ID);
    browse(&link).await?;
    let installation = wait_for(&installations, "acme", ready).await?;
    let installed_by = installation
        .credential()
        .and_then(|s| s.installed_by.clone())
        .unwrap_or_default();
    say(&format!(
        "ConfluenceInstallation demo/acme is Ready: installed by {} ({installed_by}) for {}",
        if installed_by == DEMO_ADMIN_ACCOUNT_ID {
            DEMO_ADMIN_NAME
        } else {
            "another account"
        },
        installation
            .credential()
            .and_then(|s| s.site_url.clone())
            .unwrap_or_default(),
    ));

    let user_link = wait_for(&users, "alice", |c| {
        c.credential().and_then(|s| s.authorization_url.clone())
    })
    .await?;
    say(&format!(
        "ConfluenceUserAuth demo/alice is AwaitingAuthorization; its link:\n    {user_link}"
    ));
    say(&format!(
        "Alice opens her link: consenting as the stand-in's user \"{DEMO_USER_NAME}\"..."
    ));
    atlassian.consent_as(DEMO_USER_ACCOUNT_ID);
    browse(&user_link).await?;
    let user = wait_for(&users, "alice", ready).await?;
    let status = user.status.as_ref();
    say(&format!(
        "ConfluenceUserAuth demo/alice is Ready: consented by {} ({}), user id {}",
        status.and_then(|s| s.display_name.clone()).unwrap_or_default(),
        status.and_then(|s| s.account_id.clone()).unwrap_or_default(),
        user.spec.user_id,
    ));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let token = secrets.get("alice-token").await?;
    let keys: Vec<String> = token.data.unwrap_or_default().into_keys().collect();
    say(&format!(
        "Secret demo/alice-token (what pods mount) has keys: {}",
        keys.join(", ")
    ));
    say(&format!(
        "kubectl --kubeconfig {} get confluence-auth -n {NAMESPACE}",
        kubeconfig.display()
    ));

    if !args.exit_when_ready {
        say("the demo keeps running and shows each refresh, health check and phase change; Ctrl-C stops it");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            result = follow(&installations, &users) => result?,
        }
    }
    let _ = stop_tx.send(());
    operator.await??;
    say("demo finished: both credentials Ready");
    Ok(())
}

/// The configured cluster (`KUBECONFIG`), else the embedded test control plane.
async fn cluster(workdir: &tempfile::TempDir) -> DemoResult<(Option<ApiServer>, std::path::PathBuf)> {
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        say(&format!("using the cluster in KUBECONFIG={}", path.to_string_lossy()));
        return Ok((None, path.into()));
    }
    let server = ApiServer::start().await?;
    let path = workdir.path().join("kubeconfig");
    server.write_kubeconfig(&path)?;
    say(&format!(
        "no cluster configured: embedded test control plane at {} (kubeconfig {})",
        server.url(),
        path.display()
    ));
    Ok((Some(server), path))
}

/// CRDs, namespaces and the examples, applied server-side.
async fn install(client: &Client) -> DemoResult<()> {
    let apply = PatchParams::apply("confluence-auth-demo").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for definition in crd::all() {
        // A cluster's own CRDs (maybe a newer version) are not the demo's to change.
        if crds.get_opt(&definition.name_any()).await?.is_some() {
            say(&format!(
                "CRD {} is already installed: left as it is",
                definition.name_any()
            ));
            continue;
        }
        crds.patch(&definition.name_any(), &apply, &Patch::Apply(&definition))
            .await?;
        established(&crds, &definition.name_any()).await?;
        say(&format!("installed CRD {}", definition.name_any()));
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    for (file, yaml) in EXAMPLES {
        let object: DynamicObject = serde_yaml_ng::from_str(yaml)?;
        let types = object
            .types
            .clone()
            .ok_or_else(|| format!("examples/{file} has no apiVersion/kind"))?;
        let (group, version) = types.api_version.rsplit_once('/').unwrap_or(("", &types.api_version));
        let resource = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(group, version, &types.kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
        api.patch(&object.name_any(), &apply, &Patch::Apply(&object)).await?;
        say(&format!("applied examples/{file}"));
    }
    Ok(())
}

/// Waits until a new CRD is `Established` (a real server serves its kind only then).
async fn established(crds: &Api<CustomResourceDefinition>, name: &str) -> DemoResult<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get(name).await?;
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("CRD {name} was not Established within 30s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows a start link as a browser would: the confirmation page, its button, Atlassian's
/// consent, the callback.
async fn browse(link: &str) -> DemoResult<()> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = http.get(link).send().await?;
    let confirm_cookie = first_cookie(&page);
    let html = page.text().await?;
    let field = |marker: &str| -> DemoResult<String> {
        let start = html.find(marker).ok_or("the confirmation page has no form")? + marker.len();
        let rest = &html[start..];
        Ok(rest[..rest.find('"').ok_or("malformed form")?].to_string())
    };
    let (action, nonce, csrf) = (
        field("action=\"")?,
        field("name=\"nonce\" value=\"")?,
        field("name=\"csrf\" value=\"")?,
    );
    say("the link shows a confirmation page naming the resource; pressing its button");
    let origin = link.split("/oauth/").next().unwrap_or_default();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("nonce", nonce), ("csrf", csrf)])
        .finish();
    let start = http
        .post(format!("{origin}{action}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("Cookie", confirm_cookie.unwrap_or_default())
        .body(body)
        .send()
        .await?;
    let cookie = first_cookie(&start);
    let consent_url = location(&start)?;
    let consent = http.get(consent_url).send().await?;
    let callback = location(&consent)?;
    let page = http
        .get(callback)
        .header("Cookie", cookie.unwrap_or_default())
        .send()
        .await?;
    let status = page.status();
    let body = page.text().await?;
    let message = body
        .split("<p>")
        .nth(1)
        .and_then(|p| p.split("</p>").next())
        .unwrap_or("")
        .to_string();
    say(&format!("callback page ({status}): {message}"));
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the callback answered {status}").into())
    }
}

/// The `name=value` of the first `Set-Cookie` of an answer.
fn first_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

fn location(response: &reqwest::Response) -> DemoResult<String> {
    let location = response.headers().get("location").and_then(|v| v.to_str().ok());
    Ok(location
        .ok_or_else(|| format!("expected a redirect, got {}", response.status()))?
        .to_string())
}

fn ready<K: CredentialResource>(obj: &K) -> Option<K> {
    (obj.credential().and_then(|s| s.phase) == Some(Phase::Ready)).then(|| obj.clone())
}

async fn wait_for<K: CredentialResource, T>(
    api: &Api<K>,
    name: &str,
    check: impl Fn(&K) -> Option<T>,
) -> DemoResult<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = api.get_opt(name).await?.as_ref().and_then(&check) {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{name} did not get there within 60s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line of the demo's story on stdout: `==> ` first, bold on a terminal, so it stands out
/// from the operator's log lines (stderr).
fn say(line: &str) {
    if std::io::stdout().is_terminal() {
        println!("\x1b[1;36m==>\x1b[0m \x1b[1m{line}\x1b[0m");
    } else {
        println!("==> {line}");
    }
}

/// Stops the demo when an operator already holds the default Lease somewhere in the cluster:
/// it would reconcile the demo's resources too, against real Atlassian.
async fn refuse_if_an_operator_runs(client: &Client) -> DemoResult<()> {
    let leases: Api<Lease> = Api::all(client.clone());
    let list = match leases.list(&Default::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            say("could not list Leases (forbidden): not checking for a running operator");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let now = jiff::Timestamp::now();
    for lease in list
        .items
        .iter()
        .filter(|l| l.name_any() == crate::leader::DEFAULT_LEASE_NAME)
    {
        let Some(spec) = &lease.spec else { continue };
        let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
            continue;
        };
        let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
        let valid_for = jiff::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
        if renewed.is_some_and(|t| t + valid_for > now) {
            return Err(format!(
                "an operator already runs in this cluster: {holder} holds the Lease {}/{}. Its \
                 controllers may watch namespace `{NAMESPACE}` too and would fight the demo's for the \
                 demo resources; stop it, or pass --ignore-running-operator if it watches other namespaces only",
                lease.namespace().unwrap_or_default(),
                lease.name_any(),
            )
            .into());
        }
    }
    Ok(())
}

/// What one line of the lifecycle log compares.
#[derive(Clone, Default, PartialEq)]
struct Seen {
    phase: Option<Phase>,
    last_refresh: Option<jiff::Timestamp>,
    last_health_check: Option<jiff::Timestamp>,
}

fn seen(status: Option<&CredentialStatus>) -> Seen {
    let Some(status) = status else {
        return Seen::default();
    };
    Seen {
        phase: status.phase,
        last_refresh: status.last_refresh_time.as_ref().map(|t| t.0),
        last_health_check: status.last_health_check_time.as_ref().map(|t| t.0),
    }
}

/// Prints one line per refresh, health check and phase change of both resources, forever.
async fn follow(installations: &Api<ConfluenceInstallation>, users: &Api<ConfluenceUserAuth>) -> DemoResult<()> {
    let mut before: [Seen; 2] = Default::default();
    let mut first = true;
    loop {
        let statuses = [
            (
                "ConfluenceInstallation demo/acme",
                installations.get("acme").await?.credential().cloned(),
            ),
            (
                "ConfluenceUserAuth demo/alice",
                users.get("alice").await?.credential().cloned(),
            ),
        ];
        for (i, (what, status)) in statuses.iter().enumerate() {
            let now = seen(status.as_ref());
            if !first {
                describe(what, &before[i], &now, status.as_ref());
            }
            before[i] = now;
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn describe(what: &str, before: &Seen, now: &Seen, status: Option<&CredentialStatus>) {
    let Some(status) = status else { return };
    let clock = |t: Option<jiff::Timestamp>| {
        t.map(|t| t.strftime("%H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    if now.last_refresh != before.last_refresh {
        say(&format!(
            "{what} refreshed: the new access token expires at {}, next refresh planned at {}",
            clock(status.access_token_expires_at.as_ref().map(|t| t.0)),
            clock(status.next_refresh_time.as_ref().map(|t| t.0)),
        ));
    }
    if now.last_health_check != before.last_health_check {
        let healthy = conditions::find(&status.conditions, conditions::HEALTHY);
        say(&format!(
            "{what} health check: Healthy={} ({})",
            healthy.map_or("Unknown", |c| c.status.as_str()),
            healthy.map_or("", |c| c.message.as_str()),
        ));
    }
    if now.phase != before.phase {
        let ready = conditions::find(&status.conditions, conditions::READY);
        let name = |p: Option<Phase>| p.map_or_else(|| "-".to_string(), |p| format!("{p:?}"));
        say(&format!(
            "{what} phase {} -> {} ({})",
            name(before.phase),
            name(now.phase),
            ready.map_or("", |c| c.message.as_str()),
        ));
    }
}
