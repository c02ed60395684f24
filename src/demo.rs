//! `confluence-auth-operator demo`: the whole product on one machine. Without a configured
//! cluster it starts the embedded test control plane (testbed API server); Atlassian is always
//! the testbed stand-in. It applies the CRDs and the examples, runs the operator, walks the
//! browser consent for the installation and for a user, and shows what pods would mount.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::{Client, Config, ResourceExt};
use testbed::apiserver::ApiServer;
use testbed::atlassian::StandIn;

use crate::config::{DemoArgs, RunArgs};
use crate::crd::{
    self, ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus, Phase, conditions,
};
use crate::operator;

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAMESPACE: &str = "demo";
/// Lifetime of the stand-in's access tokens in the demo.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30);
const OPERATOR_NAMESPACE: &str = "confluence-auth-system";
/// The stand-in demo world's admin ("Ada Admin", sites acme and globex) and user ("Bob User").
const ADMIN_ACCOUNT: &str = "557058:aaaaaaaa-0000-4000-8000-000000000001";
const USER_ACCOUNT: &str = "557058:bbbbbbbb-0000-4000-8000-000000000002";
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let run_args = RunArgs {
        public_url: format!("http://127.0.0.1:{port}").parse()?,
        atlassian_auth_url: atlassian.url().parse()?,
        atlassian_api_url: atlassian.url().parse()?,
        atlassian_tenant_info_url: format!(
            "{}/site/{{site}}/_edge/tenant_info",
            atlassian.url().trim_end_matches('/')
        ),
        atlassian_timeout: Duration::from_secs(10),
        webhook_addr: format!("127.0.0.1:{port}").parse()?,
        metrics_addr: "127.0.0.1:0".parse()?,
        operator_namespace: Some(OPERATOR_NAMESPACE.into()),
        keys_secret: "confluence-auth-operator-keys".into(),
        namespaces: Vec::new(),
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
        lease_name: crate::leader::DEFAULT_LEASE_NAME.into(),
        lease_duration: Duration::from_secs(15),
        clock_url: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator_client = client.clone();
    let operator = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        operator::run(run_args, operator_client, stop, |l| {
            say(&format!(
                "operator: OAuth web server on {}, metrics on {}",
                l.webhook, l.metrics
            ))
        })
        .await
    });

    let users: Api<ConfluenceUserAuth> = Api::namespaced(client.clone(), NAMESPACE);
    let link = wait_for(&installations, "acme", |c| {
        c.credential().and_then(|s| s.authorization_url.clone())
    })
    .await?;
    say(&format!(
        "ConfluenceInstallation demo/acme is AwaitingAuthorization; its link:\n    {link}"
    ));
    say("consenting as the stand-in's admin \"Ada Admin\" (a browser would open that link)...");
    atlassian.consent_as(ADMIN_ACCOUNT);
    browse(&link).await?;
    wait_for(&installations, "acme", ready).await?;
    say("ConfluenceInstallation demo/acme is Ready");

    let user_link = wait_for(&users, "alice", |c| {
        c.credential().and_then(|s| s.authorization_url.clone())
    })
    .await?;
    say(&format!(
        "ConfluenceUserAuth demo/alice is AwaitingAuthorization; its link:\n    {user_link}"
    ));
    atlassian.consent_as(USER_ACCOUNT);
    browse(&user_link).await?;
    wait_for(&users, "alice", ready).await?;
    say("ConfluenceUserAuth demo/alice is Ready");

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
        crds.patch(&definition.name_any(), &apply, &Patch::Apply(&definition))
            .await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [NAMESPACE, OPERATOR_NAMESPACE] {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
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

fn ready<K: CredentialResource>(obj: &K) -> Option<()> {
    (obj.credential().and_then(|s| s.phase) == Some(Phase::Ready)).then_some(())
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

fn say(line: &str) {
    println!("demo: {line}");
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
