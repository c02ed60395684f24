//! The authorization server: `GET /authorize` (consent) and `POST /oauth/token` (code exchange,
//! rotating refresh, client credentials), as
//! <https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/> and
//! <https://developer.atlassian.com/cloud/oauth/getting-started/refresh-tokens/> describe them.
//!
//! `/authorize` never redirects to a `redirect_uri` it has not verified: a bad request answers
//! 400 with `{"error", "error_description"}`. The token endpoint takes the JSON body Atlassian
//! documents, a form body (RFC 6749), and client credentials in HTTP Basic auth as well.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hyper::StatusCode;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value, json};

use super::http::{Req, Resp, json_no_store, oauth_error, redirect};
use super::state::State;
use super::tokens::{Consent, Grant, Principal, TokenError};

/// What Atlassian answers when the client id or secret is wrong.
fn unauthorized() -> Resp {
    oauth_error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized")
}

fn bad_request(error: &str, description: &str) -> Resp {
    oauth_error(StatusCode::BAD_REQUEST, error, description)
}

fn token_error(e: TokenError) -> Resp {
    match e {
        TokenError::InvalidGrant(d) => oauth_error(StatusCode::FORBIDDEN, "invalid_grant", d),
        TokenError::NoRandomness => oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no randomness available",
        ),
    }
}

/// A validated authorization request: what the consent is about.
#[derive(Clone, Debug)]
pub(crate) struct AuthRequest {
    pub(crate) client_id: String,
    /// As sent (the token request must repeat it exactly); checked to parse as a URL.
    pub(crate) redirect_uri: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) state: Option<String>,
    pub(crate) code_challenge: Option<String>,
}

/// Checks an authorization request: `(error, error_description)` when it is bad.
fn validate(st: &State, req: &Req) -> Result<AuthRequest, (&'static str, String)> {
    let bad = |e: &'static str, d: &str| (e, d.to_owned());
    let client_id = req
        .query("client_id")
        .ok_or_else(|| bad("invalid_request", "Missing required parameter: client_id"))?;
    let app = st
        .world
        .client(client_id)
        .ok_or_else(|| bad("invalid_client", "Unknown client"))?;
    let redirect_uri = req
        .query("redirect_uri")
        .ok_or_else(|| bad("invalid_request", "Missing required parameter: redirect_uri"))?;
    if !app.allows_redirect(redirect_uri) {
        return Err(bad(
            "invalid_request",
            "The redirect_uri is not registered for this app",
        ));
    }
    url::Url::parse(redirect_uri).map_err(|_| bad("invalid_request", "The redirect_uri is not a URL"))?;
    if req.query("audience") != Some("api.atlassian.com") {
        return Err(bad("invalid_request", "audience must be api.atlassian.com"));
    }
    if req.query("response_type") != Some("code") {
        return Err(bad("unsupported_response_type", "Only response_type=code is supported"));
    }
    let scopes: Vec<String> = req
        .query("scope")
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return Err(bad("invalid_scope", "Missing required parameter: scope"));
    }
    if let Some(s) = app.disallowed_scope(&scopes) {
        return Err(("invalid_scope", format!("The scope {s} is not allowed for this app")));
    }
    let code_challenge = req.query("code_challenge").map(str::to_owned);
    if code_challenge.is_some() && req.query("code_challenge_method") != Some("S256") {
        return Err(bad("invalid_request", "code_challenge_method must be S256"));
    }
    Ok(AuthRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        scopes,
        state: req.query("state").map(str::to_owned),
        code_challenge,
    })
}

/// The redirect of a declined consent.
pub(crate) fn decline(ar: &AuthRequest) -> Resp {
    let Ok(mut target) = url::Url::parse(&ar.redirect_uri) else {
        return bad_request("invalid_request", "The redirect_uri is not a URL");
    };
    {
        let mut q = target.query_pairs_mut();
        q.append_pair("error", "access_denied");
        q.append_pair("error_description", "User did not authorize the request");
        if let Some(s) = &ar.state {
            q.append_pair("state", s);
        }
    }
    redirect(target.as_str())
}

/// The account that consents when nobody picks one: the test's choice, else the first added.
pub(crate) fn consenting_account(st: &State) -> Option<String> {
    st.consenting
        .clone()
        .or_else(|| st.world.default_account().map(str::to_owned))
}

/// The site a consent grants: the one picked, else the account's first site; none for an
/// account without sites. Err when the account cannot use the picked site (Atlassian's consent
/// screen offers only the account's sites).
fn consent_site(st: &State, account: &str, picked: Option<String>) -> Result<Vec<String>, String> {
    let sites = st.world.sites_of(account);
    match picked {
        Some(host) => sites
            .into_iter()
            .find(|h| h.eq_ignore_ascii_case(&host))
            .map(|h| vec![h])
            .ok_or_else(|| format!("The account cannot use the site {host}")),
        None => Ok(sites.into_iter().take(1).collect()),
    }
}

/// Consents as `account` for one site: issues a code and redirects to the app with it.
pub(crate) fn accept(st: &mut State, ar: AuthRequest, account: Option<String>, site: Option<String>) -> Resp {
    let Some(account) = account.filter(|a| st.world.account(a).is_some()) else {
        return bad_request("server_error", "The stand-in has no account to consent as");
    };
    let queued = st.consent_site_next.take();
    let picked = site.or(queued);
    let sites = match consent_site(st, &account, picked) {
        Ok(sites) => sites,
        Err(message) => return bad_request("invalid_request", &message),
    };
    let Ok(mut target) = url::Url::parse(&ar.redirect_uri) else {
        return bad_request("invalid_request", "The redirect_uri is not a URL");
    };
    let withheld = st.withhold_next.take();
    let consent = Consent {
        client_id: ar.client_id,
        sites,
        account_id: account,
        redirect_uri: ar.redirect_uri,
        scopes: ar.scopes.into_iter().filter(|s| Some(s) != withheld.as_ref()).collect(),
        code_challenge: ar.code_challenge,
    };
    let now = st.now();
    let code = match st.tokens.issue_code(now, consent) {
        Ok(c) => c,
        Err(e) => return token_error(e),
    };
    {
        let mut q = target.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(s) = &ar.state {
            q.append_pair("state", s);
        }
    }
    redirect(target.as_str())
}

/// `GET /authorize`: validates, then declines (when the test asked), shows the consent page
/// (when turned on), or consents at once as the consenting account.
pub(crate) fn authorize(st: &mut State, req: &Req) -> Resp {
    let ar = match validate(st, req) {
        Ok(ar) => ar,
        Err((error, description)) => return bad_request(error, &description),
    };
    if st.decline_next {
        st.decline_next = false;
        return decline(&ar);
    }
    if st.consent_page {
        return super::consent::page(st, ar);
    }
    let account = consenting_account(st);
    accept(st, ar, account, None)
}

/// The parameters of a token request, from a JSON or a form body.
pub(crate) fn token_params(req: &Req) -> HashMap<String, String> {
    let is_form = req
        .header(CONTENT_TYPE)
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form && let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&req.body) {
        return map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                _ => None,
            })
            .collect();
    }
    url::form_urlencoded::parse(&req.body).into_owned().collect()
}

/// Client id and secret from `Authorization: Basic` (RFC 6749 section 2.3.1).
fn basic_credentials(req: &Req) -> Option<(String, String)> {
    let value = req.header(AUTHORIZATION)?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

fn grant_body(g: Grant) -> Value {
    let mut m = Map::new();
    m.insert("access_token".into(), json!(g.access_token));
    m.insert("expires_in".into(), json!(g.expires_in));
    m.insert("token_type".into(), json!("Bearer"));
    if let Some(rt) = g.refresh_token {
        m.insert("refresh_token".into(), json!(rt));
    }
    m.insert("scope".into(), json!(g.scope));
    Value::Object(m)
}

/// The token request's parameters, with the client credentials from the body or HTTP Basic.
struct TokenRequest<'a> {
    params: &'a HashMap<String, String>,
    client_id: String,
    secret: String,
}

impl TokenRequest<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// The answer to a token request: the grant, or the refusal in Atlassian's shape.
fn answer(result: Result<Grant, TokenError>) -> Resp {
    match result {
        Ok(g) => json_no_store(StatusCode::OK, &grant_body(g)),
        Err(e) => token_error(e),
    }
}

/// `POST /oauth/token`, given its already parsed parameters.
pub(crate) fn token(st: &mut State, req: &Req, params: &HashMap<String, String>) -> Resp {
    let basic = basic_credentials(req);
    let from_body = |k: &str| params.get(k).cloned();
    let client_id = from_body("client_id").or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let secret = from_body("client_secret").or_else(|| basic.as_ref().map(|b| b.1.clone()));
    let (Some(client_id), Some(secret)) = (client_id, secret) else {
        return unauthorized();
    };
    let tr = TokenRequest {
        params,
        client_id,
        secret,
    };
    match tr.get("grant_type") {
        None => bad_request("invalid_request", "Missing required parameter: grant_type"),
        Some("authorization_code") => authorization_code(st, &tr),
        Some("refresh_token") => refresh_token(st, &tr),
        Some("client_credentials") => client_credentials(st, &tr),
        Some(_) => bad_request("unsupported_grant_type", "Unsupported grant type"),
    }
}

/// Whether the 3LO app's id and secret are right.
fn app_authenticated(st: &State, tr: &TokenRequest<'_>) -> bool {
    st.world
        .client(&tr.client_id)
        .is_some_and(|c| c.client_secret == tr.secret)
}

/// `grant_type=authorization_code`.
fn authorization_code(st: &mut State, tr: &TokenRequest<'_>) -> Resp {
    if !app_authenticated(st, tr) {
        return unauthorized();
    }
    let Some(code) = tr.get("code") else {
        return bad_request("invalid_request", "Missing required parameter: code");
    };
    let (now, lifetime) = (st.now(), st.access_lifetime);
    answer(st.tokens.exchange_code(
        now,
        &tr.client_id,
        code,
        tr.get("redirect_uri"),
        tr.get("code_verifier"),
        lifetime,
    ))
}

/// `grant_type=refresh_token`.
fn refresh_token(st: &mut State, tr: &TokenRequest<'_>) -> Resp {
    if !app_authenticated(st, tr) {
        return unauthorized();
    }
    let Some(rt) = tr.get("refresh_token") else {
        return bad_request("invalid_request", "Missing required parameter: refresh_token");
    };
    let (now, lifetime) = (st.now(), st.access_lifetime);
    answer(st.tokens.refresh(now, &tr.client_id, rt, lifetime))
}

/// `grant_type=client_credentials`: service-account credentials only.
fn client_credentials(st: &mut State, tr: &TokenRequest<'_>) -> Resp {
    let Some(sa) = st.world.service_account(&tr.client_id) else {
        return if app_authenticated(st, tr) {
            oauth_error(
                StatusCode::FORBIDDEN,
                "unauthorized_client",
                "Grant type 'client_credentials' not allowed for the client.",
            )
        } else {
            unauthorized()
        };
    };
    if sa.client_secret != tr.secret {
        return unauthorized();
    }
    let allowed = sa.effective_scopes();
    let scopes: Vec<String> = match tr.get("scope") {
        Some(s) => s.split_whitespace().map(str::to_owned).collect(),
        None => allowed.clone(),
    };
    if let Some(bad) = scopes.iter().find(|s| !allowed.contains(s)) {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!("Client has not been granted scopes: {bad}"),
        );
    }
    let principal = Principal {
        client_id: tr.client_id.clone(),
        account_id: sa.account_id.clone(),
        scopes,
        sites: vec![sa.site.clone()],
    };
    let (now, lifetime) = (st.now(), st.service_lifetime);
    answer(st.tokens.client_credentials(now, principal, lifetime))
}
