//! One refresh of a stored grant: the token call of DESIGN.md step 4. The caller stores the
//! result (vault first) before anything else, because Atlassian has already retired the
//! refresh token that was sent.

use jiff::Timestamp;
use secrecy::SecretString;

use crate::oauth::atlassian::{AtlassianClient, AtlassianError, ClientCredentials};
use crate::token_set::TokenSet;

/// Why a stored grant could not be refreshed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The token set has no refresh token (client credentials mint instead).
    #[error("the stored grant has no refresh token")]
    NoRefreshToken,
    /// Atlassian refused or could not be reached.
    #[error(transparent)]
    Atlassian(#[from] AtlassianError),
}

/// Refreshes `current`: the new set carries the rotated refresh token (or keeps the old one if
/// Atlassian sent none), the new expiry, and the original consent time.
pub async fn refresh(
    atlassian: &AtlassianClient,
    credentials: &ClientCredentials,
    current: &TokenSet,
    now: Timestamp,
) -> Result<TokenSet, RefreshError> {
    let refresh_token: &SecretString = current.refresh_token.as_ref().ok_or(RefreshError::NoRefreshToken)?;
    let answer = atlassian.refresh(credentials, refresh_token).await?;
    let scopes = if answer.scope.is_empty() {
        current.scopes.clone()
    } else {
        answer.scopes()
    };
    Ok(TokenSet {
        access_token: answer.access_token,
        refresh_token: answer.refresh_token.or_else(|| current.refresh_token.clone()),
        expires_at: crate::oauth::atlassian::token_expiry(now, answer.expires_in),
        scopes,
        cloud_id: current.cloud_id.clone(),
        site_url: current.site_url.clone(),
        account_id: current.account_id.clone(),
        obtained_at: now,
        consented_at: current.consented_at,
        installation: current.installation.clone(),
    })
}
