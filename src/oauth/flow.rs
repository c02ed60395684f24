//! The browser flow: `start` (check the link's nonce, seal a state, redirect to Atlassian) and
//! `callback` (verify state, cookie and single use, exchange the code, validate the grant,
//! store vault → token Secret → status). Independent of the web framework: both return an
//! [`Answer`] that `webhook` turns into HTTP.
//!
//! A failure stores no credential. Refusals of the grant itself (wrong site, wrong account,
//! duplicate) are also recorded as a condition, so `kubectl describe` shows why.

use jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};
use secrecy::SecretString;

use crate::context::Context;
use crate::crd::conditions::{self, reason};
use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, GrantType, Phase};
use crate::grant::{self, GrantError};
use crate::oauth::atlassian::{AccessibleResource, AtlassianError, ClientCredentials, Identity, TokenResponse};
use crate::oauth::state::{self, FlowTarget, ResourceKind, StateError};
use crate::store;
use crate::token_set::TokenSet;
use crate::validation;

/// Refresh tokens die this long after the first consent, whatever happens.
pub const REFRESH_TOKEN_MAX_AGE: jiff::SignedDuration = jiff::SignedDuration::from_hours(365 * 24);

/// What the web server answers.
#[derive(Debug)]
pub enum Answer {
    /// 302 to Atlassian with the flow cookie.
    Redirect {
        /// The authorize link.
        location: String,
        /// `Set-Cookie` value.
        set_cookie: String,
    },
    /// An HTML page.
    Page(Page),
}

/// A page for a person: never a token, a code or the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// HTTP status.
    pub status: u16,
    /// Heading.
    pub title: String,
    /// What happened and what to do.
    pub message: String,
    /// `Set-Cookie` value (clears the flow cookie after a callback).
    pub set_cookie: Option<String>,
    /// Bounded outcome label for metrics and logs.
    pub outcome: &'static str,
}

impl Page {
    fn new(status: u16, outcome: &'static str, title: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            title: title.to_string(),
            message: message.into(),
            set_cookie: None,
            outcome,
        }
    }
}

/// The query of a callback.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CallbackQuery {
    /// Authorization code.
    pub code: Option<String>,
    /// Sealed state.
    pub state: Option<String>,
    /// Error code when consent failed.
    pub error: Option<String>,
    /// Atlassian's description of the error.
    pub error_description: Option<String>,
}

/// `GET /oauth/start/<namespace>/<kind>/<name>?nonce=…`.
pub async fn start(ctx: &Context, namespace: &str, kind: &str, name: &str, nonce: Option<&str>) -> Answer {
    match start_inner(ctx, namespace, kind, name, nonce).await {
        Ok(answer) => answer,
        Err(page) => Answer::Page(page),
    }
}

async fn start_inner(
    ctx: &Context,
    namespace: &str,
    kind: &str,
    name: &str,
    nonce: Option<&str>,
) -> Result<Answer, Page> {
    let kind =
        ResourceKind::from_segment(kind).ok_or_else(|| not_found("the link's kind must be installation or user"))?;
    if !is_object_name(namespace) || !is_object_name(name) {
        return Err(not_found("the link names no valid object"));
    }
    let nonce = nonce.filter(|n| !n.is_empty()).ok_or_else(|| {
        Page::new(
            400,
            "missing_nonce",
            "Incomplete link",
            "The link has no nonce. Copy the whole link from the resource's status.authorizationUrl.",
        )
    })?;
    let now = ctx.clock.now();
    let (uid, nonce_hash, client_id, scopes) = match kind {
        ResourceKind::Installation => {
            let cfi = get::<ConfluenceInstallation>(&ctx.client, namespace, name).await?;
            check_link(&cfi, nonce, now)?;
            if cfi.spec.grant == GrantType::ClientCredentials {
                return Err(Page::new(
                    409,
                    "no_browser_flow",
                    "No consent needed",
                    "This installation uses client credentials: it needs no browser consent.",
                ));
            }
            (
                cfi.uid(),
                cfi.credential().and_then(|c| c.authorization_nonce_hash.clone()),
                cfi.spec.client_id.clone(),
                cfi.spec.scopes.clone(),
            )
        }
        ResourceKind::User => {
            let cfua = get::<ConfluenceUserAuth>(&ctx.client, namespace, name).await?;
            check_link(&cfua, nonce, now)?;
            let cfi = installation_of(&ctx.client, &cfua).await?;
            let scopes = cfua.spec.effective_scopes(&cfi.spec).to_vec();
            (
                cfua.uid(),
                cfua.credential().and_then(|c| c.authorization_nonce_hash.clone()),
                cfi.spec.client_id.clone(),
                scopes,
            )
        }
    };
    let target = FlowTarget {
        namespace: namespace.into(),
        kind,
        name: name.into(),
        uid: uid.unwrap_or_default(),
    };
    let flow = state::start(&ctx.keys, target, nonce_hash.unwrap_or_default(), now).map_err(|_| internal())?;
    let location = ctx.atlassian.authorize_url(&crate::oauth::atlassian::AuthorizeRequest {
        client_id: &client_id,
        scopes: &scopes,
        redirect_uri: &ctx.redirect_uri(),
        state: &flow.state,
        code_challenge: &flow.code_challenge,
    });
    Ok(Answer::Redirect {
        location,
        set_cookie: state::set_cookie_header(&flow, ctx.secure_cookies()),
    })
}

/// The link's nonce must be the one in status, and the link not expired.
fn check_link<K: CredentialResource>(obj: &K, nonce: &str, now: Timestamp) -> Result<(), Page> {
    let status = obj.credential();
    let current = status.and_then(|s| s.authorization_nonce_hash.as_deref());
    let expires = status.and_then(|s| s.authorization_expires_at.as_ref()).map(|t| t.0);
    let valid = current == Some(state::hash_hex(nonce).as_str()) && expires.is_some_and(|e| e > now);
    if valid { Ok(()) } else { Err(stale_link()) }
}

/// `GET /oauth/callback?code&state` (or `?error=…`).
pub async fn callback(ctx: &Context, query: &CallbackQuery, cookie_header: Option<&str>) -> Page {
    let flow = match query.state.as_deref().filter(|s| !s.is_empty()) {
        None => {
            return Page::new(
                400,
                "missing_state",
                "Incomplete response",
                "Atlassian's answer has no state parameter. Start again from the authorization link.",
            );
        }
        Some(text) => match state::open(&ctx.keys, text, ctx.clock.now()) {
            Ok(flow) => flow,
            Err(StateError::Expired) => {
                return Page::new(
                    400,
                    "state_expired",
                    "Authorization expired",
                    "The authorization took longer than 10 minutes. Nothing was stored; open the authorization link again.",
                );
            }
            Err(_) => {
                return Page::new(
                    400,
                    "state_invalid",
                    "Invalid response",
                    "This response was not started by this operator (or it was altered). Nothing was stored; open the authorization link again.",
                );
            }
        },
    };
    let mut page = callback_with_flow(ctx, query, cookie_header, &flow)
        .await
        .unwrap_or_else(|page| page);
    page.set_cookie = Some(state::clear_cookie_header(&flow));
    page
}

async fn callback_with_flow(
    ctx: &Context,
    query: &CallbackQuery,
    cookie_header: Option<&str>,
    flow: &state::FlowState,
) -> Result<Page, Page> {
    state::check_cookie(flow, cookie_header).map_err(|e| match e {
        StateError::MissingCookie => Page::new(400, "cookie_missing", "Browser check failed", "This browser did not start this authorization (its cookie is missing). Nothing was stored; open the authorization link in the same browser."),
        _ => Page::new(400, "cookie_mismatch", "Browser check failed", "This browser's cookie does not belong to this authorization. Nothing was stored; open the authorization link again."),
    })?;
    if let Some(error) = query.error.as_deref() {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let message = if error == "access_denied" {
            "The consent was declined at Atlassian (access_denied). Nothing was stored; open the authorization link again to retry.".to_string()
        } else {
            format!("Atlassian reported an error ({error}). Nothing was stored; open the authorization link again.")
        };
        return Err(Page::new(403, "consent_error", "Authorization not granted", message));
    }
    let code = query.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        Page::new(
            400,
            "missing_code",
            "Incomplete response",
            "Atlassian's answer has no authorization code. Nothing was stored; open the authorization link again.",
        )
    })?;
    let target = &flow.target;
    match target.kind {
        ResourceKind::Installation => {
            let cfi = get::<ConfluenceInstallation>(&ctx.client, &target.namespace, &target.name).await?;
            check_single_use(&cfi, flow)?;
            let policy = validation::installation(&cfi.name_any(), &cfi.spec).map_err(|e| invalid_spec(&e))?;
            validation::pinned_site_allowed(&policy, &ctx.allowed_site_suffixes).map_err(|e| invalid_spec(&e))?;
            let credentials = credentials_of(ctx, &cfi).await?;
            let tokens = exchange(ctx, &credentials, code, flow).await?;
            let resources = ctx
                .atlassian
                .accessible_resources(&tokens.access_token)
                .await
                .map_err(atlassian_page)?;
            let site = refuse(ctx, &cfi, grant::choose_site(&resources, policy.site_host.as_deref()))
                .await?
                .clone();
            let identity = identity(ctx, &tokens, &site).await?;
            let set = token_set(ctx, &tokens, &site, &identity);
            store_grant(ctx, &cfi, &set, &policy.token_secret_name, &site, &identity).await?;
            Ok(success(&site, &identity))
        }
        ResourceKind::User => {
            let cfua = get::<ConfluenceUserAuth>(&ctx.client, &target.namespace, &target.name).await?;
            check_single_use(&cfua, flow)?;
            let cfi = installation_of(&ctx.client, &cfua).await?;
            let bound = cfua.status.as_ref().and_then(|s| s.bound_installation.as_deref());
            let policy =
                validation::user_auth(&cfua.name_any(), &cfua.spec, &cfi.spec, bound).map_err(|e| invalid_spec(&e))?;
            let (cloud_id, site_url) = installation_site(&cfi)?;
            let credentials = credentials_of(ctx, &cfi).await?;
            let tokens = exchange(ctx, &credentials, code, flow).await?;
            let resources = ctx
                .atlassian
                .accessible_resources(&tokens.access_token)
                .await
                .map_err(atlassian_page)?;
            let site = refuse(ctx, &cfua, grant::require_site(&resources, &cloud_id, &site_url))
                .await?
                .clone();
            let identity = identity(ctx, &tokens, &site).await?;
            refuse(
                ctx,
                &cfua,
                grant::require_account(cfua.spec.expected_account_id.as_deref(), &identity.account_id),
            )
            .await?;
            refuse(
                ctx,
                &cfua,
                duplicate_account(&ctx.client, &cfua, &identity.account_id).await?,
            )
            .await?;
            let set = token_set(ctx, &tokens, &site, &identity);
            store_grant(ctx, &cfua, &set, &policy.token_secret_name, &site, &identity).await?;
            let installation = cfi.name_any();
            let display_name = identity.display_name.clone();
            let account_id = identity.account_id.clone();
            store::update_status(&ctx.client, &cfua, move |obj| {
                let status = obj.status.get_or_insert_with(Default::default);
                status.account_id = Some(account_id.clone());
                status.display_name = Some(display_name.clone());
                status.bound_installation = Some(installation.clone());
            })
            .await
            .map_err(|_| unavailable())?;
            Ok(success(&site, &identity))
        }
    }
}

/// The state must be for this very object (uid) and its nonce still the current one.
fn check_single_use<K: CredentialResource>(obj: &K, flow: &state::FlowState) -> Result<(), Page> {
    let same_object = obj.uid().as_deref() == Some(flow.target.uid.as_str());
    let current =
        obj.credential().and_then(|c| c.authorization_nonce_hash.as_deref()) == Some(flow.nonce_hash.as_str());
    if same_object && current {
        Ok(())
    } else {
        Err(stale_link())
    }
}

async fn exchange(
    ctx: &Context,
    credentials: &ClientCredentials,
    code: &str,
    flow: &state::FlowState,
) -> Result<TokenResponse, Page> {
    use secrecy::ExposeSecret;
    let tokens = ctx
        .atlassian
        .exchange_code(
            credentials,
            code,
            &ctx.redirect_uri(),
            flow.pkce_verifier.expose_secret(),
        )
        .await
        .map_err(atlassian_page)?;
    grant::require_offline_access(tokens.refresh_token.is_some(), &tokens.scopes())
        .map_err(|e| Page::new(400, "no_offline_access", "Authorization not usable", e.to_string()))?;
    Ok(tokens)
}

async fn identity(ctx: &Context, tokens: &TokenResponse, site: &AccessibleResource) -> Result<Identity, Page> {
    let result = if tokens.scopes().iter().any(|s| s == "read:me") {
        ctx.atlassian.me(&tokens.access_token).await
    } else {
        ctx.atlassian.current_user(&tokens.access_token, &site.id).await
    };
    result.map_err(atlassian_page)
}

fn token_set(ctx: &Context, tokens: &TokenResponse, site: &AccessibleResource, identity: &Identity) -> TokenSet {
    let now = ctx.clock.now();
    TokenSet {
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token.clone(),
        expires_at: tokens.expires_at(now),
        scopes: tokens.scopes(),
        cloud_id: site.id.clone(),
        site_url: site.url.clone(),
        account_id: identity.account_id.clone(),
        obtained_at: now,
        consented_at: now,
    }
}

/// Vault, token Secret, then status (Ready, link retired).
async fn store_grant<K: CredentialResource>(
    ctx: &Context,
    obj: &K,
    set: &TokenSet,
    token_secret_name: &str,
    site: &AccessibleResource,
    identity: &Identity,
) -> Result<(), Page> {
    let api_base = ctx.atlassian.api_base_url(&set.cloud_id);
    store::write_tokens(&ctx.client, &ctx.keys, obj, set, token_secret_name, &api_base)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, category = e.category(), "storing a new grant failed");
            unavailable()
        })?;
    let now = ctx.clock.now();
    let (site, identity, set_meta) = (
        site.clone(),
        identity.clone(),
        (set.expires_at, set.scopes.clone(), set.consented_at),
    );
    let secret_name = token_secret_name.to_string();
    store::update_status(&ctx.client, obj, move |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        status.phase = Some(Phase::Ready);
        status.authorization_url = None;
        status.authorization_nonce_hash = None;
        status.authorization_expires_at = None;
        status.cloud_id = Some(site.id.clone());
        status.site_url = Some(site.url.clone());
        status.site_name = Some(site.name.clone());
        status.installed_by = Some(identity.account_id.clone());
        status.granted_scopes = Some(set_meta.1.clone());
        status.access_token_expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(set_meta.0));
        status.refresh_token_expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            set_meta.2 + REFRESH_TOKEN_MAX_AGE,
        ));
        status.secret_name = Some(secret_name.clone());
        let message = format!(
            "authorized by Atlassian account {} on {}",
            identity.account_id, site.url
        );
        conditions::set_condition(
            &mut status.conditions,
            conditions::AUTHORIZED,
            true,
            reason::AUTHORIZED,
            message,
            generation,
            now,
        );
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            true,
            reason::TOKEN_VALID,
            "the access token is in the token Secret",
            generation,
            now,
        );
    })
    .await
    .map_err(|_| unavailable())?;
    Ok(())
}

/// Records a grant refusal as a condition (the credential itself is not stored) and turns it
/// into a page.
async fn refuse<K: CredentialResource, T>(ctx: &Context, obj: &K, result: Result<T, GrantError>) -> Result<T, Page> {
    let error = match result {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let now = ctx.clock.now();
    let (reason, message) = (error.reason(), error.to_string());
    let recorded = store::update_status(&ctx.client, obj, |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        conditions::set_condition(
            &mut status.conditions,
            conditions::AUTHORIZED,
            false,
            reason,
            message.clone(),
            generation,
            now,
        );
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "recording a refused grant failed");
    }
    Err(Page::new(
        if matches!(error, GrantError::DuplicateAccount(_)) {
            409
        } else {
            403
        },
        "grant_refused",
        "Authorization refused",
        format!("Nothing was stored: {error}."),
    ))
}

async fn duplicate_account(
    client: &Client,
    cfua: &ConfluenceUserAuth,
    account_id: &str,
) -> Result<Result<(), GrantError>, Page> {
    let api: Api<ConfluenceUserAuth> = Api::namespaced(client.clone(), &cfua.namespace().unwrap_or_default());
    let all = api.list(&Default::default()).await.map_err(|_| unavailable())?;
    let holder = all.items.into_iter().find(|other| {
        other.name_any() != cfua.name_any()
            && other.spec.installation_ref.name == cfua.spec.installation_ref.name
            && other.status.as_ref().and_then(|s| s.account_id.as_deref()) == Some(account_id)
    });
    Ok(match holder {
        Some(other) => Err(GrantError::DuplicateAccount(other.name_any())),
        None => Ok(()),
    })
}

async fn credentials_of(ctx: &Context, cfi: &ConfluenceInstallation) -> Result<ClientCredentials, Page> {
    let namespace = cfi.namespace().unwrap_or_default();
    let secret: Option<SecretString> = store::client_secret(&ctx.client, &namespace, &cfi.spec.client_secret_ref)
        .await
        .map_err(|_| unavailable())?;
    let client_secret = secret.ok_or_else(|| {
        Page::new(409, "client_secret_missing", "Installation not configured", format!(
            "The client secret Secret {:?} (key {:?}) is missing in namespace {namespace}. Nothing was stored; create it and open the authorization link again.",
            cfi.spec.client_secret_ref.name, cfi.spec.client_secret_ref.key
        ))
    })?;
    Ok(ClientCredentials {
        client_id: cfi.spec.client_id.clone(),
        client_secret,
    })
}

async fn installation_of(client: &Client, cfua: &ConfluenceUserAuth) -> Result<ConfluenceInstallation, Page> {
    let namespace = cfua.namespace().unwrap_or_default();
    let api: Api<ConfluenceInstallation> = Api::namespaced(client.clone(), &namespace);
    let cfi = api
        .get_opt(&cfua.spec.installation_ref.name)
        .await
        .map_err(|_| unavailable())?;
    cfi.filter(|cfi| cfi.credential().is_some_and(|c| conditions::is_true(&c.conditions, conditions::READY))).ok_or_else(|| {
        Page::new(409, "installation_not_ready", "Installation not ready", format!(
            "ConfluenceInstallation {:?} is missing or not Ready, so users cannot authorize in it yet. Nothing was stored.",
            cfua.spec.installation_ref.name
        ))
    })
}

fn installation_site(cfi: &ConfluenceInstallation) -> Result<(String, String), Page> {
    let status = cfi.credential();
    match (
        status.and_then(|s| s.cloud_id.clone()),
        status.and_then(|s| s.site_url.clone()),
    ) {
        (Some(cloud_id), Some(site_url)) => Ok((cloud_id, site_url)),
        _ => Err(Page::new(
            409,
            "installation_not_ready",
            "Installation not ready",
            "The installation has no site yet. Nothing was stored.",
        )),
    }
}

async fn get<K: CredentialResource>(client: &Client, namespace: &str, name: &str) -> Result<K, Page> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(obj),
        Ok(None) => Err(not_found(&format!("there is no {} {namespace}/{name}", K::kind(&())))),
        Err(e) => {
            tracing::warn!(error = %e, "reading the resource of a flow failed");
            Err(unavailable())
        }
    }
}

fn success(site: &AccessibleResource, identity: &Identity) -> Page {
    let who = if identity.display_name.is_empty() {
        identity.account_id.clone()
    } else {
        format!("{} ({})", identity.display_name, identity.account_id)
    };
    Page::new(
        200,
        "success",
        "Connected",
        format!(
            "Confluence site {} is connected as {who}. You can close this page.",
            site.url
        ),
    )
}

fn atlassian_page(e: AtlassianError) -> Page {
    tracing::warn!(error = %e, category = e.category(), "Atlassian call during the callback failed");
    match e {
        AtlassianError::GrantDead(_) => Page::new(
            400,
            "code_rejected",
            "Authorization code rejected",
            "Atlassian rejected the authorization code (it was used already or expired). Nothing was stored; open the authorization link again.",
        ),
        AtlassianError::InvalidClient => Page::new(
            502,
            "invalid_client",
            "App credentials rejected",
            "Atlassian rejected the app's client id or client secret. Nothing was stored; fix spec.clientId / spec.clientSecretRef, then open the link again.",
        ),
        e if e.is_transient() => Page::new(
            503,
            "atlassian_unavailable",
            "Atlassian unavailable",
            "Atlassian did not answer properly. Nothing was stored; wait a minute and open the authorization link again.",
        ),
        _ => Page::new(
            502,
            "atlassian_error",
            "Unexpected answer from Atlassian",
            "Atlassian answered in a way the operator cannot use. Nothing was stored; open the authorization link again, and check the operator's logs if it persists.",
        ),
    }
}

fn invalid_spec(e: &validation::ValidationError) -> Page {
    Page::new(
        409,
        "invalid_spec",
        "Resource needs fixing",
        format!("Nothing was stored: {e}."),
    )
}

fn stale_link() -> Page {
    Page::new(
        410,
        "stale_link",
        "Link expired or already used",
        "This authorization link has expired, was already used, or belongs to a deleted resource. Nothing was stored; get the current link from the resource's status.authorizationUrl.",
    )
}

fn not_found(what: &str) -> Page {
    Page::new(
        404,
        "not_found",
        "Not found",
        format!("Unknown authorization link: {what}."),
    )
}

fn unavailable() -> Page {
    Page::new(
        503,
        "kubernetes_unavailable",
        "Try again",
        "The operator could not reach the Kubernetes API. Nothing was stored; try again in a minute.",
    )
}

fn internal() -> Page {
    Page::new(
        500,
        "internal",
        "Internal error",
        "The operator could not start the authorization. Nothing was stored; check the operator's logs.",
    )
}

/// A Kubernetes object name (DNS subdomain); anything else cannot name a resource.
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}
