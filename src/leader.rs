//! Leader election on a `coordination.k8s.io` Lease in the operator namespace (DESIGN.md
//! section 4, step 8), with `kube-lease-manager`: only the leader runs the controllers, so a
//! refresh token is never used by two replicas at once. Every replica serves the web server.
//!
//! Losing the Lease aborts the controllers at once (no graceful drain: a reconcile in flight
//! is cut, and the next leader starts from what is stored). A clean shutdown stops the
//! controllers first, then releases the Lease so a successor takes over without waiting.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

use crate::metrics::Metrics;
use crate::webhook::Readiness;

/// How often a replica waiting for the Lease looks whether another one holds it.
const FOLLOWER_CHECK: Duration = Duration::from_secs(1);

/// True when the Lease names another holder and was renewed within its duration.
async fn held_by_another(leases: &Api<Lease>, config: &LeaseConfig) -> bool {
    let Ok(Some(lease)) = leases.get_opt(&config.name).await else {
        return false;
    };
    let Some(spec) = lease.spec else { return false };
    let other = spec
        .holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty() && h != config.identity);
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    let lasts = jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    other && renewed.is_some_and(|at| at + lasts > jiff::Timestamp::now())
}

/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "confluence-auth-operator";

/// Where and how long the Lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (`holderIdentity`).
    pub identity: String,
    /// How long a Lease stays valid without renewal; a successor waits at most this long.
    pub duration: Duration,
}

/// Why leader election stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created.
    #[error("leader election failed: {0}")]
    Lease(#[from] LeaseManagerError),
}

/// A fresh identity for this replica: the pod name (`HOSTNAME`) plus a random suffix, so a
/// restarted pod with the same name does not inherit its predecessor's Lease.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "confluence-auth-operator".into());
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!("{host}-{}", hex::encode(random))
}

/// Runs `controllers()` while this replica holds the Lease, until `shutdown` resolves.
///
/// `controllers` receives a future that resolves when they must stop gracefully (shutdown);
/// losing the Lease drops them instead.
pub async fn run_while_leading<F, Fut>(
    client: kube::Client,
    config: LeaseConfig,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut controllers: F,
) -> Result<(), LeaderError>
where
    F: FnMut(tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let seconds = config.duration.as_secs().max(3);
    let grace = (seconds / 3).max(1);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(seconds)
        .with_grace(grace)
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    tokio::pin!(shutdown);
    metrics.set_leader(false);
    tracing::info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "waiting for the leader Lease");
    'outer: loop {
        // Wait to lead; meanwhile a current Lease held by another replica makes this one a
        // ready follower.
        let mut check = tokio::time::interval(FOLLOWER_CHECK);
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = &mut shutdown => break 'outer,
                changed = leading.changed() => if changed.is_err() { break 'outer },
                _ = check.tick() => {
                    if held_by_another(&leases, &config).await {
                        readiness.set_follower();
                    }
                }
            }
        }
        tracing::info!(identity = %config.identity, "acquired the leader Lease: reconciling");
        readiness.set_leader_syncing();
        metrics.set_leader(true);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let mut running = tokio::spawn(controllers(stop_rx));
        let lost = loop {
            tokio::select! {
                _ = &mut shutdown => break false,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() { break true; }
                }
                _ = &mut running => break true,
            }
        };
        metrics.set_leader(false);
        metrics.forget_all();
        if lost {
            readiness.set_follower();
            tracing::warn!(identity = %config.identity, "lost the leader Lease: stopped reconciling");
            running.abort();
            let _ = running.await;
            continue;
        }
        let _ = stop_tx.send(());
        let _ = running.await;
        break;
    }
    // Dropping the receiver makes the manager release the Lease and end.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the Lease task failed"),
        Err(_) => tracing::warn!("releasing the leader Lease timed out"),
    }
    Ok(())
}
