//! The Atlassian stand-in: an HTTP server on 127.0.0.1 that behaves as Atlassian documents
//! OAuth 2.0 (3LO) (<https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/>), its
//! rotating refresh tokens (<https://developer.atlassian.com/cloud/oauth/getting-started/refresh-tokens/>),
//! service-account client credentials
//! (<https://support.atlassian.com/user-management/docs/create-oauth-2-0-credential-for-service-accounts>)
//! and the Confluence Cloud gateway, for tests and the local demo.
//!
//! This file: the [`StandIn`] handle (start, stop on drop, the Rust control API) and the
//! routing of requests to `oauth`, `api`, `consent` and `control`. One URL serves both roles, the
//! authorization server (`auth.atlassian.com`) and the API gateway (`api.atlassian.com`). The
//! world, the HTTP control API and the demo world are described in `testbed/ATLASSIAN.md`.

mod api;
mod consent;
mod control;
pub mod faults;
mod http;
mod oauth;
mod state;
pub mod tokens;
pub mod world;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{BearerCounters, Counters, Endpoint, Fault, RefreshCall};
pub use tokens::{IssuedSecret, ReuseCounters, SecretKind};
pub use world::{
    Account, ClientApp, DEMO_ADMIN_ACCOUNT_ID, DEMO_ADMIN_NAME, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET,
    DEMO_SERVICE_CLIENT_ID, DEMO_SERVICE_CLIENT_SECRET, DEMO_USER_ACCOUNT_ID, DEMO_USER_NAME, ServiceAccount, Site,
};

use http::{Req, Resp, api_error};
use state::{Shared, State, lock, secs};

/// A running stand-in. Dropping it shuts the server down (the listener and every connection).
#[derive(Debug)]
pub struct StandIn {
    addr: SocketAddr,
    state: Shared,
    accept_loop: JoinHandle<()>,
    /// Dropped with the handle: every connection task sees it and ends.
    _shutdown: watch::Sender<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl StandIn {
    /// Starts an empty stand-in on `127.0.0.1` with a free port.
    pub async fn start() -> std::io::Result<StandIn> {
        StandIn::start_on_port(0).await
    }

    /// Starts an empty stand-in on `127.0.0.1:port` (0: any free port).
    pub async fn start_on_port(port: u16) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let state = Shared::default();
        let (shutdown, rx) = watch::channel(());
        let accept_loop = tokio::spawn(accept_loop(listener, state.clone(), rx));
        Ok(StandIn {
            addr,
            state,
            accept_loop,
            _shutdown: shutdown,
        })
    }

    /// `http://127.0.0.1:PORT`: the base of both the authorization URL and the API URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Registers (or replaces) an OAuth 2.0 (3LO) app.
    pub fn register_client(&self, app: ClientApp) {
        self.state().world.register_client(app);
    }

    /// Adds (or replaces) a site.
    pub fn add_site(&self, site: Site) {
        self.state().world.add_site(site);
    }

    /// Adds (or replaces) an account. The first account added consents by default.
    pub fn add_account(&self, account: Account) {
        self.state().world.add_account(account);
    }

    /// Adds (or replaces) a service account's OAuth 2.0 credential.
    pub fn add_service_account(&self, sa: ServiceAccount) {
        self.state().world.add_service_account(sa);
    }

    /// Seeds the demo world (see `testbed/ATLASSIAN.md` and [`world::seed_demo`]).
    pub fn seed_demo(&self) {
        world::seed_demo(&mut self.state().world);
    }

    /// Starts a stand-in with the demo world.
    pub async fn demo_world() -> std::io::Result<StandIn> {
        let s = StandIn::start().await?;
        s.seed_demo();
        Ok(s)
    }

    /// From now on, `/authorize` consents as this account.
    pub fn consent_as(&self, account_id: &str) {
        self.state().consenting = Some(account_id.to_owned());
    }

    /// The next consent picks this site (the consent screen's "Use app on" choice; default:
    /// the consenting account's first site). One consent grants one site, as on Atlassian: the
    /// account's tokens cover several sites once it has consented for each.
    pub fn consent_site_next(&self, host: &str) {
        self.state().consent_site_next = Some(host.to_owned());
    }

    /// Adds an exact callback URL to a registered app (as in the developer console); returns
    /// false when no app has this client id. `redirect_uri` must match one exactly.
    pub fn add_callback(&self, client_id: &str, redirect_uri: &str) -> bool {
        self.state().world.add_callback(client_id, redirect_uri)
    }

    /// The next `/authorize` is declined by the user (a redirect with `error=access_denied`).
    pub fn decline_next_consent(&self) {
        self.state().decline_next = true;
    }

    /// Turns the consent page on or off (default off: `/authorize` consents at once). With it
    /// on, `/authorize` answers an HTML page where a person picks the account and accepts or
    /// declines.
    pub fn set_consent_page(&self, enabled: bool) {
        self.state().consent_page = enabled;
    }

    /// The next consent grants every requested scope but `scope` (e.g. `offline_access`: the
    /// grant then carries no refresh token).
    pub fn withhold_scope_next(&self, scope: &str) {
        self.state().withhold_next = Some(scope.to_owned());
    }

    /// The user revokes the app: every token of this account and client dies. Returns how many
    /// grants were live.
    pub fn revoke_user(&self, account_id: &str, client_id: &str) -> usize {
        self.state().tokens.revoke_user(account_id, client_id)
    }

    /// An admin removes the app from a site: existing grants stop covering it.
    pub fn remove_app_from_site(&self, client_id: &str, host: &str) {
        self.state().tokens.remove_site(client_id, host);
    }

    /// Lifetime of 3LO access tokens issued from now on (default 3600 s).
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.state().access_lifetime = secs(lifetime);
    }

    /// Lifetime of client-credentials access tokens issued from now on (default 3600 s).
    pub fn set_service_token_lifetime(&self, lifetime: Duration) {
        self.state().service_lifetime = secs(lifetime);
    }

    /// Moves the stand-in clock forward.
    pub fn advance_clock(&self, by: Duration) {
        self.state().advance_clock(by);
    }

    /// Stops the stand-in clock: from now on only [`StandIn::advance_clock`] moves it.
    pub fn freeze_clock(&self) {
        self.state().freeze_clock();
    }

    /// The stand-in's current time.
    pub fn now(&self) -> Timestamp {
        self.state().now()
    }

    /// The next `n` calls of `endpoint` get `fault` (after faults already queued).
    pub fn fail_next(&self, endpoint: Endpoint, n: u32, fault: Fault) {
        self.state().faults.fail_next(endpoint, n, fault);
    }

    /// From now on a share `ratio` (0..=1) of the calls of `endpoint` get `fault`, on top of
    /// the shares already given; a call gets at most one fault, queued ones first.
    pub fn fail_ratio(&self, endpoint: Endpoint, ratio: f64, fault: Fault) {
        self.state().faults.fail_ratio(endpoint, ratio, fault);
    }

    /// Makes the draws of [`StandIn::fail_ratio`] repeatable.
    pub fn seed_faults(&self, seed: u64) {
        self.state().faults.seed(seed);
    }

    /// Every `grant_type=refresh_token` call so far, oldest first, with its token family.
    pub fn refresh_calls(&self) -> Vec<RefreshCall> {
        self.state().refresh_calls.clone()
    }

    /// Bearer tokens presented to accessible-resources, `/me` and the Confluence API so far, by
    /// outcome (accepted, expired, revoked, …).
    pub fn bearer_counters(&self) -> BearerCounters {
        self.state().bearer
    }

    /// Drops every queued fault and every share rule.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Calls per endpoint and per `grant_type`.
    pub fn counters(&self) -> Counters {
        self.state().faults.counters()
    }

    /// How often superseded refresh tokens were sent again, within and after the leeway.
    pub fn reuse_counters(&self) -> ReuseCounters {
        self.state().tokens.reuse()
    }

    /// Every code, access token and refresh token issued so far.
    pub fn issued_secrets(&self) -> Vec<IssuedSecret> {
        self.state().tokens.issued().to_vec()
    }
}

async fn accept_loop(listener: TcpListener, state: Shared, shutdown: watch::Receiver<()>) {
    loop {
        let mut stop = shutdown.clone();
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// The Atlassian endpoints, with their path parameters.
enum Route {
    Authorize,
    Token,
    AccessibleResources,
    Me,
    ConfluenceUser(String),
    TenantInfo(String),
}

impl Route {
    fn parse(req: &Req) -> Option<Route> {
        let path = req.path.as_str();
        let get = req.method == Method::GET;
        match path {
            "/authorize" if get => return Some(Route::Authorize),
            "/oauth/token" if req.method == Method::POST => return Some(Route::Token),
            "/oauth/token/accessible-resources" if get => return Some(Route::AccessibleResources),
            "/me" if get => return Some(Route::Me),
            "/_edge/tenant_info" if get => {
                let host = req.header(HOST).unwrap_or_default();
                return Some(Route::TenantInfo(host.to_owned()));
            }
            _ => {}
        }
        if !get {
            return None;
        }
        if let Some(rest) = path.strip_prefix("/site/")
            && let Some(host) = rest.strip_suffix("/_edge/tenant_info")
            && !host.contains('/')
        {
            return Some(Route::TenantInfo(host.to_owned()));
        }
        if let Some(rest) = path.strip_prefix("/ex/confluence/")
            && let Some(cloud_id) = rest.strip_suffix("/wiki/rest/api/user/current")
            && !cloud_id.contains('/')
        {
            return Some(Route::ConfluenceUser(cloud_id.to_owned()));
        }
        None
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            Route::Authorize => Endpoint::Authorize,
            Route::Token => Endpoint::Token,
            Route::AccessibleResources => Endpoint::AccessibleResources,
            Route::Me => Endpoint::Me,
            Route::ConfluenceUser(_) => Endpoint::ConfluenceUser,
            Route::TenantInfo(_) => Endpoint::TenantInfo,
        }
    }
}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let req = match Req::read(req).await {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    Ok(dispatch(&state, req).await)
}

async fn dispatch(state: &Shared, req: Req) -> Resp {
    if req.path.starts_with("/_testbed/") {
        return control::handle(&mut lock(state), &req);
    }
    if req.path == "/authorize/consent" && req.method == Method::POST {
        return consent::decision(&mut lock(state), &req);
    }
    let Some(route) = Route::parse(&req) else {
        return api_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let params = match route {
        Route::Token => oauth::token_params(&req),
        _ => Default::default(),
    };
    let endpoint = route.endpoint();
    let arrived = std::time::Instant::now();
    let grant_type = params.get("grant_type").map(String::as_str);
    let refresh_token =
        (grant_type == Some("refresh_token")).then(|| params.get("refresh_token").cloned().unwrap_or_default());
    let fault = lock(state).faults.on_call(endpoint, grant_type);
    let injected = match fault {
        Some(Fault::Delay { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            None
        }
        Some(f) => Some(fault_response(endpoint, f)),
        None => None,
    };
    let mut st = lock(state);
    let resp = injected.unwrap_or_else(|| match route {
        Route::Authorize => oauth::authorize(&mut st, &req),
        Route::Token => oauth::token(&mut st, &req, &params),
        Route::AccessibleResources => api::accessible_resources(&mut st, &req),
        Route::Me => api::me(&mut st, &req),
        Route::ConfluenceUser(cloud_id) => api::confluence_user(&mut st, &req, &cloud_id),
        Route::TenantInfo(host) => api::tenant_info(&st, &host),
    });
    if let Some(rt) = refresh_token {
        let family = st.tokens.family_of(&rt);
        st.refresh_calls.push(RefreshCall {
            at: arrived,
            family: family.as_ref().map(|f| f.0),
            account_id: family.map(|f| f.1),
            fault,
            status: resp.status().as_u16(),
        });
    }
    resp
}

/// The answer to an injected status or rate-limit fault, in the endpoint's error shape.
fn fault_response(endpoint: Endpoint, fault: Fault) -> Resp {
    let (status, retry_after) = match fault {
        Fault::Status { status } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            None,
        ),
        Fault::RateLimited { retry_after_secs } => (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs)),
        Fault::Delay { .. } => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let reason = status.canonical_reason().unwrap_or("Injected fault");
    let mut resp = if endpoint == Endpoint::Token {
        let error = if retry_after.is_some() {
            "too_many_requests"
        } else {
            "server_error"
        };
        http::oauth_error(status, error, reason)
    } else {
        api_error(status, reason)
    };
    if let Some(s) = retry_after
        && let Ok(v) = hyper::header::HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    resp
}
