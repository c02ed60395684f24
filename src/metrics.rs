//! Prometheus metrics (OpenMetrics text) with bounded labels only: kinds, outcomes, categories.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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

/// The operator's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    callbacks: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("confluence_auth");
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let callbacks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and error category",
            reconcile_errors.clone(),
        );
        registry.register(
            "oauth_callbacks",
            "OAuth callback answers, by outcome",
            callbacks.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconcile_errors,
            callbacks,
        }
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

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
