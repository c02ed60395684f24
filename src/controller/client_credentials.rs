//! `ClientCredentials` installations: no browser. The operator reads the site's cloud id from
//! `tenant_info`, mints a token with the service account's client credentials, and mints the
//! next one before the current one expires (the same planner as refreshes).

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::lifecycle::{self, AppCredentials, Keep};
use super::{ReconcileError, Shared, report_failed};
use crate::crd::ConfluenceInstallation;
use crate::crd::conditions::reason;
use crate::oauth::atlassian::{AtlassianError, ClientCredentials};
use crate::store;
use crate::token::{self, Renewal};
use crate::token_set::TokenSet;
use crate::validation::{self, InstallationPolicy};

/// How a client-credentials installation is kept alive.
fn keep_of(cfi: &ConfluenceInstallation, policy: &InstallationPolicy) -> Keep {
    Keep {
        policy: token::Policy {
            refresh_before: policy.refresh_before,
            health_check_interval: policy.health_check_interval,
            renewal: Renewal::Mint,
        },
        token_secret_name: policy.token_secret_name.clone(),
        app: AppCredentials {
            namespace: cfi.namespace().unwrap_or_default(),
            client_id: cfi.spec.client_id.clone(),
            secret_ref: cfi.spec.client_secret_ref.clone(),
        },
        may_link: false,
    }
}

/// Mints the first token when none is stored; keeps the stored one alive otherwise.
pub async fn ensure_token(
    shared: &Shared,
    cfi: &ConfluenceInstallation,
    policy: &InstallationPolicy,
    stored: Option<store::Opened>,
) -> Result<Action, ReconcileError> {
    let keep = keep_of(cfi, policy);
    if let Some(tokens) = stored {
        return lifecycle::keep_alive(shared, cfi, tokens, &keep).await;
    }
    let ctx = &shared.ctx;
    // Never contact a site outside the allowed suffixes (SECURITY.md, finding 8).
    if let Err(e) = validation::pinned_site_allowed(policy, &ctx.allowed_site_suffixes) {
        return report_failed(shared, cfi, reason::INVALID_SPEC, e.to_string()).await;
    }
    let namespace = cfi.namespace().unwrap_or_default();
    let client_secret = match store::client_secret(
        &ctx.client,
        None,
        &namespace,
        &cfi.spec.client_secret_ref,
        &ctx.client_secret_policy(),
    )
    .await
    {
        Ok(secret) => secret,
        Err(store::StoreError::ClientSecretRefused(why)) => {
            return report_failed(shared, cfi, reason::CLIENT_SECRET_REFUSED, why).await;
        }
        Err(e) => return Err(e.into()),
    };
    let Some(client_secret) = client_secret else {
        let message = format!(
            "Secret {:?} key {:?} (spec.clientSecretRef) does not exist: create it with the service account's client secret",
            cfi.spec.client_secret_ref.name, cfi.spec.client_secret_ref.key
        );
        return report_failed(shared, cfi, reason::CLIENT_SECRET_MISSING, message).await;
    };
    let site_host = policy.site_host.clone().unwrap_or_default();
    let credentials = ClientCredentials {
        client_id: cfi.spec.client_id.clone(),
        client_secret: client_secret.value,
    };
    let now = ctx.clock.now();
    let minted = async {
        let cloud_id = ctx.atlassian.tenant_info(&site_host).await?;
        let first = TokenSet {
            access_token: String::new().into(),
            refresh_token: None,
            expires_at: now,
            scopes: Vec::new(),
            cloud_id,
            site_url: format!("https://{site_host}"),
            account_id: String::new(),
            obtained_at: now,
            consented_at: now,
            installation: None,
        };
        mint(shared, &credentials, &first, now).await
    }
    .await;
    let set = match minted {
        Ok(set) => set,
        Err(AtlassianError::InvalidClient) => {
            let message =
                "Atlassian rejected spec.clientId / the client secret: check the service account's OAuth credential"
                    .to_string();
            return report_failed(shared, cfi, reason::INVALID_CLIENT_CREDENTIALS, message).await;
        }
        Err(e) => {
            tracing::warn!(name = %cfi.name_any(), category = e.category(), error = %e, "minting a client-credentials token failed");
            let delay = e.retry_after().unwrap_or(std::time::Duration::from_secs(30));
            return Ok(Action::requeue(delay));
        }
    };
    let written = store::write_tokens(
        &ctx.client,
        &ctx.known,
        &ctx.keys,
        cfi,
        &set,
        &policy.token_secret_name,
        &ctx.atlassian.api_base_url(&set.cloud_id),
    )
    .await?;
    let account = set.account_id.clone();
    super::write_status(shared, cfi, move |obj| {
        let status = &mut obj.status.get_or_insert_with(Default::default).credential;
        status.installed_by = Some(account.clone());
        status.last_refresh_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    })
    .await?;
    let opened = store::Opened {
        tokens: set,
        version: written.vault.version,
    };
    lifecycle::keep_alive(shared, cfi, opened, &keep).await
}

/// Mints a token with the client credentials; site, cloud id and first-mint time carry over
/// from `previous`. The identity is read once (it never changes for a service account).
pub async fn mint(
    shared: &Shared,
    credentials: &ClientCredentials,
    previous: &TokenSet,
    now: Timestamp,
) -> Result<TokenSet, AtlassianError> {
    let atlassian = &shared.ctx.atlassian;
    let tokens = atlassian.client_credentials(credentials).await?;
    let account_id = if previous.account_id.is_empty() {
        match atlassian.me(&tokens.access_token).await {
            Ok(identity) => identity.account_id,
            Err(_) => {
                atlassian
                    .current_user(&tokens.access_token, &previous.cloud_id)
                    .await?
                    .account_id
            }
        }
    } else {
        previous.account_id.clone()
    };
    Ok(TokenSet {
        access_token: tokens.access_token.clone(),
        refresh_token: None,
        expires_at: tokens.expires_at(now),
        scopes: tokens.scopes(),
        cloud_id: previous.cloud_id.clone(),
        site_url: previous.site_url.clone(),
        account_id,
        obtained_at: now,
        consented_at: previous.consented_at,
        installation: None,
    })
}
