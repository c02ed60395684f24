//! Client for Atlassian's OAuth 2.0 (3LO) endpoints and the Confluence Cloud gateway.
//!
//! Token requests use JSON bodies, as Atlassian documents them
//! (<https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/>), which the `oauth2`
//! crate's form-encoded requests cannot express; `oauth2` supplies PKCE. Every call has a
//! bounded timeout and shares one connection pool. Errors separate "the credential is dead"
//! from "try again"; no error text ever carries a token.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to Atlassian.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtlassianError {
    /// `invalid_grant`: the code or refresh token is dead; someone must consent again.
    #[error("Atlassian refused the grant (invalid_grant): {0}")]
    GrantDead(String),
    /// The app's client id or secret was rejected (a configuration error, not a revocation).
    #[error("Atlassian rejected the client id or client secret")]
    InvalidClient,
    /// The access token was refused on an API call (expired or revoked).
    #[error("Atlassian refused the access token (401)")]
    Unauthorized,
    /// The API call is not allowed for this token (missing scope, no site access).
    #[error("Atlassian answered 403 Forbidden: {0}")]
    Forbidden(String),
    /// The resource does not exist for this token (e.g. a site the grant does not cover).
    #[error("Atlassian answered 404 Not Found")]
    NotFound,
    /// Other refusal of a token request (`{error, error_description}`).
    #[error("Atlassian refused the request ({status}): {error}: {description}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// OAuth error code.
        error: String,
        /// Atlassian's description.
        description: String,
    },
    /// 429: slow down; `Retry-After` when Atlassian sent one.
    #[error("Atlassian rate-limited the request (retry after {retry_after:?})")]
    RateLimited {
        /// How long Atlassian asked to wait.
        retry_after: Option<Duration>,
    },
    /// 5xx from Atlassian.
    #[error("Atlassian is unavailable (HTTP {0})")]
    Unavailable(u16),
    /// No answer within the timeout.
    #[error("Atlassian did not answer in time")]
    Timeout,
    /// The connection failed.
    #[error("could not reach Atlassian: {0}")]
    Connect(String),
    /// An answer this client cannot read.
    #[error("unexpected answer from Atlassian: {0}")]
    Protocol(String),
}

impl AtlassianError {
    /// True for failures worth retrying with backoff (429, 5xx, timeouts, connection errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Unavailable(_) | Self::Timeout | Self::Connect(_)
        )
    }

    /// Bounded category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::GrantDead(_) => "GrantRevoked",
            Self::InvalidClient => "InvalidClientCredentials",
            Self::Unauthorized => "TokenRejected",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound => "NotFound",
            Self::Rejected { .. } => "Rejected",
            Self::RateLimited { .. } => "RateLimited",
            Self::Unavailable(_) => "AtlassianUnavailable",
            Self::Timeout => "Timeout",
            Self::Connect(_) => "ConnectFailed",
            Self::Protocol(_) => "ProtocolError",
        }
    }

    /// How long Atlassian asked to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// An app's (or service account's) credentials.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: SecretString,
}

/// A token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    #[serde(deserialize_with = "conceal")]
    pub access_token: SecretString,
    /// The (rotated) refresh token; absent without `offline_access` and for client credentials.
    #[serde(default, deserialize_with = "conceal_opt")]
    pub refresh_token: Option<SecretString>,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
    /// Space-separated granted scopes.
    #[serde(default)]
    pub scope: String,
}

/// Longest access-token lifetime the operator believes: Atlassian's tokens live an hour, so a
/// longer `expires_in` is an upstream bug or an attack, and trusting it unbounded would overflow
/// the timestamp arithmetic (SECURITY.md, finding 5) or keep a dead token "current" for years.
pub const MAX_TOKEN_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// How long a token with this `expires_in` lives: capped at [`MAX_TOKEN_LIFETIME`]. A zero
/// `expires_in` means the token is already expired (the next reconcile mints or refreshes
/// again); a negative or fractional one is not a `u64` and fails to parse, like any other
/// malformed answer.
pub fn token_lifetime(expires_in: u64) -> jiff::SignedDuration {
    i64::try_from(expires_in)
        .map(jiff::SignedDuration::from_secs)
        .unwrap_or(MAX_TOKEN_LIFETIME)
        .min(MAX_TOKEN_LIFETIME)
}

/// When a token obtained at `now` with this `expires_in` expires: [`token_lifetime`] later,
/// saturating at the end of representable time instead of panicking.
pub fn token_expiry(now: jiff::Timestamp, expires_in: u64) -> jiff::Timestamp {
    now.checked_add(token_lifetime(expires_in))
        .unwrap_or(jiff::Timestamp::MAX)
}

impl TokenResponse {
    /// How long the access token lives: [`token_lifetime`] of `expires_in`.
    pub fn lifetime(&self) -> jiff::SignedDuration {
        token_lifetime(self.expires_in)
    }

    /// When the access token expires if it was obtained at `now`: [`token_expiry`].
    pub fn expires_at(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        token_expiry(now, self.expires_in)
    }

    /// The granted scopes as a list.
    pub fn scopes(&self) -> Vec<String> {
        self.scope.split_whitespace().map(str::to_string).collect()
    }
}

/// One site a grant covers (`/oauth/token/accessible-resources`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessibleResource {
    /// Cloud id.
    pub id: String,
    /// Site URL, e.g. `https://acme.atlassian.net`.
    pub url: String,
    /// Site name.
    pub name: String,
    /// Scopes granted on this site.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Atlassian account id.
    pub account_id: String,
    /// Display name.
    pub display_name: String,
}

/// Atlassian endpoints: all configurable so tests and the demo use the stand-in.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `https://auth.atlassian.com`.
    pub auth_url: String,
    /// `https://api.atlassian.com`.
    pub api_url: String,
    /// Where a site's tenant info lives; `{site}` is replaced by the site host.
    pub tenant_info_url: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            auth_url: "https://auth.atlassian.com".into(),
            api_url: "https://api.atlassian.com".into(),
            tenant_info_url: "https://{site}/_edge/tenant_info".into(),
        }
    }
}

/// The parameters of an authorization link.
#[derive(Debug, Clone)]
pub struct AuthorizeRequest<'a> {
    /// OAuth client id.
    pub client_id: &'a str,
    /// Scopes to ask for.
    pub scopes: &'a [String],
    /// Where Atlassian sends the browser back.
    pub redirect_uri: &'a str,
    /// The sealed state.
    pub state: &'a str,
    /// PKCE S256 challenge.
    pub code_challenge: &'a str,
}

/// Client for Atlassian; cheap to clone (one shared connection pool).
#[derive(Debug, Clone)]
pub struct AtlassianClient {
    http: reqwest::Client,
    endpoints: Endpoints,
}

impl AtlassianClient {
    /// A client with the given endpoints and per-call timeout.
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Result<Self, AtlassianError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("confluence-auth-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AtlassianError::Connect(e.to_string()))?;
        Ok(Self {
            http,
            endpoints: Endpoints {
                auth_url: trim(&endpoints.auth_url),
                api_url: trim(&endpoints.api_url),
                ..endpoints
            },
        })
    }

    /// The configured endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The authorization server's origin (`scheme://host[:port]`), for a page's CSP.
    pub fn auth_origin(&self) -> String {
        url::Url::parse(&self.endpoints.auth_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }

    /// The consent link (`/authorize`) a browser is redirected to.
    pub fn authorize_url(&self, request: &AuthorizeRequest<'_>) -> String {
        let mut url = url::Url::parse(&format!("{}/authorize", self.endpoints.auth_url))
            .unwrap_or_else(|_| unreachable!("the auth URL was validated at start-up"));
        url.query_pairs_mut()
            .append_pair("audience", "api.atlassian.com")
            .append_pair("client_id", request.client_id)
            .append_pair("scope", &request.scopes.join(" "))
            .append_pair("redirect_uri", request.redirect_uri)
            .append_pair("state", request.state)
            .append_pair("response_type", "code")
            .append_pair("prompt", "consent")
            .append_pair("code_challenge", request.code_challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// Exchanges an authorization code (with its PKCE verifier) for a token set.
    pub async fn exchange_code(
        &self,
        client: &ClientCredentials,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, AtlassianError> {
        self.token_request(json!({
            "grant_type": "authorization_code",
            "client_id": client.client_id,
            "client_secret": client.client_secret.expose_secret(),
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }))
        .await
    }

    /// Refreshes; the answer carries a rotated refresh token that replaces the one sent.
    /// See <https://developer.atlassian.com/cloud/confluence/oauth-2-3lo-apps/#use-a-refresh-token-to-get-another-access-token-and-refresh-token-pair>.
    pub async fn refresh(
        &self,
        client: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, AtlassianError> {
        self.token_request(json!({
            "grant_type": "refresh_token",
            "client_id": client.client_id,
            "client_secret": client.client_secret.expose_secret(),
            "refresh_token": refresh_token.expose_secret(),
        }))
        .await
    }

    /// Mints a token for a service account (`grant_type=client_credentials`).
    pub async fn client_credentials(&self, client: &ClientCredentials) -> Result<TokenResponse, AtlassianError> {
        self.token_request(json!({
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.client_secret.expose_secret(),
        }))
        .await
    }

    /// The sites the token's grant covers.
    pub async fn accessible_resources(
        &self,
        access_token: &SecretString,
    ) -> Result<Vec<AccessibleResource>, AtlassianError> {
        let url = format!("{}/oauth/token/accessible-resources", self.endpoints.api_url);
        self.api_get(&url, access_token).await
    }

    /// The token owner's identity from `/me` (needs `read:me`).
    pub async fn me(&self, access_token: &SecretString) -> Result<Identity, AtlassianError> {
        #[derive(Deserialize)]
        struct Me {
            account_id: String,
            #[serde(default)]
            name: String,
        }
        let me: Me = self
            .api_get(&format!("{}/me", self.endpoints.api_url), access_token)
            .await?;
        Ok(Identity {
            account_id: me.account_id,
            display_name: me.name,
        })
    }

    /// The token owner's identity from Confluence (works without `read:me`).
    pub async fn current_user(&self, access_token: &SecretString, cloud_id: &str) -> Result<Identity, AtlassianError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct User {
            account_id: String,
            #[serde(default)]
            display_name: String,
        }
        let url = format!(
            "{}/ex/confluence/{cloud_id}/wiki/rest/api/user/current",
            self.endpoints.api_url
        );
        let user: User = self.api_get(&url, access_token).await?;
        Ok(Identity {
            account_id: user.account_id,
            display_name: user.display_name,
        })
    }

    /// The cloud id of a site (`https://<site>/_edge/tenant_info`).
    pub async fn tenant_info(&self, site_host: &str) -> Result<String, AtlassianError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct TenantInfo {
            cloud_id: String,
        }
        let url = self.endpoints.tenant_info_url.replace("{site}", site_host);
        let response = self.http.get(&url).send().await.map_err(transport)?;
        let info: TenantInfo = read_json(response, api_error).await?;
        Ok(info.cloud_id)
    }

    /// The API base consumers call for a site.
    pub fn api_base_url(&self, cloud_id: &str) -> String {
        format!("{}/ex/confluence/{cloud_id}", self.endpoints.api_url)
    }

    async fn token_request(&self, body: serde_json::Value) -> Result<TokenResponse, AtlassianError> {
        let url = format!("{}/oauth/token", self.endpoints.auth_url);
        let response = self.http.post(&url).json(&body).send().await.map_err(transport)?;
        read_json(response, token_error).await
    }

    async fn api_get<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        access_token: &SecretString,
    ) -> Result<T, AtlassianError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token.expose_secret())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(transport)?;
        read_json(response, api_error).await
    }
}

fn trim(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    on_error: fn(StatusCode, &str) -> AtlassianError,
) -> Result<T, AtlassianError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.map_err(transport)?;
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(AtlassianError::RateLimited { retry_after });
    }
    if status.is_server_error() {
        return Err(AtlassianError::Unavailable(status.as_u16()));
    }
    if !status.is_success() {
        return Err(on_error(status, &body));
    }
    // The body may hold tokens: never put it into an error.
    serde_json::from_str(&body)
        .map_err(|e| AtlassianError::Protocol(format!("unreadable JSON at line {} column {}", e.line(), e.column())))
}

/// Maps a token-endpoint refusal (`{"error", "error_description"}`).
fn token_error(status: StatusCode, body: &str) -> AtlassianError {
    #[derive(Deserialize, Default)]
    struct OAuthError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_description: String,
    }
    let parsed: OAuthError = serde_json::from_str(body).unwrap_or_default();
    match (status.as_u16(), parsed.error.as_str()) {
        (_, "invalid_grant") => AtlassianError::GrantDead(short(&parsed.error_description)),
        (401, _) | (_, "invalid_client" | "unauthorized_client") => AtlassianError::InvalidClient,
        (code, _) => AtlassianError::Rejected {
            status: code,
            error: short(&parsed.error),
            description: short(&parsed.error_description),
        },
    }
}

/// Maps an API refusal (`{"code", "message"}`).
fn api_error(status: StatusCode, body: &str) -> AtlassianError {
    #[derive(Deserialize, Default)]
    struct ApiError {
        #[serde(default)]
        message: String,
    }
    let parsed: ApiError = serde_json::from_str(body).unwrap_or_default();
    match status.as_u16() {
        401 => AtlassianError::Unauthorized,
        403 => AtlassianError::Forbidden(short(&parsed.message)),
        404 => AtlassianError::NotFound,
        code => AtlassianError::Protocol(format!("HTTP {code}")),
    }
}

/// Atlassian's descriptions are short prose; cap them so an odd answer cannot flood a status.
fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

fn transport(e: reqwest::Error) -> AtlassianError {
    if e.is_timeout() {
        AtlassianError::Timeout
    } else {
        // Strip the URL: it is ours and harmless, but keep the message generic and short.
        AtlassianError::Connect(e.without_url().to_string())
    }
}

fn conceal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::from)
}

fn conceal_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(expires_in: &str) -> serde_json::Result<TokenResponse> {
        serde_json::from_str(&format!(r#"{{"access_token":"a","expires_in":{expires_in}}}"#))
    }

    #[test]
    fn token_lifetimes_are_capped_and_never_overflow() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let hour = jiff::SignedDuration::from_hours(1);
        for (expires_in, lifetime) in [
            ("3600", hour),
            ("0", jiff::SignedDuration::ZERO),
            ("86400", MAX_TOKEN_LIFETIME),
            ("86401", MAX_TOKEN_LIFETIME),
            ("9223372036854775807", MAX_TOKEN_LIFETIME),
            ("18446744073709551615", MAX_TOKEN_LIFETIME),
        ] {
            let answer = answer(expires_in).unwrap();
            assert_eq!(answer.lifetime(), lifetime, "{expires_in}");
            assert_eq!(answer.expires_at(now), now + lifetime, "{expires_in}");
        }
        // Even at the end of time the expiry saturates instead of panicking.
        assert_eq!(
            answer("3600").unwrap().expires_at(jiff::Timestamp::MAX),
            jiff::Timestamp::MAX
        );
        // Negative, fractional and out-of-range answers are malformed, not a panic later.
        for bad in ["-1", "1.5", "1e30", "18446744073709551616", "\"3600\""] {
            assert!(answer(bad).is_err(), "{bad}");
        }
    }

    #[rstest::rstest]
    #[case(403, r#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#, AtlassianError::GrantDead("Unknown or invalid refresh token.".into()))]
    #[case(
        401,
        r#"{"error":"access_denied","error_description":"Unauthorized"}"#,
        AtlassianError::InvalidClient
    )]
    #[case(400, r#"{"error":"invalid_request","error_description":"missing code"}"#, AtlassianError::Rejected { status: 400, error: "invalid_request".into(), description: "missing code".into() })]
    #[case(400, "not json", AtlassianError::Rejected { status: 400, error: String::new(), description: String::new() })]
    fn token_errors_map_to_categories(#[case] status: u16, #[case] body: &str, #[case] expected: AtlassianError) {
        let err = token_error(StatusCode::from_u16(status).unwrap(), body);
        assert_eq!(err, expected);
        assert!(!err.is_transient());
    }

    #[test]
    fn only_rate_limits_outages_and_network_failures_are_transient() {
        assert!(AtlassianError::RateLimited { retry_after: None }.is_transient());
        assert!(AtlassianError::Unavailable(503).is_transient());
        assert!(AtlassianError::Timeout.is_transient());
        assert!(AtlassianError::Connect("refused".into()).is_transient());
        assert!(!AtlassianError::GrantDead(String::new()).is_transient());
        assert!(!AtlassianError::InvalidClient.is_transient());
        assert!(!AtlassianError::Unauthorized.is_transient());
    }

    #[test]
    fn the_authorize_link_carries_every_parameter_atlassian_documents() {
        let client = AtlassianClient::new(
            Endpoints {
                auth_url: "http://127.0.0.1:1/".into(),
                ..Endpoints::default()
            },
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        let scopes = vec!["offline_access".to_string(), "read:me".to_string()];
        let link = client.authorize_url(&AuthorizeRequest {
            client_id: "cid",
            scopes: &scopes,
            redirect_uri: "https://op.example/oauth/callback",
            state: "st",
            code_challenge: "ch",
        });
        let url = url::Url::parse(&link).unwrap();
        assert_eq!(url.path(), "/authorize");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let expected = [
            ("audience", "api.atlassian.com"),
            ("client_id", "cid"),
            ("scope", "offline_access read:me"),
            ("redirect_uri", "https://op.example/oauth/callback"),
            ("state", "st"),
            ("response_type", "code"),
            ("prompt", "consent"),
            ("code_challenge", "ch"),
            ("code_challenge_method", "S256"),
        ];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }
}
