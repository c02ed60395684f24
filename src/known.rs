//! What the operator already knows, so that a reconcile with nothing to do asks the API server
//! nothing (issue 10, benchmarks 2 and 3):
//!
//! - the metadata of the owned Secrets, as the controllers' watches last saw it (ownership,
//!   resourceVersion, the vault's planning facts), never their data;
//! - the installations, as the users' trigger watch last saw them;
//! - the resourceVersions of the controllers' own latest writes, so that the watch events those
//!   writes cause wake nobody (the reconcile that wrote already planned its next pass);
//! - client secrets read in the last few seconds, so a burst of refreshes of one app reads its
//!   client secret once.
//!
//! Every lookup is a shortcut with a fallback: a miss (an empty cache, a follower replica, an
//! object written by someone else) means the caller reads from the API server as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::{ConfluenceInstallation, ConfluenceUserAuth};

/// How long a client secret read is reused. A rotated client secret is picked up within this
/// time, and at once when Atlassian refuses the cached one (the caller forgets it then).
pub const CLIENT_SECRET_TTL: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Default)]
pub struct Known {
    secrets: RwLock<Vec<Store<PartialObjectMeta<Secret>>>>,
    installations: RwLock<Vec<Store<ConfluenceInstallation>>>,
    users: RwLock<Vec<Store<ConfluenceUserAuth>>>,
    own_writes: Mutex<OwnWrites>,
    client_secrets: Mutex<HashMap<(String, String), RecentSecret>>,
    sync_timed_out: std::sync::atomic::AtomicBool,
    first_asked: std::sync::OnceLock<tokio::time::Instant>,
}

/// How long reconciles wait for the caches' first lists (see [`Known::synced`]).
pub const SYNC_WAIT: Duration = Duration::from_secs(30);

/// When a reconcile that found the caches still filling comes back.
pub const RETRY_UNTIL_SYNCED: Duration = Duration::from_millis(200);

/// A client secret Secret and when it was read.
type RecentSecret = (tokio::time::Instant, Arc<Secret>);

/// (kind, namespace, name) of a written object.
type WriteKey = (String, String, String);

/// The latest own write of each object, pruned of writes older than [`LAG_LIMIT`] at most once
/// per [`LAG_LIMIT`] (past it an entry tells nothing: a late echo merely wakes a pass).
#[derive(Debug, Default)]
struct OwnWrites {
    latest: HashMap<WriteKey, OwnWrite>,
    pruned_at: Option<tokio::time::Instant>,
}

impl OwnWrites {
    fn insert(&mut self, key: WriteKey, write: OwnWrite) {
        let now = write.at;
        if self.pruned_at.is_none_or(|at| now.duration_since(at) >= LAG_LIMIT) {
            self.latest.retain(|_, w| now.duration_since(w.at) < LAG_LIMIT);
            self.pruned_at = Some(now);
        }
        self.latest.insert(key, write);
    }
}

/// A reconcile's latest write of an object whose watch event has not come back yet.
#[derive(Debug)]
struct OwnWrite {
    /// The resourceVersion the write replaced (`None`: it created the object).
    replaced: Option<String>,
    /// The resourceVersion it wrote.
    written: String,
    /// When.
    at: tokio::time::Instant,
    /// Its watch event came back (and woke nobody). The entry stays for [`Known::behind`]: a
    /// pass dispatched with the older object just before the event may still be starting.
    echoed: bool,
}

/// How long after an own write a cache still showing the version it replaced counts as
/// [`Known::behind`]: a watch normally delivers the write's event within milliseconds, and one
/// that is down must not hold a credential's passes back for longer than this.
pub const LAG_LIMIT: Duration = Duration::from_secs(5);

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: a client secret is never printed.
        f.debug_struct("Known")
            .field("secret_caches", &read(&self.secrets).len())
            .field("installation_caches", &read(&self.installations).len())
            .field("own_writes", &locked(&self.own_writes).latest.len())
            .finish_non_exhaustive()
    }
}

impl Known {
    /// Adds the cache of an owned-Secret watch (one per controller and scope).
    pub fn add_secrets(&self, store: Store<PartialObjectMeta<Secret>>) {
        self.secrets.write().unwrap_or_else(|e| e.into_inner()).push(store);
    }

    /// Adds the cache of an installation watch (one per scope).
    pub fn add_installations(&self, store: Store<ConfluenceInstallation>) {
        self.installations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(store);
    }

    /// Adds the cache of a user auth controller (one per scope; not waited for by
    /// [`Known::synced`]: only the flow starts from it, and checks what it finds).
    pub fn add_users(&self, store: Store<ConfluenceUserAuth>) {
        self.users.write().unwrap_or_else(|e| e.into_inner()).push(store);
    }

    /// True once every cache added so far holds its first list (at once when none was added),
    /// so that a reconcile at start does not take a cache still filling for the truth; and, with
    /// a warning, after [`SYNC_WAIT`] since first asked: a watch that cannot list (RBAC, an API
    /// server refusing) must not stop every reconcile, which then read what they need.
    ///
    /// Not a wait: a reconcile that finds the caches filling comes back shortly
    /// ([`RETRY_UNTIL_SYNCED`]). Waiting inside would hold the controller's concurrency slots,
    /// and with them the very watches that fill the caches.
    pub fn synced(&self) -> bool {
        use futures::FutureExt;
        if self.sync_timed_out.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        let ready = read(&self.secrets)
            .iter()
            .all(|store| store.wait_until_ready().now_or_never().is_some())
            && read(&self.installations)
                .iter()
                .all(|store| store.wait_until_ready().now_or_never().is_some());
        if ready {
            return true;
        }
        let first = *self.first_asked.get_or_init(tokio::time::Instant::now);
        if first.elapsed() >= SYNC_WAIT && !self.sync_timed_out.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(waited = ?SYNC_WAIT, "the Secret or installation caches have not listed yet; reconciling with reads from the API server meanwhile");
            return true;
        }
        false
    }

    /// The cached metadata of Secret `namespace/name`, if a watch holds it (only the operator's
    /// own Secrets are watched: a miss says nothing about whether the name is free).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        let key = ObjectRef::new(name).within(namespace);
        read(&self.secrets).iter().find_map(|store| store.get(&key))
    }

    /// The cached installation `namespace/name`. A miss may be a missing installation or one
    /// that does not fit its type: the caller reads it to tell which.
    pub fn installation(&self, namespace: &str, name: &str) -> Option<Arc<ConfluenceInstallation>> {
        let key = ObjectRef::new(name).within(namespace);
        read(&self.installations).iter().find_map(|store| store.get(&key))
    }

    /// Records that a reconcile wrote `kind` `namespace/name` over version `replaced` (`None`: it
    /// created it), which now has `resource_version`.
    pub fn wrote(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        replaced: Option<&str>,
        resource_version: Option<&str>,
    ) {
        self.record((kind, namespace, name), replaced, resource_version, false);
    }

    /// Records a write made outside the reconcilers (the callback storing a grant): its events
    /// wake the reconciler as any change does, but a pass handed the version it replaced is
    /// [`behind`](Self::behind) it, and comes back rather than decide on that.
    pub fn wrote_elsewhere(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        replaced: Option<&str>,
        resource_version: Option<&str>,
    ) {
        // Counted as echoed already: its event is a change like any other.
        self.record((kind, namespace, name), replaced, resource_version, true);
    }

    fn record(
        &self,
        (kind, namespace, name): (&str, &str, &str),
        replaced: Option<&str>,
        version: Option<&str>,
        echoed: bool,
    ) {
        let Some(version) = version else { return };
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        let write = OwnWrite {
            replaced: replaced.map(str::to_string),
            written: version.to_string(),
            at: tokio::time::Instant::now(),
            echoed,
        };
        locked(&self.own_writes).insert(key, write);
    }

    /// True when `cached_version` of `kind` `namespace/name` (as a cache showed it, or as a pass
    /// was handed it) is the version a reconcile's own write replaced, at most [`LAG_LIMIT`] ago:
    /// it is behind that write, and a pass deciding from it would redo or contradict it.
    pub fn behind(&self, kind: &str, namespace: &str, name: &str, cached_version: Option<&str>) -> bool {
        let Some(cached) = cached_version else { return false };
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        locked(&self.own_writes)
            .latest
            .get(&key)
            .is_some_and(|w| w.replaced.as_deref() == Some(cached) && w.at.elapsed() < LAG_LIMIT)
    }

    /// True (once) when a watch event of `kind` `namespace/name` at `resource_version` is the
    /// echo of a reconcile's own write: such an event need not wake the reconciler.
    pub fn is_own_write(&self, kind: &str, namespace: &str, name: &str, resource_version: Option<&str>) -> bool {
        let Some(version) = resource_version else { return false };
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        let mut writes = locked(&self.own_writes);
        match writes.latest.get_mut(&key) {
            Some(write) if write.written == version && !write.echoed => {
                write.echoed = true;
                true
            }
            _ => false,
        }
    }

    /// Forgets the writes of an object that was deleted.
    pub fn forget_writes(&self, kind: &str, namespace: &str, name: &str) {
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        locked(&self.own_writes).latest.remove(&key);
    }

    /// Client secret Secret `namespace/name` as read less than [`CLIENT_SECRET_TTL`] ago.
    pub fn recent_client_secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let mut secrets = locked(&self.client_secrets);
        let key = (namespace.to_string(), name.to_string());
        let (read_at, secret) = secrets.get(&key)?;
        if read_at.elapsed() >= CLIENT_SECRET_TTL {
            secrets.remove(&key);
            return None;
        }
        Some(secret.clone())
    }

    /// Remembers client secret Secret `namespace/name` as just read.
    pub fn remember_client_secret(&self, namespace: &str, name: &str, secret: Secret) {
        let mut secrets = locked(&self.client_secrets);
        // Expired entries of other apps go too: the map holds at most the apps of the last TTL.
        secrets.retain(|_, (read_at, _)| read_at.elapsed() < CLIENT_SECRET_TTL);
        secrets.insert(
            (namespace.to_string(), name.to_string()),
            (tokio::time::Instant::now(), Arc::new(secret)),
        );
    }

    /// Forgets client secret `namespace/name` (Atlassian refused it: read it again).
    pub fn forget_client_secret(&self, namespace: &str, name: &str) -> bool {
        locked(&self.client_secrets)
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some()
    }
}

/// A credential kind whose objects [`Known`] caches.
pub trait Cached: Sized {
    /// The cached object `namespace/name`, as a start for a write preconditioned on its
    /// resourceVersion (it may be behind the API server).
    fn cached(known: &Known, namespace: &str, name: &str) -> Option<Self>;
}

impl Cached for ConfluenceInstallation {
    fn cached(known: &Known, namespace: &str, name: &str) -> Option<Self> {
        known.installation(namespace, name).map(|cfi| Self::clone(&cfi))
    }
}

impl Cached for ConfluenceUserAuth {
    fn cached(known: &Known, namespace: &str, name: &str) -> Option<Self> {
        let key = ObjectRef::new(name).within(namespace);
        read(&known.users)
            .iter()
            .find_map(|store| store.get(&key))
            .map(|cfua| Self::clone(&cfua))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_cache_counts_as_behind_an_own_write_for_a_few_seconds_at_most() {
        let known = Known::default();
        known.wrote("ConfluenceUserAuth", "ns", "u", Some("1"), Some("2"));
        assert!(known.behind("ConfluenceUserAuth", "ns", "u", Some("1")));
        tokio::time::advance(LAG_LIMIT).await;
        assert!(
            !known.behind("ConfluenceUserAuth", "ns", "u", Some("1")),
            "a watch that never catches up holds nothing back"
        );
        known.wrote("ConfluenceUserAuth", "ns", "v", Some("3"), Some("4"));
        assert_eq!(locked(&known.own_writes).latest.len(), 1, "the old write was pruned");
    }

    #[tokio::test(start_paused = true)]
    async fn an_own_write_is_recognised_once_and_only_at_its_version() {
        let known = Known::default();
        known.wrote("Secret", "ns", "a", Some("6"), Some("7"));
        assert!(
            known.behind("Secret", "ns", "a", Some("6")),
            "a cache still at the replaced version"
        );
        assert!(!known.behind("Secret", "ns", "a", Some("7")));
        assert!(!known.behind("Secret", "ns", "b", Some("6")));
        assert!(!known.is_own_write("Secret", "ns", "a", Some("6")), "an older version");
        assert!(!known.is_own_write("Secret", "ns", "b", Some("7")), "another name");
        assert!(
            !known.is_own_write("ConfluenceUserAuth", "ns", "a", Some("7")),
            "another kind"
        );
        assert!(known.is_own_write("Secret", "ns", "a", Some("7")));
        assert!(
            !known.is_own_write("Secret", "ns", "a", Some("7")),
            "the echo is consumed"
        );
        assert!(
            known.behind("Secret", "ns", "a", Some("6")),
            "a pass holding the older object is still told, after the echo"
        );
        known.wrote("Secret", "ns", "a", None, Some("9"));
        assert!(!known.behind("Secret", "ns", "a", None));
        known.forget_writes("Secret", "ns", "a");
        assert!(!known.is_own_write("Secret", "ns", "a", Some("9")));
        known.wrote("Secret", "ns", "a", Some("9"), None);
        assert!(!known.is_own_write("Secret", "ns", "a", None));
        known.wrote_elsewhere("Secret", "ns", "c", Some("1"), Some("2"));
        assert!(
            !known.is_own_write("Secret", "ns", "c", Some("2")),
            "it wakes the reconciler"
        );
        assert!(known.behind("Secret", "ns", "c", Some("1")));
        assert!(!known.is_own_write("Secret", "ns", "a", None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_secret_is_reused_for_its_ttl_and_forgotten_on_demand() {
        let known = Known::default();
        assert!(known.recent_client_secret("ns", "app").is_none());
        known.remember_client_secret("ns", "app", Secret::default());
        assert!(known.recent_client_secret("ns", "app").is_some());
        assert!(known.recent_client_secret("other", "app").is_none());
        tokio::time::advance(CLIENT_SECRET_TTL - Duration::from_millis(1)).await;
        assert!(known.recent_client_secret("ns", "app").is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(known.recent_client_secret("ns", "app").is_none(), "expired");
        known.remember_client_secret("ns", "app", Secret::default());
        assert!(known.forget_client_secret("ns", "app"));
        assert!(known.recent_client_secret("ns", "app").is_none());
        assert!(!known.forget_client_secret("ns", "app"));
    }

    #[tokio::test(start_paused = true)]
    async fn caches_count_as_synced_once_listed_or_after_the_wait() {
        let known = Known::default();
        assert!(known.synced(), "no caches: nothing to wait for");
        assert!(known.secret("ns", "a").is_none());
        assert!(known.installation("ns", "a").is_none());

        let (store, mut writer) = kube::runtime::reflector::store::<PartialObjectMeta<Secret>>();
        let known = Known::default();
        known.add_secrets(store);
        assert!(!known.synced(), "not listed yet");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        assert!(known.synced());

        let (store, _writer) = kube::runtime::reflector::store::<PartialObjectMeta<Secret>>();
        let known = Known::default();
        known.add_secrets(store);
        assert!(!known.synced());
        tokio::time::advance(SYNC_WAIT).await;
        assert!(known.synced(), "a cache that never lists stops nobody past the wait");
    }

    #[tokio::test]
    async fn lookups_miss_without_caches() {
        let known = Known::default();
        assert!(known.secret("ns", "a").is_none());
        assert!(known.installation("ns", "a").is_none());
    }
}
