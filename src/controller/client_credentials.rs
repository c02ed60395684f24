//! `ClientCredentials` installations: no browser. The operator reads the site's cloud id from
//! `tenant_info` and mints a token with the service account's client credentials whenever there
//! is no current one.

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::{ReconcileError, Shared, report_failed, report_stored};
use crate::crd::ConfluenceInstallation;
use crate::crd::conditions::reason;
use crate::oauth::atlassian::{AtlassianError, ClientCredentials};
use crate::store;
use crate::token_set::TokenSet;
use crate::validation::{self, InstallationPolicy};

/// Mints and stores a token when none is current; reports the stored one otherwise.
pub async fn ensure_token(
    shared: &Shared,
    cfi: &ConfluenceInstallation,
    policy: &InstallationPolicy,
    stored: Option<TokenSet>,
) -> Result<Action, ReconcileError> {
    let ctx = &shared.ctx;
    let now = ctx.clock.now();
    if let Some(tokens) = stored.filter(|t| t.expires_at > now) {
        return report_stored(shared, cfi, &tokens, &policy.token_secret_name).await;
    }
    if let Err(e) = validation::pinned_site_allowed(policy, &ctx.allowed_site_suffixes) {
        return report_failed(shared, cfi, reason::INVALID_SPEC, e.to_string()).await;
    }
    let namespace = cfi.namespace().unwrap_or_default();
    let client_secret = match store::client_secret(
        &ctx.client,
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
        client_secret,
    };
    let minted = async {
        let cloud_id = ctx.atlassian.tenant_info(&site_host).await?;
        let tokens = ctx.atlassian.client_credentials(&credentials).await?;
        let identity = match ctx.atlassian.me(&tokens.access_token).await {
            Ok(identity) => identity,
            Err(_) => ctx.atlassian.current_user(&tokens.access_token, &cloud_id).await?,
        };
        Ok::<_, AtlassianError>((cloud_id, tokens, identity))
    }
    .await;
    let (cloud_id, tokens, identity) = match minted {
        Ok(minted) => minted,
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
    let set = TokenSet {
        access_token: tokens.access_token.clone(),
        refresh_token: None,
        expires_at: tokens.expires_at(now),
        scopes: tokens.scopes(),
        cloud_id: cloud_id.clone(),
        site_url: format!("https://{site_host}"),
        account_id: identity.account_id.clone(),
        obtained_at: now,
        consented_at: now,
        installation: None,
    };
    store::write_tokens(
        &ctx.client,
        &ctx.keys,
        cfi,
        &set,
        &policy.token_secret_name,
        &ctx.atlassian.api_base_url(&cloud_id),
    )
    .await?;
    let account = identity.account_id.clone();
    store::update_status(&ctx.client, cfi, move |obj| {
        let status = &mut obj.status.get_or_insert_with(Default::default).credential;
        status.installed_by = Some(account.clone());
        status.last_refresh_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    })
    .await?;
    report_stored(shared, cfi, &set, &policy.token_secret_name).await
}
