//! Reconciler of `ConfluenceUserAuth`: like an installation's, but only once its installation
//! is Ready (a missing or unready installation gets `InstallationReady=False` and no link).

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::{ReconcileError, Shared, await_consent, report_failed, report_stored, secret_conflict, stored_tokens};
use crate::crd::conditions::{self, reason};
use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use crate::store;
use crate::validation;

/// One pass over a user auth.
pub async fn reconcile(cfua: Arc<ConfluenceUserAuth>, shared: Arc<Shared>) -> Result<Action, ReconcileError> {
    let ctx = &shared.ctx;
    let installations: Api<ConfluenceInstallation> =
        Api::namespaced(ctx.client.clone(), &cfua.namespace().unwrap_or_default());
    let cfi = installations.get_opt(&cfua.spec.installation_ref.name).await?;
    let ready = cfi.as_ref().is_some_and(|c| {
        c.credential()
            .is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY))
    });
    let (dependency_reason, dependency_message) = match (&cfi, ready) {
        (None, _) => (
            reason::INSTALLATION_MISSING,
            format!(
                "ConfluenceInstallation {:?} does not exist in this namespace",
                cfua.spec.installation_ref.name
            ),
        ),
        (Some(_), false) => (
            reason::INSTALLATION_NOT_READY,
            format!(
                "ConfluenceInstallation {:?} is not Ready yet",
                cfua.spec.installation_ref.name
            ),
        ),
        (Some(_), true) => (
            reason::INSTALLATION_READY,
            format!("ConfluenceInstallation {:?} is Ready", cfua.spec.installation_ref.name),
        ),
    };
    let now = ctx.clock.now();
    let message = dependency_message.clone();
    let cfua = Arc::new(
        store::update_status(&ctx.client, &*cfua, move |obj| {
            let generation = obj.metadata.generation;
            let status = obj.status.get_or_insert_with(Default::default);
            conditions::set_condition(
                &mut status.credential.conditions,
                conditions::INSTALLATION_READY,
                ready,
                dependency_reason,
                message.clone(),
                generation,
                now,
            );
        })
        .await?,
    );
    // Before the vault is even read: a name taken by another resource is not ours to open.
    let token_secret_name = cfua
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-token", cfua.name_any()));
    if let Some(action) = secret_conflict(&shared, &*cfua, &token_secret_name).await? {
        return Ok(action);
    }
    let tokens = match stored_tokens(&shared, &*cfua).await? {
        Ok(tokens) => tokens,
        Err(action) => return Ok(action),
    };
    let Some(cfi) = cfi.filter(|_| ready) else {
        if let Some(tokens) = tokens {
            // Existing tokens keep being reported (and, later, refreshed) without the installation.
            let name = cfua
                .spec
                .secret_name
                .clone()
                .unwrap_or_else(|| format!("{}-token", cfua.name_any()));
            return report_stored(&shared, &*cfua, &tokens, &name).await;
        }
        store::update_status(&ctx.client, &*cfua, |obj| {
            let status = &mut obj.status.get_or_insert_with(Default::default).credential;
            status.phase = Some(Phase::AwaitingAuthorization);
            status.authorization_url = None;
            status.authorization_nonce_hash = None;
            status.authorization_expires_at = None;
        })
        .await?;
        return Ok(Action::requeue(std::time::Duration::from_secs(300)));
    };
    // The installation a grant was made under is read from the vault (authenticated), not from
    // status, which others may be able to write.
    let bound = tokens.as_ref().and_then(|t| t.installation.as_deref());
    let policy = match validation::user_auth(&cfua.name_any(), &cfua.spec, &cfi.spec, bound) {
        Ok(policy) => policy,
        Err(e) => return report_failed(&shared, &*cfua, reason::INVALID_SPEC, e.to_string()).await,
    };
    match tokens {
        Some(tokens) => report_stored(&shared, &*cfua, &tokens, &policy.token_secret_name).await,
        None => {
            await_consent(
                &shared,
                &*cfua,
                "waiting for the user to open status.authorizationUrl and consent",
            )
            .await
        }
    }
}
