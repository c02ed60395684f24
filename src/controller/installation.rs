//! Reconciler of `ConfluenceInstallation`.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::{
    ReconcileError, Shared, await_consent, client_credentials, report_failed, report_stored, secret_conflict,
    stored_tokens,
};
use crate::crd::conditions::reason;
use crate::crd::{ConfluenceInstallation, GrantType};
use crate::validation;

/// One pass over an installation.
pub async fn reconcile(cfi: Arc<ConfluenceInstallation>, shared: Arc<Shared>) -> Result<Action, ReconcileError> {
    let policy = match validation::installation(&cfi.name_any(), &cfi.spec) {
        Ok(policy) => policy,
        Err(e) => return report_failed(&shared, &*cfi, reason::INVALID_SPEC, e.to_string()).await,
    };
    if let Some(action) = secret_conflict(&shared, &*cfi, &policy.token_secret_name).await? {
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
        Some(tokens) => report_stored(&shared, &*cfi, &tokens, &policy.token_secret_name).await,
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
