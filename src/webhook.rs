//! The web server browsers reach (warp): `/oauth/start/…` (GET: the confirmation page; POST:
//! from that page, on to Atlassian), `/oauth/callback`, `/healthz`, `/readyz`. Every answer
//! carries security headers; oversized requests are refused before any work. The flow logic
//! itself lives in `oauth::flow`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

use crate::context::Context;
use crate::http_guard;
use crate::metrics::Metrics;
use crate::oauth::flow::{self, Answer, CallbackQuery, Page};

/// Longest query string accepted (a state is well under 1 KiB).
pub const MAX_QUERY_BYTES: usize = 4096;
/// Largest total header size accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body accepted (the confirmation form is two short fields).
pub const MAX_BODY_BYTES: u64 = 4096;
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#172b4d}h1{font-size:1.4rem}";

/// What `/readyz` reports: ready once the servers run and this replica knows its part, either
/// a follower (another replica holds a current Lease; it serves the web server) or the leader
/// whose controllers' caches have synced (their first list is in).
#[derive(Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Default)]
struct ReadinessState {
    started: AtomicBool,
    /// 0: not known yet, 1: follower, 2: leader syncing its caches, 3: leader synced.
    role: std::sync::atomic::AtomicU8,
}

impl Readiness {
    /// Marks the servers as running.
    pub fn set_ready(&self) {
        self.0.started.store(true, Ordering::SeqCst);
    }

    /// Another replica leads (or this one lost the Lease): serving the web server is the job.
    pub fn set_follower(&self) {
        self.0.role.store(1, Ordering::SeqCst);
    }

    /// This replica leads; its controllers are listing what they watch.
    pub fn set_leader_syncing(&self) {
        self.0.role.store(2, Ordering::SeqCst);
    }

    /// The leader's controllers have synced their caches (a no-op unless leading).
    pub fn set_leader_synced(&self) {
        let _ = self.0.role.compare_exchange(2, 3, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// True once the servers run and this replica is a follower or a synced leader.
    pub fn is_ready(&self) -> bool {
        self.0.started.load(Ordering::SeqCst) && matches!(self.0.role.load(Ordering::SeqCst), 1 | 3)
    }
}

/// Serves the webhook on `listener` within `limits` (connection cap, header timeout, rate
/// limit: `http_guard`) until `shutdown` resolves.
pub async fn serve(
    ctx: Context,
    metrics: Metrics,
    readiness: Readiness,
    listener: tokio::net::TcpListener,
    limits: http_guard::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let routes = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(
            // A body without a length, or a longer one, reads as empty (the form then fails).
            warp::body::content_length_limit(MAX_BODY_BYTES)
                .and(warp::body::bytes())
                .or(warp::any().map(bytes::Bytes::new))
                .unify(),
        )
        .then(
            move |method: Method, path: warp::path::FullPath, query: String, headers: HeaderMap, body: bytes::Bytes| {
                let (ctx, metrics, readiness) = (ctx.clone(), metrics.clone(), readiness.clone());
                async move {
                    let request = Request {
                        method: &method,
                        path: path.as_str(),
                        query: &query,
                        headers: &headers,
                        body: &body,
                    };
                    handle(&ctx, &metrics, &readiness, &request).await
                }
            },
        );
    http_guard::serve(listener, warp::service(routes), limits, shutdown).await;
}

/// The webhook's rate limit: it covers `/oauth/…` (each request there costs API reads), not
/// the probes, and answers `429` with `Retry-After` and the security headers.
pub fn rate_limit(limiter: http_guard::RateLimiter) -> http_guard::RateLimit {
    http_guard::RateLimit {
        limiter,
        applies_to: |request| request.uri().path().starts_with("/oauth/"),
        answer: |wait| {
            let mut response = page(&Page {
                status: 429,
                title: "Too many requests".into(),
                message: "Too many requests came from your address. Wait a moment, then open the link again.".into(),
                set_cookie: None,
                outcome: "rate_limited",
            });
            insert(
                &mut response,
                header::RETRY_AFTER,
                &http_guard::retry_after_seconds(wait).to_string(),
            );
            response
        },
    }
}

/// What `handle` needs of a request.
struct Request<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

async fn handle(ctx: &Context, metrics: &Metrics, readiness: &Readiness, request: &Request<'_>) -> Response {
    let Request {
        method,
        path,
        query,
        headers,
        body,
    } = *request;
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return page(&Page {
            status: 431,
            title: "Request headers too large".into(),
            message: "The request's headers are too large.".into(),
            set_cookie: None,
            outcome: "oversized",
        });
    }
    if query.len() > MAX_QUERY_BYTES {
        return page(&Page {
            status: 414,
            title: "Link too long".into(),
            message: "The link's query string is too long to be an authorization response.".into(),
            set_cookie: None,
            outcome: "oversized",
        });
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_start = matches!(segments.as_slice(), ["oauth", "start", _, _, _]);
    let allowed = *method == Method::GET || *method == Method::HEAD || (is_start && *method == Method::POST);
    if !allowed {
        return page(&Page {
            status: 405,
            title: "Method not allowed".into(),
            message: "Only GET is served here (and POST from an authorization link's own page).".into(),
            set_cookie: None,
            outcome: "method",
        });
    }
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let answer = match segments.as_slice() {
        ["healthz"] => return plain(StatusCode::OK, "ok"),
        ["readyz"] if readiness.is_ready() => return plain(StatusCode::OK, "ready"),
        ["readyz"] => return plain(StatusCode::SERVICE_UNAVAILABLE, "starting"),
        ["oauth", "start", namespace, kind, name] if *method == Method::POST => {
            let form = parse_query::<flow::StartForm>(std::str::from_utf8(body).unwrap_or_default());
            flow::start(ctx, namespace, kind, name, &form, cookie).await
        }
        ["oauth", "start", namespace, kind, name] => {
            let nonce = parse_query::<StartQuery>(query).nonce;
            flow::confirm(ctx, namespace, kind, name, nonce.as_deref()).await
        }
        ["oauth", "callback"] => {
            let page = flow::callback(ctx, &parse_query::<CallbackQuery>(query), cookie).await;
            metrics.callback(page.outcome);
            Answer::Page(page)
        }
        _ => Answer::Page(Page {
            status: 404,
            title: "Not found".into(),
            message: "There is nothing at this address.".into(),
            set_cookie: None,
            outcome: "not_found",
        }),
    };
    match answer {
        Answer::Redirect { location, set_cookie } => {
            tracing::info!(path, "redirecting a browser to Atlassian for consent");
            let mut response = Response::new(Default::default());
            // 303: the browser follows a POST's answer with a GET.
            *response.status_mut() = StatusCode::SEE_OTHER;
            insert(&mut response, header::LOCATION, &location);
            insert(&mut response, header::SET_COOKIE, &set_cookie);
            secure(response, None)
        }
        Answer::Confirm(c) => {
            tracing::info!(path, "showed the confirmation page of an authorization link");
            confirm_page(&c, &ctx.atlassian.auth_origin())
        }
        Answer::Page(p) => {
            tracing::info!(path, status = p.status, outcome = p.outcome, "answered a browser");
            page(&p)
        }
    }
}

#[derive(Default, serde::Deserialize)]
struct StartQuery {
    nonce: Option<String>,
}

/// Parses a query (the callback's, the start form's); a garbled one yields the empty default
/// (every field then reads as missing), never a panic. Public for the property tests.
pub fn parse_query<T: serde::de::DeserializeOwned + Default>(query: &str) -> T {
    query_pairs(query).unwrap_or_default()
}

fn query_pairs<T: serde::de::DeserializeOwned>(query: &str) -> Option<T> {
    let pairs: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    serde_json::from_value(serde_json::Value::Object(pairs)).ok()
}

fn page(p: &Page) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1><p>{message}</p></body></html>",
        title = escape(&p.title),
        message = escape(&p.message),
    );
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    insert(&mut response, header::CONTENT_TYPE, "text/html; charset=utf-8");
    if let Some(cookie) = &p.set_cookie {
        insert(&mut response, header::SET_COOKIE, cookie);
    }
    secure(response, None)
}

/// The confirmation page: what the grant will land in, and one button that POSTs the link's
/// nonce with the page's token.
fn confirm_page(c: &flow::Confirm, auth_origin: &str) -> Response {
    let mut rows = vec![
        ("Namespace", c.namespace.clone()),
        ("Kind", c.kind.to_string()),
        ("Name", c.name.clone()),
    ];
    if let Some(user_id) = &c.user_id {
        rows.push(("User id", user_id.clone()));
    }
    if let Some(installation) = &c.installation {
        rows.push(("Installation", installation.clone()));
    }
    if let Some(site) = &c.site {
        rows.push(("Site", site.clone()));
    }
    let rows: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v)))
        .collect();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Authorize Confluence access</title><style>{STYLE}</style></head><body><h1>Authorize Confluence access</h1><p>You are about to sign in to Atlassian and grant Confluence access. The credential will be stored for:</p><table>{rows}</table><p>Continue only if you expected this link and this is the right place for your account.</p><form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"nonce\" value=\"{nonce}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\" id=\"continue\">Continue to Atlassian</button></form></body></html>",
        action = escape(&c.action),
        nonce = escape(&c.nonce),
        csrf = escape(&c.csrf),
    );
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::OK;
    insert(&mut response, header::CONTENT_TYPE, "text/html; charset=utf-8");
    insert(&mut response, header::SET_COOKIE, &c.set_cookie);
    // The form posts here, and the answer redirects to Atlassian: both must be allowed targets.
    secure(response, Some(auth_origin))
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(text.into());
    *response.status_mut() = status;
    insert(&mut response, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    secure(response, None)
}

/// Security headers on every answer; `form_origin` allows the confirmation page's form (to
/// this server, redirected on to that origin).
fn secure(mut response: Response, form_origin: Option<&str>) -> Response {
    let style_hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    let form_action = match form_origin {
        Some(origin) => format!("'self' {origin}"),
        None => "'none'".to_string(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
    );
    insert(&mut response, header::CACHE_CONTROL, "no-store");
    insert(&mut response, header::REFERRER_POLICY, "no-referrer");
    insert(&mut response, header::X_FRAME_OPTIONS, "DENY");
    insert(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    insert(&mut response, header::CONTENT_SECURITY_POLICY, &csp);
    response
}

fn insert(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// HTML-escapes text for a page.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn pages_carry_every_security_header() {
        let response = page(&Page {
            status: 400,
            title: "t".into(),
            message: "m".into(),
            set_cookie: None,
            outcome: "x",
        });
        let h = response.headers();
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'; style-src 'sha256-")
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn garbled_queries_read_as_missing_fields() {
        let q: CallbackQuery = parse_query("code=a&state=b");
        assert_eq!((q.code.as_deref(), q.state.as_deref()), (Some("a"), Some("b")));
        let q: CallbackQuery = parse_query("%%%&&=");
        assert!(q.code.is_none() && q.state.is_none());
    }
}
