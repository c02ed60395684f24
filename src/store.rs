//! Writes and reads of the two Secrets (DESIGN.md section 2) and of status.
//!
//! Order on every new token set: the vault first (a rotated refresh token must never be lost),
//! then the token Secret, then status. Every write is a replace carrying the resourceVersion it
//! read (or a create), so a concurrent writer makes it fail with 409 rather than be overwritten.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::crd::CredentialResource;
use crate::token_set::TokenSet;
use crate::validation::vault_secret_name;
use crate::vault::{Binding, KeyRing, VaultError};

/// Type of the vault Secret.
pub const VAULT_TYPE: &str = "confluence-auth.dev/vault";
/// Type of the token Secret.
pub const TOKEN_TYPE: &str = "confluence-auth.dev/access-token";
/// Key of the envelope in the vault Secret.
pub const ENVELOPE_KEY: &str = "envelope";
/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "confluence-auth-operator";
const CONFLICT_RETRIES: usize = 5;

/// A failed read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API server refused or failed the request.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The vault envelope could not be sealed or opened.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The vault Secret exists but holds no readable token set.
    #[error("the vault Secret holds no readable token set")]
    Corrupt,
}

impl StoreError {
    /// Bounded category for metrics and reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Vault(e) => e.category(),
            Self::Corrupt => "VaultUnreadable",
        }
    }

    /// True when a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kube(_))
    }
}

/// The vault binding (AAD + tenant) of a resource.
pub fn binding<K: CredentialResource>(owner: &K) -> (String, String, String, String) {
    (
        owner.namespace().unwrap_or_default(),
        K::kind(&()).to_string(),
        owner.name_any(),
        owner.uid().unwrap_or_default(),
    )
}

/// Reads and decrypts the token set of `owner`; `Ok(None)` when there is no vault yet.
pub async fn read_tokens<K: CredentialResource>(
    client: &Client,
    ring: &KeyRing,
    owner: &K,
) -> Result<Option<TokenSet>, StoreError> {
    let (namespace, kind, name, uid) = binding(owner);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(&vault_secret_name(&name)).await? else {
        return Ok(None);
    };
    let envelope = secret
        .data
        .as_ref()
        .and_then(|d| d.get(ENVELOPE_KEY))
        .ok_or(StoreError::Corrupt)?;
    let json = ring.open(
        &Binding {
            namespace: &namespace,
            kind: &kind,
            name: &name,
            uid: &uid,
        },
        &envelope.0,
    )?;
    TokenSet::from_json(&json).map(Some).map_err(|_| StoreError::Corrupt)
}

/// Stores a new token set: vault, then token Secret.
pub async fn write_tokens<K: CredentialResource>(
    client: &Client,
    ring: &KeyRing,
    owner: &K,
    tokens: &TokenSet,
    token_secret_name: &str,
    api_base_url: &str,
) -> Result<(), StoreError> {
    let (namespace, kind, name, uid) = binding(owner);
    let envelope = ring.seal(
        &Binding {
            namespace: &namespace,
            kind: &kind,
            name: &name,
            uid: &uid,
        },
        &tokens.to_json(),
    )?;
    let vault = BTreeMap::from([(ENVELOPE_KEY.to_string(), ByteString(envelope))]);
    put_secret(client, owner, &vault_secret_name(&name), VAULT_TYPE, vault).await?;
    put_secret(
        client,
        owner,
        token_secret_name,
        TOKEN_TYPE,
        token_secret_data(tokens, api_base_url),
    )
    .await?;
    Ok(())
}

/// The token Secret's data: what pods read. Never a refresh token.
pub fn token_secret_data(tokens: &TokenSet, api_base_url: &str) -> BTreeMap<String, ByteString> {
    use secrecy::ExposeSecret;
    let text = |s: &str| ByteString(s.as_bytes().to_vec());
    BTreeMap::from([
        ("access_token".to_string(), text(tokens.access_token.expose_secret())),
        ("token_type".to_string(), text("Bearer")),
        (
            "expires_at".to_string(),
            text(&tokens.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        ),
        ("cloud_id".to_string(), text(&tokens.cloud_id)),
        ("site_url".to_string(), text(&tokens.site_url)),
        ("api_base_url".to_string(), text(api_base_url)),
        ("scopes".to_string(), text(&tokens.scopes.join(" "))),
        ("account_id".to_string(), text(&tokens.account_id)),
    ])
}

/// Labels on both Secrets.
pub fn labels<K: CredentialResource>(owner: &K) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
        ("confluence-auth.dev/owner-kind".to_string(), K::kind(&()).to_string()),
        ("confluence-auth.dev/owner-name".to_string(), owner.name_any()),
    ])
}

/// Creates or replaces an owned Secret, optimistic on resourceVersion.
async fn put_secret<K: CredentialResource>(
    client: &Client,
    owner: &K,
    name: &str,
    type_: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<(), StoreError> {
    let namespace = owner.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let existing = secrets.get_opt(name).await?;
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.clone()),
                labels: Some(labels(owner)),
                owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
                ..ObjectMeta::default()
            },
            type_: Some(type_.to_string()),
            data: Some(data.clone()),
            ..Secret::default()
        };
        let result = match existing {
            Some(current) => {
                secret.metadata.resource_version = current.metadata.resource_version;
                secrets.replace(name, &PostParams::default(), &secret).await
            }
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match result {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if (status.code == 409) && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Re-reads `obj`, applies `change` to it, and replaces its status (retrying on 409).
pub async fn update_status<K: CredentialResource>(
    client: &Client,
    obj: &K,
    change: impl Fn(&mut K),
) -> Result<K, StoreError> {
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let name = obj.name_any();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut current = api.get(&name).await?;
        let before = serde_json::to_value(&current).ok();
        change(&mut current);
        if serde_json::to_value(&current).ok() == before {
            return Ok(current);
        }
        match api.replace_status(&name, &PostParams::default(), &current).await {
            Ok(updated) => return Ok(updated),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the client secret named by `reference`; `Ok(None)` when the Secret or key is missing.
pub async fn client_secret(
    client: &Client,
    namespace: &str,
    reference: &crate::crd::SecretKeyRef,
) -> Result<Option<secrecy::SecretString>, StoreError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(None);
    };
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
    let from_string_data = || secret.string_data.as_ref().and_then(|d| d.get(&reference.key)).cloned();
    Ok(from_data
        .or_else(from_string_data)
        .filter(|s| !s.is_empty())
        .map(secrecy::SecretString::from))
}
