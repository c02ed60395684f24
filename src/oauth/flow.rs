//! The browser flow: `confirm` (a page naming where the grant will land), `start` (a POST from
//! that page: check the link's nonce, seal a state, redirect to Atlassian) and `callback`
//! (verify state and cookie, consume the link, exchange the code, validate the grant, store
//! vault → token Secret → status). Independent of the web framework: each returns an
//! [`Answer`] that `webhook` turns into HTTP.
//!
//! A failure stores no credential. Refusals of the grant itself (wrong site, wrong account,
//! duplicate) are also recorded as a condition, so `kubectl describe` shows why. SECURITY.md
//! walks through why each step is there.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Client, ResourceExt};
use secrecy::SecretString;

use crate::claim;
use crate::context::Context;
use crate::crd::conditions::{self, reason};
use crate::crd::{
    ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, GrantType, PendingAuthorization, Phase,
};
use crate::grant::{self, GrantError};
use crate::known::Cached;
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
    /// 303 to Atlassian with the flow cookie.
    Redirect {
        /// The authorize link.
        location: String,
        /// `Set-Cookie` value.
        set_cookie: String,
    },
    /// The confirmation page of a valid link: what the grant will land in, and one button.
    Confirm(Confirm),
    /// An HTML page.
    Page(Page),
}

/// The confirmation page (`GET /oauth/start/…`): a person sees where the grant will land
/// before anything happens, and proceeds only with a POST from this page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    /// Where the form posts (the start path itself).
    pub action: String,
    /// Namespace of the resource.
    pub namespace: String,
    /// `ConfluenceInstallation` or `ConfluenceUserAuth`.
    pub kind: &'static str,
    /// Name of the resource.
    pub name: String,
    /// For a user auth: its `spec.userId`.
    pub user_id: Option<String>,
    /// For a user auth: its installation.
    pub installation: Option<String>,
    /// The site, when known (pinned or the installation's).
    pub site: Option<String>,
    /// The link's nonce, posted back.
    pub nonce: String,
    /// Per-page token, posted back; must match the confirmation cookie.
    pub csrf: String,
    /// `Set-Cookie` for the confirmation cookie (`SameSite=Strict`, scoped to the start path).
    pub set_cookie: String,
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

/// The form the confirmation page posts.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct StartForm {
    /// The link's nonce.
    pub nonce: Option<String>,
    /// The page's token (double-submitted with the confirmation cookie).
    pub csrf: Option<String>,
}

/// Name of the confirmation cookie (scoped by `Path` to one start link).
pub const CONFIRM_COOKIE: &str = "cao_confirm";
/// How long a confirmation page may stay open before its button stops working.
const CONFIRM_TTL_SECS: u64 = 600;
/// How long a consumed link waits for its callback to finish storing the grant.
const PENDING_TTL: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// What a valid link starts a flow for.
struct LinkTarget {
    kind: ResourceKind,
    uid: String,
    nonce_hash: String,
    client_id: String,
    scopes: Vec<String>,
    user_id: Option<String>,
    installation: Option<String>,
    site: Option<String>,
}

/// `GET /oauth/start/<namespace>/<kind>/<name>?nonce=…`: the confirmation page.
pub async fn confirm(ctx: &Context, namespace: &str, kind: &str, name: &str, nonce: Option<&str>) -> Answer {
    let target = match valid_link(ctx, namespace, kind, name, nonce).await {
        Ok(target) => target,
        Err(page) => return Answer::Page(page),
    };
    let action = format!("/oauth/start/{namespace}/{}/{name}", target.kind.segment());
    let csrf = state::new_nonce().0;
    let set_cookie = format!(
        "{CONFIRM_COOKIE}={csrf}; Path={action}; Max-Age={CONFIRM_TTL_SECS}; HttpOnly; SameSite=Strict{}",
        if ctx.secure_cookies() { "; Secure" } else { "" }
    );
    Answer::Confirm(Confirm {
        action,
        namespace: namespace.to_string(),
        kind: match target.kind {
            ResourceKind::Installation => "ConfluenceInstallation",
            ResourceKind::User => "ConfluenceUserAuth",
        },
        name: name.to_string(),
        user_id: target.user_id,
        installation: target.installation,
        site: target.site,
        nonce: nonce.unwrap_or_default().to_string(),
        csrf,
        set_cookie,
    })
}

/// `POST /oauth/start/<namespace>/<kind>/<name>` from the confirmation page: checks the page's
/// token against its cookie and the nonce against status, then redirects to Atlassian.
pub async fn start(
    ctx: &Context,
    namespace: &str,
    kind: &str,
    name: &str,
    form: &StartForm,
    cookie_header: Option<&str>,
) -> Answer {
    let posted = form.csrf.as_deref().filter(|t| !t.is_empty());
    let cookie = cookie_value(cookie_header, CONFIRM_COOKIE);
    if posted.is_none() || posted != cookie.as_deref() {
        return Answer::Page(Page::new(
            403,
            "confirm_failed",
            "Confirmation check failed",
            "This request did not come from the authorization link's own page (or that page was open too long). Nothing happened; open the authorization link again and press its button.",
        ));
    }
    let target = match valid_link(ctx, namespace, kind, name, form.nonce.as_deref()).await {
        Ok(target) => target,
        Err(page) => return Answer::Page(page),
    };
    let now = ctx.clock.now();
    let flow_target = FlowTarget {
        namespace: namespace.into(),
        kind: target.kind,
        name: name.into(),
        uid: target.uid,
    };
    let Ok(flow) = state::start(&ctx.keys, flow_target, target.nonce_hash, now) else {
        return Answer::Page(internal());
    };
    let location = ctx.atlassian.authorize_url(&crate::oauth::atlassian::AuthorizeRequest {
        client_id: &target.client_id,
        scopes: &target.scopes,
        redirect_uri: &ctx.redirect_uri(),
        state: &flow.state,
        code_challenge: &flow.code_challenge,
    });
    Answer::Redirect {
        location,
        set_cookie: state::set_cookie_header(&flow, ctx.secure_cookies()),
    }
}

/// Checks a link: a served namespace, an existing object, the current nonce, not expired.
/// Every way of failing that could tell whether an object exists gives the same page.
async fn valid_link(
    ctx: &Context,
    namespace: &str,
    kind: &str,
    name: &str,
    nonce: Option<&str>,
) -> Result<LinkTarget, Page> {
    let kind = ResourceKind::from_segment(kind).ok_or_else(invalid_link)?;
    if !is_object_name(namespace) || !is_object_name(name) || !ctx.in_scope(namespace) {
        return Err(invalid_link());
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
    match kind {
        ResourceKind::Installation => {
            let cfi = get_link_object::<ConfluenceInstallation>(&ctx.client, namespace, name).await?;
            check_link(&cfi, nonce, now)?;
            if cfi.spec.grant == GrantType::ClientCredentials {
                return Err(Page::new(
                    409,
                    "no_browser_flow",
                    "No consent needed",
                    "This installation uses client credentials: it needs no browser consent.",
                ));
            }
            Ok(LinkTarget {
                kind,
                uid: cfi.uid().unwrap_or_default(),
                nonce_hash: state::hash_hex(nonce),
                client_id: cfi.spec.client_id.clone(),
                scopes: cfi.spec.scopes.clone(),
                user_id: None,
                installation: None,
                site: cfi.spec.site.clone(),
            })
        }
        ResourceKind::User => {
            let cfua = get_link_object::<ConfluenceUserAuth>(&ctx.client, namespace, name).await?;
            check_link(&cfua, nonce, now)?;
            let cfi = installation_of(ctx, &cfua).await?;
            Ok(LinkTarget {
                kind,
                uid: cfua.uid().unwrap_or_default(),
                nonce_hash: state::hash_hex(nonce),
                client_id: cfi.spec.client_id.clone(),
                scopes: cfua.spec.effective_scopes(&cfi.spec).to_vec(),
                user_id: Some(cfua.spec.user_id.clone()),
                installation: Some(cfi.name_any()),
                site: cfi.credential().and_then(|c| c.site_url.clone()),
            })
        }
    }
}

/// The link's nonce must be the one in status, and the link not expired.
fn check_link<K: CredentialResource>(obj: &K, nonce: &str, now: Timestamp) -> Result<(), Page> {
    let status = obj.credential();
    let current = status.and_then(|s| s.authorization_nonce_hash.as_deref());
    let expires = status.and_then(|s| s.authorization_expires_at.as_ref()).map(|t| t.0);
    let valid = current == Some(state::hash_hex(nonce).as_str()) && expires.is_some_and(|e| e > now);
    if valid { Ok(()) } else { Err(invalid_link()) }
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
    if !ctx.in_scope(&flow.target.namespace) {
        return Err(stale_link());
    }
    // Single use: the link is consumed by a write preconditioned on the object's
    // resourceVersion before the code is exchanged, so of concurrent callbacks exactly one
    // proceeds.
    let result = match flow.target.kind {
        ResourceKind::Installation => {
            let cfi = consume::<ConfluenceInstallation>(ctx, flow).await?;
            grant_installation(ctx, flow, cfi, code).await
        }
        ResourceKind::User => {
            let cfua = consume::<ConfluenceUserAuth>(ctx, flow).await?;
            grant_user(ctx, flow, cfua, code).await
        }
    };
    if result.is_err() {
        abandon(ctx, flow).await;
    }
    result
}

/// Consumes the link: its nonce must still be current on this very object (uid), then it is
/// replaced by a pending marker only this flow matches. Returns the object as written. The
/// write starts from the cached object where this replica has one: it is preconditioned on
/// that version, so a cache behind the API server costs a conflict and a fresh read, not a
/// second use.
async fn consume<K: CredentialResource + Cached>(ctx: &Context, flow: &state::FlowState) -> Result<K, Page> {
    let now = ctx.clock.now();
    let until = Time(now + PENDING_TTL);
    let take = |obj: &mut dyn Consumable| -> Result<(), ()> {
        let (uid, generation) = (obj.uid_string(), obj.generation());
        let status = obj.status_mut();
        let current = status.authorization_nonce_hash.as_deref() == Some(flow.nonce_hash.as_str());
        let unexpired = status.authorization_expires_at.as_ref().is_some_and(|t| t.0 > now);
        if uid != flow.target.uid || !current || !unexpired {
            return Err(());
        }
        status.authorization_url = None;
        status.authorization_nonce_hash = None;
        status.authorization_expires_at = None;
        status.pending_authorization = Some(PendingAuthorization {
            nonce_hash: flow.nonce_hash.clone(),
            generation,
            expires_at: until.clone(),
        });
        Ok(())
    };
    let (namespace, name) = (&flow.target.namespace, &flow.target.name);
    let cached = K::cached(&ctx.known, namespace, name);
    match store::update_status_if_from::<K, _>(&ctx.client, namespace, name, cached, |o| take(o)).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(())) => Err(stale_link()),
        Err(e) if is_not_found(&e) => Err(stale_link()),
        Err(e) => {
            tracing::warn!(error = %e, "consuming an authorization link failed");
            Err(unavailable())
        }
    }
}

/// After a failed callback: drops this flow's pending marker (so a new link is published).
async fn abandon(ctx: &Context, flow: &state::FlowState) {
    let drop_pending = |obj: &mut dyn Consumable| -> Result<(), ()> {
        if !is_pending_flow(obj, flow) {
            return Err(());
        }
        obj.status_mut().pending_authorization = None;
        Ok(())
    };
    let _ = update_flow_target(ctx, flow, drop_pending).await;
}

/// [`store::update_status_if`] on the flow's object, whichever kind it is.
async fn update_flow_target(
    ctx: &Context,
    flow: &state::FlowState,
    change: impl Fn(&mut dyn Consumable) -> Result<(), ()>,
) -> Result<Result<(), ()>, store::StoreError> {
    let (namespace, name) = (&flow.target.namespace, &flow.target.name);
    match flow.target.kind {
        ResourceKind::Installation => {
            store::update_status_if::<ConfluenceInstallation, _>(&ctx.client, namespace, name, |o| change(o))
                .await
                .map(|r| r.map(drop))
        }
        ResourceKind::User => {
            store::update_status_if::<ConfluenceUserAuth, _>(&ctx.client, namespace, name, |o| change(o))
                .await
                .map(|r| r.map(drop))
        }
    }
}

/// The object is the one the flow started for (uid), its pending marker is this flow's, and
/// its spec has not changed since the link was consumed.
fn is_pending_flow(obj: &dyn Consumable, flow: &state::FlowState) -> bool {
    let Some(pending) = obj.status().and_then(|s| s.pending_authorization.as_ref()) else {
        return false;
    };
    obj.uid_string() == flow.target.uid
        && pending.nonce_hash == flow.nonce_hash
        && pending.generation == obj.generation()
}

/// What `consume`/`commit` need of either kind, as a trait object.
trait Consumable {
    fn uid_string(&self) -> String;
    fn generation(&self) -> Option<i64>;
    fn status(&self) -> Option<&crate::crd::CredentialStatus>;
    fn status_mut(&mut self) -> &mut crate::crd::CredentialStatus;
}

impl<K: CredentialResource> Consumable for K {
    fn uid_string(&self) -> String {
        self.uid().unwrap_or_default()
    }
    fn generation(&self) -> Option<i64> {
        self.meta().generation
    }
    fn status(&self) -> Option<&crate::crd::CredentialStatus> {
        self.credential()
    }
    fn status_mut(&mut self) -> &mut crate::crd::CredentialStatus {
        self.credential_mut()
    }
}

/// `cfi`: as `consume` left it.
async fn grant_installation(
    ctx: &Context,
    flow: &state::FlowState,
    cfi: ConfluenceInstallation,
    code: &str,
) -> Result<Page, Page> {
    let policy = validation::installation(&cfi.name_any(), &cfi.spec).map_err(|e| invalid_spec(&e))?;
    validation::pinned_site_allowed(&policy, &ctx.allowed_site_suffixes).map_err(|e| invalid_spec(&e))?;
    let credentials = credentials_of(ctx, &cfi).await?;
    let tokens = exchange(ctx, &credentials, code, flow).await?;
    let (site, identity) = consenting_account(ctx, &cfi, &tokens, cfi.spec.expected_account_id.as_deref(), |sites| {
        grant::choose_site(sites, policy.site_host.as_deref())
    })
    .await?;
    let set = token_set(ctx, &tokens, &site, &identity, None);
    commit(
        ctx,
        flow,
        &cfi,
        &set,
        &policy.token_secret_name,
        &site,
        &identity,
        |_| {},
    )
    .await?;
    Ok(success(&site, &identity))
}

/// `cfua`: as `consume` left it.
async fn grant_user(
    ctx: &Context,
    flow: &state::FlowState,
    cfua: ConfluenceUserAuth,
    code: &str,
) -> Result<Page, Page> {
    let cfi = installation_of(ctx, &cfua).await?;
    // The earlier grant, as its vault (authenticated) says: the installation it is bound to,
    // and the account whose claim a grant for another account releases.
    let (bound, earlier_account) = match store::read_tokens(&ctx.client, &ctx.keys, &cfua).await {
        Ok(Some(earlier)) => (earlier.installation, Some(earlier.account_id)),
        _ => (None, None),
    };
    let policy = validation::user_auth(&cfua.name_any(), &cfua.spec, &cfi.spec, bound.as_deref())
        .map_err(|e| invalid_spec(&e))?;
    let (cloud_id, site_url) = installation_site(&cfi)?;
    let credentials = credentials_of(ctx, &cfi).await?;
    let tokens = exchange(ctx, &credentials, code, flow).await?;
    let (site, identity) = consenting_account(ctx, &cfua, &tokens, cfua.spec.expected_account_id.as_deref(), |sites| {
        grant::require_site(sites, &cloud_id, &site_url)
    })
    .await?;
    // One account per installation, across every replica: the claim is an atomic create.
    let claimed = match claim::claim(&ctx.client, &cfua, &identity.account_id).await {
        Ok(claimed) => claimed.map_err(GrantError::DuplicateAccount),
        Err(store::StoreError::SecretConflict(name)) => return Err(secret_conflict_page(ctx, &cfua, &name).await),
        Err(e) => {
            tracing::warn!(error = %e, "claiming the account failed");
            return Err(unavailable());
        }
    };
    let claimed = refuse(ctx, &cfua, claimed).await?;
    let installation = cfi.name_any();
    let set = token_set(ctx, &tokens, &site, &identity, Some(installation.clone()));
    let (display_name, account_id) = (identity.display_name.clone(), identity.account_id.clone());
    let committed = commit(
        ctx,
        flow,
        &cfua,
        &set,
        &policy.token_secret_name,
        &site,
        &identity,
        move |obj| {
            let status = obj.status.get_or_insert_with(Default::default);
            status.account_id = Some(account_id.clone());
            status.display_name = Some(display_name.clone());
            status.bound_installation = Some(installation.clone());
        },
    )
    .await;
    if let Err(page) = committed {
        // A claim this flow made for a grant it did not store would keep the account from
        // others. (Kept when the outcome is unknown: then it goes with the user auth.)
        let stored_nothing = matches!(page.outcome, "secret_conflict" | "stale_link");
        if claimed == claim::Claimed::Now
            && stored_nothing
            && let Err(e) = claim::release(&ctx.client, &cfua, &identity.account_id).await
        {
            tracing::warn!(error = %e, "releasing the claim of a grant not stored failed; it goes with the user auth");
        }
        return Err(page);
    }
    if let Some(earlier) = earlier_account.filter(|a| *a != identity.account_id)
        && let Err(e) = claim::release(&ctx.client, &cfua, &earlier).await
    {
        tracing::warn!(error = %e, "releasing the earlier account's claim failed; it goes with the user auth");
    }
    Ok(success(&site, &identity))
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

/// The site the new grant reaches (picked by `site`) and the account that consented, which
/// must be `expected` when the spec names one; a refusal is recorded on `obj`.
async fn consenting_account<K: CredentialResource>(
    ctx: &Context,
    obj: &K,
    tokens: &TokenResponse,
    expected: Option<&str>,
    site: impl FnOnce(&[AccessibleResource]) -> Result<&AccessibleResource, GrantError>,
) -> Result<(AccessibleResource, Identity), Page> {
    let resources = ctx
        .atlassian
        .accessible_resources(&tokens.access_token)
        .await
        .map_err(atlassian_page)?;
    let site = refuse(ctx, obj, site(&resources)).await?.clone();
    let identity = identity(ctx, tokens, &site).await?;
    refuse(ctx, obj, grant::require_account(expected, &identity.account_id)).await?;
    Ok((site, identity))
}

async fn identity(ctx: &Context, tokens: &TokenResponse, site: &AccessibleResource) -> Result<Identity, Page> {
    let result = if tokens.scopes().iter().any(|s| s == "read:me") {
        ctx.atlassian.me(&tokens.access_token).await
    } else {
        ctx.atlassian.current_user(&tokens.access_token, &site.id).await
    };
    result.map_err(atlassian_page)
}

fn token_set(
    ctx: &Context,
    tokens: &TokenResponse,
    site: &AccessibleResource,
    identity: &Identity,
    installation: Option<String>,
) -> TokenSet {
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
        installation,
    }
}

/// Stores a grant on `obj`, the object as the link's consumption left it (that write proved it
/// the flow's): writes vault → token Secret, then status Ready in a write preconditioned on
/// `obj`'s resourceVersion, or after a conflict on a fresh read that is still the flow's (uid,
/// pending marker, generation). If the object moved meanwhile, the Secrets just written are
/// removed and nothing is stored.
#[allow(clippy::too_many_arguments)]
async fn commit<K: CredentialResource>(
    ctx: &Context,
    flow: &state::FlowState,
    obj: &K,
    set: &TokenSet,
    token_secret_name: &str,
    site: &AccessibleResource,
    identity: &Identity,
    extra: impl Fn(&mut K),
) -> Result<(), Page> {
    let (namespace, name) = (&flow.target.namespace, &flow.target.name);
    let api_base = ctx.atlassian.api_base_url(&set.cloud_id);
    // The token Secret's name is checked before the vault is written, so a conflict stores
    // nothing at all (the vault's own write refuses a name not `obj`'s before writing).
    let vault = validation::vault_secret_name(name);
    let checked = store::check_owned(&ctx.client, &ctx.known, obj, &[token_secret_name]).await;
    match checked.and(Ok(())) {
        Ok(()) => {}
        Err(store::StoreError::SecretConflict(secret)) => return Err(secret_conflict_page(ctx, obj, &secret).await),
        Err(e) => {
            tracing::warn!(error = %e, category = e.category(), "checking the grant's Secrets failed");
            return Err(unavailable());
        }
    }
    let stored = store::write_tokens(
        &ctx.client,
        &ctx.known,
        &ctx.keys,
        obj,
        set,
        token_secret_name,
        &api_base,
    )
    .await;
    let written = match stored {
        Ok(written) => written,
        Err(store::StoreError::SecretConflict(secret)) => return Err(secret_conflict_page(ctx, obj, &secret).await),
        Err(e) => {
            tracing::warn!(error = %e, category = e.category(), "storing a new grant failed");
            return Err(unavailable());
        }
    };
    // The handover pass that these writes wake must not decide on versions they replaced.
    let known = &ctx.known;
    for (secret, put) in [(vault.as_str(), &written.vault), (token_secret_name, &written.token)] {
        let (replaced, version) = (put.replaced.as_deref(), put.version.as_deref());
        known.wrote_elsewhere("Secret", namespace, secret, replaced, version);
    }
    let now = ctx.clock.now();
    let secret_name = token_secret_name.to_string();
    let replaced = std::sync::Mutex::new(None);
    let recorded = store::update_status_if_from::<K, ()>(&ctx.client, namespace, name, Some(obj.clone()), |obj| {
        if !is_pending_flow(obj, flow) {
            return Err(());
        }
        *replaced.lock().unwrap_or_else(|e| e.into_inner()) = obj.resource_version();
        extra(obj);
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        status.phase = Some(Phase::Ready);
        status.pending_authorization = None;
        status.authorization_url = None;
        status.authorization_nonce_hash = None;
        status.authorization_expires_at = None;
        status.cloud_id = Some(site.id.clone());
        status.site_url = Some(site.url.clone());
        status.site_name = Some(site.name.clone());
        status.installed_by = Some(identity.account_id.clone());
        status.granted_scopes = Some(set.scopes.clone());
        status.access_token_expires_at = Some(Time(set.expires_at));
        status.refresh_token_expires_at = Some(Time(set.consented_at + REFRESH_TOKEN_MAX_AGE));
        status.secret_name = Some(secret_name.clone());
        status.vault_secret_version = written.vault.version.clone();
        status.token_secret_version = written.token.version.clone();
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
        Ok(())
    })
    .await;
    match recorded {
        Ok(Ok(updated)) => {
            let replaced = replaced.into_inner().unwrap_or_else(|e| e.into_inner());
            let version = updated.resource_version();
            known.wrote_elsewhere(&K::kind(&()), namespace, name, replaced.as_deref(), version.as_deref());
            Ok(())
        }
        Ok(Err(())) => {
            undo(ctx, obj, token_secret_name).await;
            Err(stale_link())
        }
        Err(e) if is_not_found(&e) => {
            undo(ctx, obj, token_secret_name).await;
            Err(stale_link())
        }
        Err(e) => {
            tracing::warn!(error = %e, "recording a new grant in status failed");
            Err(unavailable())
        }
    }
}

/// Removes the Secrets a stale flow wrote for `obj` (only those `obj`, by uid, controls).
async fn undo<K: CredentialResource>(ctx: &Context, obj: &K, token_secret_name: &str) {
    let vault = validation::vault_secret_name(&obj.name_any());
    if let Err(e) = store::delete_owned(&ctx.client, obj, &[&vault, token_secret_name]).await {
        tracing::warn!(error = %e, "removing the Secrets of a stale flow failed; they go with their owner");
    }
}

/// Records `SecretConflict` on the flow's object and answers a page naming the Secret.
async fn secret_conflict_page<K: CredentialResource>(ctx: &Context, obj: &K, secret: &str) -> Page {
    let message = store::StoreError::SecretConflict(secret.to_string()).to_string();
    record_condition(ctx, obj, conditions::READY, reason::SECRET_CONFLICT, &message).await;
    Page::new(
        409,
        "secret_conflict",
        "Secret name taken",
        format!("Nothing was stored: {message}."),
    )
}

/// Sets a False condition on `obj`, only while it is still the same object (uid).
async fn record_condition<K: CredentialResource>(ctx: &Context, obj: &K, type_: &str, reason: &str, message: &str) {
    let now = ctx.clock.now();
    let uid = obj.uid();
    let recorded = store::update_status_if::<K, ()>(
        &ctx.client,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
        |current| {
            if current.uid() != uid {
                return Err(());
            }
            let generation = current.meta().generation;
            conditions::set_condition(
                &mut current.credential_mut().conditions,
                type_,
                false,
                reason,
                message,
                generation,
                now,
            );
            Ok(())
        },
    )
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "recording a refused grant failed");
    }
}

/// Records a grant refusal as a condition (the credential itself is not stored) and turns it
/// into a page.
async fn refuse<K: CredentialResource, T>(ctx: &Context, obj: &K, result: Result<T, GrantError>) -> Result<T, Page> {
    let error = match result {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    record_condition(ctx, obj, conditions::AUTHORIZED, error.reason(), &error.to_string()).await;
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

async fn credentials_of(ctx: &Context, cfi: &ConfluenceInstallation) -> Result<ClientCredentials, Page> {
    let namespace = cfi.namespace().unwrap_or_default();
    // Read fresh: the code exchange is the one try this consent gets.
    let secret: Option<SecretString> = match store::client_secret(
        &ctx.client,
        None,
        &namespace,
        &cfi.spec.client_secret_ref,
        &ctx.client_secret_policy(),
    )
    .await
    {
        Ok(secret) => secret.map(|s| s.value),
        Err(store::StoreError::ClientSecretRefused(why)) => {
            record_condition(ctx, cfi, conditions::READY, reason::CLIENT_SECRET_REFUSED, &why).await;
            return Err(Page::new(
                409,
                "client_secret_refused",
                "Installation not configured",
                format!("Nothing was stored: {why}."),
            ));
        }
        Err(_) => return Err(unavailable()),
    };
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

/// The user's installation, from the leader's cache when it holds it Ready (else read).
async fn installation_of(ctx: &Context, cfua: &ConfluenceUserAuth) -> Result<ConfluenceInstallation, Page> {
    let namespace = cfua.namespace().unwrap_or_default();
    let name = &cfua.spec.installation_ref.name;
    let ready = |cfi: &ConfluenceInstallation| {
        cfi.credential()
            .is_some_and(|c| conditions::is_true(&c.conditions, conditions::READY))
    };
    if let Some(cfi) = ctx.known.installation(&namespace, name).filter(|c| ready(c)) {
        return Ok(ConfluenceInstallation::clone(&cfi));
    }
    let api: Api<ConfluenceInstallation> = Api::namespaced(ctx.client.clone(), &namespace);
    let cfi = api.get_opt(name).await.map_err(|_| unavailable())?;
    cfi.filter(ready).ok_or_else(|| {
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
        Ok(None) => Err(stale_link()),
        Err(e) => {
            tracing::warn!(error = %e, "reading the resource of a flow failed");
            Err(unavailable())
        }
    }
}

/// Like [`get`], for a start link: a missing object gives the same page as a stale link.
async fn get_link_object<K: CredentialResource>(client: &Client, namespace: &str, name: &str) -> Result<K, Page> {
    get::<K>(client, namespace, name).await.map_err(|page| {
        if page.outcome == "stale_link" {
            invalid_link()
        } else {
            page
        }
    })
}

fn is_not_found(e: &store::StoreError) -> bool {
    matches!(e, store::StoreError::Kube(kube::Error::Api(status)) if status.code == 404)
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value(cookie_header: Option<&str>, name: &str) -> Option<String> {
    cookie_header
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
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

/// The one answer for a start link that is unknown, expired, used or out of scope: it must not
/// tell whether a resource exists.
fn invalid_link() -> Page {
    Page::new(
        404,
        "invalid_link",
        "Link not valid",
        "This authorization link is unknown, has expired, or was already used. Nothing was stored; get the current link from the resource's status.authorizationUrl.",
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
