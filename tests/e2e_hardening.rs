//! SECURITY.md findings 5, 6 and 8, each performed as an attack against the operator binary (test
//! control plane + Atlassian stand-in) with the safe outcome asserted:
//! 5. a token answer with a huge `expires_in` (it used to panic every controller);
//! 6. slow clients, connection floods and request floods against the OAuth web server;
//! 8. `spec.site` pointing the operator's fetches at an arbitrary host.

mod support;

use std::time::Duration;

use confluence_auth_operator::crd::conditions::{self, reason};
use confluence_auth_operator::crd::{ConfluenceInstallation, CredentialResource, Phase};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use support::*;
use testbed::atlassian::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The operator with extra flags, ready, plus a fresh namespace.
async fn operator_with(prefix: &str, flags: &[&str]) -> (Env, Operator, String) {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace(prefix).await;
    let operator = Operator::spawn_with(&env, &env.operator_ns, flags);
    operator.ready().await;
    (env, operator, ns)
}

/// The service account's client secret and a `ClientCredentials` installation of `site`.
async fn service_installation(env: &Env, ns: &str, name: &str, site: &str) {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "atlassian-service-account"},
        "stringData": {"client-secret": "demo-service-secret"},
    }))
    .unwrap();
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating the client secret: {e}"),
    }
    let cfis: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), ns);
    let cfi: ConfluenceInstallation = serde_json::from_value(serde_json::json!({
        "apiVersion": "confluence-auth.dev/v1alpha1",
        "kind": "ConfluenceInstallation",
        "metadata": {"name": name},
        "spec": {
            "grant": "ClientCredentials",
            "clientId": "demo-service-client",
            "clientSecretRef": {"name": "atlassian-service-account", "key": "client-secret"},
            "scopes": ["read:confluence-content.all"],
            "site": site,
        },
    }))
    .unwrap();
    cfis.create(&PostParams::default(), &cfi).await.unwrap();
}

// ---- finding 5 ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_expires_in_is_capped_and_the_controllers_keep_working() {
    let (env, operator, ns) = operator_with("huge-expiry", &[]).await;
    // The stand-in answers expires_in = i64::MAX seconds.
    env.atlassian
        .set_service_token_lifetime(Duration::from_secs(i64::MAX as u64));
    service_installation(&env, &ns, "forever", "acme.atlassian.net").await;
    let cfis: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    let forever = ready(&cfis, "forever").await;
    let expires = forever
        .credential()
        .unwrap()
        .access_token_expires_at
        .as_ref()
        .unwrap()
        .0;
    let lifetime = expires.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (23 * 3600..=24 * 3600).contains(&lifetime),
        "the expiry is capped at 24 h, got {lifetime} s"
    );

    // The controllers still run: an installation created afterwards is reconciled too.
    env.atlassian.set_service_token_lifetime(Duration::from_secs(3600));
    service_installation(&env, &ns, "after", "acme.atlassian.net").await;
    ready(&cfis, "after").await;
    let readyz = reqwest::get(format!("{}/readyz", operator.metrics_url)).await.unwrap();
    assert_eq!(readyz.status(), 200);
    assert!(!operator.logs().contains("panicked"), "{}", operator.logs());
}

// ---- finding 8 ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_outside_the_allowed_suffixes_is_refused_and_never_fetched() {
    let (env, _operator, ns) = operator_with("ssrf", &[]).await;
    let cfis: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    for (name, site) in [
        ("metadata", "169.254.169.254"),
        ("elsewhere", "https://evil.example.com"),
    ] {
        service_installation(&env, &ns, name, site).await;
        let refused = eventually("the site refused", || async {
            cfis.get(name)
                .await
                .ok()
                .filter(|o| o.credential().and_then(|c| c.phase) == Some(Phase::Failed))
        })
        .await;
        let condition = conditions::find(&refused.credential().unwrap().conditions, conditions::READY)
            .unwrap()
            .clone();
        assert_eq!(condition.reason, reason::INVALID_SPEC);
        assert!(
            condition.message.starts_with("spec.site") && condition.message.contains("atlassian.net, jira.com"),
            "{}",
            condition.message
        );
        assert!(
            condition.message.contains("--allowed-site-suffixes"),
            "{}",
            condition.message
        );
    }
    let counters = env.atlassian.counters();
    assert_eq!(
        counters.calls(Endpoint::TenantInfo),
        0,
        "no tenant_info request left the operator"
    );
    assert_eq!(
        counters.calls(Endpoint::Token),
        0,
        "no token was minted for a refused site"
    );

    // The same namespace with an Atlassian site works, and its fetch is counted.
    service_installation(&env, &ns, "acme", "acme.atlassian.net").await;
    ready(&cfis, "acme").await;
    assert!(env.atlassian.counters().calls(Endpoint::TenantInfo) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_site_suffixes_replace_the_defaults() {
    let (env, _operator, ns) = operator_with("suffixes", &["--allowed-site-suffixes", "example.org"]).await;
    let cfis: Api<ConfluenceInstallation> = Api::namespaced(env.client.clone(), &ns);
    service_installation(&env, &ns, "acme", "acme.atlassian.net").await;
    let refused = eventually("acme refused", || async {
        cfis.get("acme")
            .await
            .ok()
            .filter(|o| o.credential().and_then(|c| c.phase) == Some(Phase::Failed))
    })
    .await;
    let message = &conditions::find(&refused.credential().unwrap().conditions, conditions::READY)
        .unwrap()
        .message;
    assert!(message.contains("(example.org)"), "{message}");
    assert_eq!(env.atlassian.counters().calls(Endpoint::TenantInfo), 0);
}

// ---- finding 6 ------------------------------------------------------------------------------

fn webhook_addr(operator: &Operator) -> String {
    operator.public_url.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes the connection (EOF or reset); panics if it is still open after
/// `within`. Returns what was read.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {within:?}; read so far: {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `GET /healthz` on a keep-alive connection and reads exactly its answer.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: operator\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering: {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_disconnected_after_the_header_timeout() {
    let (_env, operator, _ns) = operator_with("slow", &["--webhook-header-timeout", "1s"]).await;
    let addr = webhook_addr(&operator);

    // Half a request head, then nothing: the server hangs up.
    let started = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /oauth/start/ns/cfi/name HTTP/1.1\r\nHost: op")
        .await
        .unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(15)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "a half request is never served"
    );

    // A whole request is served; the connection then idles and is closed the same way.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let answer = healthz(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rest = closed_within(&mut idle, Duration::from_secs(15)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"),
        "nothing more was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_until_one_frees_up() {
    let (_env, operator, _ns) = operator_with(
        "cap",
        &["--webhook-max-connections", "2", "--webhook-header-timeout", "120s"],
    )
    .await;
    let addr = webhook_addr(&operator);
    // Two clients hold the two slots (each served once, so surely accepted).
    let mut first = TcpStream::connect(&addr).await.unwrap();
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));

    // The third is closed without an answer.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: operator\r\n\r\n")
        .await;
    let answer = closed_within(&mut third, Duration::from_secs(15)).await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));

    // The held ones are still served, and once one leaves a newcomer is served again.
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));
    drop(first);
    let answer = eventually("a newcomer served once a slot is free", || {
        let addr = addr.clone();
        async move {
            let mut fourth = TcpStream::connect(&addr).await.ok()?;
            fourth
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: operator\r\n\r\n")
                .await
                .ok()?;
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
        }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_its_burst_is_told_to_wait_and_others_are_not() {
    let (_env, operator, _ns) =
        operator_with("rate", &["--webhook-rate-burst", "3", "--webhook-rate-limit", "0.01"]).await;
    let start = format!("{}/oauth/start/nowhere/cfi/nothing?nonce=guess", operator.public_url);
    let client = |from: &str| {
        reqwest::Client::builder()
            .local_address(from.parse::<std::net::IpAddr>().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let attacker = client("127.0.0.1");
    for _ in 0..3 {
        let answer = attacker.get(&start).send().await.unwrap();
        assert_ne!(answer.status(), 429);
    }
    let limited = attacker.get(&start).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let headers = limited.headers();
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&wait), "Retry-After {wait}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("content-security-policy"));

    // A forged X-Forwarded-For does not buy a fresh bucket (the flag is off).
    let forged = attacker
        .get(&start)
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 429);
    // The probes are not limited.
    let health = attacker
        .get(format!("{}/healthz", operator.public_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Another client has its own bucket.
    let neighbour = client("127.0.0.2");
    let answer = neighbour.get(&start).send().await.unwrap();
    assert_ne!(answer.status(), 429);
}

// ---- readiness ------------------------------------------------------------------------------

/// `/readyz` (on both servers) answers 200 only once the leader's controllers hold their first
/// list: never while the list of installations fails, at once when it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_until_the_controllers_caches_have_synced() {
    let env = Env::start().await;
    env.ensure_namespace(&env.operator_ns).await;
    let ns = env.namespace("readyz").await;
    // On the testbed, every list of installations fails until the knob is cleared.
    if let Some(api) = &env.api {
        api.faults()
            .fail_next(Some("list"), Some("confluenceinstallations"), 100_000, 500);
    }
    let operator = Operator::spawn_with(&env, &env.operator_ns, &[]);
    let http = reqwest::Client::new();
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    let (metrics_readyz, webhook_readyz) = (
        format!("{}/readyz", operator.metrics_url),
        format!("{}/readyz", operator.public_url),
    );
    if let Some(api) = &env.api {
        // Leading, and its controller's list refused at least once: still not ready.
        eventually("the leader's refused list", || async {
            let leads = operator
                .metrics()
                .await
                .lines()
                .any(|l| l.trim() == "confluence_auth_leader 1");
            let refused = api
                .request_log()
                .iter()
                .any(|r| r.method == "GET" && r.path.ends_with("/confluenceinstallations") && r.status == 500);
            (leads && refused).then_some(())
        })
        .await;
        assert_eq!(status(metrics_readyz.clone()).await, 503, "ready without a cache");
        assert_eq!(status(webhook_readyz.clone()).await, 503, "ready without a cache");
        assert!(!operator.logs().contains("caches are synced"));
        api.faults().clear();
    }
    // Ready at last, and only after the operator logged that its caches are in.
    eventually("/readyz 200", || async {
        // Status first: the line is logged before readiness flips, so a 200 implies the line.
        let ok = status(metrics_readyz.clone()).await == 200;
        let logged = operator.logs().contains("the controllers' caches are synced");
        ok.then(|| assert!(logged, "ready before the caches synced"))
    })
    .await;
    assert_eq!(status(webhook_readyz).await, 200);
    // And the controllers reconcile.
    service_installation(&env, &ns, "bot", "acme.atlassian.net").await;
    ready(
        &Api::<ConfluenceInstallation>::namespaced(env.client.clone(), &ns),
        "bot",
    )
    .await;
}
