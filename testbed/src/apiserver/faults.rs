//! Fault knobs for tests: fail the next N matching requests, add latency, drop watches.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone)]
struct Rule {
    verb: Option<String>,
    resource: Option<String>,
    remaining: u32,
    status: u16,
}

/// The knobs; shared by every request.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    latency: Mutex<Duration>,
    drops: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            latency: Mutex::new(Duration::ZERO),
            drops: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// The next `n` requests with this verb (`get`, `list`, `watch`, `create`, `update`,
    /// `patch`, `delete`; `None` = any) on this resource plural (`None` = any) answer `status`.
    pub fn fail_next(&self, verb: Option<&str>, resource: Option<&str>, n: u32, status: u16) {
        let rule = Rule {
            verb: verb.map(str::to_string),
            resource: resource.map(str::to_string),
            remaining: n,
            status,
        };
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).push(rule);
    }

    /// Every request waits this long first.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Closes every open watch stream now.
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Removes every rule and the latency.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.set_latency(Duration::ZERO);
    }

    pub(super) fn latency(&self) -> Duration {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// The status to fail this request with, consuming one use of the first matching rule.
    pub(super) fn take(&self, verb: &str, resource: &str) -> Option<u16> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let rule = rules.iter_mut().find(|r| {
            r.remaining > 0
                && r.verb.as_deref().is_none_or(|v| v == verb)
                && r.resource.as_deref().is_none_or(|x| x == resource)
        })?;
        rule.remaining -= 1;
        let status = rule.status;
        rules.retain(|r| r.remaining > 0);
        Some(status)
    }
}
