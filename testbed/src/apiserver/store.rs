//! Objects, the cluster-wide resourceVersion, the bounded event history and the semantics of
//! every write (Kubernetes API concepts: <https://kubernetes.io/docs/reference/using-api/api-concepts/>).
//!
//! Everything happens under one lock, so a write and its event are atomic and watchers see
//! events in resourceVersion order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::resources::{self, Resource};
use super::schema;
use super::select::{LabelSelector, field_matches};

/// (group, plural): one kind of object, whatever the version.
pub type Key = (String, String);

/// A change, as watches stream it.
#[derive(Debug, Clone)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Which resource.
    pub key: Key,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub type_: &'static str,
    /// The object after the change (before it, for deletions, with the new resourceVersion).
    pub object: Value,
    /// For `MODIFIED`: the object before the change, so that a watch with a selector reports an
    /// object entering it as `ADDED` and one leaving it as `DELETED`, as a real server does.
    pub previous: Option<Value>,
}

/// One page of a list ([`Store::list_page`]).
#[derive(Debug, Clone)]
pub struct Page {
    /// The objects.
    pub items: Vec<Value>,
    /// The list's resourceVersion.
    pub rv: u64,
    /// The key of the last object, when more follow (the `continue` point).
    pub next: Option<(String, String)>,
    /// How many matching objects follow.
    pub remaining: usize,
}

/// A refusal with a Kubernetes `Status` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`, …
    pub reason: &'static str,
    /// Human text.
    pub message: String,
    /// `details` of the Status.
    pub details: Value,
}

impl ApiError {
    /// The `Status` body.
    pub fn status(&self) -> Value {
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }

    fn details(resource: &Resource, name: &str) -> Value {
        json!({"name": name, "group": resource.group, "kind": resource.plural})
    }

    /// 404 for an object.
    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", resource.qualified()),
            details: Self::details(resource, name),
        }
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: Value::Null,
        }
    }

    /// 422 Invalid for a field.
    pub fn invalid(resource: &Resource, name: &str, field: &str, message: &str) -> Self {
        let mut details = Self::details(resource, name);
        details["kind"] = json!(resource.kind);
        details["causes"] = json!([{"reason": "FieldValueInvalid", "message": message, "field": field}]);
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {field}: {message}", resource.kind),
            details,
        }
    }

    /// 410 Expired for a watch or list from a compacted resourceVersion (`oldest` is the
    /// oldest one still kept, as the real message names it).
    pub fn expired(rv: u64, oldest: u64) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {rv} ({oldest})"),
            details: Value::Null,
        }
    }
}

/// Deletion propagation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete dependents after the owner (the default).
    Background,
    /// Delete dependents first; the owner waits with the `foregroundDeletion` finalizer.
    Foreground,
    /// Leave dependents, removing their reference to the owner.
    Orphan,
}

struct Inner {
    rv: u64,
    resources: Vec<Resource>,
    objects: HashMap<Key, BTreeMap<(String, String), Value>>,
    history: VecDeque<(Instant, Arc<Event>)>,
    /// The newest resourceVersion no longer in `history` (a watch from below it gets 410).
    compacted: u64,
    history_limit: usize,
    /// Events older than this are dropped, as etcd compaction drops them.
    history_window: Duration,
    /// Next Service cluster IP (10.96.0.0/12, as a kubeadm cluster allocates).
    next_cluster_ip: u32,
    /// Whether CRD schemas (OpenAPI and CEL) refuse invalid custom resources.
    enforce_schemas: bool,
}

/// The object store.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

/// A watch's starting point: what to send first, and the live feed after it.
pub struct WatchStart {
    /// Events to send before the live ones.
    pub backlog: Vec<Arc<Event>>,
    /// The live feed (skip events at or below `from`).
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The resourceVersion the backlog brings the watcher to.
    pub from: u64,
}

impl Store {
    /// A store with the built-in kinds and the `default` and `kube-system` namespaces. Its
    /// watch history starts after them, as a real server's watch cache starts at its start:
    /// a watch from an older resourceVersion is 410 Gone.
    pub fn new(history_limit: usize, history_window: Duration) -> Self {
        let (events, _) = broadcast::channel(4096);
        let store = Self {
            inner: Mutex::new(Inner {
                rv: 0,
                resources: resources::builtins(),
                objects: HashMap::new(),
                history: VecDeque::new(),
                compacted: 0,
                history_limit: history_limit.max(1),
                history_window,
                next_cluster_ip: 1,
                enforce_schemas: true,
            }),
            events,
        };
        let ns = store
            .resource("", "v1", "namespaces")
            .unwrap_or_else(|| unreachable!("namespaces is built in"));
        for name in ["default", "kube-system"] {
            let _ = store.create(
                &ns,
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            );
        }
        let mut inner = store.lock();
        inner.history.clear();
        inner.compacted = inner.rv;
        drop(inner);
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes how many events are kept for watches (older starting points get 410).
    pub fn set_history_limit(&self, limit: usize) {
        let mut inner = self.lock();
        inner.history_limit = limit.max(1);
        trim(&mut inner);
    }

    /// Turns CRD schema enforcement on or off (off: invalid custom resources are stored, as
    /// if they came from before the schema).
    pub fn set_enforce_schemas(&self, enforce: bool) {
        self.lock().enforce_schemas = enforce;
    }

    /// Changes how long events are kept for watches (older starting points get 410).
    pub fn set_history_window(&self, window: Duration) {
        let mut inner = self.lock();
        inner.history_window = window;
        trim(&mut inner);
    }

    /// Current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Every served resource.
    pub fn resources(&self) -> Vec<Resource> {
        self.lock().resources.clone()
    }

    /// A served resource by group, version and plural.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.lock()
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// How many objects are stored.
    pub fn object_count(&self) -> usize {
        self.lock().objects.values().map(BTreeMap::len).sum()
    }

    /// Reads one object.
    pub fn get(&self, resource: &Resource, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let inner = self.lock();
        let object = inner
            .objects
            .get(&key(resource))
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())));
        object
            .map(|o| with_version(o, resource))
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Lists objects (one namespace or all) matching the selectors; returns the list's resourceVersion.
    pub fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: Option<&str>,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let page = self.list_page(resource, namespace, labels, fields, None, None)?;
        Ok((page.items, page.rv))
    }

    /// One page of a list: at most `limit` matching objects after the key `after` (in
    /// namespace/name order), as `limit`/`continue` ask. Later pages show objects as they are
    /// then, not as of the first page (a real server reads them at the first page's revision);
    /// a watch from the first page's resourceVersion brings a client to the same state.
    pub fn list_page(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: Option<&str>,
        after: Option<&(String, String)>,
        limit: Option<usize>,
    ) -> Result<Page, ApiError> {
        let inner = self.lock();
        let mut page = Page {
            items: Vec::new(),
            rv: inner.rv,
            next: None,
            remaining: 0,
        };
        let Some(objects) = inner.objects.get(&key(resource)) else {
            return Ok(page);
        };
        let range = match after {
            Some(after) => {
                objects.range::<(String, String), _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => objects.range::<(String, String), _>(..),
        };
        for (id, object) in range {
            if namespace.is_some_and(|want| want != id.0) || !labels.matches(object) {
                continue;
            }
            if let Some(fields) = fields
                && !field_matches(fields, object).map_err(ApiError::bad_request)?
            {
                continue;
            }
            if limit.is_some_and(|limit| page.items.len() >= limit) {
                page.remaining += 1;
                continue;
            }
            page.items.push(with_version(object, resource));
            page.next = Some(id.clone());
        }
        if page.remaining == 0 {
            page.next = None;
        }
        Ok(page)
    }

    /// Creates an object.
    pub fn create(&self, resource: &Resource, namespace: &str, mut object: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        if !object.is_object() || !object["metadata"].is_object() && !object["metadata"].is_null() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        let name = match (
            object["metadata"]["name"].as_str(),
            object["metadata"]["generateName"].as_str(),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", &random_hex(3)[..5]),
            _ => {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    "metadata.name",
                    "name or generateName is required",
                ));
            }
        };
        if !is_dns_subdomain(&name) {
            return Err(ApiError::invalid(
                resource,
                &name,
                "metadata.name",
                &format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        if resource.namespaced {
            check_namespace(&inner, namespace)?;
            check_not_terminating(&inner, resource, namespace, &name)?;
        }
        if is_core_events(resource) {
            check_event(resource, namespace, &name, &object)?;
        }
        let namespace = if resource.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        if inner
            .objects
            .get(&key(resource))
            .is_some_and(|m| m.contains_key(&(namespace.clone(), name.clone())))
        {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", resource.qualified()),
                details: ApiError::details(resource, &name),
            });
        }
        normalize(resource, &mut object);
        let metadata = object["metadata"]
            .as_object_mut()
            .unwrap_or_else(|| unreachable!("normalize makes metadata an object"));
        metadata.insert("name".into(), json!(name));
        metadata.remove("generateName");
        if resource.namespaced {
            metadata.insert("namespace".into(), json!(namespace));
        } else {
            metadata.remove("namespace");
        }
        metadata.insert("uid".into(), json!(uuid()));
        metadata.insert("creationTimestamp".into(), json!(now()));
        metadata.remove("deletionTimestamp");
        if resource.tracks_generation() {
            metadata.insert("generation".into(), json!(1));
        }
        if resource.status_subresource && resource.custom {
            // The status subresource owns status: a create cannot set it.
            object.as_object_mut().map(|o| o.remove("status"));
        }
        if resource.plural == "namespaces" {
            // What the real server adds to every namespace.
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        if resource.group.is_empty() && resource.plural == "services" {
            default_service(&mut inner, &mut object, None);
        }
        if resource.plural == "deployments" {
            default_deployment(&mut object);
        }
        if resource.plural == "customresourcedefinitions" {
            register_crd(&mut inner, &object);
            object["status"] = crd_status(&object);
        }
        schema::default(resource, &mut object);
        if inner.enforce_schemas {
            schema::validate(resource, &object, None, false)?;
        }
        Ok(commit(
            &mut inner,
            &self.events,
            resource,
            &namespace,
            &name,
            Some(object),
            "ADDED",
        ))
    }

    /// Replaces an object (`PUT`), or its status with `status_only`.
    pub fn update(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        object: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        update_locked(&mut inner, &self.events, resource, namespace, name, object, status_only)
    }

    /// Applies `change` to the current object and stores the result like an update; with
    /// `create_missing` (server-side apply) an absent object is created from `change(empty)`.
    pub fn patch(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        status_only: bool,
        create_missing: bool,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let namespace_key = if resource.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        let current = inner
            .objects
            .get(&key(resource))
            .and_then(|m| m.get(&(namespace_key.clone(), name.to_string())))
            .cloned();
        match current {
            Some(object) => {
                let mut object = with_version(&object, resource);
                change(&mut object)?;
                update_locked(&mut inner, &self.events, resource, namespace, name, object, status_only)
            }
            None if create_missing => {
                let mut object =
                    json!({"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": {"name": name}});
                change(&mut object)?;
                object["metadata"]["name"] = json!(name);
                drop(inner);
                self.create(resource, namespace, object)
            }
            None => Err(ApiError::not_found(resource, name)),
        }
    }

    /// Deletes an object: finalizers make it wait with a `deletionTimestamp`; dependents
    /// follow the propagation policy.
    pub fn delete(
        &self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        delete_locked(&mut inner, &self.events, resource, namespace, name, propagation)
    }

    /// Runs the namespace controller once for `namespace`; `true` once it is gone.
    pub fn finalize_namespace(&self, namespace: &str) -> bool {
        let mut inner = self.lock();
        finalize_namespace_locked(&mut inner, &self.events, namespace)
    }

    /// Where a watch from `rv` starts (410 when history no longer reaches back that far).
    pub fn watch_from(
        &self,
        resource: &Resource,
        rv: Option<u64>,
        initial_events: bool,
    ) -> Result<WatchStart, ApiError> {
        let mut inner = self.lock();
        trim(&mut inner);
        let inner = inner;
        let live = self.events.subscribe();
        let k = key(resource);
        let current = || -> Vec<Arc<Event>> {
            inner
                .objects
                .get(&k)
                .map(|m| {
                    m.values()
                        .map(|o| {
                            Arc::new(Event {
                                rv: inner.rv,
                                key: k.clone(),
                                type_: "ADDED",
                                object: with_version(o, resource),
                                previous: None,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let backlog = match rv {
            _ if initial_events => current(),
            None | Some(0) => current(),
            Some(rv) if rv < inner.compacted => return Err(ApiError::expired(rv, inner.compacted + 1)),
            Some(rv) => inner
                .history
                .iter()
                .map(|(_, e)| e)
                .filter(|e| e.rv > rv && e.key == k)
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            backlog,
            live,
            from: inner.rv,
        })
    }
}

fn update_locked(
    inner: &mut Inner,
    events: &broadcast::Sender<Arc<Event>>,
    resource: &Resource,
    namespace: &str,
    name: &str,
    mut object: Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    let namespace = if resource.namespaced {
        namespace.to_string()
    } else {
        String::new()
    };
    let Some(old) = inner
        .objects
        .get(&key(resource))
        .and_then(|m| m.get(&(namespace.clone(), name.to_string())))
        .cloned()
    else {
        return Err(ApiError::not_found(resource, name));
    };
    let sent_rv = object["metadata"]["resourceVersion"].as_str().map(str::to_string);
    // A patch carries the current resourceVersion unless it set one itself: either way a
    // version other than the stored one is a stale write.
    if sent_rv
        .filter(|s| !s.is_empty())
        .is_some_and(|sent| Some(sent.as_str()) != old["metadata"]["resourceVersion"].as_str())
    {
        return Err(ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.qualified()
            ),
            details: ApiError::details(resource, name),
        });
    }
    if object["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            object["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    normalize(resource, &mut object);
    let mut new = if status_only {
        let mut new = old.clone();
        new["status"] = object.get("status").cloned().unwrap_or(Value::Null);
        if new["status"].is_null() {
            new.as_object_mut().map(|o| o.remove("status"));
        }
        new
    } else {
        if resource.status_subresource {
            match old.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    object.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
        // Identity and server-set fields stay as they were.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match old["metadata"].get(field) {
                Some(v) => object["metadata"][field] = v.clone(),
                None => {
                    object["metadata"].as_object_mut().map(|m| m.remove(field));
                }
            }
        }
        object
    };
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if resource.group.is_empty() && resource.plural == "services" && !status_only {
        default_service(inner, &mut new, Some(&old));
    }
    if resource.plural == "deployments" && !status_only {
        default_deployment(&mut new);
    }
    if resource.plural == "namespaces" && !status_only {
        // Labels and spec a namespace cannot lose.
        new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        new["spec"] = old["spec"].clone();
    }
    if resource.tracks_generation() && spec_of(&new) != spec_of(&old) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        new["metadata"]["generation"] = json!(generation);
    }
    if resource.plural == "customresourcedefinitions" && !status_only {
        register_crd(inner, &new);
        new["status"] = crd_status(&new);
    }
    schema::default(resource, &mut new);
    if inner.enforce_schemas {
        schema::validate(resource, &new, Some(&old), status_only)?;
    }
    if new == old {
        return Ok(with_version(&old, resource));
    }
    let finalizers_gone = new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
    // A namespace waits for the namespace controller (its spec.finalizers), not for this.
    if !new["metadata"]["deletionTimestamp"].is_null() && finalizers_gone && resource.plural != "namespaces" {
        let deleted = commit(inner, events, resource, &namespace, name, None, "DELETED");
        collect_garbage(inner, events, &deleted, Propagation::Background);
        return Ok(deleted);
    }
    Ok(commit(inner, events, resource, &namespace, name, Some(new), "MODIFIED"))
}

fn delete_locked(
    inner: &mut Inner,
    events: &broadcast::Sender<Arc<Event>>,
    resource: &Resource,
    namespace: &str,
    name: &str,
    propagation: Propagation,
) -> Result<Value, ApiError> {
    let namespace = if resource.namespaced {
        namespace.to_string()
    } else {
        String::new()
    };
    let Some(mut object) = inner
        .objects
        .get(&key(resource))
        .and_then(|m| m.get(&(namespace.clone(), name.to_string())))
        .cloned()
    else {
        return Err(ApiError::not_found(resource, name));
    };
    if resource.group.is_empty() && resource.plural == "namespaces" {
        // The namespace controller's work: Terminating now, contents and then the namespace
        // later (see `finalize_namespace`).
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["status"]["phase"] = json!("Terminating");
            return Ok(commit(
                inner,
                events,
                resource,
                &namespace,
                name,
                Some(object),
                "MODIFIED",
            ));
        }
        return Ok(with_version(&object, resource));
    }
    if propagation == Propagation::Foreground {
        // Dependents first, then the owner (the API returns the owner as it waits).
        let mut waiting = object.clone();
        waiting["metadata"]["deletionTimestamp"] = json!(now());
        add_finalizer(&mut waiting, "foregroundDeletion");
        let shown = with_version(&waiting, resource);
        collect_garbage(inner, events, &object, Propagation::Foreground);
        if object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            object["metadata"]["deletionTimestamp"] = json!(now());
            commit(inner, events, resource, &namespace, name, Some(object), "MODIFIED");
        } else {
            commit(inner, events, resource, &namespace, name, None, "DELETED");
        }
        return Ok(shown);
    }
    if object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Ok(commit(
                inner,
                events,
                resource,
                &namespace,
                name,
                Some(object),
                "MODIFIED",
            ));
        }
        return Ok(with_version(&object, resource));
    }
    if resource.plural == "customresourcedefinitions" {
        unregister_crd(inner, events, &object);
    }
    let deleted = commit(inner, events, resource, &namespace, name, None, "DELETED");
    collect_garbage(inner, events, &deleted, propagation);
    Ok(deleted)
}

/// Deletes (or orphans) the dependents of a deleted owner, as the garbage collector does.
fn collect_garbage(inner: &mut Inner, events: &broadcast::Sender<Arc<Event>>, owner: &Value, propagation: Propagation) {
    let Some(uid) = owner["metadata"]["uid"].as_str().map(str::to_string) else {
        return;
    };
    let mut dependents = Vec::new();
    for (k, objects) in &inner.objects {
        for ((ns, name), object) in objects {
            let refs = object["metadata"]["ownerReferences"].as_array();
            if refs.is_some_and(|r| r.iter().any(|o| o["uid"] == uid.as_str())) {
                dependents.push((k.clone(), ns.clone(), name.clone()));
            }
        }
    }
    for (k, ns, name) in dependents {
        let Some(resource) = inner
            .resources
            .iter()
            .find(|r| (r.group.clone(), r.plural.clone()) == k)
            .cloned()
        else {
            continue;
        };
        if propagation == Propagation::Orphan {
            if let Some(mut object) = inner
                .objects
                .get(&k)
                .and_then(|m| m.get(&(ns.clone(), name.clone())))
                .cloned()
            {
                if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|o| o["uid"] != uid.as_str());
                }
                commit(inner, events, &resource, &ns, &name, Some(object), "MODIFIED");
            }
        } else {
            let _ = delete_locked(inner, events, &resource, &ns, &name, Propagation::Background);
        }
    }
}

/// One pass of the namespace controller over a Terminating namespace: deletes what is in it
/// (objects with finalizers wait for them), then, once it is empty, the namespace. Returns
/// `true` when the namespace is gone (or was never Terminating).
fn finalize_namespace_locked(inner: &mut Inner, events: &broadcast::Sender<Arc<Event>>, namespace: &str) -> bool {
    let ns_key = (String::new(), "namespaces".to_string());
    let Some(ns) = inner
        .objects
        .get(&ns_key)
        .and_then(|m| m.get(&(String::new(), namespace.to_string())))
        .cloned()
    else {
        return true;
    };
    if ns["metadata"]["deletionTimestamp"].is_null() {
        return true;
    }
    let resources: Vec<Resource> = inner.resources.iter().filter(|r| r.namespaced).cloned().collect();
    let mut remaining = 0;
    for resource in &resources {
        let names: Vec<String> = inner
            .objects
            .get(&key(resource))
            .map(|m| {
                m.keys()
                    .filter(|(ns, _)| ns == namespace)
                    .map(|(_, n)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            let _ = delete_locked(inner, events, resource, namespace, &name, Propagation::Background);
            let still_there = inner
                .objects
                .get(&key(resource))
                .is_some_and(|m| m.contains_key(&(namespace.to_string(), name.clone())));
            remaining += usize::from(still_there);
        }
    }
    let held = ns["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if remaining > 0 || held {
        return false;
    }
    let Some(resource) = inner
        .resources
        .iter()
        .find(|r| r.group.is_empty() && r.plural == "namespaces")
        .cloned()
    else {
        return true;
    };
    let deleted = commit(inner, events, &resource, "", namespace, None, "DELETED");
    collect_garbage(inner, events, &deleted, Propagation::Background);
    true
}

/// Stores (or removes) an object under a new resourceVersion and publishes the event.
fn commit(
    inner: &mut Inner,
    events: &broadcast::Sender<Arc<Event>>,
    resource: &Resource,
    namespace: &str,
    name: &str,
    object: Option<Value>,
    type_: &'static str,
) -> Value {
    inner.rv += 1;
    let rv = inner.rv;
    let k = key(resource);
    let id = (namespace.to_string(), name.to_string());
    let mut previous = None;
    let stored = match object {
        Some(mut object) => {
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            previous = inner.objects.entry(k.clone()).or_default().insert(id, object.clone());
            object
        }
        None => {
            let mut object = inner
                .objects
                .get_mut(&k)
                .and_then(|m| m.remove(&id))
                .unwrap_or(Value::Null);
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            object
        }
    };
    let shown = with_version(&stored, resource);
    let event = Arc::new(Event {
        rv,
        key: k,
        type_,
        object: shown.clone(),
        previous: previous
            .filter(|_| type_ == "MODIFIED")
            .map(|p| with_version(&p, resource)),
    });
    inner.history.push_back((Instant::now(), event.clone()));
    trim(inner);
    let _ = events.send(event);
    shown
}

/// Drops what a real server no longer has: beyond the count limit (the watch cache's capacity)
/// or older than the window (etcd compaction).
fn trim(inner: &mut Inner) {
    let now = Instant::now();
    while let Some((at, event)) = inner.history.front() {
        if inner.history.len() <= inner.history_limit && now.duration_since(*at) <= inner.history_window {
            break;
        }
        inner.compacted = event.rv;
        inner.history.pop_front();
    }
}

fn register_crd(inner: &mut Inner, crd: &Value) {
    for resource in Resource::from_crd(crd) {
        inner
            .resources
            .retain(|r| !(r.group == resource.group && r.plural == resource.plural && r.version == resource.version));
        inner.resources.push(resource);
    }
}

fn unregister_crd(inner: &mut Inner, events: &broadcast::Sender<Arc<Event>>, crd: &Value) {
    let served = Resource::from_crd(crd);
    for resource in &served {
        let ids: Vec<(String, String)> = inner
            .objects
            .get(&key(resource))
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for (ns, name) in ids {
            commit(inner, events, resource, &ns, &name, None, "DELETED");
        }
    }
    inner
        .resources
        .retain(|r| !served.iter().any(|s| s.group == r.group && s.plural == r.plural));
}

fn crd_status(crd: &Value) -> Value {
    let t = now();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": crd["spec"]["versions"].as_array().map(|v| v.iter().filter(|v| v["storage"].as_bool().unwrap_or(false)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t}
        ]
    })
}

/// A namespace being deleted takes nothing new (403, as the real server answers).
fn check_not_terminating(inner: &Inner, resource: &Resource, namespace: &str, name: &str) -> Result<(), ApiError> {
    let terminating = inner
        .objects
        .get(&(String::new(), "namespaces".to_string()))
        .and_then(|m| m.get(&(String::new(), namespace.to_string())))
        .is_some_and(|ns| !ns["metadata"]["deletionTimestamp"].is_null());
    if !terminating {
        return Ok(());
    }
    Err(ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
            resource.qualified()
        ),
        details: json!({"name": name, "group": resource.group, "kind": resource.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {namespace} is being terminated"), "field": "metadata.namespace"}]}),
    })
}

/// The core Event rule kubectl users meet: `involvedObject.namespace` matches the Event's.
fn check_event(resource: &Resource, namespace: &str, name: &str, event: &Value) -> Result<(), ApiError> {
    let involved = event["involvedObject"]["namespace"].as_str().unwrap_or("");
    let ok = if involved.is_empty() {
        namespace.is_empty() || namespace == "default"
    } else {
        involved == namespace
    };
    if ok {
        return Ok(());
    }
    let mut error = ApiError::invalid(
        resource,
        name,
        "involvedObject.namespace",
        &format!("Invalid value: \"{involved}\": does not match event.namespace"),
    );
    if let Some(details) = error.details.as_object_mut() {
        details.remove("group");
    }
    Err(error)
}

/// What the Service registry fills in: a cluster IP (kept across updates), type, ports' protocol
/// and target port, the single-stack IPv4 family.
fn default_service(inner: &mut Inner, service: &mut Value, old: Option<&Value>) {
    let spec = &mut service["spec"];
    if spec["type"].is_null() {
        spec["type"] = json!("ClusterIP");
    }
    if spec["type"] != "ExternalName" {
        if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
            let kept = old.and_then(|o| o["spec"]["clusterIP"].as_str().map(str::to_string));
            let ip = kept.unwrap_or_else(|| {
                let n = inner.next_cluster_ip;
                inner.next_cluster_ip += 1;
                format!("10.96.{}.{}", n / 256, n % 256)
            });
            spec["clusterIP"] = json!(ip);
        }
        spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
        if spec["ipFamilies"].is_null() {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec["ipFamilyPolicy"].is_null() {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        if spec["internalTrafficPolicy"].is_null() {
            spec["internalTrafficPolicy"] = json!("Cluster");
        }
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports {
            if port["protocol"].is_null() {
                port["protocol"] = json!("TCP");
            }
            if port["targetPort"].is_null() {
                port["targetPort"] = port["port"].clone();
            }
        }
    }
    if service["status"].is_null() {
        service["status"] = json!({"loadBalancer": {}});
    }
}

/// What the Deployment registry fills in (nothing runs here, so status stays empty).
fn default_deployment(deployment: &mut Value) {
    let spec = &mut deployment["spec"];
    if spec["replicas"].is_null() {
        spec["replicas"] = json!(1);
    }
    if spec["strategy"]["type"].is_null() {
        spec["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}});
    }
    if spec["revisionHistoryLimit"].is_null() {
        spec["revisionHistoryLimit"] = json!(10);
    }
    if spec["progressDeadlineSeconds"].is_null() {
        spec["progressDeadlineSeconds"] = json!(600);
    }
    if deployment["status"].is_null() {
        deployment["status"] = json!({});
    }
}

fn check_namespace(inner: &Inner, namespace: &str) -> Result<(), ApiError> {
    let exists = inner
        .objects
        .get(&(String::new(), "namespaces".to_string()))
        .is_some_and(|m| m.contains_key(&(String::new(), namespace.to_string())));
    if exists {
        return Ok(());
    }
    Err(ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("namespaces \"{namespace}\" not found"),
        details: json!({"name": namespace, "kind": "namespaces"}),
    })
}

/// Server-side shaping of a written object: apiVersion/kind, Secret `stringData`.
fn normalize(resource: &Resource, object: &mut Value) {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if is_events_v1(resource) {
        *object = event_to_core(object);
    }
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    if resource.plural == "secrets" {
        if let Some(Value::Object(string_data)) = object.as_object_mut().and_then(|o| o.remove("stringData")) {
            use base64::Engine;
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default();
                object["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
        if object["type"].is_null() {
            object["type"] = json!("Opaque");
        }
    }
}

fn add_finalizer(object: &mut Value, finalizer: &str) {
    let list = object["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if !list.iter().any(|f| f == finalizer) {
        let mut list = list;
        list.push(json!(finalizer));
        object["metadata"]["finalizers"] = json!(list);
    }
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_of(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(map) = rest.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    rest
}

/// An object as served for this resource's version.
pub fn with_version(object: &Value, resource: &Resource) -> Value {
    // Both Event APIs serve one stored kind, as on a real server (stored in the core shape).
    let mut object = if is_events_v1(resource) {
        event_from_core(&event_to_core(object))
    } else if is_core_events(resource) {
        event_to_core(object)
    } else {
        object.clone()
    };
    if object.is_object() {
        object["apiVersion"] = json!(resource.api_version());
    }
    object
}

/// Where objects of a resource are stored (both Event APIs share the core one).
pub fn key(resource: &Resource) -> Key {
    if is_events_v1(resource) {
        return (String::new(), "events".into());
    }
    (resource.group.clone(), resource.plural.clone())
}

/// Whether [`with_version`] converts more than `apiVersion` for `resource` (the Event APIs).
pub fn converts_on_read(resource: &Resource) -> bool {
    is_events_v1(resource) || is_core_events(resource)
}

fn is_core_events(resource: &Resource) -> bool {
    resource.group.is_empty() && resource.plural == "events"
}

fn is_events_v1(resource: &Resource) -> bool {
    resource.group == "events.k8s.io" && resource.plural == "events"
}

/// `events.k8s.io/v1` field ↔ core `v1` field (Kubernetes' `pkg/apis/events/v1` conversion).
const EVENT_FIELDS: [(&str, &str); 8] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("related", "related"),
];

/// An Event in the core shape (unchanged if it already is).
fn event_to_core(event: &Value) -> Value {
    let mut out = event.clone();
    if let Some(map) = out.as_object_mut() {
        for (v1, core) in EVENT_FIELDS {
            if let Some(value) = map.remove(v1) {
                map.insert(core.into(), value);
            }
        }
    }
    out
}

/// A core-shaped Event as `events.k8s.io/v1` serves it.
fn event_from_core(event: &Value) -> Value {
    let mut out = event.clone();
    if let Some(map) = out.as_object_mut() {
        for (v1, core) in EVENT_FIELDS {
            if let Some(value) = map.remove(core) {
                map.insert(v1.into(), value);
            }
        }
    }
    out
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// RFC 3339 UTC, seconds precision, as Kubernetes writes timestamps.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let _ = getrandom::fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
