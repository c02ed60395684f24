//! `ConfluenceInstallation` (short name `cfi`): an Atlassian OAuth 2.0 (3LO) app installed into
//! one Confluence Cloud site; it yields the installation-level credential.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{CredentialStatus, DEFAULT_INTERVAL, SecretKeyRef};
use crate::validation::{messages, schema};

/// The Atlassian app and how its credential is obtained: grant type, client id and secret,
/// scopes, site and refresh timing.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "confluence-auth.dev",
    version = "v1alpha1",
    kind = "ConfluenceInstallation",
    namespaced,
    shortname = "cfi",
    category = "confluence-auth",
    status = "ConfluenceInstallationStatus",
    // READY first, as cert-manager does. Instants in the future print as RFC 3339 strings: a
    // `date` column is an age, and a real API server renders a future one as `<invalid>`.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".status.siteUrl"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.accessTokenExpiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Grant","type":"string","jsonPath":".spec.grant","priority":1}"#,
    printcolumn = r#"{"name":"Next Refresh","type":"string","jsonPath":".status.nextRefreshTime","priority":1}"#,
    printcolumn = r#"{"name":"Refresh Token Expires","type":"string","jsonPath":".status.refreshTokenExpiresAt","priority":1}"#,
    doc = "An Atlassian OAuth 2.0 (3LO) app installed into one Confluence Cloud site."
)]
#[x_kube(
    validation = Rule::new(schema::RULE_OFFLINE_ACCESS).message(messages::OFFLINE_ACCESS_REQUIRED),
    validation = Rule::new(schema::RULE_SITE_FOR_CLIENT_CREDENTIALS).message(messages::SITE_REQUIRED_FOR_CLIENT_CREDENTIALS)
)]
#[serde(rename_all = "camelCase")]
pub struct ConfluenceInstallationSpec {
    /// How the credential is obtained: `AuthorizationCode` (an admin consents in the browser)
    /// or `ClientCredentials` (an Atlassian service account; no browser).
    #[serde(default)]
    pub grant: GrantType,
    /// OAuth client id of the Atlassian app (or service account).
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// The Secret key (same namespace) holding the client secret.
    pub client_secret_ref: SecretKeyRef,
    /// Scopes to request. Must include `offline_access` for `AuthorizationCode`. Classic
    /// Confluence scopes, `read:me`, or granular `<action>:<object>:confluence` scopes.
    #[schemars(length(min = 1, max = 64), schema_with = "schema::scopes")]
    pub scopes: Vec<String>,
    /// The site, e.g. `acme.atlassian.net` or `https://acme.atlassian.net` (no port). Required
    /// for `ClientCredentials`; picks one site when a grant covers several. The operator only
    /// contacts sites under its allowed suffixes (default `atlassian.net`, `jira.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^(https://)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+/?$"),
        length(max = 253)
    )]
    pub site: Option<String>,
    /// When set, an admin grant by any other Atlassian account is refused (a link forwarded to
    /// someone else cannot bind their account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub expected_account_id: Option<String>,
    /// Refresh this long before the access token expires (`90s`, `15m`, `1h`).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+[hms])+$"))]
    pub refresh_before: String,
    /// How often the credential is checked against Atlassian.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+[hms])+$"))]
    pub health_check_interval: String,
    /// Name of the Secret pods mount for the access token (default `<name>-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub secret_name: Option<String>,
}

/// How an installation obtains its credential.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum GrantType {
    /// An admin consents in the browser (3LO with `offline_access`).
    #[default]
    AuthorizationCode,
    /// An Atlassian service account's client credentials; no browser, no refresh token.
    ClientCredentials,
}

/// What the operator observed: the phase, the authorization link, the site, the token's expiry
/// and the conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfluenceInstallationStatus {
    /// Credential state (see the fields' own descriptions).
    #[serde(flatten)]
    pub credential: CredentialStatus,
}

fn default_interval() -> String {
    DEFAULT_INTERVAL.to_string()
}

impl crate::controller::Stub for ConfluenceInstallation {
    fn stub(metadata: kube::api::ObjectMeta) -> Self {
        Self {
            metadata,
            spec: ConfluenceInstallationSpec {
                grant: GrantType::default(),
                client_id: String::new(),
                client_secret_ref: SecretKeyRef {
                    name: String::new(),
                    key: String::new(),
                },
                scopes: Vec::new(),
                site: None,
                expected_account_id: None,
                refresh_before: String::new(),
                health_check_interval: String::new(),
                secret_name: None,
            },
            status: None,
        }
    }
}
