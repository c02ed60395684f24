//! The sidecar token proxy against the Atlassian stand-in and a recording upstream: tokens
//! read from a kubelet-style Secret volume (including the atomic `..data` swap), 503 on an
//! expired token, rate-limit answers passed through, streaming in both directions with bounded
//! memory, and the caller's own `Authorization` never forwarded.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use confluence_auth_operator::consumer::proxy;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use testbed::atlassian::{Endpoint, Fault, ServiceAccount, StandIn};
use tokio::net::TcpListener;

const ACME_CLOUD_ID: &str = "11111111-1111-4111-8111-111111111111";
const DEMO_SERVICE_ACCOUNT: &str = "712020:cccccccc-0000-4000-8000-000000000003";
const WAIT: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;

/// A token from the stand-in's client-credentials grant (no browser needed).
async fn service_token(atl: &StandIn, client_id: &str, secret: &str) -> String {
    let resp: Value = reqwest::Client::new()
        .post(format!("{}/oauth/token", atl.url()))
        .json(&serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["access_token"].as_str().expect("a token").to_string()
}

/// Writes one version of a token Secret the way kubelet does: files in a fresh `..<version>`
/// directory, a `..data_tmp` symlink to it renamed atomically onto `..data`, and per-key
/// symlinks `key -> ..data/key`.
fn project(dir: &Path, version: &str, token: &str, expires_at: jiff::Timestamp, base: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    let files = [
        ("access_token", token.to_string()),
        ("token_type", "Bearer".to_string()),
        ("expires_at", expires_at.to_string()),
        ("api_base_url", base.to_string()),
        ("cloud_id", ACME_CLOUD_ID.to_string()),
    ];
    for (key, value) in &files {
        std::fs::write(versioned.join(key), value).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (key, _) in &files {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
        }
    }
}

fn in_an_hour() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)
}

/// Starts the proxy in-process on a free loopback port; returns its base URL.
async fn start_proxy(dir: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve(listener, dir.to_path_buf(), std::future::pending()));
    format!("http://{addr}")
}

async fn current_user(proxy: &str, caller_auth: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{proxy}/wiki/rest/api/user/current"));
    if let Some(auth) = caller_auth {
        req = req.header("authorization", auth);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn current_user_through_the_proxy_and_a_kubelet_swap_is_used_by_the_next_request() {
    let atl = StandIn::demo_world().await.unwrap();
    atl.add_service_account(ServiceAccount {
        client_id: "second-client".into(),
        client_secret: "second-secret".into(),
        account_id: "712020:dddddddd-0000-4000-8000-000000000004".into(),
        name: "Second".into(),
        site: "acme.atlassian.net".into(),
        scopes: vec![],
    });
    let first = service_token(&atl, "demo-service-client", "demo-service-secret").await;
    let second = service_token(&atl, "second-client", "second-secret").await;
    let base = format!("{}/ex/confluence/{ACME_CLOUD_ID}", atl.url());
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "2026_11_25_10_00_00.1", &first, in_an_hour(), &base);
    let proxy = start_proxy(dir.path()).await;

    let resp = current_user(&proxy, None).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accountId"], DEMO_SERVICE_ACCOUNT);

    project(dir.path(), "2026_11_25_10_05_00.2", &second, in_an_hour(), &base);
    std::fs::remove_dir_all(dir.path().join("..2026_11_25_10_00_00.1")).unwrap();
    let resp = current_user(&proxy, None).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accountId"], "712020:dddddddd-0000-4000-8000-000000000004");
}

#[tokio::test]
async fn an_expired_or_missing_token_is_a_readable_503() {
    let atl = StandIn::demo_world().await.unwrap();
    let token = service_token(&atl, "demo-service-client", "demo-service-secret").await;
    let base = format!("{}/ex/confluence/{ACME_CLOUD_ID}", atl.url());
    let dir = tempfile::tempdir().unwrap();
    let expired = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(1);
    project(dir.path(), "v1", &token, expired, &base);
    let proxy = start_proxy(dir.path()).await;

    let resp = current_user(&proxy, None).await;
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(text.contains(&format!("expired at {expired}")), "{text}");
    assert!(!text.contains(&token), "the 503 must not show the token");
    assert_eq!(atl.counters().calls(Endpoint::ConfluenceUser), 0);

    let empty = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&empty.path().join("not-mounted")).await;
    let resp = current_user(&proxy, None).await;
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(text.contains("cannot read access_token"), "{text}");
}

#[tokio::test]
async fn a_429_reaches_the_caller_with_retry_after() {
    let atl = StandIn::demo_world().await.unwrap();
    let token = service_token(&atl, "demo-service-client", "demo-service-secret").await;
    let base = format!("{}/ex/confluence/{ACME_CLOUD_ID}", atl.url());
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "v1", &token, in_an_hour(), &base);
    let proxy = start_proxy(dir.path()).await;
    atl.fail_next(Endpoint::ConfluenceUser, 1, Fault::RateLimited { retry_after_secs: 37 });

    let resp = current_user(&proxy, None).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "37");
    assert_eq!(current_user(&proxy, None).await.status(), 200);
}

/// What the recording upstream saw.
#[derive(Default)]
struct Seen {
    authorization: Mutex<Vec<Vec<String>>>,
    /// Bytes of request bodies read so far.
    received: AtomicU64,
    /// Bytes of the streamed response the test client has read so far.
    client_read: AtomicU64,
}

/// Waits (polling, with a deadline) until `counter` reaches `at_least`.
async fn gate(counter: &AtomicU64, at_least: u64) -> Result<(), std::io::Error> {
    let deadline = Instant::now() + WAIT;
    while counter.load(Ordering::SeqCst) < at_least {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "the other side saw nothing: the body was buffered",
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A body of `total` bytes that stops after `open` bytes until `counter` reaches `open / 2`:
/// anything that buffers the whole body before passing it on never gets past that point.
fn gated_body(total: u64, open: u64, counter: Arc<Seen>, which: fn(&Seen) -> &AtomicU64) -> reqwest::Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        while sent < total {
            if sent >= open
                && let Err(e) = gate(which(&counter), open / 2).await
            {
                let _ = tx.send(Err(e)).await;
                return;
            }
            if tx.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
            sent += chunk.len() as u64;
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(|r| r.map(Frame::data));
    reqwest::Body::wrap(StreamBody::new(stream))
}

/// A tiny upstream: `/headers` reports the `Authorization` values it got and answers
/// rate-limit headers; `/sink` counts a request body; `/source` streams 50 MiB, gated on the
/// test client's reading.
async fn recording_upstream(seen: Arc<Seen>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(upstream_answer(seen, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/ex/confluence/{ACME_CLOUD_ID}")
}

async fn upstream_answer(seen: Arc<Seen>, req: Request<Incoming>) -> Response<reqwest::Body> {
    let auth: Vec<String> = req
        .headers()
        .get_all("authorization")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    seen.authorization.lock().unwrap().push(auth);
    let path = req.uri().path().to_string();
    if path.ends_with("/sink") {
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                seen.received.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        let total = seen.received.load(Ordering::SeqCst);
        return Response::new(reqwest::Body::wrap(Full::new(Bytes::from(total.to_string()))));
    }
    if path.ends_with("/source") {
        return Response::new(gated_body(50 * MIB, 4 * MIB, seen, |s| &s.client_read));
    }
    Response::builder()
        .status(429)
        .header("retry-after", "12")
        .header("x-ratelimit-limit", "100")
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", "2026-11-25T10:00:00Z")
        .body(reqwest::Body::wrap(Full::new(Bytes::from_static(b"{\"code\":429}"))))
        .unwrap()
}

#[tokio::test]
async fn the_callers_authorization_never_reaches_upstream_and_rate_limit_headers_come_back() {
    let seen = Arc::new(Seen::default());
    let base = recording_upstream(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "v1", "token-on-disk", in_an_hour(), &base);
    let proxy = start_proxy(dir.path()).await;

    let resp = reqwest::Client::new()
        .get(format!("{proxy}/wiki/rest/api/content?limit=1"))
        .header("authorization", "Bearer caller-own-token")
        .header("proxy-authorization", "Basic Y2FsbGVyOnB3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    for (name, value) in [
        ("retry-after", "12"),
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "2026-11-25T10:00:00Z"),
    ] {
        assert_eq!(resp.headers()[name], value, "{name}");
    }
    assert_eq!(
        *seen.authorization.lock().unwrap(),
        vec![vec!["Bearer token-on-disk".to_string()]]
    );
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn fifty_mib_bodies_stream_both_ways_with_bounded_memory() {
    let seen = Arc::new(Seen::default());
    let base = recording_upstream(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "v1", "token-on-disk", in_an_hour(), &base);
    let proxy = start_proxy(dir.path()).await;
    let before = rss_kib("VmRSS:");

    // Upload: the body pauses after 4 MiB until the upstream has read 2 MiB of it.
    let resp = reqwest::Client::new()
        .put(format!("{proxy}/wiki/sink"))
        .body(gated_body(50 * MIB, 4 * MIB, seen.clone(), |s| &s.received))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), (50 * MIB).to_string());

    // Download: the upstream pauses after 4 MiB until this client has read 2 MiB.
    let mut resp = reqwest::Client::new()
        .get(format!("{proxy}/wiki/source"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.client_read.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    assert_eq!(seen.client_read.load(Ordering::SeqCst), 50 * MIB);

    // Everything (client, proxy, upstream) runs in this process: the peak stays far below
    // one 50 MiB body.
    let growth_mib = rss_kib("VmHWM:").saturating_sub(before) / 1024;
    assert!(growth_mib < 30, "resident memory grew by {growth_mib} MiB");
}

#[tokio::test]
async fn paths_that_climb_out_of_the_base_url_are_refused() {
    let seen = Arc::new(Seen::default());
    let base = recording_upstream(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "v1", "token-on-disk", in_an_hour(), &base);
    let proxy = start_proxy(dir.path()).await;
    for path in ["/wiki/../../../oauth/token", "/wiki/%2E%2e/x"] {
        // reqwest would normalise `..` itself: send the raw request line.
        let mut stream = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://"))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert!(seen.authorization.lock().unwrap().is_empty());
}
