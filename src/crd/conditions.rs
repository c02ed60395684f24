//! Condition types, reason constants and the one function that writes a condition.
//!
//! Conditions use the standard `metav1.Condition` shape. `lastTransitionTime` moves only when a
//! condition's status flips, so `kubectl wait` and dashboards see real transitions, not rewrites.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The credential can be used: a current access token is in the token Secret.
pub const READY: &str = "Ready";
/// A grant exists (someone consented, or the client credentials work).
pub const AUTHORIZED: &str = "Authorized";
/// The last health check reached the site with the current token.
pub const HEALTHY: &str = "Healthy";
/// The refresh token dies within 14 days: someone must consent again.
pub const REAUTHORIZATION_DUE: &str = "ReauthorizationDue";
/// (User auths only) the referenced installation exists and is Ready.
pub const INSTALLATION_READY: &str = "InstallationReady";

/// Reasons, documented once; each is a bounded `CamelCase` word usable as an Event reason.
pub mod reason {
    /// The spec breaks a validation rule; the message names the field and the fix.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Waiting for someone to open `status.authorizationUrl` and consent.
    pub const AWAITING_CONSENT: &str = "AwaitingConsent";
    /// A token set was obtained and stored.
    pub const AUTHORIZED: &str = "Authorized";
    /// The access token is current.
    pub const TOKEN_VALID: &str = "TokenValid";
    /// The vault envelope could not be decrypted (tampered, moved, or its key is gone).
    pub const VAULT_UNREADABLE: &str = "VaultUnreadable";
    /// The vault Secret of a stored grant is gone (deleted): the refresh token with it, so
    /// someone must consent again.
    pub const VAULT_MISSING: &str = "VaultMissing";
    /// The client id or client secret was rejected by Atlassian (a configuration error).
    pub const INVALID_CLIENT_CREDENTIALS: &str = "InvalidClientCredentials";
    /// The client secret Secret or key named by `clientSecretRef` is missing.
    pub const CLIENT_SECRET_MISSING: &str = "ClientSecretMissing";
    /// Atlassian answered `invalid_grant`: the grant is dead and needs a new consent.
    pub const GRANT_REVOKED: &str = "GrantRevoked";
    /// The token no longer reaches the installation's site.
    pub const SITE_ACCESS_LOST: &str = "SiteAccessLost";
    /// The grant covers several sites and `spec.site` does not pick one.
    pub const SITE_AMBIGUOUS: &str = "SiteAmbiguous";
    /// The grant does not cover the requested site.
    pub const SITE_NOT_GRANTED: &str = "SiteNotGranted";
    /// The refresh token reaches its 365-day limit soon.
    pub const REFRESH_TOKEN_EXPIRING: &str = "RefreshTokenExpiring";
    /// The refresh token is far from its limit.
    pub const REFRESH_TOKEN_CURRENT: &str = "RefreshTokenCurrent";
    /// The referenced installation does not exist.
    pub const INSTALLATION_MISSING: &str = "InstallationMissing";
    /// The referenced installation exists but is not Ready.
    pub const INSTALLATION_NOT_READY: &str = "InstallationNotReady";
    /// The referenced installation is Ready.
    pub const INSTALLATION_READY: &str = "InstallationReady";
    /// Another user auth of the installation already holds this Atlassian account's grant.
    pub const DUPLICATE_ACCOUNT: &str = "DuplicateAccount";
    /// The consenting Atlassian account is not `spec.expectedAccountId`.
    pub const UNEXPECTED_ACCOUNT: &str = "UnexpectedAccount";
    /// Atlassian could not be reached or answered 429/5xx; the operator retries.
    pub const ATLASSIAN_UNAVAILABLE: &str = "AtlassianUnavailable";
    /// A Secret this resource would write exists and belongs to something else.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// `spec.clientSecretRef` names a Secret the operator must not read as a client secret.
    pub const CLIENT_SECRET_REFUSED: &str = "ClientSecretRefused";
    /// Refreshing keeps failing and the access token expires before the next retry.
    pub const REFRESH_FAILED: &str = "RefreshFailed";
    /// The last health check reached the site with the current token.
    pub const HEALTH_CHECK_PASSED: &str = "HealthCheckPassed";
    /// A fresh grant proved the site reachable (counts as a health check).
    pub const FRESH_GRANT: &str = "FreshGrant";
    /// The refresh token passed its 365-day limit: someone must consent again.
    pub const REFRESH_TOKEN_EXPIRED: &str = "RefreshTokenExpired";
}

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` unless the status flips.
///
/// Returns true when anything visible changed (status, reason, message or generation), so the
/// caller can skip a status write that would change nothing.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        let flipped = existing.status != status;
        let changed = flipped
            || existing.reason != reason
            || existing.message != message
            || existing.observed_generation != observed_generation;
        if flipped {
            existing.last_transition_time = Time(now);
        }
        existing.status = status;
        existing.reason = reason.to_string();
        existing.message = message;
        existing.observed_generation = observed_generation;
        return changed;
    }
    conditions.push(Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time: Time(now),
    });
    true
}

/// True when [`set_condition`] with these values would change nothing (status, reason,
/// message and generation as given), so the caller need not even prepare a write.
pub fn is_current(
    conditions: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> bool {
    find(conditions, type_).is_some_and(|c| {
        c.status == if status { "True" } else { "False" }
            && c.reason == reason
            && c.message == message
            && c.observed_generation == observed_generation
    })
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when condition `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let mut conds = Vec::new();
        assert!(set_condition(&mut conds, READY, false, "A", "waiting", Some(1), at(10)));
        assert!(set_condition(
            &mut conds,
            READY,
            false,
            "B",
            "still waiting",
            Some(1),
            at(20)
        ));
        assert_eq!(conds[0].last_transition_time, Time(at(10)));
        assert_eq!(conds[0].reason, "B");
        assert!(set_condition(&mut conds, READY, true, "C", "ok", Some(1), at(30)));
        assert_eq!(conds[0].last_transition_time, Time(at(30)));
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn rewriting_the_same_condition_reports_no_change() {
        let mut conds = Vec::new();
        set_condition(&mut conds, HEALTHY, true, "Ok", "fine", Some(2), at(1));
        assert!(!set_condition(&mut conds, HEALTHY, true, "Ok", "fine", Some(2), at(5)));
        assert!(is_current(&conds, HEALTHY, true, "Ok", "fine", Some(2)));
        for (status, reason, message, generation) in [
            (false, "Ok", "fine", 2),
            (true, "No", "fine", 2),
            (true, "Ok", "bad", 2),
            (true, "Ok", "fine", 3),
        ] {
            assert!(!is_current(&conds, HEALTHY, status, reason, message, Some(generation)));
        }
        assert!(!is_current(&conds, READY, true, "Ok", "fine", Some(2)));
        assert!(set_condition(&mut conds, HEALTHY, true, "Ok", "fine", Some(3), at(5)));
        assert!(is_current(&conds, HEALTHY, true, "Ok", "fine", Some(3)));
        assert!(is_true(&conds, HEALTHY));
        assert!(!is_true(&conds, READY));
    }
}
