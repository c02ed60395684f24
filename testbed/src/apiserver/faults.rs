//! Fault knobs for tests: fail the next N matching requests, refuse matching requests for a
//! while, add latency, drop watches.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug, Clone)]
struct Rule {
    verb: Option<String>,
    resource: Option<String>,
    remaining: u32,
    status: u16,
}

/// Matching requests answer `status` until `until`.
#[derive(Debug, Clone)]
struct Window {
    verbs: Vec<String>,
    resources: Vec<String>,
    status: u16,
    until: Instant,
}

impl Window {
    fn matches(&self, verb: &str, resource: &str, now: Instant) -> bool {
        now < self.until && self.verbs.iter().any(|v| v == verb) && self.resources.iter().any(|r| r == resource)
    }
}

/// The knobs; shared by every request.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    windows: Mutex<Vec<Window>>,
    latency: Mutex<Duration>,
    drops: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::new(Vec::new()),
            windows: Mutex::new(Vec::new()),
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

    /// For the next `duration`, every request with one of `verbs` (as in [`Faults::fail_next`])
    /// on one of `resources` (plurals, e.g. `secrets`; a subresource counts as its resource)
    /// answers `status`: the API server refusing writes for a while, e.g. etcd out of space or
    /// an admission webhook down. Windows add up; [`Faults::clear`] ends them.
    pub fn refuse_for(&self, verbs: &[&str], resources: &[&str], status: u16, duration: Duration) {
        let window = Window {
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            resources: resources.iter().map(|r| r.to_string()).collect(),
            status,
            until: Instant::now() + duration,
        };
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).push(window);
    }

    /// Every request waits this long first.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Closes every open watch stream now.
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Removes every rule, every refusal window and the latency.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|w| now < w.until);
        if let Some(window) = windows.iter().find(|w| w.matches(verb, resource, now)) {
            return Some(window.status);
        }
        drop(windows);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_window_refuses_matching_requests_until_it_ends() {
        let faults = Faults::default();
        faults.refuse_for(&["update", "create"], &["secrets"], 503, Duration::from_secs(3600));
        faults.fail_next(Some("update"), Some("secrets"), 1, 409);
        assert_eq!(faults.take("update", "secrets"), Some(503));
        assert_eq!(faults.take("create", "secrets"), Some(503));
        assert_eq!(faults.take("get", "secrets"), None);
        assert_eq!(faults.take("update", "configmaps"), None);
        // An ended window refuses nothing; the queued rule was kept for after it.
        faults.refuse_for(&["patch"], &["leases"], 500, Duration::ZERO);
        assert_eq!(faults.take("patch", "leases"), None);
        faults.windows.lock().unwrap().retain(|w| w.status != 503);
        assert_eq!(faults.take("update", "secrets"), Some(409));
        assert_eq!(faults.take("update", "secrets"), None);
        // clear() ends windows too.
        faults.refuse_for(&["delete"], &["secrets"], 500, Duration::from_secs(3600));
        faults.clear();
        assert_eq!(faults.take("delete", "secrets"), None);
    }
}
