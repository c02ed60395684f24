//! The controllers: one reconciler per kind, sharing the context, the error policy, the status
//! writer (which publishes an Event on every transition) and the credential lifecycle
//! (`lifecycle`: refresh, mint, health check, re-authorization; DESIGN.md steps 4-6).

mod client_credentials;
mod installation;
mod lifecycle;
mod tolerant;
mod user_auth;

pub use tolerant::Stub;

/// A watch of `K` that passes the objects that fit the type and drops the others (reported by
/// the controllers, not here): for other watchers of the credentials, such as the gateway.
pub fn watch_fitting<K>(
    api: Api<DynamicObject>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Stub + Clone + Send + 'static,
{
    tolerant::watch(api, config, None)
}

/// `object` as a `K`, or why it does not fit (the field and the fix, the value never quoted).
pub fn fit_object<K>(object: &DynamicObject) -> Result<K, String>
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    tolerant::convert(object)
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::{self as runtime, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

use crate::context::Context;
use crate::crd::conditions::{self, reason};
use crate::crd::{
    ConfluenceInstallation, ConfluenceUserAuth, CredentialResource, CredentialStatus, Phase, SecretKeyRef,
};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::oauth::state;
use crate::store::{self, StoreError};
use crate::token_set::TokenSet;

/// Everything a reconcile needs.
pub struct Shared {
    /// Clients, keys, clock.
    pub ctx: Context,
    /// Metrics.
    pub metrics: Metrics,
    /// Event publisher.
    pub events: Events,
    /// Token sets Atlassian issued whose vault write has not landed yet, by resource uid. The
    /// refresh token sent to get them is already retired, so these are written before anything
    /// else and no refresh happens while one is here.
    pub unsaved: Mutex<HashMap<String, TokenSet>>,
    /// Consecutive failed renewals or health checks, by resource uid (for backoff).
    pub failures: Attempts,
    /// Consecutive failed reconciles, by `kind/namespace/name` (the error policy's backoff;
    /// forgotten on the next successful reconcile).
    pub reconcile_errors: Attempts,
    /// Until when a failed renewal backs off, by resource uid: no reconcile calls Atlassian for
    /// it before then, whatever woke it (a watch event, a relist, its own status write), so
    /// the backoff and Atlassian's `Retry-After` hold.
    pub hold_offs: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The last seen app credentials of each installation (`namespace/name`), so its users keep
    /// refreshing while it is deleted or broken.
    pub app_credentials: Mutex<HashMap<String, (String, SecretKeyRef)>>,
}

/// Consecutive failures by key, for backoff.
#[derive(Debug, Default)]
pub struct Attempts(Mutex<HashMap<String, u32>>);

impl Attempts {
    /// Counts one more consecutive failure of `key`; returns the attempt number (0 for the
    /// first).
    pub fn next(&self, key: &str) -> u32 {
        let mut counts = lock(&self.0);
        let count = counts.entry(key.to_string()).or_insert(0);
        *count += 1;
        *count - 1
    }

    /// Forgets `key`'s failures (it succeeded, or is gone).
    pub fn reset(&self, key: &str) {
        lock(&self.0).remove(key);
    }
}

impl Shared {
    /// Shared state over a context.
    pub fn new(ctx: Context, metrics: Metrics, events: Events) -> Self {
        Self {
            ctx,
            metrics,
            events,
            unsaved: Mutex::default(),
            failures: Attempts::default(),
            hold_offs: Mutex::default(),
            reconcile_errors: Attempts::default(),
            app_credentials: Mutex::default(),
        }
    }
}

/// Locks a map, ignoring poisoning (a panic elsewhere does not make the map wrong).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A reconcile that could not finish; retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or writing Kubernetes objects failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Listing or reading a related object failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl ReconcileError {
    /// Bounded category for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Store(e) => e.category(),
            Self::Kube(_) => "KubernetesApi",
        }
    }

    /// True when the object itself is gone (deleted while reconciling).
    pub fn is_not_found(&self) -> bool {
        let api = match self {
            Self::Store(StoreError::Kube(kube::Error::Api(status))) | Self::Kube(kube::Error::Api(status)) => status,
            _ => return false,
        };
        api.code == 404
    }
}

/// Runs both controllers, over all namespaces or over each of `namespaces`, until `shutdown`
/// resolves. `on_synced` is called once every controller's cache holds its first list.
pub async fn run(
    shared: Arc<Shared>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_synced: impl FnOnce() + Send + 'static,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let (controllers, stores): (Vec<_>, Vec<_>) = scopes
        .into_iter()
        .map(|scope| run_scope(shared.clone(), scope, &shutdown_tx))
        .unzip();
    let synced = async move {
        for (installations, users) in stores {
            // An error means the controller ended: it never synced.
            if installations.wait_until_ready().await.is_err() || users.wait_until_ready().await.is_err() {
                return;
            }
        }
        tracing::info!("the controllers' caches are synced");
        on_synced();
    };
    let controllers = futures::future::join_all(controllers);
    let stop = async move {
        shutdown.await;
        let _ = shutdown_tx.send(());
    };
    tokio::join!(controllers, stop, synced);
}

/// An API over one namespace, or over all.
fn scoped<K>(client: &kube::Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What the run stream reports: a reconcile of an object that is gone means it was deleted,
/// so its metric series go (no finalizer needed; the Secrets go with their owner).
fn on_result<K: CredentialResource>(
    shared: &Shared,
    result: Result<(ObjectRef<K>, Action), runtime::Error<ReconcileError, watcher::Error>>,
) {
    if let Ok((done, _)) = &result {
        let key = error_key(&K::kind(&()), done.namespace.as_deref(), &done.name);
        shared.reconcile_errors.reset(&key);
    }
    if let Err(runtime::Error::ObjectNotFound(gone)) = result {
        let namespace = gone.namespace.clone().unwrap_or_default();
        shared.ctx.known.forget_writes(&K::kind(&()), &namespace, &gone.name);
        shared.metrics.forget(&namespace, &K::kind(&()), &gone.name);
        tracing::debug!(kind = %K::kind(&()), namespace, name = %gone.name, "deleted: forgot its metrics");
    }
}

/// The caches of one scope's two controllers.
type Stores = (
    kube::runtime::reflector::Store<ConfluenceInstallation>,
    kube::runtime::reflector::Store<ConfluenceUserAuth>,
);

/// Both controllers over one scope, and their caches.
fn run_scope(
    shared: Arc<Shared>,
    scope: Option<String>,
    shutdown: &tokio::sync::broadcast::Sender<()>,
) -> (impl std::future::Future<Output = ()> + use<>, Stores) {
    let client = shared.ctx.client.clone();
    // `PartialObjectMeta`: metadata-only requests (see `owned_secrets`).
    let secrets: Api<PartialObjectMeta<Secret>> = scoped(&client, &scope);
    // Watching every namespace still leaves out the operator's own (its keys live there), unless
    // it was listed explicitly (then `scope` is that namespace).
    let base = match &scope {
        Some(_) => watcher::Config::default(),
        None => watcher::Config::default().fields(&format!("metadata.namespace!={}", shared.ctx.operator_namespace)),
    };
    // A shard (`--selector`) sees only its credentials, and only their Secrets (which carry the
    // selector's labels, see `store::labels`). A credential relabelled out of the shard leaves
    // the cache (the watch reports it deleted), so its queued refresh is never run here.
    let managed_by = format!("app.kubernetes.io/managed-by={}", store::MANAGER);
    // Users may belong to an installation of another shard: their trigger watches every one.
    let unselected = base.clone();
    let (base, managed) = match &shared.ctx.selector {
        Some(selector) => (
            base.clone().labels(selector.as_str()),
            format!("{managed_by},{selector}"),
        ),
        None => (base.clone(), managed_by),
    };
    // Owned Secrets trigger reconciles and feed `Known` (ownership, resourceVersions, the vault's
    // planning annotations); a vault is only ever read fresh. So their watch is metadata only,
    // and each controller's covers only its own kind's Secrets: no Secret data is ever held or
    // even received (a fleet of 10,000 users has 20,000 Secrets). The echo of a reconcile's own
    // write wakes nobody: the reconcile that wrote planned the next pass.
    let owned_secrets = |kind: &str| {
        let selector = format!("{managed},{}={kind}", store::OWNER_KIND_LABEL);
        let (cache, writer) = reflector::store();
        shared.ctx.known.add_secrets(cache);
        let known = shared.ctx.known.clone();
        watcher(secrets.clone(), unselected.clone().labels(&selector))
            .default_backoff()
            .modify(slim_secret)
            .reflect(writer)
            .touched_objects()
            .try_filter(move |secret| futures::future::ready(!is_echo(&known, SECRET, secret)))
    };
    let signal = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    // Untyped watches converted object by object, so one object that got past the schema
    // cannot stop a controller (see `tolerant`).
    let untyped = |resource: ApiResource| -> Api<DynamicObject> {
        match &scope {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    };
    let installation_api = untyped(ApiResource::erase::<ConfluenceInstallation>(&()));
    let (installation_store, installation_writer) = reflector::store();
    let known = shared.ctx.known.clone();
    let installation_stream =
        tolerant::watch::<ConfluenceInstallation>(installation_api.clone(), base.clone(), Some(shared.clone()))
            .modify(slim)
            .default_backoff()
            .reflect(installation_writer)
            .applied_objects()
            .try_filter(move |cfi| futures::future::ready(!is_echo(&known, &cfi_kind(), cfi)));
    let installation_shared = shared.clone();
    let limits = runtime::Config::default().concurrency(shared.ctx.reconcile_concurrency);
    let installation_controller = Controller::for_stream(installation_stream, installation_store.clone())
        .with_config(limits.clone())
        .owns_stream(owned_secrets(&<ConfluenceInstallation as kube::Resource>::kind(&())))
        .graceful_shutdown_on(signal(shutdown))
        .run(installation::reconcile, error_policy, shared.clone())
        .for_each(move |result| {
            on_result(&installation_shared, result);
            async {}
        });

    let (user_store, user_writer) = reflector::store();
    let user_stream = tolerant::watch::<ConfluenceUserAuth>(
        untyped(ApiResource::erase::<ConfluenceUserAuth>(&())),
        base.clone(),
        Some(shared.clone()),
    )
    .modify(slim)
    .default_backoff()
    .reflect(user_writer)
    .applied_objects()
    .try_filter({
        let known = shared.ctx.known.clone();
        move |cfua| futures::future::ready(!is_echo(&known, &cfua_kind(), cfua))
    });
    let user_controller = Controller::for_stream(user_stream, user_store).with_config(limits);
    let user_store = user_controller.store();
    shared.ctx.known.add_users(user_store.clone());
    let stores = (installation_store, user_store.clone());
    let user_shared = shared.clone();
    // Installations as the users see them: a change (or an installation that stops fitting its
    // type, a stub delete) re-checks its users; reported by the installation controller only.
    // Their cache also answers each user's installation lookup (`Known::installation`).
    let (installations_seen, installations_writer) = reflector::store();
    shared.ctx.known.add_installations(installations_seen);
    let mut users_see = UsersSee::default();
    let installation_changes = tolerant::watch::<ConfluenceInstallation>(installation_api, unselected.clone(), None)
        .modify(slim)
        .default_backoff()
        .reflect(installations_writer)
        .try_filter_map(move |event| futures::future::ready(Ok(users_see.changed(event))));
    let user_controller = user_controller
        .owns_stream(owned_secrets(&<ConfluenceUserAuth as kube::Resource>::kind(&())))
        // A user auth depends on its installation: re-check the users of one that changed.
        .watches_stream(installation_changes, move |cfi: ConfluenceInstallation| {
            let namespace = cfi.namespace();
            let name = cfi.name_any();
            user_store
                .state()
                .into_iter()
                .filter(|u| u.namespace() == namespace && u.spec.installation_ref.name == name)
                .map(|u| ObjectRef::from_obj(&*u))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(signal(shutdown))
        .run(user_auth::reconcile, error_policy, shared)
        .for_each(move |result| {
            on_result(&user_shared, result);
            async {}
        });
    let controllers = async move {
        tokio::join!(installation_controller, user_controller);
    };
    (controllers, stores)
}

/// What the users of an installation depend on, by installation: which object it is (uid),
/// its spec (generation) and whether it is Ready. Its token refreshes and health checks change
/// its status often and none of that, so they re-check no user (a fleet of 10,000 users would
/// otherwise be looked at again at every refresh of their installation).
#[derive(Default)]
struct UsersSee(HashMap<(String, String), DependedOn>);

/// (uid, generation, Ready) of an installation.
type DependedOn = (Option<String>, Option<i64>, bool);

impl UsersSee {
    /// The installation of `event` if its users must be looked at again (deleted, new, or a
    /// change they depend on).
    fn changed(&mut self, event: watcher::Event<ConfluenceInstallation>) -> Option<ConfluenceInstallation> {
        match event {
            watcher::Event::Delete(cfi) => {
                self.0.remove(&(cfi.namespace().unwrap_or_default(), cfi.name_any()));
                Some(cfi)
            }
            watcher::Event::Apply(cfi) | watcher::Event::InitApply(cfi) => {
                let ready = cfi
                    .credential()
                    .is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY));
                let seen = (cfi.uid(), cfi.metadata.generation, ready);
                let key = (cfi.namespace().unwrap_or_default(), cfi.name_any());
                (self.0.insert(key, seen.clone()) != Some(seen)).then_some(cfi)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        }
    }
}

/// The kind under which [`Known`](crate::known::Known) records Secret writes.
const SECRET: &str = "Secret";

fn cfi_kind() -> String {
    <ConfluenceInstallation as kube::Resource>::kind(&()).to_string()
}

fn cfua_kind() -> String {
    <ConfluenceUserAuth as kube::Resource>::kind(&()).to_string()
}

/// True when a watch event of `obj` is the echo of a reconcile's own write (see `Known`).
fn is_echo<K: kube::Resource>(known: &crate::known::Known, kind: &str, obj: &K) -> bool {
    let meta = obj.meta();
    known.is_own_write(
        kind,
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref(),
    )
}

/// Records the Secrets a reconcile wrote, so their watch events wake nobody.
fn wrote_secrets(shared: &Shared, namespace: &str, written: &[(&str, &store::Put)]) {
    for (name, put) in written {
        let (replaced, version) = (put.replaced.as_deref(), put.version.as_deref());
        shared.ctx.known.wrote(SECRET, namespace, name, replaced, version);
    }
}

/// True when a cache still shows `obj`, its vault or its token Secret (`token_secret_name`) at
/// a version this process's own write replaced: the pass would decide on what it just changed
/// (and write again, or read to find out), so it comes back once the watches caught up.
fn lagging<K: CredentialResource>(shared: &Shared, obj: &K, token_secret_name: &str) -> bool {
    let known = &shared.ctx.known;
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let secret_behind = |secret: &str| {
        let cached = known.secret(&namespace, secret);
        let version = cached.as_ref().and_then(|s| s.metadata.resource_version.as_deref());
        known.behind(SECRET, &namespace, secret, version)
    };
    known.behind(&K::kind(&()), &namespace, &name, obj.resource_version().as_deref())
        || secret_behind(&crate::validation::vault_secret_name(&name))
        || secret_behind(token_secret_name)
}

/// What the owned-Secret caches keep of a Secret's metadata (20,000 of them for 10,000 users):
/// name, namespace, resourceVersion, the owner references (ownership and the owner trigger) and
/// the vault's own annotations (`known`); labels did their work in the watch's selector.
fn slim_secret(secret: &mut PartialObjectMeta<Secret>) {
    let meta = &mut secret.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.creation_timestamp = None;
    meta.uid = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| key.starts_with("confluence-auth.dev/"));
    }
    for owner in meta.owner_references.iter_mut().flatten() {
        owner.block_owner_deletion = None;
    }
}

/// kubectl's copy of the whole object as last applied: nothing here reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the caches keep of a credential: all but the API server's bookkeeping for other
/// clients (`managedFields`) and kubectl's last-applied copy, which together can outweigh the
/// object itself. Reconciles that write re-read the object first, so nothing is lost.
fn slim<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

fn error_policy<K: CredentialResource>(obj: Arc<K>, error: &ReconcileError, shared: Arc<Shared>) -> Action {
    if error.is_not_found() {
        // Deleted while reconciling: forget it (its Secrets go with it).
        let key = error_key(&K::kind(&()), obj.namespace().as_deref(), &obj.name_any());
        shared.reconcile_errors.reset(&key);
        shared
            .metrics
            .forget(&obj.namespace().unwrap_or_default(), &K::kind(&()), &obj.name_any());
        return Action::await_change();
    }
    let key = error_key(&K::kind(&()), obj.namespace().as_deref(), &obj.name_any());
    let attempt = shared.reconcile_errors.next(&key);
    let expires = obj
        .credential()
        .and_then(|s| s.access_token_expires_at.as_ref())
        .map(|t| t.0);
    let delay = error_delay(attempt, &key, shared.ctx.clock.now(), expires);
    tracing::warn!(kind = %K::kind(&()), name = %obj.name_any(), namespace = ?obj.namespace(), category = error.category(), error = %error, attempt, retry_in = ?delay, "reconcile failed");
    shared.metrics.reconcile_error(K::kind(&()).as_ref(), error.category());
    Action::requeue(delay)
}

/// Longest wait after a failed reconcile: the old fixed delay, so a refresh that comes due
/// while the API server keeps failing waits no longer than it did.
const ERROR_RETRY_MAX: Duration = Duration::from_secs(5);

/// The key of an object in [`Shared::reconcile_errors`].
fn error_key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{kind}/{}/{name}", namespace.unwrap_or_default())
}

/// The wait after the `attempt`th consecutive failed reconcile (0 for the first): about 1 s,
/// doubling, at most [`ERROR_RETRY_MAX`], and at most a third of the time the access token in
/// status (`expires`) has left, as for a failed renewal. A short retry matters: a refresh that
/// was due when an API call failed (a 500 burst) waits this long, and a short-lived token's
/// lead is only seconds (a fixed 5 s took half of a 10 s lead in the fault suite).
fn error_delay(attempt: u32, key: &str, now: Timestamp, expires: Option<Timestamp>) -> Duration {
    let jitter = crate::token::Jitter::for_key(&format!("{key}/{attempt}"));
    let delay = match expires {
        Some(expires_at) => crate::token::retry_delay(attempt, None, jitter, now, expires_at),
        None => crate::token::backoff(attempt, None, jitter),
    };
    delay.min(ERROR_RETRY_MAX)
}

/// Writes status through `change` (re-read, changed, replaced; no write when nothing changes)
/// and publishes an Event for every transition it made. Keeps the metrics' view current.
///
/// When `change` changes nothing on `obj` as given (the cached object), nothing is requested
/// at all: a restart's first pass over a settled fleet, and every periodic re-check, cost no
/// read. A status someone else wrote meanwhile arrives as a watch event and another pass.
async fn write_status<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    change: impl Fn(&mut K),
) -> Result<K, ReconcileError> {
    // The status and resourceVersion `change` was last applied to: the version the write
    // replaced (the cached one, or one read after a conflict). A copy only of a version read
    // here: the cached one is `obj` (and most passes write nothing).
    let before: Mutex<(Option<CredentialStatus>, Option<String>)> = Mutex::default();
    let updated = store::update_status(&shared.ctx.client, obj, |current: &mut K| {
        let version = current.resource_version();
        let copy = if version == obj.resource_version() {
            None
        } else {
            current.credential().cloned()
        };
        *lock(&before) = (copy, version);
        change(current);
    })
    .await?;
    let (copy, replaced) = std::mem::take(&mut *lock(&before));
    let before = if replaced == obj.resource_version() {
        obj.credential()
    } else {
        copy.as_ref()
    };
    if updated.resource_version() == replaced {
        // Nothing to write: `change` changed nothing (as written) on the version it was given.
        observe(shared, &updated);
        return Ok(updated);
    }
    if replaced != obj.resource_version() {
        tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), cached = ?obj.resource_version(), current = ?replaced, "the status was newer than the cached object; decided again on a fresh read");
    }
    let namespace = updated.namespace().unwrap_or_default();
    shared.ctx.known.wrote(
        &K::kind(&()),
        &namespace,
        &updated.name_any(),
        replaced.as_deref(),
        updated.resource_version().as_deref(),
    );
    if tracing::enabled!(tracing::Level::DEBUG) {
        let fields = |s: Option<&CredentialStatus>| match s.map(serde_json::to_value) {
            Some(Ok(serde_json::Value::Object(map))) => map,
            _ => serde_json::Map::new(),
        };
        let (old, new) = (fields(before), fields(updated.credential()));
        let changed: Vec<&String> = new
            .keys()
            .chain(old.keys())
            .filter(|k| old.get(*k) != new.get(*k))
            .collect();
        if !changed.is_empty() {
            tracing::debug!(kind = %K::kind(&()), name = %obj.name_any(), ?changed, "status written");
        }
    }
    if let Some(after) = updated.credential() {
        shared.events.publish_changes(&updated, before, after).await;
        observe(shared, &updated);
    }
    Ok(updated)
}

/// Feeds the metrics with what `obj`'s status says.
fn observe<K: CredentialResource>(shared: &Shared, obj: &K) {
    let Some(status) = obj.credential() else { return };
    let phase = status.phase.map(|p| format!("{p:?}"));
    shared.metrics.observe(
        &obj.namespace().unwrap_or_default(),
        &K::kind(&()),
        &obj.name_any(),
        phase.as_deref(),
        status.access_token_expires_at.as_ref().map(|t| t.0),
        status.refresh_token_expires_at.as_ref().map(|t| t.0),
    );
}

/// True when the resource needs a fresh authorization link: none yet, or it expired.
pub fn needs_new_link(status: Option<&CredentialStatus>, now: Timestamp) -> bool {
    let Some(status) = status else { return true };
    // A callback consumed the link and is completing the grant: no second link meanwhile.
    if status
        .pending_authorization
        .as_ref()
        .is_some_and(|p| p.expires_at.0 > now)
    {
        return false;
    }
    let expired = status.authorization_expires_at.as_ref().is_none_or(|t| t.0 <= now);
    status.authorization_url.is_none() || status.authorization_nonce_hash.is_none() || expired
}

/// How long a pass may wait when a callback has consumed `obj`'s link for its current spec
/// (`generation`) and no grant is stored yet: there is no link to publish and nothing to
/// refresh, and the callback's own writes wake the next pass (reads and writes now would only
/// race them). `None`: a full pass. The wait ends with the pending marker, which a callback
/// that died leaves behind.
pub fn consent_in_flight(
    generation: Option<i64>,
    status: Option<&CredentialStatus>,
    now: Timestamp,
) -> Option<Duration> {
    let status = status?;
    let pending = status.pending_authorization.as_ref()?;
    let in_flight = pending.expires_at.0 > now
        && pending.generation == generation
        && !conditions::is_true(&status.conditions, conditions::AUTHORIZED);
    in_flight.then(|| until(now, pending.expires_at.0))
}

/// A new authorization link for `obj`: (url, nonce hash, expiry).
fn new_link<K: CredentialResource>(ctx: &Context, obj: &K, now: Timestamp) -> (String, String, Timestamp) {
    let (nonce, hash) = state::new_nonce();
    let url = format!(
        "{}/oauth/start/{}/{}/{}?nonce={nonce}",
        ctx.public_url,
        obj.namespace().unwrap_or_default(),
        K::FLOW_KIND.segment(),
        obj.name_any()
    );
    let ttl = jiff::SignedDuration::try_from(ctx.link_ttl).unwrap_or(jiff::SignedDuration::from_hours(24));
    (url, hash, now + ttl)
}

/// Publishes a link into `status` unless a current one is there.
fn ensure_link(status: &mut CredentialStatus, link: &(String, String, Timestamp), now: Timestamp) {
    if needs_new_link(Some(status), now) {
        status.authorization_url = Some(link.0.clone());
        status.authorization_nonce_hash = Some(link.1.clone());
        status.authorization_expires_at = Some(Time(link.2));
    }
}

/// Removes the link from `status`.
fn clear_link(status: &mut CredentialStatus) {
    status.authorization_url = None;
    status.authorization_nonce_hash = None;
    status.authorization_expires_at = None;
}

/// Publishes (or keeps) the authorization link and reports `AwaitingAuthorization`.
/// Returns when to look again (the link's expiry).
async fn await_consent<K: CredentialResource>(shared: &Shared, obj: &K, why: &str) -> Result<Action, ReconcileError> {
    let ctx = &shared.ctx;
    let now = ctx.clock.now();
    let link = new_link(ctx, obj, now);
    let why = why.to_string();
    let updated = write_status(shared, obj, move |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        ensure_link(status, &link, now);
        status.phase = Some(Phase::AwaitingAuthorization);
        status.observed_generation = generation;
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            false,
            reason::AWAITING_CONSENT,
            why.clone(),
            generation,
            now,
        );
    })
    .await?;
    let expires = updated.credential().and_then(|s| {
        s.authorization_expires_at
            .as_ref()
            .or(s.pending_authorization.as_ref().map(|p| &p.expires_at))
            .map(|t| t.0)
    });
    Ok(Action::requeue(until(now, expires.unwrap_or(now))))
}

/// Reports a configuration problem the user must fix; nothing happens until the spec changes.
async fn report_failed<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    reason: &str,
    message: String,
) -> Result<Action, ReconcileError> {
    let now = shared.ctx.clock.now();
    let reason = reason.to_string();
    write_status(shared, obj, move |obj| {
        let generation = obj.meta().generation;
        let status = obj.credential_mut();
        status.phase = Some(Phase::Failed);
        clear_link(status);
        status.observed_generation = generation;
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            false,
            &reason,
            message.clone(),
            generation,
            now,
        );
    })
    .await?;
    Ok(Action::await_change())
}

/// Reports `SecretConflict` when a Secret `obj` would write is taken by something else; looks
/// again every few minutes (the holder may be deleted). `Ok(None)`: both names are free or ours.
async fn secret_conflict<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
    token_secret_name: &str,
) -> Result<Option<Action>, ReconcileError> {
    let vault = crate::validation::vault_secret_name(&obj.name_any());
    match store::check_owned(&shared.ctx.client, &shared.ctx.known, obj, &[&vault, token_secret_name]).await {
        Ok(()) => Ok(None),
        Err(e @ StoreError::SecretConflict(_)) => {
            report_failed(shared, obj, reason::SECRET_CONFLICT, e.to_string()).await?;
            Ok(Some(Action::requeue(Duration::from_secs(300))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the vault; an unreadable one is reported (never a panic, never a plaintext fallback).
async fn stored_tokens<K: CredentialResource>(
    shared: &Shared,
    obj: &K,
) -> Result<Result<Option<store::Opened>, Action>, ReconcileError> {
    match store::read_vault(&shared.ctx.client, &shared.ctx.keys, obj).await {
        Ok(tokens) => Ok(Ok(tokens)),
        Err(e @ (StoreError::Vault(_) | StoreError::Corrupt)) => {
            let action = report_failed(
                shared,
                obj,
                reason::VAULT_UNREADABLE,
                format!("the vault Secret cannot be read: {e}"),
            )
            .await?;
            Ok(Err(action))
        }
        Err(e) => Err(e.into()),
    }
}

/// Time from `now` to `at`, at least a second, at most an hour (a periodic re-check).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    crate::token::delay_until(now, at).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_link_is_published_when_missing_or_expired_and_kept_otherwise() {
        assert!(needs_new_link(None, at(100)));
        let mut status = CredentialStatus {
            authorization_url: Some("u".into()),
            authorization_nonce_hash: Some("h".into()),
            authorization_expires_at: Some(Time(at(200))),
            ..Default::default()
        };
        assert!(!needs_new_link(Some(&status), at(100)));
        assert!(needs_new_link(Some(&status), at(200)));
        status.authorization_nonce_hash = None;
        assert!(needs_new_link(Some(&status), at(100)));
    }

    #[test]
    fn a_pass_waits_out_a_consent_in_flight_only_without_a_stored_grant() {
        use crate::crd::PendingAuthorization;
        let pending = |generation, expires| PendingAuthorization {
            nonce_hash: "h".into(),
            generation: Some(generation),
            expires_at: Time(at(expires)),
        };
        let mut status = CredentialStatus {
            pending_authorization: Some(pending(3, 400)),
            ..Default::default()
        };
        assert_eq!(
            consent_in_flight(Some(3), Some(&status), at(100)),
            Some(Duration::from_secs(300))
        );
        // Expired marker, a spec changed since, no marker, no status: a full pass.
        assert_eq!(consent_in_flight(Some(3), Some(&status), at(400)), None);
        assert_eq!(consent_in_flight(Some(4), Some(&status), at(100)), None);
        assert_eq!(consent_in_flight(Some(3), None, at(100)), None);
        // A re-consent over a stored grant: the grant is kept alive meanwhile.
        conditions::set_condition(
            &mut status.conditions,
            conditions::AUTHORIZED,
            true,
            reason::AUTHORIZED,
            "ok",
            Some(3),
            at(50),
        );
        assert_eq!(consent_in_flight(Some(3), Some(&status), at(100)), None);
        // A revoked grant has nothing to keep alive.
        conditions::set_condition(
            &mut status.conditions,
            conditions::AUTHORIZED,
            false,
            reason::GRANT_REVOKED,
            "gone",
            Some(3),
            at(60),
        );
        assert_eq!(
            consent_in_flight(Some(3), Some(&status), at(100)),
            Some(Duration::from_secs(300))
        );
        status.pending_authorization = None;
        assert_eq!(consent_in_flight(Some(3), Some(&status), at(100)), None);
    }

    #[test]
    fn failed_reconciles_retry_after_about_a_second_then_back_off_to_five() {
        let key = error_key("ConfluenceUserAuth", Some("ns"), "u1");
        assert_eq!(key, "ConfluenceUserAuth/ns/u1");
        let delays: Vec<Duration> = (0..8).map(|a| error_delay(a, &key, at(0), None)).collect();
        // ±20 % jitter around 1, 2, 4 s; then the cap.
        for (attempt, base) in [1.0, 2.0, 4.0].iter().enumerate() {
            let d = delays[attempt].as_secs_f64();
            assert!((base * 0.8..=base * 1.2).contains(&d), "attempt {attempt}: {d}");
        }
        assert!(delays[3..].iter().all(|d| *d == ERROR_RETRY_MAX), "{delays:?}");
        // An hour of token left changes nothing; 3 s left: a retry within a second.
        assert_eq!(error_delay(5, &key, at(0), Some(at(3600))), ERROR_RETRY_MAX);
        assert_eq!(error_delay(5, &key, at(0), Some(at(3))), Duration::from_secs(1));
        assert_eq!(error_delay(5, &key, at(0), Some(at(1))), crate::token::MIN_RETRY);
    }

    #[test]
    fn the_secret_cache_keeps_ownership_version_and_the_vault_annotations_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
        let owner = OwnerReference {
            api_version: "confluence-auth.dev/v1alpha1".into(),
            kind: "ConfluenceUserAuth".into(),
            name: "u1".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut secret = PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                name: Some("u1-vault".into()),
                namespace: Some("ns".into()),
                resource_version: Some("42".into()),
                uid: Some("secret-uid".into()),
                labels: Some([("app.kubernetes.io/managed-by".to_string(), "x".to_string())].into()),
                annotations: Some(
                    [
                        (store::EXPIRES_AT_ANNOTATION.to_string(), "t".to_string()),
                        (LAST_APPLIED.to_string(), "{}".to_string()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            ..Default::default()
        };
        slim_secret(&mut secret);
        let meta = &secret.metadata;
        assert_eq!(meta.name.as_deref(), Some("u1-vault"));
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(meta.labels, None);
        assert_eq!(meta.uid, None);
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [store::EXPIRES_AT_ANNOTATION]);
        let kept = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (kept.uid.as_str(), kept.kind.as_str(), kept.controller),
            ("uid-1", "ConfluenceUserAuth", Some(true))
        );
        assert_eq!(kept.name, owner.name);
    }

    #[test]
    fn users_are_rechecked_when_their_installation_changes_in_what_they_depend_on() {
        let installation = |uid: &str, generation: i64, ready: bool| {
            let mut cfi = ConfluenceInstallation::stub(kube::api::ObjectMeta {
                name: Some("acme".into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                generation: Some(generation),
                ..Default::default()
            });
            let now = Timestamp::from_second(1_800_000_000).unwrap();
            let status = cfi.credential_mut();
            conditions::set_condition(
                &mut status.conditions,
                conditions::READY,
                ready,
                "R",
                "m",
                Some(generation),
                now,
            );
            status.access_token_expires_at = Some(Time(now));
            cfi
        };
        let mut users_see = UsersSee::default();
        let mut passes = |event| users_see.changed(event).is_some();
        assert!(
            passes(watcher::Event::InitApply(installation("u1", 1, true))),
            "first seen"
        );
        assert!(!passes(watcher::Event::InitDone));
        let mut refreshed = installation("u1", 1, true);
        refreshed.credential_mut().access_token_expires_at = None;
        assert!(
            !passes(watcher::Event::Apply(refreshed)),
            "a token refresh is no change for users"
        );
        assert!(
            passes(watcher::Event::Apply(installation("u1", 1, false))),
            "no longer Ready"
        );
        assert!(
            passes(watcher::Event::Apply(installation("u1", 2, false))),
            "a spec change"
        );
        assert!(passes(watcher::Event::Apply(installation("u2", 2, false))), "recreated");
        assert!(passes(watcher::Event::Delete(installation("u2", 2, false))), "deleted");
        assert!(
            passes(watcher::Event::Apply(installation("u2", 2, false))),
            "back after a delete"
        );
    }

    #[test]
    fn requeue_delays_are_clamped() {
        assert_eq!(until(at(100), at(50)), Duration::from_secs(1));
        assert_eq!(until(at(100), at(160)), Duration::from_secs(60));
        assert_eq!(until(at(0), at(100_000)), Duration::from_secs(3600));
    }
}
