//! Reconciler of `ConfluenceInstallation`.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::lifecycle::{self, AppCredentials, Keep};
use super::{
    ReconcileError, Shared, await_consent, client_credentials, consent_in_flight, lagging, lock, report_failed,
    secret_conflict, stored_tokens,
};
use crate::crd::conditions::reason;
use crate::crd::{ConfluenceInstallation, CredentialResource, GrantType};
use crate::token::{self, Renewal};
use crate::validation;

/// One pass over an installation.
pub async fn reconcile(cfi: Arc<ConfluenceInstallation>, shared: Arc<Shared>) -> Result<Action, ReconcileError> {
    // The first passes after a start come back once the caches have listed (a miss would be
    // a read).
    if !shared.ctx.known.synced() {
        return Ok(Action::requeue(crate::known::RETRY_UNTIL_SYNCED));
    }
    let namespace = cfi.namespace().unwrap_or_default();
    // Remember the app credentials: the users of this installation refresh with them, even
    // while it is deleted or broken.
    lock(&shared.app_credentials).insert(
        format!("{namespace}/{}", cfi.name_any()),
        (cfi.spec.client_id.clone(), cfi.spec.client_secret_ref.clone()),
    );
    if let Some(wait) = consent_in_flight(cfi.metadata.generation, cfi.credential(), shared.ctx.clock.now()) {
        return Ok(Action::requeue(wait));
    }
    let policy = match validation::installation(&cfi.name_any(), &cfi.spec) {
        Ok(policy) => policy,
        Err(e) => return report_failed(&shared, &*cfi, reason::INVALID_SPEC, e.to_string()).await,
    };
    // No link (nor any request) for a site outside the allowed suffixes (SECURITY.md, finding 8).
    if let Err(e) = validation::pinned_site_allowed(&policy, &shared.ctx.allowed_site_suffixes) {
        return report_failed(&shared, &*cfi, reason::INVALID_SPEC, e.to_string()).await;
    }
    // Before the vault is even read: a name taken by something else is not ours to open.
    if let Some(action) = secret_conflict(&shared, &*cfi, &policy.token_secret_name).await? {
        return Ok(action);
    }
    let keep = Keep {
        policy: token::Policy {
            refresh_before: policy.refresh_before,
            health_check_interval: policy.health_check_interval,
            renewal: Renewal::Refresh,
        },
        token_secret_name: policy.token_secret_name.clone(),
        app: AppCredentials {
            namespace,
            client_id: cfi.spec.client_id.clone(),
            secret_ref: cfi.spec.client_secret_ref.clone(),
        },
        may_link: true,
    };
    if lagging(&shared, &*cfi, &keep.token_secret_name) {
        return Ok(Action::requeue(crate::known::RETRY_UNTIL_SYNCED));
    }
    // Nothing due and the status says all the vault would: no read at all.
    if cfi.spec.grant != GrantType::ClientCredentials
        && let Some(action) = lifecycle::settled(&shared, &*cfi, &keep)
    {
        return Ok(action);
    }
    let tokens = match stored_tokens(&shared, &*cfi).await? {
        Ok(tokens) => tokens,
        Err(action) => return Ok(action),
    };
    if cfi.spec.grant == GrantType::ClientCredentials {
        return client_credentials::ensure_token(&shared, &cfi, &policy, tokens).await;
    }
    match tokens {
        Some(tokens) => lifecycle::keep_alive(&shared, &*cfi, tokens, &keep).await,
        None if lifecycle::vault_lost(&*cfi) => lifecycle::vault_missing(&shared, &*cfi, true).await,
        None => {
            await_consent(
                &shared,
                &*cfi,
                "waiting for an admin to open status.authorizationUrl and consent",
            )
            .await
        }
    }
}
