//! Prometheus metrics (OpenMetrics text on `/metrics`). Names are a contract: the packaged
//! alerts use them.
//!
//! | Metric | Labels |
//! |---|---|
//! | `confluence_auth_refreshes_total` | `kind`, `result` (`success`, `transient_error`, `revoked`, `invalid_client`, `error`) |
//! | `confluence_auth_refresh_duration_seconds` (histogram) | `kind` |
//! | `confluence_auth_access_token_expiry_seconds` | `namespace`, `kind`, `name` |
//! | `confluence_auth_refresh_token_expiry_seconds` | `namespace`, `kind`, `name` |
//! | `confluence_auth_health_checks_total` | `kind`, `result` (`healthy`, `site_access_lost`, `unauthorized`, `error`) |
//! | `confluence_auth_oauth_callbacks_total` | `outcome` |
//! | `confluence_auth_reconcile_errors_total` | `kind`, `category` |
//! | `confluence_auth_leader` | (none): 1 while this replica holds the Lease |
//! | `confluence_auth_resources` | `kind`, `phase` |
//!
//! Per-resource series (the expiry gauges) exist only while the resource does: they are
//! computed at scrape time from a map the reconcilers fill and forget on deletion, so the value is
//! always "seconds from now" and a deleted resource leaves no stale series.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ObjectLabels {
    namespace: String,
    kind: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    kind: String,
    phase: String,
}

/// What the metrics know about one resource.
#[derive(Clone, Debug, Default)]
struct Tracked {
    phase: Option<String>,
    access_expires: Option<Timestamp>,
    refresh_expires: Option<Timestamp>,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    // 10 ms .. ~20 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

/// The operator's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    callbacks: Family<OutcomeLabels, Counter>,
    refreshes: Family<ResultLabels, Counter>,
    refresh_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    health_checks: Family<ResultLabels, Counter>,
    access_expiry: Family<ObjectLabels, FloatGauge>,
    refresh_expiry: Family<ObjectLabels, FloatGauge>,
    leader: Gauge,
    resources: Family<PhaseLabels, Gauge>,
    tracked: Arc<Mutex<HashMap<ObjectLabels, Tracked>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("confluence_auth");
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            reconcile_errors: Family::default(),
            callbacks: Family::default(),
            refreshes: Family::default(),
            refresh_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            health_checks: Family::default(),
            access_expiry: Family::default(),
            refresh_expiry: Family::default(),
            leader: Gauge::default(),
            resources: Family::default(),
            tracked: Arc::default(),
        };
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "oauth_callbacks",
            "OAuth callback answers, by outcome",
            metrics.callbacks.clone(),
        );
        registry.register(
            "refreshes",
            "Token renewals (refresh or client-credentials mint), by kind and result",
            metrics.refreshes.clone(),
        );
        registry.register(
            "refresh_duration_seconds",
            "Time taken by one token renewal call, by kind",
            metrics.refresh_duration.clone(),
        );
        registry.register(
            "health_checks",
            "Health checks (accessible-resources with the current token), by kind and result",
            metrics.health_checks.clone(),
        );
        registry.register(
            "access_token_expiry_seconds",
            "Seconds until the stored access token expires (negative: expired)",
            metrics.access_expiry.clone(),
        );
        registry.register(
            "refresh_token_expiry_seconds",
            "Seconds until the refresh token's absolute (365-day) expiry",
            metrics.refresh_expiry.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and reconciles",
            metrics.leader.clone(),
        );
        registry.register(
            "resources",
            "Resources this replica reconciles, by kind and phase",
            metrics.resources.clone(),
        );
        Self {
            registry: Arc::new(registry),
            ..metrics
        }
    }
}

fn object(namespace: &str, kind: &str, name: &str) -> ObjectLabels {
    ObjectLabels {
        namespace: namespace.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

impl Metrics {
    /// Counts a failed reconcile.
    pub fn reconcile_error(&self, kind: &str, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
                category: category.to_string(),
            })
            .inc();
    }

    /// Counts a callback answer.
    pub fn callback(&self, outcome: &'static str) {
        self.callbacks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one renewal and its duration.
    pub fn refresh(&self, kind: &str, result: &'static str, seconds: f64) {
        self.refreshes
            .get_or_create(&ResultLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.refresh_duration
            .get_or_create(&KindLabels { kind: kind.to_string() })
            .observe(seconds);
    }

    /// Counts one health check.
    pub fn health_check(&self, kind: &str, result: &'static str) {
        self.health_checks
            .get_or_create(&ResultLabels {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Records what a reconcile saw of a resource.
    pub fn observe(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        phase: Option<&str>,
        access_expires: Option<Timestamp>,
        refresh_expires: Option<Timestamp>,
    ) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let entry = tracked.entry(object(namespace, kind, name)).or_default();
        entry.phase = phase.map(str::to_string);
        entry.access_expires = access_expires;
        entry.refresh_expires = refresh_expires;
    }

    /// Forgets a deleted resource: its series disappear from the next scrape.
    pub fn forget(&self, namespace: &str, kind: &str, name: &str) {
        let labels = object(namespace, kind, name);
        self.tracked.lock().unwrap_or_else(|e| e.into_inner()).remove(&labels);
        self.access_expiry.remove(&labels);
        self.refresh_expiry.remove(&labels);
    }

    /// Forgets every resource (this replica stopped leading: another one reports them).
    pub fn forget_all(&self) {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.access_expiry.clear();
        self.refresh_expiry.clear();
        self.resources.clear();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text, with the per-resource gauges computed for now.
    pub fn encode(&self) -> String {
        self.refresh_gauges(Timestamp::now());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn refresh_gauges(&self, now: Timestamp) {
        let tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = |t: Timestamp| t.duration_since(now).as_secs_f64();
        let mut phases: BTreeMap<(String, String), i64> = BTreeMap::new();
        self.resources.clear();
        for (labels, t) in tracked.iter() {
            match t.access_expires {
                Some(at) => {
                    self.access_expiry.get_or_create(labels).set(seconds(at));
                }
                None => {
                    self.access_expiry.remove(labels);
                }
            }
            match t.refresh_expires {
                Some(at) => {
                    self.refresh_expiry.get_or_create(labels).set(seconds(at));
                }
                None => {
                    self.refresh_expiry.remove(labels);
                }
            }
            if let Some(phase) = &t.phase {
                *phases.entry((labels.kind.clone(), phase.clone())).or_default() += 1;
            }
        }
        for ((kind, phase), count) in phases {
            self.resources.get_or_create(&PhaseLabels { kind, phase }).set(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_resource_series_follow_the_resource_and_count_down() {
        let metrics = Metrics::default();
        let soon = Timestamp::now() + jiff::SignedDuration::from_secs(120);
        metrics.observe("ns", "ConfluenceUserAuth", "alice", Some("Ready"), Some(soon), None);
        metrics.observe("ns", "ConfluenceUserAuth", "bob", Some("Ready"), None, None);
        metrics.refresh("ConfluenceUserAuth", "success", 0.05);
        metrics.health_check("ConfluenceUserAuth", "healthy");
        metrics.set_leader(true);
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("confluence_auth_access_token_expiry_seconds{"))
            .unwrap();
        assert!(
            line.contains(r#"namespace="ns""#) && line.contains(r#"name="alice""#),
            "{line}"
        );
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((100.0..=120.0).contains(&value), "{value}");
        for expected in [
            r#"confluence_auth_resources{kind="ConfluenceUserAuth",phase="Ready"} 2"#,
            r#"confluence_auth_refreshes_total{kind="ConfluenceUserAuth",result="success"} 1"#,
            r#"confluence_auth_health_checks_total{kind="ConfluenceUserAuth",result="healthy"} 1"#,
            "confluence_auth_leader 1",
            "confluence_auth_refresh_duration_seconds_count{kind=\"ConfluenceUserAuth\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        metrics.forget("ns", "ConfluenceUserAuth", "alice");
        let text = metrics.encode();
        assert!(!text.contains(r#"name="alice""#), "{text}");
        assert!(text.contains(r#"confluence_auth_resources{kind="ConfluenceUserAuth",phase="Ready"} 1"#));
    }
}
