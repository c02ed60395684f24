//! Watching a kind whose stored objects may not fit the Rust types.
//!
//! The CRD schema keeps a wrong type, an unknown enum value or a missing required field out on a
//! real server, but an object can still get past it (a server without the schema, a CRD edited
//! by hand, an older CRD). kube-runtime's typed watcher deserializes a whole list at once, so one
//! such object would stop every controller of its kind. Here the watch is of untyped objects,
//! each converted on its own: those that fit go on to the controller, one that does not is
//! dropped from it and reported in its own status (`Ready=False`, `InvalidSpec`, naming the field
//! and the fix) with an Event, like any other invalid spec.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Shared;
use crate::crd::conditions::{self, reason};
use crate::crd::{CredentialStatus, Phase};
use crate::events::transitions;

/// A kind that can stand in for an object that did not fit its type: the metadata alone, enough
/// for a store to forget the object.
pub trait Stub: Sized {
    /// An object with `metadata` and an empty spec (never reconciled).
    fn stub(metadata: kube::api::ObjectMeta) -> Self;
}

/// Why an object does not fit its type, as a condition message: the field, what is wrong, and
/// the fix. The offending value is never quoted (a secret pasted into the wrong field must not
/// reach a status or an Event).
pub fn problem(kind: &str, error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    let inner = error.inner().to_string();
    // serde_json appends " at line L column C" to some messages; it means nothing here.
    let inner = inner.split(" at line ").next().unwrap_or_default();
    let explain = |field: &str| format!("kubectl explain {} describes it", explain_path(kind, field));
    if let Some(missing) = inner.strip_prefix("missing field `").and_then(|s| s.strip_suffix('`')) {
        let field = if path == "." {
            missing.to_string()
        } else {
            format!("{path}.{missing}")
        };
        return format!("{field} is missing: set it ({})", explain(&field));
    }
    let field = if path == "." { "the object".to_string() } else { path };
    let expected = inner.split_once(", expected ").map(|(_, e)| e);
    let what = if let Some(rest) = inner.strip_prefix("invalid type: ") {
        let found = rest.split([',', '`', '"']).next().unwrap_or_default().trim();
        match expected {
            Some(e) => format!("has the wrong type ({found}, expected {e})"),
            None => format!("has the wrong type ({found})"),
        }
    } else if inner.starts_with("unknown variant") {
        format!(
            "has an unknown value (expected {})",
            expected.unwrap_or("another value")
        )
    } else {
        match expected {
            Some(e) => format!("has a value of the wrong form (expected {e})"),
            None => "has a value of the wrong form".to_string(),
        }
    };
    format!("{field} {what}: correct it ({})", explain(&field))
}

/// `kubectl explain` path of `field` (`spec.scopes[1]` → `confluenceinstallation.spec.scopes`).
fn explain_path(kind: &str, field: &str) -> String {
    let mut out = kind.to_lowercase();
    for part in field.split('.') {
        let name = part.split('[').next().unwrap_or_default();
        if !name.is_empty() && name != "the object" {
            out.push('.');
            out.push_str(name);
        }
    }
    out
}

/// Converts an untyped object to `K`, or says which field does not fit.
pub fn convert<K>(object: &DynamicObject) -> Result<K, String>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    // Nearly every object fits: the path of a misfit is tracked only to name it.
    K::deserialize(&value)
        .or_else(|_| serde_path_to_error::deserialize::<_, K>(value).map_err(|e| problem(&K::kind(&()), &e)))
}

/// A watch of `K` through untyped objects: objects that fit pass, one that does not is removed
/// from the typed view (a stub `Delete`) and, when `report` is given, reported on its status.
pub fn watch<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
    report: Option<Arc<Shared>>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Stub + Clone + Send + 'static,
{
    let resource = ApiResource::erase::<K>(&());
    watcher(api, config).filter_map(move |event| {
        let fitted = event.map(|event| fit::<K>(event, &resource, report.as_ref()));
        async move {
            match fitted {
                Ok(Some(event)) => Some(Ok(event)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            }
        }
    })
}

/// One untyped watch event as a typed one (`None`: nothing for the typed view).
fn fit<K>(
    event: watcher::Event<DynamicObject>,
    resource: &ApiResource,
    report: Option<&Arc<Shared>>,
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Stub,
{
    use watcher::Event as E;
    let typed = |object: &DynamicObject| match convert::<K>(object) {
        Ok(typed) => Some(typed),
        Err(message) => {
            if let Some(shared) = report {
                tokio::spawn(report_invalid(
                    shared.clone(),
                    resource.clone(),
                    object.clone(),
                    message,
                ));
            }
            None
        }
    };
    match event {
        E::Init => Some(E::Init),
        E::InitDone => Some(E::InitDone),
        E::InitApply(object) => typed(&object).map(E::InitApply),
        // A previously sound object that no longer fits is forgotten, so nothing acts on its
        // old spec.
        E::Apply(object) => Some(match typed(&object) {
            Some(typed) => E::Apply(typed),
            None => E::Delete(K::stub(object.metadata.clone())),
        }),
        E::Delete(object) => Some(E::Delete(
            convert::<K>(&object).unwrap_or_else(|_| K::stub(object.metadata.clone())),
        )),
    }
}

/// Writes `Ready=False`/`InvalidSpec` with `message` on an object that does not fit its type
/// (unless its status says so already), clears its link, and publishes the Event. Failures are
/// logged: the next change of the object tries again.
async fn report_invalid(shared: Arc<Shared>, resource: ApiResource, object: DynamicObject, message: String) {
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let generation = object.metadata.generation;
    // The status as far as it reads (a status that does not fit is rebuilt from nothing).
    let before: Option<CredentialStatus> = object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let mut after = before.clone().unwrap_or_default();
    let now = shared.ctx.clock.now();
    let changed = conditions::set_condition(
        &mut after.conditions,
        conditions::READY,
        false,
        reason::INVALID_SPEC,
        message.clone(),
        generation,
        now,
    );
    if !changed && after.phase == Some(Phase::Failed) && after.observed_generation == generation {
        return;
    }
    tracing::info!(kind = %resource.kind, namespace, name, problem = %message, "the object does not fit its type");
    let conditions: Vec<&Condition> = after.conditions.iter().collect();
    let patch = json!({"status": {
        "phase": Phase::Failed,
        "observedGeneration": generation,
        "conditions": conditions,
        "authorizationUrl": null,
        "authorizationNonceHash": null,
        "authorizationExpiresAt": null,
    }});
    let api: Api<DynamicObject> = Api::namespaced_with(shared.ctx.client.clone(), &namespace, &resource);
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(kind = %resource.kind, namespace, name, error = %e, "reporting an object that does not fit its type failed");
        return;
    }
    after.phase = Some(Phase::Failed);
    let reference = object.object_ref(&resource);
    for transition in transitions(before.as_ref(), &after) {
        shared.events.publish_reference(&reference, &transition).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ConfluenceInstallation;

    fn converted(spec: serde_json::Value) -> Result<ConfluenceInstallation, String> {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "confluence-auth.dev/v1alpha1", "kind": "ConfluenceInstallation",
            "metadata": {"name": "acme", "namespace": "team-a"}, "spec": spec}))
        .unwrap();
        convert::<ConfluenceInstallation>(&object)
    }

    fn sound() -> serde_json::Value {
        json!({"clientId": "c", "clientSecretRef": {"name": "app", "key": "k"}, "scopes": ["offline_access"]})
    }

    #[test]
    fn a_sound_object_converts() {
        assert_eq!(converted(sound()).unwrap().spec.client_id, "c");
    }

    #[test]
    fn a_missing_field_is_named_with_where_to_read_about_it() {
        let mut spec = sound();
        spec["clientSecretRef"].as_object_mut().unwrap().remove("key");
        assert_eq!(
            converted(spec).unwrap_err(),
            "spec.clientSecretRef.key is missing: set it (kubectl explain confluenceinstallation.spec.clientSecretRef.key describes it)"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_but_never_quoted() {
        let mut spec = sound();
        spec["clientSecretRef"] = json!("sk-pasted-secret");
        let message = converted(spec).unwrap_err();
        assert_eq!(
            message,
            "spec.clientSecretRef has the wrong type (string, expected struct SecretKeyRef): correct it (kubectl explain confluenceinstallation.spec.clientSecretRef describes it)"
        );
        let mut spec = sound();
        spec["scopes"] = json!(["offline_access", 7]);
        assert_eq!(
            converted(spec).unwrap_err(),
            "spec.scopes[1] has the wrong type (integer, expected a string): correct it (kubectl explain confluenceinstallation.spec.scopes describes it)"
        );
    }

    #[test]
    fn an_unknown_enum_value_lists_the_known_ones_without_echoing_it() {
        let mut spec = sound();
        spec["grant"] = json!("sk-pasted-secret");
        let message = converted(spec).unwrap_err();
        assert!(!message.contains("sk-pasted"), "{message}");
        assert_eq!(
            message,
            "spec.grant has an unknown value (expected `AuthorizationCode` or `ClientCredentials`): correct it (kubectl explain confluenceinstallation.spec.grant describes it)"
        );
    }
}
