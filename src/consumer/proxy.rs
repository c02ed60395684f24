//! The sidecar token proxy: `confluence-auth-operator proxy --token-dir DIR`.
//!
//! An application in the same pod calls `http://127.0.0.1:8080/wiki/...` without any
//! credential; the proxy forwards the call to `{api_base_url}{path}` with
//! `Authorization: Bearer <access_token>` taken from the mounted token Secret (DESIGN.md
//! section 2). The files are read again for every request, through kubelet's `..data` symlink,
//! so an atomic Secret update is used by the next request without a restart. Bodies stream in
//! both directions; Atlassian's status codes and headers (`Retry-After`, `X-RateLimit-*`) reach
//! the caller unchanged. The token is never logged.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpListener;

use crate::config::ProxyArgs;

/// Error type of a proxied body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every proxy answer: a streamed upstream body or a short local message.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The usable part of a token Secret. `Debug` never shows the token (it is a `SecretString`).
#[derive(Debug, Clone)]
pub struct Token {
    /// The bearer token.
    pub access_token: SecretString,
    /// When the token stops working.
    pub expires_at: Timestamp,
    /// Where calls go: `https://api.atlassian.com/ex/confluence/<cloudId>`.
    pub api_base_url: String,
}

/// Why no usable token is at hand; each message is meant for the caller's eyes.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A key of the token Secret is missing or unreadable.
    #[error("cannot read {key} from {dir}: {source}")]
    Unreadable {
        /// The token directory.
        dir: String,
        /// The Secret key (file name).
        key: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key holds something that is not what DESIGN.md section 2 says.
    #[error("{key} in {dir} is not valid: {reason}")]
    Invalid {
        /// The token directory.
        dir: String,
        /// The Secret key (file name).
        key: &'static str,
        /// What is wrong (never the value of `access_token`).
        reason: String,
    },
    /// The token on disk has expired (the operator has not refreshed it in time).
    #[error("the token in {dir} expired at {expires_at}")]
    Expired {
        /// The token directory.
        dir: String,
        /// Its `expires_at`.
        expires_at: Timestamp,
    },
}

/// A mounted token Secret (a Kubernetes Secret volume, or any directory with one file per key).
#[derive(Debug, Clone)]
pub struct TokenDir {
    dir: PathBuf,
}

impl TokenDir {
    /// The token Secret mounted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> TokenDir {
        TokenDir { dir: dir.into() }
    }

    /// Reads the token as it is on disk now and checks it has not expired at `now`.
    ///
    /// In a Secret volume, kubelet keeps the files in a timestamped directory that the `..data`
    /// symlink names and swaps that symlink atomically; resolving `..data` once and reading
    /// every key from its target keeps token, expiry and base URL from one version.
    pub async fn read(&self, now: Timestamp) -> Result<Token, TokenError> {
        // One trip to the blocking pool for the whole read: `tokio::fs` makes one per file
        // (four per request), which cost the proxy more CPU and tail latency than forwarding
        // (BENCHMARKS.md, "Proxy and gateway overhead").
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(now))
            .await
            .unwrap_or_else(|e| {
                Err(TokenError::Unreadable {
                    dir: self.dir.display().to_string(),
                    key: "access_token",
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    fn read_blocking(&self, now: Timestamp) -> Result<Token, TokenError> {
        // A swap can remove the old version between resolving `..data` and reading it: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.read_once(now) {
                Err(TokenError::Unreadable { source, .. })
                    if attempt < 3
                        && source.kind() == std::io::ErrorKind::NotFound
                        && std::fs::symlink_metadata(self.dir.join("..data")).is_ok() => {}
                other => return other,
            }
        }
    }

    fn read_once(&self, now: Timestamp) -> Result<Token, TokenError> {
        let base = match std::fs::read_link(self.dir.join("..data")) {
            Ok(target) => self.dir.join(target),
            Err(_) => self.dir.clone(),
        };
        let access_token = self.key(&base, "access_token")?;
        if access_token.is_empty() {
            return Err(self.invalid("access_token", "it is empty".into()));
        }
        let expires_at: Timestamp = self
            .key(&base, "expires_at")?
            .parse()
            .map_err(|e: jiff::Error| self.invalid("expires_at", format!("not an RFC 3339 time: {e}")))?;
        let api_base_url = self.key(&base, "api_base_url")?;
        let parsed = url::Url::parse(&api_base_url).map_err(|e| self.invalid("api_base_url", e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(self.invalid("api_base_url", "not an http(s) URL".into()));
        }
        if now >= expires_at {
            return Err(TokenError::Expired {
                dir: self.dir.display().to_string(),
                expires_at,
            });
        }
        Ok(Token {
            access_token: SecretString::from(access_token),
            expires_at,
            api_base_url: api_base_url.trim_end_matches('/').to_string(),
        })
    }

    fn key(&self, base: &Path, key: &'static str) -> Result<String, TokenError> {
        let text = std::fs::read_to_string(base.join(key)).map_err(|source| TokenError::Unreadable {
            dir: self.dir.display().to_string(),
            key,
            source,
        })?;
        Ok(text.trim().to_string())
    }

    fn invalid(&self, key: &'static str, reason: String) -> TokenError {
        TokenError::Invalid {
            dir: self.dir.display().to_string(),
            key,
            reason,
        }
    }
}

/// The HTTP client for upstream calls: no redirects followed (a 3xx reaches the caller, and the
/// token never follows a redirect to another host), no overall timeout (bodies stream).
pub fn upstream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// A short local answer (the proxy's own refusals), as plain text.
pub fn local_answer(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never: Infallible| -> BoxError { match never {} })
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), plus the
/// ones the proxy sets itself.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// True when `path` climbs out of the base URL (`..` or `.` segments, also percent-encoded):
/// such a path could carry the token to another API of the same host.
pub fn escapes_base(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == ".." || decoded == "."
    })
}

/// Forwards `req` to `{token.api_base_url}{path_and_query}` with the token, streaming both
/// bodies. Whatever `Authorization` the caller sent is dropped.
pub async fn forward(
    client: &reqwest::Client,
    token: &Token,
    req: Request<Incoming>,
    path_and_query: &str,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let url = format!("{}{}", token.api_base_url, path_and_query);
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // Host names the proxy; the length comes from the streamed body itself.
        if hop_by_hop(name)
            || name == AUTHORIZATION
            || name == hyper::header::HOST
            || name == hyper::header::CONTENT_LENGTH
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", token.access_token.expose_secret())) else {
        return local_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "confluence-auth proxy: the access token on disk is not a valid header value",
        );
    };
    bearer.set_sensitive(true);
    headers.insert(AUTHORIZATION, bearer);
    let sent = client
        .request(parts.method, &url)
        .headers(headers)
        .body(reqwest::Body::wrap(body))
        .send()
        .await;
    match sent {
        Ok(upstream) => {
            let upstream: Response<reqwest::Body> = upstream.into();
            let (mut head, body) = upstream.into_parts();
            let drop: Vec<HeaderName> = head.headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
            for name in drop {
                head.headers.remove(name);
            }
            Response::from_parts(head, body.map_err(BoxError::from).boxed_unsync())
        }
        Err(e) => {
            let e = e.without_url();
            tracing::warn!(error = %e, "upstream call failed");
            local_answer(
                StatusCode::BAD_GATEWAY,
                &format!("confluence-auth proxy: Atlassian could not be reached: {e}"),
            )
        }
    }
}

/// Answers one request of the sidecar proxy.
async fn handle(client: reqwest::Client, dir: TokenDir, req: Request<Incoming>) -> Response<ProxyBody> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if !path_and_query.starts_with('/') || escapes_base(req.uri().path()) {
        return local_answer(
            StatusCode::BAD_REQUEST,
            "confluence-auth proxy: the path must be absolute and must not contain . or .. segments",
        );
    }
    let token = match dir.read(Timestamp::now()).await {
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(error = %e, "no usable token");
            return local_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "confluence-auth proxy: no usable token: {e}. The operator writes and refreshes \
                     this Secret; `confluence-auth-operator status` shows why it has not."
                ),
            );
        }
    };
    let method = req.method().clone();
    let resp = forward(&client, &token, req, &path_and_query).await;
    tracing::debug!(%method, path = %path_and_query.split('?').next().unwrap_or_default(), status = resp.status().as_u16(), "proxied");
    resp
}

/// Serves the sidecar proxy on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    token_dir: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let client = upstream_client();
    let dir = TokenDir::new(token_dir);
    serve_http1(listener, shutdown, move |req| handle(client.clone(), dir.clone(), req)).await
}

/// Answers each HTTP/1 connection on `listener` with `handle` until `shutdown` resolves (the
/// proxy's and the gateway's server: bodies stream both ways, so no body deadline).
pub(crate) async fn serve_http1<H, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// `confluence-auth-operator proxy`: binds `--listen` and serves until `shutdown`.
pub async fn run(args: ProxyArgs, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, token_dir = %args.token_dir.display(), "token proxy listening");
    serve(listener, args.token_dir, shutdown).await
}
