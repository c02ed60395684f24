//! Writes and reads of the two Secrets (DESIGN.md section 2) and of status.
//!
//! Order on every new token set: the vault first (a rotated refresh token must never be lost),
//! then the token Secret, then status. Every write is a replace carrying the resourceVersion it
//! read (or a create), so a concurrent writer makes it fail with 409 rather than be overwritten.
//!
//! Ownership: the operator creates a Secret, or replaces one whose controller ownerReference is
//! the writing resource itself (same uid), and nothing else. A name taken by anything else is a
//! [`StoreError::SecretConflict`]: no write, whoever holds it keeps it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::crd::CredentialResource;
use crate::known::Known;
use crate::token_set::TokenSet;
use crate::validation::vault_secret_name;
use crate::vault::{Binding, KeyRing, VaultError};

/// Type of the vault Secret.
pub const VAULT_TYPE: &str = "confluence-auth.dev/vault";
/// Type of the token Secret.
pub const TOKEN_TYPE: &str = "confluence-auth.dev/access-token";
/// Type of an account-claim Secret (one Atlassian account per installation, see `claim`).
pub const CLAIM_TYPE: &str = "confluence-auth.dev/account-claim";
/// Key of the envelope in the vault Secret.
pub const ENVELOPE_KEY: &str = "envelope";
/// Label naming the kind of a Secret's owner (`ConfluenceInstallation`, `ConfluenceUserAuth`).
pub const OWNER_KIND_LABEL: &str = "confluence-auth.dev/owner-kind";
/// Value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "confluence-auth-operator";
/// Annotations on the vault Secret with the non-secret times of the token set it holds, so a
/// restarted operator plans every credential's next pass from the Secrets' metadata alone and
/// opens a vault only when something is due (`controller::lifecycle::settled`).
pub const OBTAINED_AT_ANNOTATION: &str = "confluence-auth.dev/obtained-at";
/// See [`OBTAINED_AT_ANNOTATION`].
pub const EXPIRES_AT_ANNOTATION: &str = "confluence-auth.dev/access-token-expires-at";
/// See [`OBTAINED_AT_ANNOTATION`].
pub const CONSENTED_AT_ANNOTATION: &str = "confluence-auth.dev/consented-at";
/// Annotation on the vault Secret naming the master key that sealed it (`KeyRing::primary_check`):
/// a vault whose key the ring no longer holds (a replaced or removed key) is opened, and reported,
/// at once rather than when its refresh comes due.
pub const SEALED_WITH_ANNOTATION: &str = "confluence-auth.dev/sealed-with";
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
    /// A Secret this resource would write exists and is not this resource's (another resource's,
    /// or created by someone else): it is left alone.
    #[error(
        "Secret {0:?} already exists and is not owned by this resource: choose another spec.secretName or resource name, or delete that Secret"
    )]
    SecretConflict(String),
    /// `spec.clientSecretRef` names a Secret the operator never reads as a client secret.
    #[error("{0}")]
    ClientSecretRefused(String),
}

impl StoreError {
    /// Bounded category for metrics and reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Vault(e) => e.category(),
            Self::Corrupt => "VaultUnreadable",
            Self::SecretConflict(_) => "SecretConflict",
            Self::ClientSecretRefused(_) => "ClientSecretRefused",
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
    Ok(read_vault(client, ring, owner).await?.map(|opened| opened.tokens))
}

/// A vault as read: the token set, and the resourceVersion of the vault Secret that held it.
#[derive(Debug)]
pub struct Opened {
    /// The decrypted token set.
    pub tokens: TokenSet,
    /// The vault Secret's resourceVersion (recorded in `status.vaultSecretVersion`).
    pub version: Option<String>,
}

/// Like [`read_tokens`], with the vault Secret's resourceVersion.
pub async fn read_vault<K: CredentialResource>(
    client: &Client,
    ring: &KeyRing,
    owner: &K,
) -> Result<Option<Opened>, StoreError> {
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
    let tokens = TokenSet::from_json(&json).map_err(|_| StoreError::Corrupt)?;
    Ok(Some(Opened {
        tokens,
        version: secret.metadata.resource_version,
    }))
}

/// What a [`write_tokens`] did to the two Secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// The vault Secret's write (its version is recorded in `status.vaultSecretVersion`).
    pub vault: Put,
    /// The token Secret's write (its version is recorded in `status.tokenSecretVersion`).
    pub token: Put,
}

/// What one Secret write did: the resourceVersion it replaced (`None`: it created the Secret),
/// and the one it left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Put {
    /// The version replaced.
    pub replaced: Option<String>,
    /// The version written.
    pub version: Option<String>,
}

/// Stores a new token set: vault, then token Secret.
pub async fn write_tokens<K: CredentialResource>(
    client: &Client,
    known: &Known,
    ring: &KeyRing,
    owner: &K,
    tokens: &TokenSet,
    token_secret_name: &str,
    api_base_url: &str,
) -> Result<Written, StoreError> {
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
    // Full precision: the plan made from these must equal the one made from the vault.
    let stamp = |t: Timestamp| t.to_string();
    let mut facts = BTreeMap::from([
        (OBTAINED_AT_ANNOTATION.to_string(), stamp(tokens.obtained_at)),
        (EXPIRES_AT_ANNOTATION.to_string(), stamp(tokens.expires_at)),
        (CONSENTED_AT_ANNOTATION.to_string(), stamp(tokens.consented_at)),
    ]);
    if let Some(check) = ring.primary_check() {
        facts.insert(SEALED_WITH_ANNOTATION.to_string(), check);
    }
    // The vault is written even when the token Secret's name turns out to be taken: a rotated
    // refresh token must never be lost. (A first grant checks both names before calling this.)
    let vault = put_secret(
        client,
        known,
        owner,
        &vault_secret_name(&name),
        (VAULT_TYPE, Some(facts)),
        vault,
    )
    .await?;
    let token = put_secret(
        client,
        known,
        owner,
        token_secret_name,
        (TOKEN_TYPE, None),
        token_secret_data(tokens, api_base_url),
    )
    .await?;
    Ok(Written { vault, token })
}

/// The planning facts a vault Secret's annotations state (see [`OBTAINED_AT_ANNOTATION`]):
/// (obtained, expires, consented). `None` for a vault written before they existed, edited, or
/// sealed with a key `ring` does not hold (see [`SEALED_WITH_ANNOTATION`]).
pub fn vault_facts(meta: &ObjectMeta, ring: &KeyRing) -> Option<(Timestamp, Timestamp, Timestamp)> {
    let annotations = meta.annotations.as_ref()?;
    if !annotations
        .get(SEALED_WITH_ANNOTATION)
        .is_some_and(|check| ring.holds(check))
    {
        return None;
    }
    let time = |key: &str| annotations.get(key)?.parse::<Timestamp>().ok();
    Some((
        time(OBTAINED_AT_ANNOTATION)?,
        time(EXPIRES_AT_ANNOTATION)?,
        time(CONSENTED_AT_ANNOTATION)?,
    ))
}

/// How a token Secret differed from what the vault says it must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSecretDrift {
    /// It was gone.
    Deleted,
    /// Its data (or type) was changed.
    Edited,
}

/// What a read of `owner`'s token Secret found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSecretCheck {
    /// It holds what the vault says, at this resourceVersion.
    Matches(Option<String>),
    /// The name is held by something `owner` does not control (reported as a
    /// `SecretConflict`, not drift).
    NotOurs,
    /// It differs from the vault.
    Drift(TokenSecretDrift),
}

/// Reads `owner`'s token Secret `name` and compares it with `data` (pods read only this Secret;
/// the vault is the source of truth).
pub async fn check_token_secret<K: CredentialResource>(
    client: &Client,
    owner: &K,
    name: &str,
    data: &BTreeMap<String, ByteString>,
) -> Result<TokenSecretCheck, StoreError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    Ok(match secrets.get_opt(name).await? {
        None => TokenSecretCheck::Drift(TokenSecretDrift::Deleted),
        Some(current) if !owned_by(&current.metadata, owner) => TokenSecretCheck::NotOurs,
        Some(current) if current.data.as_ref() == Some(data) && current.type_.as_deref() == Some(TOKEN_TYPE) => {
            TokenSecretCheck::Matches(current.metadata.resource_version)
        }
        Some(_) => TokenSecretCheck::Drift(TokenSecretDrift::Edited),
    })
}

/// Writes `owner`'s token Secret `name` with `data` (create, or replace one `owner` controls).
pub async fn write_token_secret<K: CredentialResource>(
    client: &Client,
    known: &Known,
    owner: &K,
    name: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<Put, StoreError> {
    put_secret(client, known, owner, name, (TOKEN_TYPE, None), data).await
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

/// Label keys copied from a credential onto its Secrets: the `--selector`'s keys, so that a
/// shard's Secret watch selects the Secrets of exactly its credentials. Only these keys: copying
/// every label would, for one, hand a GitOps tool's tracking label (`app.kubernetes.io/instance`)
/// to Secrets that tool then prunes. Process-wide because every Secret writer (controllers,
/// callback, account claims) reaches here with just a client, and a process runs one operator.
static OWNER_LABEL_KEYS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Sets the label keys [`labels`] copies from the owner (at start; empty: none).
pub fn copy_owner_labels(keys: Vec<String>) {
    *OWNER_LABEL_KEYS.write().unwrap_or_else(|e| e.into_inner()) = keys;
}

/// Labels on both Secrets: the operator's own, and the owner's labels under the keys set with
/// [`copy_owner_labels`] (the operator's own win).
pub fn labels<K: CredentialResource>(owner: &K) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let copied = OWNER_LABEL_KEYS.read().unwrap_or_else(|e| e.into_inner());
    for key in copied.iter() {
        if let Some(value) = owner.labels().get(key) {
            labels.insert(key.clone(), value.clone());
        }
    }
    labels.extend([
        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
        (OWNER_KIND_LABEL.to_string(), K::kind(&()).to_string()),
        ("confluence-auth.dev/owner-name".to_string(), owner.name_any()),
    ]);
    labels
}

/// True when the controller ownerReference in a Secret's `metadata` is `owner` itself (same uid).
pub fn owned_by<K: CredentialResource>(metadata: &ObjectMeta, owner: &K) -> bool {
    let uid = owner.uid();
    metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref() && r.kind == K::kind(&()))
}

/// Fails with [`StoreError::SecretConflict`] naming the first of `names` that exists and is not
/// `owner`'s; missing names are fine (they will be created). A name the owned-Secret cache shows
/// as `owner`'s is not read again.
pub async fn check_owned<K: CredentialResource>(
    client: &Client,
    known: &Known,
    owner: &K,
    names: &[&str],
) -> Result<(), StoreError> {
    let namespace = owner.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for name in names {
        if known
            .secret(&namespace, name)
            .is_some_and(|s| owned_by(&s.metadata, owner))
        {
            continue;
        }
        if let Some(secret) = secrets.get_opt(name).await?
            && !owned_by(&secret.metadata, owner)
        {
            return Err(StoreError::SecretConflict((*name).to_string()));
        }
    }
    Ok(())
}

/// Creates a Secret, or replaces the one `owner` already controls, optimistic on the
/// resourceVersion that showed its owner: the owned-Secret cache's on the first attempt (a name
/// the cache does not hold is created outright), a fresh read's after a conflict. Anything not
/// `owner`'s is a conflict.
async fn put_secret<K: CredentialResource>(
    client: &Client,
    known: &Known,
    owner: &K,
    name: &str,
    (type_, annotations): (&str, Option<BTreeMap<String, String>>),
    data: BTreeMap<String, ByteString>,
) -> Result<Put, StoreError> {
    let namespace = owner.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let existing = match known.secret(&namespace, name) {
            Some(cached) if attempt == 1 => Some(cached.metadata.clone()),
            None if attempt == 1 => None,
            _ => secrets.get_opt(name).await?.map(|s| s.metadata),
        };
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.clone()),
                labels: Some(labels(owner)),
                annotations: annotations.clone(),
                owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
                ..ObjectMeta::default()
            },
            type_: Some(type_.to_string()),
            data: Some(data.clone()),
            ..Secret::default()
        };
        let replaced = existing.as_ref().and_then(|m| m.resource_version.clone());
        let result = match existing {
            Some(current) if !owned_by(&current, owner) => {
                if attempt == 1 {
                    // The cache may be behind (the holder went): ask the API server.
                    continue;
                }
                return Err(StoreError::SecretConflict(name.to_string()));
            }
            Some(current) => {
                secret.metadata.resource_version = current.resource_version;
                secrets.replace(name, &PostParams::default(), &secret).await
            }
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match result {
            Ok(written) => {
                return Ok(Put {
                    replaced,
                    version: written.metadata.resource_version,
                });
            }
            // A concurrent writer, a create race, or a cache behind the API server (a 404: the
            // Secret it showed was deleted meanwhile): read again and re-check the owner.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) && attempt < CONFLICT_RETRIES => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Deletes `owner`'s Secrets named `names` (only those it controls; preconditioned on their
/// uid), e.g. to undo a grant whose flow turned out to be stale.
pub async fn delete_owned<K: CredentialResource>(client: &Client, owner: &K, names: &[&str]) -> Result<(), StoreError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    for name in names {
        let Some(secret) = secrets.get_opt(name).await? else {
            continue;
        };
        if !owned_by(&secret.metadata, owner) {
            continue;
        }
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: secret.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        match secrets.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies `change` to `obj` and replaces its status, optimistic on `obj`'s resourceVersion; on a
/// conflict (someone wrote since, or `obj` came from a cache behind the API server) it re-reads,
/// applies `change` again and retries. No write when `change` changes nothing.
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
        let cached = attempt == 1 && obj.resource_version().is_some();
        let mut current = if cached { obj.clone() } else { api.get(&name).await? };
        // `obj` is the version `change` starts from on the first attempt: compared as it is
        // (most passes change nothing, and serializing is the dearer comparison).
        let before = (!cached).then(|| status_as_written(&current));
        change(&mut current);
        let unchanged = match before {
            None => status_unchanged(obj, &current),
            Some(before) => status_as_written(&current) == before,
        };
        if unchanged {
            return Ok(current);
        }
        match api.replace_status(&name, &PostParams::default(), &current).await {
            Ok(updated) => return Ok(updated),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `after` writes the same status as `before`: equal, or different only below a second.
fn status_unchanged<K: CredentialResource>(before: &K, after: &K) -> bool {
    if before.status() == after.status() {
        return true;
    }
    // A phase or Secret version that moved is a change whatever the times say (every refresh
    // moves both versions): no need to serialize to see it.
    if let (Some(b), Some(a)) = (before.credential(), after.credential())
        && (b.phase != a.phase
            || b.vault_secret_version != a.vault_secret_version
            || b.token_secret_version != a.token_secret_version)
    {
        return false;
    }
    status_as_written(before) == status_as_written(after)
}

/// `obj`'s status as it would be sent: times to the second, so a change below a second (which
/// the API server would not keep) is no change. Only the status is compared: a status replace
/// writes nothing else.
fn status_as_written<K: CredentialResource>(obj: &K) -> Option<Vec<u8>> {
    serde_json::to_vec(&obj.status()).ok()
}

/// Like [`update_status`], but `change` may refuse: it runs on the freshly read object inside
/// the same optimistic (resourceVersion-preconditioned) replace, so its checks and its write
/// cannot interleave with another writer. `Ok(Err(e))` is a refusal: nothing was written.
pub async fn update_status_if<K: CredentialResource, E>(
    client: &Client,
    namespace: &str,
    name: &str,
    change: impl Fn(&mut K) -> Result<(), E>,
) -> Result<Result<K, E>, StoreError> {
    update_status_if_from(client, namespace, name, None, change).await
}

/// Like [`update_status_if`], starting from `start` (the object as this process last saw or
/// wrote it): the first attempt is preconditioned on its resourceVersion instead of a fresh
/// read, so a write in between is a conflict, after which `change` runs again on a fresh read
/// (as it does when it refuses `start`, which may be behind).
pub async fn update_status_if_from<K: CredentialResource, E>(
    client: &Client,
    namespace: &str,
    name: &str,
    start: Option<K>,
    change: impl Fn(&mut K) -> Result<(), E>,
) -> Result<Result<K, E>, StoreError> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut start = start.filter(|s| s.resource_version().is_some());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut current, fresh) = match start.take() {
            Some(start) => (start, false),
            None => (api.get(name).await?, true),
        };
        if let Err(refused) = change(&mut current) {
            // Only a fresh read's refusal is final: `start` may be behind.
            if fresh {
                return Ok(Err(refused));
            }
            continue;
        }
        match api.replace_status(name, &PostParams::default(), &current).await {
            Ok(updated) => return Ok(Ok(updated)),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < CONFLICT_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Label a referenced client-secret Secret must carry when `--require-client-secret-label` is on.
pub const CLIENT_SECRET_LABEL: &str = "confluence-auth.dev/client-secret";

/// Which Secrets the operator refuses to read as a client secret (DESIGN.md section 2,
/// SECURITY.md "confused deputy").
#[derive(Debug, Clone, Copy)]
pub struct ClientSecretPolicy<'a> {
    /// Namespace of the operator's keys Secret.
    pub keys_namespace: &'a str,
    /// Name of the operator's keys Secret.
    pub keys_secret: &'a str,
    /// Only Secrets labelled `confluence-auth.dev/client-secret: "true"` are read.
    pub require_label: bool,
}

impl ClientSecretPolicy<'_> {
    /// Why `secret` (in `namespace`) must not be read as a client secret, if it must not.
    pub fn refusal(&self, namespace: &str, secret: &Secret) -> Option<String> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let labels = secret.metadata.labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
        if namespace == self.keys_namespace && name == self.keys_secret {
            return Some(format!(
                "spec.clientSecretRef names Secret {name:?}, the operator's own master keys: it is never read as a client secret; point it at the Secret holding the Atlassian app's client secret"
            ));
        }
        let managed_type = matches!(secret.type_.as_deref(), Some(VAULT_TYPE | TOKEN_TYPE | CLAIM_TYPE));
        if managed_type || label("app.kubernetes.io/managed-by") == Some(MANAGER) {
            return Some(format!(
                "spec.clientSecretRef names Secret {name:?}, which the operator manages (a vault, token or claim Secret): it is never read as a client secret; point it at the Secret holding the Atlassian app's client secret"
            ));
        }
        if self.require_label && label(CLIENT_SECRET_LABEL) != Some("true") {
            return Some(format!(
                "spec.clientSecretRef names Secret {name:?}, which lacks the label {CLIENT_SECRET_LABEL}=true that this operator requires (--require-client-secret-label): label it to allow its use"
            ));
        }
        None
    }
}

/// A client secret as read.
pub struct ClientSecret {
    /// The secret.
    pub value: secrecy::SecretString,
    /// True when it came from [`Known`]'s recent reads rather than the API server just now: if
    /// Atlassian refuses it, forget it and read again before calling the app's credentials bad.
    pub cached: bool,
}

/// Reads the client secret named by `reference` (reusing a read of the last few seconds when
/// `known` is given); `Ok(None)` when the Secret or key is missing,
/// [`StoreError::ClientSecretRefused`] when `policy` forbids reading that Secret.
pub async fn client_secret(
    client: &Client,
    known: Option<&Known>,
    namespace: &str,
    reference: &crate::crd::SecretKeyRef,
    policy: &ClientSecretPolicy<'_>,
) -> Result<Option<ClientSecret>, StoreError> {
    let recent = known.and_then(|k| k.recent_client_secret(namespace, &reference.name));
    let cached = recent.is_some();
    let secret = match recent {
        Some(secret) => secret,
        None => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let Some(secret) = secrets.get_opt(&reference.name).await? else {
                return Ok(None);
            };
            if let Some(known) = known {
                known.remember_client_secret(namespace, &reference.name, secret.clone());
            }
            std::sync::Arc::new(secret)
        }
    };
    // The policy is applied to every use, cached or not.
    if let Some(why) = policy.refusal(namespace, &secret) {
        return Err(StoreError::ClientSecretRefused(why));
    }
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
    let from_string_data = || secret.string_data.as_ref().and_then(|d| d.get(&reference.key)).cloned();
    Ok(from_data
        .or_else(from_string_data)
        .filter(|s| !s.is_empty())
        .map(|value| ClientSecret {
            value: secrecy::SecretString::from(value),
            cached,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConfluenceUserAuth, Phase};

    fn user_auth() -> ConfluenceUserAuth {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "confluence-auth.dev/v1alpha1",
            "kind": "ConfluenceUserAuth",
            "metadata": {"name": "alice", "namespace": "team", "resourceVersion": "7"},
            "spec": {"installationRef": {"name": "acme"}, "userId": "alice"},
            "status": {"phase": "Ready", "lastRefreshTime": "2026-11-26T10:00:00Z"},
        }))
        .unwrap()
    }

    #[test]
    fn a_status_is_unchanged_when_equal_or_different_only_below_a_second() {
        let before = user_auth();
        assert!(status_unchanged(&before, &before.clone()));
        let mut sub_second = before.clone();
        let time = &mut sub_second.credential_mut().last_refresh_time;
        let t = time.as_ref().unwrap().0;
        *time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            t + jiff::SignedDuration::from_millis(400),
        ));
        assert_ne!(before.status, sub_second.status, "the typed statuses differ");
        assert!(
            status_unchanged(&before, &sub_second),
            "the API server would keep the same"
        );
    }

    #[test]
    fn a_status_is_changed_by_any_written_field() {
        let before = user_auth();
        let mut phase = before.clone();
        phase.credential_mut().phase = Some(Phase::Refreshing);
        assert!(!status_unchanged(&before, &phase));
        let mut version = before.clone();
        version.credential_mut().token_secret_version = Some("8".into());
        assert!(!status_unchanged(&before, &version));
        let mut later = before.clone();
        let time = &mut later.credential_mut().last_refresh_time;
        let t = time.as_ref().unwrap().0;
        *time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            t + jiff::SignedDuration::from_secs(1),
        ));
        assert!(!status_unchanged(&before, &later));
    }
}
