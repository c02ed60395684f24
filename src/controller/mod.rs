//! The controllers: one reconciler per kind, sharing the context, the error policy and the
//! link logic. This scope is DESIGN.md step 1: validate, publish the authorization
//! link, report `AwaitingAuthorization` / `Ready` from what the callback stored.

mod client_credentials;
mod installation;
mod user_auth;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::context::Context;
use crate::crd::conditions::{self, reason};
use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus, Phase};
use crate::metrics::Metrics;
use crate::oauth::state;
use crate::store::{self, StoreError};
use crate::token_set::TokenSet;

/// Everything a reconcile needs.
pub struct Shared {
    /// Clients, keys, clock.
    pub ctx: Context,
    /// Metrics.
    pub metrics: Metrics,
}

/// A reconcile that could not finish; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing Kubernetes objects failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Listing or reading a related object failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl ReconcileError {
    /// Bounded category for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Store(e) => e.category(),
            Self::Kube(_) => "KubernetesApi",
        }
    }
}

/// Runs both controllers, over all namespaces or over each of `namespaces`, until `shutdown`
/// resolves.
pub async fn run(
    shared: Arc<Shared>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let controllers = futures::future::join_all(
        scopes
            .into_iter()
            .map(|scope| run_scope(shared.clone(), scope, &shutdown_tx)),
    );
    let stop = async move {
        shutdown.await;
        let _ = shutdown_tx.send(());
    };
    tokio::join!(controllers, stop);
}

/// An API over one namespace, or over all.
fn scoped<K>(client: &kube::Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Both controllers over one scope.
fn run_scope(
    shared: Arc<Shared>,
    scope: Option<String>,
    shutdown: &tokio::sync::broadcast::Sender<()>,
) -> impl std::future::Future<Output = ()> + use<> {
    let client = shared.ctx.client.clone();
    let installations: Api<ConfluenceInstallation> = scoped(&client, &scope);
    let users: Api<ConfluenceUserAuth> = scoped(&client, &scope);
    let secrets: Api<Secret> = scoped(&client, &scope);
    // Watching every namespace still leaves out the operator's own (its keys live there), unless
    // it was listed explicitly (then `scope` is that namespace).
    let base = match &scope {
        Some(_) => watcher::Config::default(),
        None => watcher::Config::default().fields(&format!("metadata.namespace!={}", shared.ctx.operator_namespace)),
    };
    let managed = base
        .clone()
        .labels(&format!("app.kubernetes.io/managed-by={}", store::MANAGER));
    let signal = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    let installation_controller = Controller::new(installations.clone(), base.clone())
        .owns(secrets.clone(), managed.clone())
        .graceful_shutdown_on(signal(shutdown))
        .run(installation::reconcile, error_policy, shared.clone())
        .for_each(|_| async {});

    let user_controller = Controller::new(users, base.clone());
    let user_store = user_controller.store();
    let user_controller = user_controller
        .owns(secrets, managed)
        // A user auth depends on its installation: re-check the users of one that changed.
        .watches(installations, base, move |cfi: ConfluenceInstallation| {
            let namespace = cfi.namespace();
            let name = cfi.name_any();
            user_store
                .state()
                .into_iter()
                .filter(|u| u.namespace() == namespace && u.spec.installation_ref.name == name)
                .map(|u| ObjectRef::from_obj(&*u))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(signal(shutdown))
        .run(user_auth::reconcile, error_policy, shared)
        .for_each(|_| async {});
    async move {
        tokio::join!(installation_controller, user_controller);
    }
}

fn error_policy<K: CredentialResource>(obj: Arc<K>, error: &ReconcileError, shared: Arc<Shared>) -> Action {
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), namespace = ?obj.namespace(), category = error.category(), error = %error, "reconcile failed");
    shared.metrics.reconcile_error(K::kind(&()).as_ref(), error.category());
    Action::requeue(Duration::from_secs(15))
}

/// True when the resource needs a fresh authorization link: none yet, or it expired.
pub fn needs_new_link(status: Option<&CredentialStatus>, now: Timestamp) -> bool {
    let Some(status) = status else { return true };
    // A callback consumed the link and is completing the grant: no second link meanwhile.
    if status
        .pending_authorization
        .as_ref()
        .is_some_and(|p| p.expires_at.0 > now)
    {
        return false;
    }
    let expired = status.authorization_expires_at.as_ref().is_none_or(|t| t.0 <= now);
    status.authorization_url.is_none() || status.authorization_nonce_hash.is_none() || expired
}

/// Publishes (or keeps) the authorization link and reports `AwaitingAuthorization`.
/// Returns when to look again (the link's expiry).
async fn await_consent<K: CredentialResource>(shared: &Shared, obj: &K, why: &str) -> Result<Action, ReconcileError> {
    let ctx = &shared.ctx;
    let now = ctx.clock.now();
    let link = needs_new_link(obj.credential(), now).then(|| {
        let (nonce, hash) = state::new_nonce();
        let url = format!(
            "{}/oauth/start/{}/{}/{}?nonce={nonce}",
            ctx.public_url,
            obj.namespace().unwrap_or_default(),
            K::FLOW_KIND.segment(),
            obj.name_any()
        );
        (
            url,
            hash,
            now + jiff::SignedDuration::try_from(ctx.link_ttl).unwrap_or(jiff::SignedDuration::from_hours(24)),
        )
    });
    let why = why.to_string();
    let updated = store::update_status(&ctx.client, obj, move |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        if let Some((url, hash, expires)) = &link {
            status.authorization_url = Some(url.clone());
            status.authorization_nonce_hash = Some(hash.clone());
            status.authorization_expires_at = Some(Time(*expires));
        }
        status.phase = Some(Phase::AwaitingAuthorization);
        status.observed_generation = generation;
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            false,
            reason::AWAITING_CONSENT,
            why.clone(),
            generation,
            now,
        );
    })
    .await?;
    let expires = updated.credential().and_then(|s| {
        s.authorization_expires_at
            .as_ref()
            .or(s.pending_authorization.as_ref().map(|p| &p.expires_at))
            .map(|t| t.0)
    });
    Ok(Action::requeue(until(now, expires.unwrap_or(now))))
}

/// Reports a stored credential (phase `Ready` while the access token is current).
async fn report_stored<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    tokens: &TokenSet,
    secret_name: &str,
) -> Result<Action, ReconcileError> {
    let now = shared.ctx.clock.now();
    let current = tokens.expires_at > now;
    let secret_name = secret_name.to_string();
    let (expires, scopes, cloud_id, site_url) = (
        tokens.expires_at,
        tokens.scopes.clone(),
        tokens.cloud_id.clone(),
        tokens.site_url.clone(),
    );
    store::update_status(&shared.ctx.client, obj, move |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        status.phase = Some(if current { Phase::Ready } else { Phase::Degraded });
        status.authorization_url = None;
        status.authorization_nonce_hash = None;
        status.authorization_expires_at = None;
        status.secret_name = Some(secret_name.clone());
        status.access_token_expires_at = Some(Time(expires));
        status.granted_scopes = Some(scopes.clone());
        status.cloud_id = Some(cloud_id.clone());
        status.site_url = Some(site_url.clone());
        status.observed_generation = generation;
        let (reason, message) = if current {
            (
                reason::TOKEN_VALID,
                "the access token is in the token Secret".to_string(),
            )
        } else {
            ("TokenExpired", "the stored access token has expired".to_string())
        };
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            current,
            reason,
            message,
            generation,
            now,
        );
        conditions::set_condition(
            &mut status.conditions,
            conditions::AUTHORIZED,
            true,
            reason::AUTHORIZED,
            "a grant is stored in the vault",
            generation,
            now,
        );
    })
    .await?;
    Ok(Action::requeue(until(now, tokens.expires_at)))
}

/// Reports a configuration problem the user must fix; nothing happens until the spec changes.
async fn report_failed<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    reason: &str,
    message: String,
) -> Result<Action, ReconcileError> {
    let now = shared.ctx.clock.now();
    let reason = reason.to_string();
    store::update_status(&shared.ctx.client, obj, move |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        status.phase = Some(Phase::Failed);
        status.authorization_url = None;
        status.authorization_nonce_hash = None;
        status.authorization_expires_at = None;
        status.observed_generation = generation;
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            false,
            &reason,
            message.clone(),
            generation,
            now,
        );
    })
    .await?;
    Ok(Action::await_change())
}

/// Reports `SecretConflict` when a Secret `obj` would write is taken by something else; looks
/// again every few minutes (the holder may be deleted). `Ok(None)`: both names are free or ours.
async fn secret_conflict<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    token_secret_name: &str,
) -> Result<Option<Action>, ReconcileError> {
    let vault = crate::validation::vault_secret_name(&obj.name_any());
    match store::check_owned(&shared.ctx.client, obj, &[&vault, token_secret_name]).await {
        Ok(()) => Ok(None),
        Err(e @ StoreError::SecretConflict(_)) => {
            report_failed(shared, obj, reason::SECRET_CONFLICT, e.to_string()).await?;
            Ok(Some(Action::requeue(Duration::from_secs(300))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the vault; an unreadable one is reported (never a panic, never a plaintext fallback).
async fn stored_tokens<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
) -> Result<Result<Option<TokenSet>, Action>, ReconcileError> {
    match store::read_tokens(&shared.ctx.client, &shared.ctx.keys, obj).await {
        Ok(tokens) => Ok(Ok(tokens)),
        Err(e @ (StoreError::Vault(_) | StoreError::Corrupt)) => {
            let action = report_failed(
                shared,
                obj,
                reason::VAULT_UNREADABLE,
                format!("the vault Secret cannot be read: {e}"),
            )
            .await?;
            Ok(Err(action))
        }
        Err(e) => Err(e.into()),
    }
}

/// Time from `now` to `at`, never negative, at most an hour (a periodic re-check).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    let secs = (at.as_second() - now.as_second()).clamp(1, 3600);
    Duration::from_secs(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_link_is_published_when_missing_or_expired_and_kept_otherwise() {
        assert!(needs_new_link(None, at(100)));
        let mut status = CredentialStatus {
            authorization_url: Some("u".into()),
            authorization_nonce_hash: Some("h".into()),
            authorization_expires_at: Some(Time(at(200))),
            ..Default::default()
        };
        assert!(!needs_new_link(Some(&status), at(100)));
        assert!(needs_new_link(Some(&status), at(200)));
        status.authorization_nonce_hash = None;
        assert!(needs_new_link(Some(&status), at(100)));
    }

    #[test]
    fn requeue_delays_are_clamped() {
        assert_eq!(until(at(100), at(50)), Duration::from_secs(1));
        assert_eq!(until(at(100), at(160)), Duration::from_secs(60));
        assert_eq!(until(at(0), at(100_000)), Duration::from_secs(3600));
    }
}
