//! The two custom resources (API group `confluence-auth.dev/v1alpha1`) and what they share.
//!
//! `///` comments on fields become the CRD descriptions `kubectl explain` shows.

pub mod conditions;
mod installation;
mod user_auth;

pub use installation::{ConfluenceInstallation, ConfluenceInstallationSpec, ConfluenceInstallationStatus, GrantType};
pub use user_auth::{ConfluenceUserAuth, ConfluenceUserAuthSpec, ConfluenceUserAuthStatus, InstallationRef};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "confluence-auth.dev";
/// The category `kubectl get confluence-auth` lists.
pub const CATEGORY: &str = "confluence-auth";
/// Default for `refreshBefore` and `healthCheckInterval`.
pub const DEFAULT_INTERVAL: &str = "15m";

/// Both CRDs, in the order `crd` prints them.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![ConfluenceInstallation::crd(), ConfluenceUserAuth::crd()]
        .into_iter()
        .map(unwrap_descriptions)
        .collect()
}

/// `///` comments wrap at 100 columns; `kubectl explain` re-wraps text itself, so a line
/// break inside a paragraph would show as a ragged break. Joins them (blank lines stay).
fn unwrap_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = text
                                .split("\n\n")
                                .map(|paragraph| paragraph.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                                .collect::<Vec<_>>()
                                .join("\n\n");
                        }
                        _ => walk(child),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// A key in a Secret of the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as the resource).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where the credential stands: `AwaitingAuthorization`, `Ready`, `Refreshing`, `Degraded`,
/// `Revoked` or `Failed` (the `PHASE` column of `kubectl get`; the conditions say why).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Phase {
    /// No usable credential yet: open `status.authorizationUrl` to consent.
    #[default]
    AwaitingAuthorization,
    /// A current access token is in the token Secret.
    Ready,
    /// A refresh is in flight.
    Refreshing,
    /// The credential still works but something needs attention (see conditions).
    Degraded,
    /// Atlassian refused the grant (`invalid_grant`): someone must consent again.
    Revoked,
    /// A configuration error stops the operator (see conditions for the fix).
    Failed,
}

/// Status shared by both kinds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// Summary of the credential's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The link to open in a browser to authorize (present while a consent is needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    /// SHA-256 (hex) of the nonce in `authorizationUrl`; the link is single use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_nonce_hash: Option<String>,
    /// When `authorizationUrl` stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_expires_at: Option<Time>,
    /// A callback that consumed the link and is completing the grant: only that flow may
    /// store a credential, and only while the object keeps its uid and generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_authorization: Option<PendingAuthorization>,
    /// Atlassian cloud id of the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_id: Option<String>,
    /// URL of the site, e.g. `https://acme.atlassian.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_url: Option<String>,
    /// Display name of the site, e.g. `acme`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_name: Option<String>,
    /// Atlassian account id of whoever consented (for client credentials: the service account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_by: Option<String>,
    /// Scopes Atlassian granted (can be fewer than requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_scopes: Option<Vec<String>>,
    /// When the access token in the token Secret expires (RFC 3339, the `EXPIRES` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_expires_at: Option<Time>,
    /// When the refresh token dies whatever happens (first consent + 365 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<Time>,
    /// When the access token was last refreshed successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
    /// When the operator plans the next refresh (ahead of `accessTokenExpiresAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
    /// When the credential was last checked against Atlassian (its accessible resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_check_time: Option<Time>,
    /// Name of the Secret holding the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The vault Secret's `metadata.resourceVersion` when the operator last wrote or read it.
    /// At another version someone else changed it, and the operator opens it again before
    /// planning from this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_secret_version: Option<String>,
    /// The token Secret's `metadata.resourceVersion` when the operator last wrote it or found it
    /// matching the vault. At another version someone else changed it, and the operator compares
    /// it with the vault (and restores it) before trusting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_version: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: `Ready`, `Authorized`, `Healthy`, `ReauthorizationDue` (and
    /// `InstallationReady` for user auths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The single flow allowed to store a grant, recorded when its callback consumed the link.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingAuthorization {
    /// SHA-256 (hex) of the consumed link's nonce.
    pub nonce_hash: String,
    /// `metadata.generation` when the link was consumed; a spec change aborts the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// After this the flow is abandoned and a new link is published.
    pub expires_at: Time,
}

/// `metav1.Condition` list keyed on `type`, as Kubernetes API conventions ask.
fn conditions_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "description": "Condition type: Ready, Authorized, Healthy, ReauthorizationDue or InstallationReady."},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Whether the condition holds: True, False or Unknown."},
                "reason": {"type": "string", "description": "CamelCase reason for the last transition."},
                "message": {"type": "string", "description": "Human-readable detail: what happened and what to do about it."},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When status last changed (not when the condition was last checked)."},
                "observedGeneration": {"type": "integer", "format": "int64", "description": "The metadata.generation the condition was set for."}
            }
        }
    })
}

/// One CRD as the YAML document checked in under `crds/` (starting with `---`).
pub fn render(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml_ng::to_string(crd)
        .unwrap_or_else(|e| unreachable!("a CRD built from Rust types always serializes: {e}"));
    format!("---\n{yaml}")
}

/// Both CRDs, as `confluence-auth-operator crd` prints them.
pub fn render_all() -> String {
    all().iter().map(render).collect()
}

/// The file name of a CRD under `crds/`: `<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.spec.names.plural)
}

/// Writes each CRD to `<dir>/<plural>.yaml`.
pub fn write_files(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in all() {
        std::fs::write(dir.join(file_name(&crd)), render(&crd))?;
    }
    Ok(())
}

/// What both kinds offer the code that stores and reports credentials.
pub trait CredentialResource:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + kube::core::object::HasStatus<Status: Serialize + PartialEq>
    + Clone
    + Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Which kind this is in flow paths.
    const FLOW_KIND: crate::oauth::state::ResourceKind;

    /// The shared part of the status, if there is a status.
    fn credential(&self) -> Option<&CredentialStatus>;

    /// The shared part of the status, created when missing.
    fn credential_mut(&mut self) -> &mut CredentialStatus;
}

impl CredentialResource for ConfluenceInstallation {
    const FLOW_KIND: crate::oauth::state::ResourceKind = crate::oauth::state::ResourceKind::Installation;

    fn credential(&self) -> Option<&CredentialStatus> {
        self.status.as_ref().map(|s| &s.credential)
    }

    fn credential_mut(&mut self) -> &mut CredentialStatus {
        &mut self.status.get_or_insert_with(Default::default).credential
    }
}

impl CredentialResource for ConfluenceUserAuth {
    const FLOW_KIND: crate::oauth::state::ResourceKind = crate::oauth::state::ResourceKind::User;

    fn credential(&self) -> Option<&CredentialStatus> {
        self.status.as_ref().map(|s| &s.credential)
    }

    fn credential_mut(&mut self) -> &mut CredentialStatus {
        &mut self.status.get_or_insert_with(Default::default).credential
    }
}
