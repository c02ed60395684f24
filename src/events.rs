//! Kubernetes Events on every transition of a credential (DESIGN.md section 4).
//!
//! Transitions are found by comparing the status before and after a write ([`transitions`], a
//! pure function), so an Event is published once per change, never on a rewrite. Reasons are
//! bounded CamelCase words; notes are sentences built from condition messages, which never hold a
//! secret. A routine refresh is not a transition (it is a metric and `status.lastRefreshTime`).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::crd::conditions::{self, reason};
use crate::crd::{CredentialResource, CredentialStatus, Phase};

/// `reportingController` of every Event.
pub const CONTROLLER: &str = "confluence-auth-operator";

/// Event reasons (besides the condition reasons they mirror).
pub mod reasons {
    /// A grant was obtained (first consent or a re-consent).
    pub const AUTHORIZED: &str = "Authorized";
    /// Atlassian answered `invalid_grant` (confirmed against the vault): consent again.
    pub const REVOKED: &str = "Revoked";
    /// The token no longer reaches the site.
    pub const SITE_ACCESS_LOST: &str = "SiteAccessLost";
    /// Recovery of [`SITE_ACCESS_LOST`].
    pub const SITE_ACCESS_RESTORED: &str = "SiteAccessRestored";
    /// The refresh token reaches its 365-day limit within 14 days.
    pub const REAUTHORIZATION_DUE: &str = "ReauthorizationDue";
    /// Recovery of [`REAUTHORIZATION_DUE`]: a new consent moved the limit.
    pub const REAUTHORIZED: &str = "Reauthorized";
    /// Refreshing failed and the access token expires before the next retry.
    pub const REFRESH_FAILED: &str = "RefreshFailed";
    /// Recovery of [`REFRESH_FAILED`].
    pub const REFRESH_RECOVERED: &str = "RefreshRecovered";
    /// The spec breaks a rule.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Recovery of [`INVALID_SPEC`].
    pub const SPEC_VALID: &str = "SpecValid";
    /// The vault Secret cannot be decrypted.
    pub const VAULT_UNREADABLE: &str = "VaultUnreadable";
    /// Recovery of [`VAULT_UNREADABLE`].
    pub const VAULT_READABLE: &str = "VaultReadable";
    /// The vault Secret of a stored grant was deleted.
    pub const VAULT_MISSING: &str = "VaultMissing";
    /// Recovery of [`VAULT_MISSING`]: a new consent stored a new vault.
    pub const VAULT_RESTORED: &str = "VaultRestored";
    /// The token Secret was deleted or its data edited; it was rewritten from the vault.
    pub const TOKEN_SECRET_RESTORED: &str = "TokenSecretRestored";
    /// A user auth's installation is missing or not Ready.
    pub const INSTALLATION_NOT_READY: &str = "InstallationNotReady";
    /// Recovery of [`INSTALLATION_NOT_READY`].
    pub const INSTALLATION_READY: &str = "InstallationReady";
    /// A Secret name is taken by an object this resource does not own.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// Recovery of [`SECRET_CONFLICT`].
    pub const SECRET_CONFLICT_RESOLVED: &str = "SecretConflictResolved";
    /// Atlassian rejected the client id or secret.
    pub const INVALID_CLIENT_CREDENTIALS: &str = "InvalidClientCredentials";
    /// Recovery of [`INVALID_CLIENT_CREDENTIALS`].
    pub const CLIENT_CREDENTIALS_ACCEPTED: &str = "ClientCredentialsAccepted";
}

/// One Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Warning for a problem, Normal for a recovery.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// A sentence.
    pub note: String,
}

impl Transition {
    fn new(warning: bool, reason: &'static str, message: &str) -> Self {
        Self {
            warning,
            reason,
            note: sentence(message),
        }
    }
}

/// `Ready` reasons that are problems, with the Event reasons of the problem and its recovery.
const READY_PROBLEMS: &[(&str, &str, &str)] = &[
    (reason::INVALID_SPEC, reasons::INVALID_SPEC, reasons::SPEC_VALID),
    (
        reason::VAULT_UNREADABLE,
        reasons::VAULT_UNREADABLE,
        reasons::VAULT_READABLE,
    ),
    (reason::VAULT_MISSING, reasons::VAULT_MISSING, reasons::VAULT_RESTORED),
    (
        reason::REFRESH_FAILED,
        reasons::REFRESH_FAILED,
        reasons::REFRESH_RECOVERED,
    ),
    (
        reason::SECRET_CONFLICT,
        reasons::SECRET_CONFLICT,
        reasons::SECRET_CONFLICT_RESOLVED,
    ),
    (
        reason::INVALID_CLIENT_CREDENTIALS,
        reasons::INVALID_CLIENT_CREDENTIALS,
        reasons::CLIENT_CREDENTIALS_ACCEPTED,
    ),
];

/// The Events a status change deserves (pure).
pub fn transitions(before: Option<&CredentialStatus>, after: &CredentialStatus) -> Vec<Transition> {
    let empty = CredentialStatus::default();
    let before = before.unwrap_or(&empty);
    let mut out = Vec::new();
    let cond = |s: &CredentialStatus, t: &str| conditions::find(&s.conditions, t).cloned();

    if after.phase == Some(Phase::Revoked) && before.phase != Some(Phase::Revoked) {
        let message = cond(after, conditions::READY).map(|c| c.message).unwrap_or_default();
        out.push(Transition::new(true, reasons::REVOKED, &message));
    }

    let (ready_before, ready_after) = (cond(before, conditions::READY), cond(after, conditions::READY));
    let reason_of = |c: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
        c.as_ref().map(|c| c.reason.clone()).unwrap_or_default()
    };
    let (rb, ra) = (reason_of(&ready_before), reason_of(&ready_after));
    if rb != ra {
        for (condition_reason, problem, recovery) in READY_PROBLEMS {
            if ra == *condition_reason {
                let message = ready_after.as_ref().map(|c| c.message.as_str()).unwrap_or_default();
                out.push(Transition::new(true, problem, message));
            } else if rb == *condition_reason {
                let message = ready_after.as_ref().map(|c| c.message.as_str()).unwrap_or_default();
                out.push(Transition::new(false, recovery, message));
            }
        }
    }

    let flip = |t: &str| {
        let b = cond(before, t);
        let a = cond(after, t)?;
        let was = b.as_ref().map(|c| c.status.as_str());
        (was != Some(a.status.as_str())).then_some((b, a))
    };
    if let Some((b, a)) = flip(conditions::HEALTHY) {
        if a.status == "False" && a.reason == reason::SITE_ACCESS_LOST {
            out.push(Transition::new(true, reasons::SITE_ACCESS_LOST, &a.message));
        } else if a.status == "True" && b.is_some_and(|b| b.reason == reason::SITE_ACCESS_LOST) {
            out.push(Transition::new(false, reasons::SITE_ACCESS_RESTORED, &a.message));
        }
    }
    if let Some((b, a)) = flip(conditions::REAUTHORIZATION_DUE) {
        if a.status == "True" {
            out.push(Transition::new(true, reasons::REAUTHORIZATION_DUE, &a.message));
        } else if b.is_some_and(|b| b.status == "True") {
            out.push(Transition::new(false, reasons::REAUTHORIZED, &a.message));
        }
    }
    if let Some((b, a)) = flip(conditions::INSTALLATION_READY) {
        if a.status == "False" {
            out.push(Transition::new(true, reasons::INSTALLATION_NOT_READY, &a.message));
        } else if b.is_some() {
            out.push(Transition::new(false, reasons::INSTALLATION_READY, &a.message));
        }
    }
    out
}

/// Makes a condition message an Event note: a capitalized sentence with a full stop.
pub fn sentence(message: &str) -> String {
    let message = message.trim();
    let mut chars = message.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    // Kubernetes caps notes at 1 kB.
    if out.len() > 1000 {
        let mut end = 1000;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// Publishes Events about the operator's resources.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// A publisher for this replica (`instance` disambiguates replicas).
    pub fn new(client: kube::Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_string(),
            instance: Some(instance.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes one transition about `obj`; a failure is logged, never fatal.
    pub async fn publish<K: CredentialResource>(&self, obj: &K, transition: &Transition) {
        self.publish_reference(&obj.object_ref(&()), transition).await;
    }

    /// Publishes one transition about the object `reference` points at (for an object that
    /// could not be read as its type); a failure is logged, never fatal.
    pub async fn publish_reference(&self, reference: &ObjectReference, transition: &Transition) {
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.to_string(),
            note: Some(transition.note.clone()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(reason = transition.reason, error = %e, "publishing an Event failed");
        }
    }

    /// Publishes every transition between two statuses.
    pub async fn publish_changes<K: CredentialResource>(
        &self,
        obj: &K,
        before: Option<&CredentialStatus>,
        after: &CredentialStatus,
    ) {
        for transition in transitions(before, after) {
            tracing::info!(kind = %K::kind(&()), name = %kube::ResourceExt::name_any(obj), reason = transition.reason, note = %transition.note, "transition");
            self.publish(obj, &transition).await;
        }
    }

    /// A `SecretConflict` Warning: `secret` is taken by an object this resource does not own.
    pub async fn secret_conflict<K: CredentialResource>(&self, obj: &K, secret: &str) {
        let note = format!(
            "Secret {secret:?} exists and is not owned by this resource, so it was not overwritten: delete or rename it, or set spec.secretName to a free name"
        );
        self.publish(obj, &Transition::new(true, reasons::SECRET_CONFLICT, &note))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;

    fn with(conds: &[(&str, bool, &str)], phase: Option<Phase>) -> CredentialStatus {
        let mut status = CredentialStatus {
            phase,
            ..Default::default()
        };
        for (t, s, r) in conds {
            conditions::set_condition(
                &mut status.conditions,
                t,
                *s,
                r,
                "the token was refused",
                Some(1),
                Timestamp::UNIX_EPOCH,
            );
        }
        status
    }

    fn reasons_of(list: Vec<Transition>) -> Vec<(&'static str, bool)> {
        list.into_iter().map(|t| (t.reason, t.warning)).collect()
    }

    #[test]
    fn a_revocation_is_one_warning() {
        let before = with(&[(conditions::READY, true, reason::TOKEN_VALID)], Some(Phase::Ready));
        let after = with(
            &[(conditions::READY, false, reason::GRANT_REVOKED)],
            Some(Phase::Revoked),
        );
        assert_eq!(
            reasons_of(transitions(Some(&before), &after)),
            [(reasons::REVOKED, true)]
        );
        assert!(transitions(Some(&after), &after).is_empty(), "no Event on a rewrite");
    }

    #[test]
    fn site_loss_and_its_recovery() {
        let ok = with(
            &[(conditions::HEALTHY, true, reason::HEALTH_CHECK_PASSED)],
            Some(Phase::Ready),
        );
        let lost = with(
            &[(conditions::HEALTHY, false, reason::SITE_ACCESS_LOST)],
            Some(Phase::Degraded),
        );
        assert_eq!(
            reasons_of(transitions(Some(&ok), &lost)),
            [(reasons::SITE_ACCESS_LOST, true)]
        );
        assert_eq!(
            reasons_of(transitions(Some(&lost), &ok)),
            [(reasons::SITE_ACCESS_RESTORED, false)]
        );
        // The first Healthy=True (no earlier condition) is not a recovery.
        assert!(transitions(None, &ok).is_empty());
    }

    #[test]
    fn reauthorization_due_and_reauthorized() {
        let current = with(
            &[(conditions::REAUTHORIZATION_DUE, false, reason::REFRESH_TOKEN_CURRENT)],
            None,
        );
        let due = with(
            &[(conditions::REAUTHORIZATION_DUE, true, reason::REFRESH_TOKEN_EXPIRING)],
            None,
        );
        assert!(transitions(None, &current).is_empty());
        assert_eq!(
            reasons_of(transitions(Some(&current), &due)),
            [(reasons::REAUTHORIZATION_DUE, true)]
        );
        assert_eq!(
            reasons_of(transitions(Some(&due), &current)),
            [(reasons::REAUTHORIZED, false)]
        );
    }

    #[rstest::rstest]
    #[case(reason::INVALID_SPEC, reasons::INVALID_SPEC, reasons::SPEC_VALID)]
    #[case(reason::VAULT_UNREADABLE, reasons::VAULT_UNREADABLE, reasons::VAULT_READABLE)]
    #[case(reason::REFRESH_FAILED, reasons::REFRESH_FAILED, reasons::REFRESH_RECOVERED)]
    #[case(reason::SECRET_CONFLICT, reasons::SECRET_CONFLICT, reasons::SECRET_CONFLICT_RESOLVED)]
    fn ready_problems_and_recoveries(
        #[case] condition_reason: &str,
        #[case] problem: &'static str,
        #[case] recovery: &'static str,
    ) {
        let ok = with(&[(conditions::READY, true, reason::TOKEN_VALID)], Some(Phase::Ready));
        let bad = with(&[(conditions::READY, false, condition_reason)], Some(Phase::Failed));
        assert_eq!(reasons_of(transitions(Some(&ok), &bad)), [(problem, true)]);
        assert_eq!(reasons_of(transitions(Some(&bad), &ok)), [(recovery, false)]);
        assert_eq!(reasons_of(transitions(None, &bad)), [(problem, true)]);
    }

    #[test]
    fn installation_readiness_flips() {
        let ready = with(
            &[(conditions::INSTALLATION_READY, true, reason::INSTALLATION_READY)],
            None,
        );
        let not = with(
            &[(conditions::INSTALLATION_READY, false, reason::INSTALLATION_MISSING)],
            None,
        );
        assert!(transitions(None, &ready).is_empty());
        assert_eq!(
            reasons_of(transitions(Some(&ready), &not)),
            [(reasons::INSTALLATION_NOT_READY, true)]
        );
        assert_eq!(
            reasons_of(transitions(Some(&not), &ready)),
            [(reasons::INSTALLATION_READY, false)]
        );
    }

    #[rstest::rstest]
    #[case("the token was refused", "The token was refused.")]
    #[case("Done.", "Done.")]
    #[case("  ", "")]
    fn notes_are_sentences(#[case] message: &str, #[case] note: &str) {
        assert_eq!(sentence(message), note);
    }
}
