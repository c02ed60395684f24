//! One Atlassian account per installation (DESIGN.md section 4, `DuplicateAccount`), enforced
//! across every replica's webhook by the API server itself: before a user grant is stored, the
//! flow creates a claim Secret whose name is derived from (installation, account). A create is
//! atomic, so of two user auths binding one account at once exactly one gets the claim; the
//! other is refused. The claim is owned by its user auth, so deleting the user auth frees the
//! account (garbage collection), and a re-consent as another account releases the old claim.
//!
//! The claim holds no secret (no data at all); it is a Secret only because the operator already
//! has Secret rights in every watched namespace and nothing else there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::ConfluenceUserAuth;
use crate::store::{self, CLAIM_TYPE, StoreError};

/// Label naming the uid of the user auth holding a claim (`kubectl get secrets -l` finds its claims).
const CLAIM_OWNER_UID: &str = "confluence-auth.dev/claim-owner-uid";
const ATTEMPTS: usize = 5;

/// Name of the claim Secret of `account_id` in `installation`.
pub fn claim_name(installation: &str, account_id: &str) -> String {
    let digest = Sha256::digest(format!("{installation}\0{account_id}").as_bytes());
    format!("cfua-claim-{}", &hex::encode(digest)[..24])
}

/// How `cfua` came to hold a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// This call created it (a flow that then stores nothing releases it).
    Now,
    /// `cfua` held it already (an earlier grant for the same account).
    Before,
}

/// Claims `account_id` in `cfua`'s installation for `cfua`. `Ok(Err(holder))` names the user
/// auth that already holds it.
pub async fn claim(
    client: &Client,
    cfua: &ConfluenceUserAuth,
    account_id: &str,
) -> Result<Result<Claimed, String>, StoreError> {
    let namespace = cfua.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let users: Api<ConfluenceUserAuth> = Api::namespaced(client.clone(), &namespace);
    let name = claim_name(&cfua.spec.installation_ref.name, account_id);
    let mut labels = store::labels(cfua);
    labels.insert(CLAIM_OWNER_UID.to_string(), cfua.uid().unwrap_or_default());
    labels.insert(
        "confluence-auth.dev/installation".to_string(),
        cfua.spec.installation_ref.name.clone(),
    );
    let wanted = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels),
            owner_references: cfua.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some(CLAIM_TYPE.to_string()),
        data: Some(BTreeMap::new()),
        ..Secret::default()
    };
    for _ in 0..ATTEMPTS {
        match secrets.create(&PostParams::default(), &wanted).await {
            Ok(_) => return Ok(Ok(Claimed::Now)),
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = secrets.get_opt(&name).await? else {
            continue;
        };
        if store::owned_by(&existing.metadata, cfua) {
            return Ok(Ok(Claimed::Before));
        }
        // Held by another user auth: it keeps the account while it exists under that uid.
        let holder = existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true) && r.kind == "ConfluenceUserAuth")
            .cloned();
        if let Some(holder) = holder
            && let Some(other) = users.get_opt(&holder.name).await?
            && other.uid().as_deref() == Some(holder.uid.as_str())
        {
            return Ok(Err(holder.name));
        }
        if existing.metadata.owner_references.iter().flatten().next().is_none()
            || existing.type_.as_deref() != Some(CLAIM_TYPE)
        {
            // Not a claim of ours: never deleted, reported as a conflict.
            return Err(StoreError::SecretConflict(name));
        }
        // A stale claim whose user auth is gone (not yet garbage-collected): remove it exactly.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.metadata.uid.clone(),
                resource_version: existing.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match secrets.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::SecretConflict(name))
}

/// Releases `cfua`'s claim of `account_id` (a claim its consent made but did not use, or the
/// previous account's after a grant for another), so it keeps the account from no other user
/// auth. A claim `cfua` does not control is left alone.
pub async fn release(client: &Client, cfua: &ConfluenceUserAuth, account_id: &str) -> Result<(), StoreError> {
    let name = claim_name(&cfua.spec.installation_ref.name, account_id);
    store::delete_owned(client, cfua, &[&name]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_valid_object_names_and_separate_installations_and_accounts() {
        let a = claim_name("acme", "557058:aaaa");
        assert!(a.len() <= 63 && a.starts_with("cfua-claim-"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_eq!(a, claim_name("acme", "557058:aaaa"));
        assert_ne!(a, claim_name("globex", "557058:aaaa"));
        assert_ne!(a, claim_name("acme", "557058:bbbb"));
        // The separator keeps ("a", "bc") and ("ab", "c") apart.
        assert_ne!(claim_name("a", "bc"), claim_name("ab", "c"));
    }
}
