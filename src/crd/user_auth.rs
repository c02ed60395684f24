//! `ConfluenceUserAuth` (short name `cfua`): one user authorizing inside an installation; it
//! yields that user's credential.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{CredentialStatus, installation::ConfluenceInstallationSpec};
use crate::validation::{messages, schema};

/// What one user authorizes: the installation, the application's user id, and optionally
/// narrower scopes, the expected Atlassian account and refresh timing.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "confluence-auth.dev",
    version = "v1alpha1",
    kind = "ConfluenceUserAuth",
    namespaced,
    shortname = "cfua",
    category = "confluence-auth",
    status = "ConfluenceUserAuthStatus",
    // READY first, as cert-manager does. Instants in the future print as RFC 3339 strings: a
    // `date` column is an age, and a real API server renders a future one as `<invalid>`.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".status.siteUrl"}"#,
    printcolumn = r#"{"name":"Account","type":"string","jsonPath":".status.displayName"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.accessTokenExpiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Installation","type":"string","jsonPath":".spec.installationRef.name","priority":1}"#,
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.userId","priority":1}"#,
    printcolumn = r#"{"name":"Account ID","type":"string","jsonPath":".status.accountId","priority":1}"#,
    printcolumn = r#"{"name":"Next Refresh","type":"string","jsonPath":".status.nextRefreshTime","priority":1}"#,
    printcolumn = r#"{"name":"Refresh Token Expires","type":"string","jsonPath":".status.refreshTokenExpiresAt","priority":1}"#,
    doc = "One user's Confluence Cloud authorization inside a ConfluenceInstallation."
)]
#[serde(rename_all = "camelCase")]
pub struct ConfluenceUserAuthSpec {
    /// The `ConfluenceInstallation` (same namespace) this user authorizes in. Immutable.
    #[x_kube(validation = Rule::new(schema::RULE_SAME_NAME).message(messages::INSTALLATION_REF_IMMUTABLE))]
    pub installation_ref: InstallationRef,
    /// The application's own identifier for this user, e.g. `user_123`.
    #[schemars(length(min = 1, max = 253))]
    pub user_id: String,
    /// A subset of the installation's scopes (default: the installation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::optional_scopes")]
    pub scopes: Option<Vec<String>>,
    /// When set, a grant by any other Atlassian account is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub expected_account_id: Option<String>,
    /// Refresh this long before expiry (default: the installation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[hms])+$"))]
    pub refresh_before: Option<String>,
    /// Health-check interval (default: the installation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+[hms])+$"))]
    pub health_check_interval: Option<String>,
    /// Name of the token Secret (default `<name>-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub secret_name: Option<String>,
}

/// Reference to a `ConfluenceInstallation` in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct InstallationRef {
    /// Name of the installation.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What the operator observed: the phase, the authorization link, the site and account, the
/// token's expiry and the conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfluenceUserAuthStatus {
    /// Credential state (see the fields' own descriptions).
    #[serde(flatten)]
    pub credential: CredentialStatus,
    /// Atlassian account id of the user who consented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Atlassian display name of the account that consented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The installation the credential was granted under (guards `installationRef` where the
    /// API server does not evaluate CEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_installation: Option<String>,
}

impl ConfluenceUserAuthSpec {
    /// The scopes to request: the spec's, else the installation's.
    pub fn effective_scopes<'a>(&'a self, installation: &'a ConfluenceInstallationSpec) -> &'a [String] {
        self.scopes.as_deref().unwrap_or(&installation.scopes)
    }
}

impl crate::controller::Stub for ConfluenceUserAuth {
    fn stub(metadata: kube::api::ObjectMeta) -> Self {
        Self {
            metadata,
            spec: ConfluenceUserAuthSpec {
                installation_ref: InstallationRef { name: String::new() },
                user_id: String::new(),
                scopes: None,
                expected_account_id: None,
                refresh_before: None,
                health_check_interval: None,
                secret_name: None,
            },
            status: None,
        }
    }
}
