//! Keeping a stored credential alive (DESIGN.md steps 4 and 5): the planner (`token::plan`)
//! decides, this module acts. Only the reconciler refreshes, and kube-runtime never runs two
//! reconciles of one object at once, so a refresh token is never sent twice concurrently.
//!
//! Write order on a renewal: vault, token Secret, status (three writes, no Event). The rotated
//! token set is kept in memory until its vault write lands; while it is there, nothing else is
//! sent to Atlassian for that resource.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use secrecy::ExposeSecret;

use super::{ReconcileError, Shared, clear_link, ensure_link, lock, new_link, until, write_status};
use crate::crd::conditions::{self, reason};
use crate::crd::{CredentialResource, Phase, SecretKeyRef};
use crate::oauth::atlassian::{AtlassianError, ClientCredentials};
use crate::token::{self, Facts, Jitter, Next, Plan, Renewal};
use crate::token_set::TokenSet;
use crate::{refresh, store};

/// Where the app's credentials are (an installation's spec, or the one a user belongs to).
#[derive(Debug, Clone)]
pub struct AppCredentials {
    /// Namespace of the client secret Secret.
    pub namespace: String,
    /// OAuth client id.
    pub client_id: String,
    /// The client secret's Secret and key.
    pub secret_ref: SecretKeyRef,
}

/// How one credential is kept alive.
#[derive(Debug, Clone)]
pub struct Keep {
    /// Planner policy.
    pub policy: token::Policy,
    /// Name of the token Secret.
    pub token_secret_name: String,
    /// The app credentials used to refresh or mint.
    pub app: AppCredentials,
    /// False for a user whose installation is not Ready: no new links.
    pub may_link: bool,
}

/// What renewing did.
enum Renewed {
    /// A new token set, stored (at these versions).
    Stored(Box<(TokenSet, store::Written)>),
    /// The grant is dead (confirmed).
    Revoked(String),
    /// The app's credentials were refused.
    InvalidClient,
    /// Try again after the first duration. The second is the plain backoff: `Degraded` when the
    /// token would expire before it (as before retries near expiry were hurried), so the phase
    /// warns while the hurried retries still try.
    Retry(Duration, Duration, String),
}

/// One pass over a resource that has a stored token set.
pub async fn keep_alive<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    opened: store::Opened,
    keep: &Keep,
) -> Result<Action, ReconcileError> {
    let uid = obj.uid().unwrap_or_default();
    let (mut tokens, mut vault_version) = (opened.tokens, opened.version);
    let mut refreshed = None;
    // A rotated token set from an earlier pass is written before anything else.
    let unsaved = lock(&shared.unsaved).get(&uid).cloned();
    let mut token_version = None;
    if let Some(unsaved) = unsaved {
        match save(shared, obj, &unsaved, keep).await {
            Ok(written) => (vault_version, token_version) = (written.vault.version, written.token.version),
            // Pods still read the previous token: retry while it lives.
            Err(e) => return Ok(retry_save(shared, obj, &uid, &e, tokens.expires_at)),
        }
        lock(&shared.unsaved).remove(&uid);
        refreshed = Some(unsaved.obtained_at);
        tokens = unsaved;
    }
    // A resource Atlassian refused stays refused until someone consents (the callback then
    // writes a new grant and phase Ready).
    let revoked_at = obj
        .credential()
        .filter(|s| s.phase == Some(Phase::Revoked))
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.last_transition_time.0);
    // A grant newer than the revocation is a new consent (the callback stored it).
    if revoked_at.is_some_and(|at| tokens.consented_at <= at) && refreshed.is_none() {
        let why = obj
            .credential()
            .and_then(|s| conditions::find(&s.conditions, conditions::READY))
            .map(|c| c.message.clone())
            .unwrap_or_default();
        return revoked(shared, obj, keep, &tokens, &why).await;
    }
    if refreshed.is_none() {
        token_version = restore_token_secret(shared, obj, &tokens, keep).await?;
    }
    let now = shared.ctx.clock.now();
    let jitter = Jitter::for_key(&uid);
    let facts = facts_of(obj, &tokens);
    let plan = token::plan(now, Some(&facts), &keep.policy, jitter);
    let stored = Stored {
        tokens,
        vault_version,
        token_version,
    };
    match plan.next {
        Next::RefreshNow | Next::Mint => renew_and_report(shared, obj, stored, keep, jitter).await,
        Next::HealthCheck => health_check(shared, obj, stored, keep, jitter).await,
        Next::NeedsConsent => {
            let why = format!(
                "the refresh token reached its 365-day limit at {}: open status.authorizationUrl to consent again",
                facts.refresh_token_expires_at()
            );
            revoked_with(shared, obj, keep, &stored.tokens, reason::REFRESH_TOKEN_EXPIRED, &why).await
        }
        Next::WaitUntil(at) => {
            tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), next = %at, "nothing due");
            report(shared, obj, &stored, keep, &plan, refreshed, None, None).await?;
            Ok(Action::requeue(until(now, at)))
        }
    }
}

/// A stored token set and the version of the token Secret that holds its access token.
struct Stored {
    tokens: TokenSet,
    /// The vault Secret's resourceVersion as just read or written.
    vault_version: Option<String>,
    /// The token Secret's resourceVersion as just written or found matching (`None`: unknown,
    /// the status keeps what it says).
    token_version: Option<String>,
}

/// The next pass of a credential whose status already says all its vault would, decided from
/// the caches alone (the vault Secret's planning annotations; both Secrets at the versions the
/// status records, so neither changed since the operator last wrote or checked it; the cached
/// object): no request at all. This is every pass of a settled fleet after a restart,
/// and every early wake-up. `None`: something may be due or differ (or the caches cannot
/// tell), and the caller reads the vault and takes the full path.
///
/// The annotations and the status are not authenticated, so they only ever postpone a read to
/// the time they name: what is then done is decided on the vault's authenticated contents.
pub fn settled<K: CredentialResource>(shared: &Shared, obj: &K, keep: &Keep) -> Option<Action> {
    let uid = obj.uid()?;
    let namespace = obj.namespace()?;
    let status = obj.credential()?;
    if lock(&shared.unsaved).contains_key(&uid) {
        return None;
    }
    let known = &shared.ctx.known;
    let ours = |name: &str| {
        known
            .secret(&namespace, name)
            .filter(|s| store::owned_by(&s.metadata, obj))
    };
    let vault = ours(&crate::validation::vault_secret_name(&obj.name_any()))?;
    let token = ours(&keep.token_secret_name)?;
    let (obtained_at, expires_at, consented_at) = store::vault_facts(&vault.metadata, &shared.ctx.keys)?;
    let facts = Facts {
        obtained_at,
        expires_at,
        consented_at,
        last_health_check: status.last_health_check_time.as_ref().map(|t| t.0),
    };
    let now = shared.ctx.clock.now();
    let plan = token::plan(now, Some(&facts), &keep.policy, Jitter::for_key(&uid));
    let Next::WaitUntil(at) = plan.next else {
        return None;
    };
    let second = |t: Option<&Time>| t.map(|t| t.0.as_second());
    let is_true = |type_: &str| conditions::is_true(&status.conditions, type_);
    let refresh = keep.policy.renewal == Renewal::Refresh;
    let reported = status.phase == Some(Phase::Ready)
        && is_true(conditions::READY)
        && is_true(conditions::AUTHORIZED)
        && is_true(conditions::HEALTHY)
        && status.observed_generation == obj.meta().generation
        && status.secret_name.as_deref() == Some(keep.token_secret_name.as_str())
        && status.authorization_url.is_none()
        && vault.metadata.resource_version.is_some()
        && status.vault_secret_version == vault.metadata.resource_version
        && token.metadata.resource_version.is_some()
        && status.token_secret_version == token.metadata.resource_version
        && second(status.access_token_expires_at.as_ref()) == Some(expires_at.as_second())
        && second(status.next_refresh_time.as_ref()) == plan.refresh_at.map(|t| t.as_second())
        && last_refresh(None, obtained_at, consented_at)
            .is_none_or(|t| second(status.last_refresh_time.as_ref()) == Some(t.as_second()))
        && !facts.fresh_grant()
        && (!refresh
            || (!plan.reauthorization_due
                && conditions::find(&status.conditions, conditions::REAUTHORIZATION_DUE)
                    .is_some_and(|c| c.status == "False")
                && second(status.refresh_token_expires_at.as_ref())
                    == Some(facts.refresh_token_expires_at().as_second())));
    if !reported {
        return None;
    }
    super::observe(shared, obj);
    tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), next = %at, "nothing due (decided from the caches)");
    Some(Action::requeue(until(now, at)))
}

/// A deleted or edited token Secret is rewritten from the vault, with a Warning Event (the
/// tamper suite, issue 10): pods never keep reading a forged or missing token. Returns the
/// token Secret's resourceVersion once it holds what the vault says (`None`: not known).
///
/// A token Secret the cache shows at the version the status records (the operator wrote it, or
/// found it matching, at that version) is not read: any change since gives it a new version.
async fn restore_token_secret<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    tokens: &TokenSet,
    keep: &Keep,
) -> Result<Option<String>, ReconcileError> {
    let name = &keep.token_secret_name;
    let namespace = obj.namespace().unwrap_or_default();
    let recorded = obj.credential().and_then(|s| s.token_secret_version.clone());
    if let Some(cached) = shared.ctx.known.secret(&namespace, name)
        && store::owned_by(&cached.metadata, obj)
        && recorded.is_some()
        && cached.metadata.resource_version == recorded
    {
        return Ok(recorded);
    }
    let api_base = shared.ctx.atlassian.api_base_url(&tokens.cloud_id);
    let data = store::token_secret_data(tokens, &api_base);
    let client = &shared.ctx.client;
    match store::check_token_secret(client, obj, name, &data).await? {
        store::TokenSecretCheck::Matches(version) => return Ok(version),
        store::TokenSecretCheck::NotOurs => return Ok(None),
        store::TokenSecretCheck::Drift(_) => {}
    }
    // A callback storing a new grant writes the vault, then the token Secret: between the two
    // the Secret lags behind the vault without anyone having touched it. Such a callback marks
    // the object first (read fresh here: the cache may not have seen the mark yet), and once it
    // is done the Secret matches again (so look twice).
    let fresh: K = kube::Api::namespaced(client.clone(), &namespace)
        .get(&obj.name_any())
        .await?;
    let now = shared.ctx.clock.now();
    if fresh
        .credential()
        .and_then(|s| s.pending_authorization.as_ref())
        .is_some_and(|p| p.expires_at.0 > now)
    {
        return Ok(None);
    }
    let drift = match store::check_token_secret(client, obj, name, &data).await? {
        store::TokenSecretCheck::Matches(version) => return Ok(version),
        store::TokenSecretCheck::NotOurs => return Ok(None),
        store::TokenSecretCheck::Drift(drift) => drift,
    };
    let put = store::write_token_secret(client, &shared.ctx.known, obj, name, data).await?;
    super::wrote_secrets(shared, &namespace, &[(name, &put)]);
    let version = put.version;
    let what = match drift {
        store::TokenSecretDrift::Deleted => "was deleted",
        store::TokenSecretDrift::Edited => "was edited",
    };
    tracing::warn!(kind = %K::kind(&()), namespace = ?obj.namespace(), name = %obj.name_any(), secret = %name, drift = what, "the token Secret differed from the vault; rewrote it");
    let note = format!(
        "the token Secret {name:?} {what}: it was rewritten from the vault (edit the resource, not its Secrets)"
    );
    shared
        .events
        .publish(
            obj,
            &crate::events::Transition {
                warning: true,
                reason: crate::events::reasons::TOKEN_SECRET_RESTORED,
                note: crate::events::sentence(&note),
            },
        )
        .await;
    Ok(version)
}

/// True when `obj`'s status says a grant was stored (or already that its vault went missing):
/// with no vault Secret now, the vault was deleted, not never written.
pub fn vault_lost<K: CredentialResource>(obj: &K) -> bool {
    obj.credential().is_some_and(|s| {
        conditions::is_true(&s.conditions, conditions::AUTHORIZED)
            || conditions::find(&s.conditions, conditions::READY).is_some_and(|c| c.reason == reason::VAULT_MISSING)
    })
}

/// The vault of a stored grant is gone, and the refresh token with it: phase
/// `AwaitingAuthorization`, `Ready` and `Authorized` False with reason `VaultMissing` (an Event
/// from the transition), and a new link when allowed. The token Secret keeps its token until it
/// expires (like a revocation).
pub async fn vault_missing<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    may_link: bool,
) -> Result<Action, ReconcileError> {
    let why = format!(
        "the vault Secret {:?} was deleted, and the grant's refresh token with it: open status.authorizationUrl to consent again (restoring the vault Secret from a backup also works)",
        crate::validation::vault_secret_name(&obj.name_any())
    );
    let consent = NeedsConsent {
        phase: Phase::AwaitingAuthorization,
        reason: reason::VAULT_MISSING,
        why,
        may_link,
        access_token_expires_at: None,
    };
    needs_consent(shared, obj, consent, jiff::SignedDuration::from_mins(5)).await
}

/// What a resource that needs a new consent reports.
struct NeedsConsent {
    phase: Phase,
    /// Reason of `Ready` and `Authorized` (both False).
    reason: &'static str,
    why: String,
    /// False: no new link (a user whose installation is not Ready).
    may_link: bool,
    /// The token Secret's token, which keeps working until then.
    access_token_expires_at: Option<Timestamp>,
}

/// Writes `consent` (a new link when allowed) and comes back when the link expires, or after
/// `no_link` without one.
async fn needs_consent<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    consent: NeedsConsent,
    no_link: jiff::SignedDuration,
) -> Result<Action, ReconcileError> {
    let now = shared.ctx.clock.now();
    let link = new_link(&shared.ctx, obj, now);
    let updated = write_status(shared, obj, |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        status.phase = Some(consent.phase);
        status.next_refresh_time = None;
        if let Some(expires) = consent.access_token_expires_at {
            status.access_token_expires_at = Some(Time(expires));
        }
        status.observed_generation = generation;
        for type_ in [conditions::READY, conditions::AUTHORIZED] {
            conditions::set_condition(
                &mut status.conditions,
                type_,
                false,
                consent.reason,
                consent.why.clone(),
                generation,
                now,
            );
        }
        if consent.may_link {
            ensure_link(status, &link, now);
        } else {
            clear_link(status);
        }
    })
    .await?;
    let expires = updated
        .credential()
        .and_then(|s| s.authorization_expires_at.as_ref())
        .map_or(now + no_link, |t| t.0);
    Ok(Action::requeue(until(now, expires)))
}

fn facts_of<K: CredentialResource>(obj: &K, tokens: &TokenSet) -> Facts {
    Facts {
        obtained_at: tokens.obtained_at,
        expires_at: tokens.expires_at,
        consented_at: tokens.consented_at,
        last_health_check: obj
            .credential()
            .and_then(|s| s.last_health_check_time.as_ref())
            .map(|t| t.0),
    }
}

/// Vault then token Secret.
async fn save<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    tokens: &TokenSet,
    keep: &Keep,
) -> Result<store::Written, store::StoreError> {
    let api_base = shared.ctx.atlassian.api_base_url(&tokens.cloud_id);
    let written = store::write_tokens(
        &shared.ctx.client,
        &shared.ctx.known,
        &shared.ctx.keys,
        obj,
        tokens,
        &keep.token_secret_name,
        &api_base,
    )
    .await?;
    let vault = crate::validation::vault_secret_name(&obj.name_any());
    super::wrote_secrets(
        shared,
        &obj.namespace().unwrap_or_default(),
        &[(&vault, &written.vault), (&keep.token_secret_name, &written.token)],
    );
    Ok(written)
}

/// The rotated set is not stored yet: retry soon (before the token pods read, which expires at
/// `expires_at`, dies), never refresh meanwhile.
fn retry_save<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    uid: &str,
    e: &store::StoreError,
    expires_at: Timestamp,
) -> Action {
    let attempt = shared.failures.next(uid);
    let delay = save_retry_delay(shared, uid, attempt, expires_at);
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), category = e.category(), error = %e, attempt, retry_in = ?delay, "storing a rotated token set failed; retrying before anything else");
    shared.metrics.reconcile_error(&K::kind(&()), e.category());
    Action::requeue(delay)
}

/// When to retry writing a rotated set: backoff capped at 16 s, and at a third of what the token
/// in the token Secret (expiring at `expires_at`) has left.
fn save_retry_delay(shared: &Shared, uid: &str, attempt: u32, expires_at: Timestamp) -> Duration {
    let now = shared.ctx.clock.now();
    token::retry_delay(attempt.min(4), None, Jitter::for_key(uid), now, expires_at)
}

/// `status.lastRefreshTime` for a stored set: the refresh just made, else when the set was
/// obtained if a renewal obtained it (not the consent). So a refresh whose own status write
/// failed (the API server refused it) still shows with the next status write.
fn last_refresh(
    just_refreshed: Option<Timestamp>,
    obtained_at: Timestamp,
    consented_at: Timestamp,
) -> Option<Timestamp> {
    just_refreshed.or_else(|| (obtained_at > consented_at).then_some(obtained_at))
}

/// Remembers that `uid`'s renewal backs off for `delay` from now.
fn hold_off(holds: &mut HashMap<String, tokio::time::Instant>, uid: &str, delay: Duration, now: tokio::time::Instant) {
    holds.insert(uid.to_string(), now + delay);
}

/// How long `uid`'s renewal still backs off, if it does.
fn held_off(
    holds: &mut HashMap<String, tokio::time::Instant>,
    uid: &str,
    now: tokio::time::Instant,
) -> Option<Duration> {
    let left = holds.get(uid).map(|at| at.saturating_duration_since(now))?;
    if left.is_zero() {
        holds.remove(uid);
        return None;
    }
    Some(left)
}

/// Forgets `uid`'s failed renewals and their hold-off (it renewed or checked fine).
fn reset(shared: &Shared, uid: &str) {
    shared.failures.reset(uid);
    lock(&shared.hold_offs).remove(uid);
}

/// The app's credentials (the client secret read in the last few seconds is reused: a burst of
/// refreshes of one app reads it once); whether they came from that cache.
async fn client_secret(
    shared: &Shared,
    app: &AppCredentials,
) -> Result<Option<(ClientCredentials, bool)>, ReconcileError> {
    let policy = shared.ctx.client_secret_policy();
    let known = Some(&*shared.ctx.known);
    let secret = store::client_secret(&shared.ctx.client, known, &app.namespace, &app.secret_ref, &policy).await?;
    Ok(secret.map(|secret| {
        let credentials = ClientCredentials {
            client_id: app.client_id.clone(),
            client_secret: secret.value,
        };
        (credentials, secret.cached)
    }))
}

/// Refreshes (or mints), stores, and reports.
async fn renew_and_report<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    stored: Stored,
    keep: &Keep,
    jitter: Jitter,
) -> Result<Action, ReconcileError> {
    let tokens = &stored.tokens;
    let uid = obj.uid().unwrap_or_default();
    // A failed renewal backs off even when something else woke this reconcile early.
    let held = held_off(&mut lock(&shared.hold_offs), &uid, tokio::time::Instant::now());
    if let Some(left) = held {
        tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), retry_in = ?left, "the last renewal failed; waiting out its backoff");
        return Ok(Action::requeue(left));
    }
    let now = shared.ctx.clock.now();
    match renew(shared, obj, tokens, keep).await? {
        Renewed::Stored(stored) => {
            let (new, written) = *stored;
            reset(shared, &uid);
            let facts = facts_of(obj, &new);
            let plan = token::plan(now, Some(&facts), &keep.policy, jitter);
            let obtained = new.obtained_at;
            let new = Stored {
                tokens: new,
                vault_version: written.vault.version,
                token_version: written.token.version,
            };
            let updated = report(shared, obj, &new, keep, &plan, Some(obtained), None, None).await?;
            // Plan again from what was written (the health check clock may have moved).
            let facts = facts_of(&updated, &new.tokens);
            let plan = token::plan(shared.ctx.clock.now(), Some(&facts), &keep.policy, jitter);
            Ok(requeue_for(shared.ctx.clock.now(), &plan))
        }
        Renewed::Revoked(why) => {
            reset(shared, &uid);
            revoked_with(shared, obj, keep, tokens, reason::GRANT_REVOKED, &why).await
        }
        Renewed::InvalidClient => {
            let message = "Atlassian rejected the app's client id or client secret: check spec.clientId and the client secret Secret".to_string();
            super::report_failed(shared, obj, reason::INVALID_CLIENT_CREDENTIALS, message).await
        }
        Renewed::Retry(delay, backoff, why) => {
            let degraded = token::expires_before_retry(now, tokens.expires_at, backoff);
            let facts = facts_of(obj, tokens);
            let plan = token::plan(now, Some(&facts), &keep.policy, jitter);
            let failure = degraded.then(|| {
                format!(
                    "refreshing failed ({why}) and the access token expires at {} before the next attempt",
                    tokens.expires_at
                )
            });
            report(shared, obj, &stored, keep, &plan, None, None, failure).await?;
            Ok(Action::requeue(delay))
        }
    }
}

fn requeue_for(now: Timestamp, plan: &Plan) -> Action {
    match plan.next {
        Next::WaitUntil(at) => Action::requeue(until(now, at)),
        _ => Action::requeue(Duration::from_secs(1)),
    }
}

/// One renewal call, with the bookkeeping DESIGN.md step 4 asks for.
async fn renew<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    tokens: &TokenSet,
    keep: &Keep,
) -> Result<Renewed, ReconcileError> {
    let kind = K::kind(&());
    let uid = obj.uid().unwrap_or_default();
    let Some((credentials, cached)) = client_secret(shared, &keep.app).await? else {
        let attempt = shared.failures.next(&uid);
        let delay = token::backoff(attempt, None, Jitter::for_key(&uid));
        return Ok(Renewed::Retry(
            delay,
            delay,
            format!(
                "the client secret Secret {:?} key {:?} is missing",
                keep.app.secret_ref.name, keep.app.secret_ref.key
            ),
        ));
    };
    let now = shared.ctx.clock.now();
    let started = Instant::now();
    let result = match keep.policy.renewal {
        Renewal::Refresh => refresh::refresh(&shared.ctx.atlassian, &credentials, tokens, now)
            .await
            .map_err(|e| match e {
                refresh::RefreshError::Atlassian(e) => e,
                refresh::RefreshError::NoRefreshToken => AtlassianError::GrantDead("no refresh token stored".into()),
            }),
        Renewal::Mint => super::client_credentials::mint(shared, &credentials, tokens, now).await,
    };
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(new) => {
            // The sent refresh token is retired now: keep the new set until it is stored.
            lock(&shared.unsaved).insert(uid.clone(), new.clone());
            let written = save(shared, obj, &new, keep).await;
            if let Err(e) = &written {
                shared.metrics.refresh(&kind, "success", seconds);
                tracing::warn!(kind = %kind, name = %obj.name_any(), error = %e, "storing the rotated token set failed; it stays in memory and is retried first");
                let attempt = shared.failures.next(&uid);
                return Ok(Renewed::Retry(
                    save_retry_delay(shared, &uid, attempt, tokens.expires_at),
                    token::backoff(attempt.min(4), None, Jitter::for_key(&uid)),
                    "the new token set could not be stored yet".into(),
                ));
            }
            lock(&shared.unsaved).remove(&uid);
            shared.metrics.refresh(&kind, "success", seconds);
            tracing::info!(kind = %kind, namespace = ?obj.namespace(), name = %obj.name_any(), expires_at = %new.expires_at, "renewed the access token");
            Ok(Renewed::Stored(Box::new((new, written.unwrap_or_default()))))
        }
        Err(AtlassianError::GrantDead(description)) => {
            // Re-read the vault from the API server: a newer refresh token there means another
            // replica rotated it, and the grant is alive.
            let current = store::read_tokens(&shared.ctx.client, &shared.ctx.keys, obj).await?;
            let sent = tokens.refresh_token.as_ref().map(|t| t.expose_secret().to_string());
            let stored = current
                .as_ref()
                .and_then(|c| c.refresh_token.as_ref())
                .map(|t| t.expose_secret().to_string());
            if stored.is_some() && stored != sent {
                shared.metrics.refresh(&kind, "superseded", seconds);
                tracing::info!(kind = %kind, name = %obj.name_any(), "the vault already holds a newer refresh token; using it");
                return Ok(Renewed::Retry(
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    "the refresh token was already rotated".into(),
                ));
            }
            shared.metrics.refresh(&kind, "revoked", seconds);
            let why = if description.is_empty() {
                "Atlassian refused the grant (invalid_grant)".to_string()
            } else {
                format!("Atlassian refused the grant (invalid_grant: {description})")
            };
            Ok(Renewed::Revoked(format!(
                "{why}: open status.authorizationUrl to consent again; the token Secret keeps the old token until it expires"
            )))
        }
        Err(AtlassianError::InvalidClient) => {
            shared.metrics.refresh(&kind, "invalid_client", seconds);
            let app = &keep.app;
            shared
                .ctx
                .known
                .forget_client_secret(&app.namespace, &app.secret_ref.name);
            if cached {
                // Read a few seconds ago: it may have been rotated since. Read it again first.
                tracing::info!(kind = %kind, name = %obj.name_any(), "Atlassian refused the recently read client secret; reading it again");
                return Ok(Renewed::Retry(
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    "the client secret was refused; reading it again".into(),
                ));
            }
            Ok(Renewed::InvalidClient)
        }
        Err(e) => {
            let result = if e.is_transient() { "transient_error" } else { "error" };
            shared.metrics.refresh(&kind, result, seconds);
            let attempt = shared.failures.next(&uid);
            let jitter = Jitter::for_key(&format!("{uid}/{attempt}"));
            let now = shared.ctx.clock.now();
            let delay = token::retry_delay(attempt, e.retry_after(), jitter, now, tokens.expires_at);
            let backoff = token::backoff(attempt, e.retry_after(), jitter);
            hold_off(&mut lock(&shared.hold_offs), &uid, delay, tokio::time::Instant::now());
            tracing::warn!(kind = %kind, name = %obj.name_any(), category = e.category(), error = %e, attempt, retry_in = ?delay, "renewing the access token failed");
            Ok(Renewed::Retry(delay, backoff, e.category().to_string()))
        }
    }
}

/// `accessible-resources` with the current token.
async fn health_check<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    stored: Stored,
    keep: &Keep,
    jitter: Jitter,
) -> Result<Action, ReconcileError> {
    let tokens = &stored.tokens;
    let kind = K::kind(&());
    let uid = obj.uid().unwrap_or_default();
    let now = shared.ctx.clock.now();
    let result = shared.ctx.atlassian.accessible_resources(&tokens.access_token).await;
    let health = match result {
        Ok(sites) if sites.iter().any(|s| s.id == tokens.cloud_id) => {
            shared.metrics.health_check(&kind, "healthy");
            reset(shared, &uid);
            (
                true,
                reason::HEALTH_CHECK_PASSED,
                format!("the token reaches {}", tokens.site_url),
            )
        }
        Ok(_) => {
            shared.metrics.health_check(&kind, "site_access_lost");
            reset(shared, &uid);
            (
                false,
                reason::SITE_ACCESS_LOST,
                format!(
                    "the grant no longer covers {} (the app was removed from the site or the account lost access): an admin must re-install the app, then open status.authorizationUrl to consent again",
                    tokens.site_url
                ),
            )
        }
        Err(AtlassianError::Unauthorized) => {
            // The token was refused: refresh now.
            shared.metrics.health_check(&kind, "unauthorized");
            tracing::info!(kind = %kind, name = %obj.name_any(), "the health check was refused (401): refreshing now");
            return renew_and_report(shared, obj, stored, keep, jitter).await;
        }
        Err(e) => {
            shared.metrics.health_check(&kind, "error");
            let attempt = shared.failures.next(&uid);
            let delay = token::backoff(attempt, e.retry_after(), Jitter::for_key(&format!("{uid}/{attempt}")));
            tracing::warn!(kind = %kind, name = %obj.name_any(), category = e.category(), error = %e, retry_in = ?delay, "the health check failed");
            let facts = facts_of(obj, tokens);
            let plan = token::plan(now, Some(&facts), &keep.policy, jitter);
            // Come back for the refresh if it is due before the retry.
            let delay = match plan.refresh_at {
                Some(at) => delay.min(until(now, at)),
                None => delay,
            };
            return Ok(Action::requeue(delay));
        }
    };
    let facts = facts_of(obj, tokens);
    let plan = token::plan(now, Some(&facts), &keep.policy, jitter);
    let updated = report(shared, obj, &stored, keep, &plan, None, Some(health), None).await?;
    let facts = facts_of(&updated, &stored.tokens);
    let plan = token::plan(shared.ctx.clock.now(), Some(&facts), &keep.policy, jitter);
    Ok(requeue_for(shared.ctx.clock.now(), &plan))
}

/// Writes the status of a live credential in one write (no write when nothing changed).
///
/// `health`: a new health result (or `None` to keep the last one); `failure`: refreshing is
/// failing and the token expires first (phase `Degraded`, reason `RefreshFailed`).
#[allow(clippy::too_many_arguments)]
async fn report<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    stored: &Stored,
    keep: &Keep,
    plan: &Plan,
    refreshed: Option<Timestamp>,
    health: Option<(bool, &'static str, String)>,
    failure: Option<String>,
) -> Result<K, ReconcileError> {
    let tokens = &stored.tokens;
    let versions = (stored.vault_version.clone(), stored.token_version.clone());
    let ctx = &shared.ctx;
    let now = ctx.clock.now();
    let link = new_link(ctx, obj, now);
    // Decided on the object as re-read for the write (the cache may lag behind).
    let announced = std::sync::atomic::AtomicBool::new(false);
    let tokens_meta = (
        tokens.expires_at,
        tokens.scopes.clone(),
        tokens.cloud_id.clone(),
        tokens.site_url.clone(),
        tokens.consented_at,
    );
    let secret_name = keep.token_secret_name.clone();
    let refreshed = last_refresh(refreshed, tokens.obtained_at, tokens.consented_at);
    let (renewal, may_link, reauth_due) = (keep.policy.renewal, keep.may_link, plan.reauthorization_due);
    let next_refresh = plan.refresh_at;
    let updated = write_status(shared, obj, |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        let (expires, scopes, cloud_id, site_url, consented) = &tokens_meta;
        let current = *expires > now;
        let fresh_grant = status
            .last_health_check_time
            .as_ref()
            .is_none_or(|t| t.0.as_second() < consented.as_second());
        announced.store(fresh_grant && health.is_none(), std::sync::atomic::Ordering::Relaxed);
        status.secret_name = Some(secret_name.clone());
        if versions.0.is_some() {
            status.vault_secret_version = versions.0.clone();
        }
        if versions.1.is_some() {
            status.token_secret_version = versions.1.clone();
        }
        status.access_token_expires_at = Some(Time(*expires));
        status.granted_scopes = Some(scopes.clone());
        status.cloud_id = Some(cloud_id.clone());
        status.site_url = Some(site_url.clone());
        status.observed_generation = generation;
        status.next_refresh_time = next_refresh.map(Time);
        if let Some(at) = refreshed {
            status.last_refresh_time = Some(Time(at));
        }
        if let Some((ok, reason, message)) = &health {
            status.last_health_check_time = Some(Time(now));
            conditions::set_condition(&mut status.conditions, conditions::HEALTHY, *ok, reason, message.clone(), generation, now);
        } else if conditions::find(&status.conditions, conditions::HEALTHY).is_none() || fresh_grant {
            // A fresh grant counts as a successful check (the callback just reached the site).
            status.last_health_check_time = Some(Time(now.max(*consented)));
            conditions::set_condition(
                &mut status.conditions,
                conditions::HEALTHY,
                true,
                reason::FRESH_GRANT,
                format!("a fresh grant reaches {site_url}"),
                generation,
                now,
            );
        }
        let authorized = if renewal == Renewal::Mint {
            "the service account's client credentials work".to_string()
        } else {
            conditions::find(&status.conditions, conditions::AUTHORIZED)
                .filter(|c| c.status == "True")
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "a grant is stored in the vault".to_string())
        };
        conditions::set_condition(
            &mut status.conditions,
            conditions::AUTHORIZED,
            true,
            reason::AUTHORIZED,
            authorized,
            generation,
            now,
        );
        let healthy = conditions::find(&status.conditions, conditions::HEALTHY).is_none_or(|c| c.status == "True");
        let (phase, ready, reason, message) = if let Some(why) = &failure {
            (Phase::Degraded, false, reason::REFRESH_FAILED, why.clone())
        } else if !current {
            (
                Phase::Degraded,
                false,
                "TokenExpired",
                "the stored access token has expired; the operator is refreshing it".to_string(),
            )
        } else if !healthy {
            (
                Phase::Degraded,
                true,
                reason::TOKEN_VALID,
                "the access token is in the token Secret, but the last health check failed (see Healthy)".to_string(),
            )
        } else {
            (
                Phase::Ready,
                true,
                reason::TOKEN_VALID,
                "the access token is in the token Secret".to_string(),
            )
        };
        status.phase = Some(phase);
        conditions::set_condition(&mut status.conditions, conditions::READY, ready, reason, message, generation, now);
        if renewal == Renewal::Refresh {
            let dies = *consented + token::REFRESH_TOKEN_MAX_AGE;
            status.refresh_token_expires_at = Some(Time(dies));
            let (r, m) = if reauth_due {
                (
                    reason::REFRESH_TOKEN_EXPIRING,
                    format!("the refresh token dies at {dies} (365 days after consent): open status.authorizationUrl to consent again before then; the current grant keeps working until that time"),
                )
            } else {
                (
                    reason::REFRESH_TOKEN_CURRENT,
                    format!("the refresh token lives until {dies}"),
                )
            };
            conditions::set_condition(&mut status.conditions, conditions::REAUTHORIZATION_DUE, reauth_due, r, m, generation, now);
        }
        // A link while someone should consent again and may: re-authorization due, or the site
        // lost. Otherwise none.
        let site_lost = conditions::find(&status.conditions, conditions::HEALTHY)
            .is_some_and(|c| c.status == "False" && c.reason == reason::SITE_ACCESS_LOST);
        if may_link && renewal == Renewal::Refresh && (reauth_due || site_lost) {
            ensure_link(status, &link, now);
        } else {
            clear_link(status);
        }
    })
    .await?;
    if announced.load(std::sync::atomic::Ordering::Relaxed) {
        let account = tokens.account_id.clone();
        let note = format!("Atlassian account {account} authorized access to {}", tokens.site_url);
        shared
            .events
            .publish(
                &updated,
                &crate::events::Transition {
                    warning: false,
                    reason: crate::events::reasons::AUTHORIZED,
                    note: crate::events::sentence(&note),
                },
            )
            .await;
    }
    Ok(updated)
}

async fn revoked<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    keep: &Keep,
    tokens: &TokenSet,
    why: &str,
) -> Result<Action, ReconcileError> {
    let reason = obj
        .credential()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.reason.clone())
        .filter(|r| r == reason::REFRESH_TOKEN_EXPIRED)
        .map_or(reason::GRANT_REVOKED, |_| reason::REFRESH_TOKEN_EXPIRED);
    revoked_with(shared, obj, keep, tokens, reason, why).await
}

/// Phase `Revoked`: Ready and Authorized False, a new link (when allowed), an Event (from the
/// phase transition). The token Secret keeps the old token until it expires.
async fn revoked_with<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    keep: &Keep,
    tokens: &TokenSet,
    reason: &'static str,
    why: &str,
) -> Result<Action, ReconcileError> {
    let consent = NeedsConsent {
        phase: Phase::Revoked,
        reason,
        why: why.to_string(),
        may_link: keep.may_link,
        access_token_expires_at: Some(tokens.expires_at),
    };
    needs_consent(shared, obj, consent, jiff::SignedDuration::from_hours(1)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_refresh_time_comes_from_the_stored_set_when_its_write_was_missed() {
        let consent = Timestamp::from_second(1_800_000_000).unwrap();
        let later = consent + jiff::SignedDuration::from_secs(20);
        let mut tokens = TokenSet {
            access_token: "at".into(),
            refresh_token: Some("rt".into()),
            expires_at: consent + jiff::SignedDuration::from_secs(30),
            scopes: vec!["offline_access".into()],
            cloud_id: "c1".into(),
            site_url: "https://acme.atlassian.net".into(),
            account_id: "acc".into(),
            obtained_at: consent,
            consented_at: consent,
            installation: None,
        };
        // A fresh grant is no refresh.
        assert_eq!(last_refresh(None, tokens.obtained_at, tokens.consented_at), None);
        // A renewed set (its own status write refused): its obtained time.
        tokens.obtained_at = later;
        assert_eq!(last_refresh(None, tokens.obtained_at, tokens.consented_at), Some(later));
        // Just refreshed: that time.
        assert_eq!(
            last_refresh(Some(consent), tokens.obtained_at, tokens.consented_at),
            Some(consent)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_off_lasts_its_delay_whatever_wakes_the_reconcile() {
        let mut holds = HashMap::new();
        let start = tokio::time::Instant::now();
        assert_eq!(held_off(&mut holds, "uid", start), None);
        hold_off(&mut holds, "uid", Duration::from_secs(3), start);
        // Woken early (a watch event, a relist): the rest of the delay is still to wait.
        tokio::time::advance(Duration::from_millis(1200)).await;
        assert_eq!(
            held_off(&mut holds, "uid", tokio::time::Instant::now()),
            Some(Duration::from_millis(1800))
        );
        assert_eq!(held_off(&mut holds, "other", tokio::time::Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1800)).await;
        assert_eq!(held_off(&mut holds, "uid", tokio::time::Instant::now()), None);
        assert!(holds.is_empty(), "a hold-off that ended is forgotten");
    }
}
