//! Reconciler of `ConfluenceUserAuth`: like an installation's, but a new consent needs its
//! installation Ready. A missing or unready installation gets `InstallationReady=False` and no
//! link; tokens already stored keep refreshing with the installation's app credentials (the
//! last ones seen, when the installation is gone).

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::lifecycle::{self, AppCredentials, Keep};
use super::{
    ReconcileError, Shared, await_consent, clear_link, consent_in_flight, lagging, lock, observe, report_failed,
    secret_conflict, stored_tokens, write_status,
};
use crate::crd::conditions::{self, reason};
use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, Phase};
use crate::duration;
use crate::token::{self, Renewal};
use crate::validation;

/// One pass over a user auth.
pub async fn reconcile(cfua: Arc<ConfluenceUserAuth>, shared: Arc<Shared>) -> Result<Action, ReconcileError> {
    // The first passes after a start come back once the caches have listed (a miss would be
    // a read).
    if !shared.ctx.known.synced() {
        return Ok(Action::requeue(crate::known::RETRY_UNTIL_SYNCED));
    }
    let ctx = &shared.ctx;
    if let Some(wait) = consent_in_flight(cfua.metadata.generation, cfua.credential(), ctx.clock.now()) {
        return Ok(Action::requeue(wait));
    }
    let namespace = cfua.namespace().unwrap_or_default();
    // Nothing to look up without a name (and the request would not be for one object).
    if cfua.spec.installation_ref.name.is_empty() {
        let message = validation::messages::INSTALLATION_REF_EMPTY.to_string();
        return report_failed(&shared, &*cfua, reason::INVALID_SPEC, message).await;
    }
    let cached = ctx.known.installation(&namespace, &cfua.spec.installation_ref.name);
    let fetched = match cached {
        Some(cfi) => Ok(Some(cfi)),
        // Not in the cache: missing, or not fitting its type (the read tells which).
        None => Api::<ConfluenceInstallation>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&cfua.spec.installation_ref.name)
            .await
            .map(|cfi| cfi.map(Arc::new)),
    };
    let (cfi, unfit) = match fetched {
        Ok(cfi) => (cfi, false),
        // An installation that does not fit its type (it got past the schema) is reported on
        // its own status; here it is neither usable nor missing.
        Err(kube::Error::SerdeError(_)) => (None, true),
        Err(e) => return Err(e.into()),
    };
    let ready = cfi.as_ref().is_some_and(|c| {
        c.credential()
            .is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY))
    });
    let (dependency_reason, dependency_message) = match (&cfi, ready) {
        (None, _) if unfit => (
            reason::INSTALLATION_NOT_READY,
            format!(
                "ConfluenceInstallation {:?} has an invalid spec (its status says which field)",
                cfua.spec.installation_ref.name
            ),
        ),
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
                "ConfluenceInstallation {:?} is not Ready",
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
    let generation = cfua.metadata.generation;
    let conditions = cfua.credential().map_or(&[][..], |s| &s.conditions[..]);
    let reported = conditions::is_current(
        conditions,
        conditions::INSTALLATION_READY,
        ready,
        dependency_reason,
        &dependency_message,
        generation,
    );
    // Most passes (every refresh's) find it reported: no copy of the object to compare.
    let cfua = if reported {
        observe(&shared, &*cfua);
        cfua
    } else {
        Arc::new(
            write_status(&shared, &*cfua, move |obj| {
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
        )
    };
    // Before the vault is even read: a name taken by something else is not ours to open.
    if let Some(action) = secret_conflict(&shared, &*cfua, &fallback_policy(&cfua).2).await? {
        return Ok(action);
    }
    let key = format!("{namespace}/{}", cfua.spec.installation_ref.name);
    if let Some(cfi) = &cfi {
        lock(&shared.app_credentials).insert(
            key.clone(),
            (cfi.spec.client_id.clone(), cfi.spec.client_secret_ref.clone()),
        );
    }
    // Nothing due and the status says all the vault would: no read at all. (The installation
    // the grant is bound to is checked on the vault's word at the next full pass; changing
    // spec.installationRef changes the generation, which takes the full pass now.)
    let unchanged_binding = Some(cfua.spec.installation_ref.name.as_str());
    if let Keeping::Keep(keep) = keep_of(&shared, &cfua, cfi.as_deref(), unchanged_binding, ready) {
        if lagging(&shared, &*cfua, &keep.token_secret_name) {
            return Ok(Action::requeue(crate::known::RETRY_UNTIL_SYNCED));
        }
        if let Some(action) = lifecycle::settled(&shared, &*cfua, &keep) {
            return Ok(action);
        }
    }
    let tokens = match stored_tokens(&shared, &*cfua).await? {
        Ok(tokens) => tokens,
        Err(action) => return Ok(action),
    };
    let Some(tokens) = tokens else {
        if lifecycle::vault_lost(&*cfua) {
            return lifecycle::vault_missing(&shared, &*cfua, ready).await;
        }
        let Some(cfi) = cfi.filter(|_| ready) else {
            // No grant and no Ready installation: no link until it is.
            write_status(&shared, &*cfua, |obj| {
                let status = &mut obj.status.get_or_insert_with(Default::default).credential;
                status.phase = Some(Phase::AwaitingAuthorization);
                clear_link(status);
            })
            .await?;
            return Ok(Action::requeue(std::time::Duration::from_secs(300)));
        };
        // No grant yet, so nothing is bound to an installation.
        if let Err(e) = validation::user_auth(&cfua.name_any(), &cfua.spec, &cfi.spec, None) {
            return report_failed(&shared, &*cfua, reason::INVALID_SPEC, e.to_string()).await;
        }
        return await_consent(
            &shared,
            &*cfua,
            "waiting for the user to open status.authorizationUrl and consent",
        )
        .await;
    };
    // A stored grant: keep it alive, with or without the installation. The installation the
    // grant was made under comes from the vault (authenticated), not from status, which others
    // may be able to write (SECURITY.md, finding 10).
    match keep_of(
        &shared,
        &cfua,
        cfi.as_deref(),
        tokens.tokens.installation.as_deref(),
        ready,
    ) {
        Keeping::Keep(keep) => lifecycle::keep_alive(&shared, &*cfua, tokens, &keep).await,
        Keeping::Invalid(message) => report_failed(&shared, &*cfua, reason::INVALID_SPEC, message).await,
        Keeping::NoAppCredentials => {
            // Installation gone before this replica ever saw it: nothing to refresh with.
            tracing::warn!(name = %cfua.name_any(), installation = %key, "the installation is gone and its app credentials were never seen; the stored token is not refreshed");
            Ok(Action::requeue(std::time::Duration::from_secs(300)))
        }
    }
}

/// How a user's stored grant is kept alive, or why it cannot be.
enum Keeping {
    Keep(Keep),
    /// The spec is invalid (the message names the field and the fix).
    Invalid(String),
    /// The installation is gone and this process never saw its app credentials.
    NoAppCredentials,
}

/// The policy of `cfua` under installation `cfi` (its own durations when the installation is
/// gone), for a grant bound to installation `bound`.
fn keep_of(
    shared: &Shared,
    cfua: &ConfluenceUserAuth,
    cfi: Option<&ConfluenceInstallation>,
    bound: Option<&str>,
    ready: bool,
) -> Keeping {
    let (refresh_before, health_check_interval, token_secret_name) = match cfi {
        Some(cfi) => match validation::user_auth(&cfua.name_any(), &cfua.spec, &cfi.spec, bound) {
            Ok(policy) => (
                policy.refresh_before,
                policy.health_check_interval,
                policy.token_secret_name,
            ),
            Err(e) => return Keeping::Invalid(e.to_string()),
        },
        None => fallback_policy(cfua),
    };
    let namespace = cfua.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", cfua.spec.installation_ref.name);
    let Some((client_id, secret_ref)) = lock(&shared.app_credentials).get(&key).cloned() else {
        return Keeping::NoAppCredentials;
    };
    Keeping::Keep(Keep {
        policy: token::Policy {
            refresh_before,
            health_check_interval,
            renewal: Renewal::Refresh,
        },
        token_secret_name,
        app: AppCredentials {
            namespace,
            client_id,
            secret_ref,
        },
        may_link: ready,
    })
}

/// The user's own durations (or the defaults) when the installation is gone.
fn fallback_policy(cfua: &ConfluenceUserAuth) -> (std::time::Duration, std::time::Duration, String) {
    let parse = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| duration::parse(t).ok())
            .unwrap_or_else(|| duration::parse(crate::crd::DEFAULT_INTERVAL).unwrap_or_default())
    };
    let secret_name = cfua
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-token", cfua.name_any()));
    (
        parse(&cfua.spec.refresh_before),
        parse(&cfua.spec.health_check_interval),
        secret_name,
    )
}
