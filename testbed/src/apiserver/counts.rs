//! Requests counted by verb and resource, the way a real server's `apiserver_request_total`
//! metric counts them: tests and benches read what an operation cost ("three writes per
//! refresh") without scanning the request log.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The verbs that change something.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// Request counts keyed by `(verb, resource)`, where the verb is Kubernetes' (`get`, `list`,
/// `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`) and the resource is the
/// plural, with the subresource after a slash as RBAC writes it (`secrets`,
/// `confluenceuserauths/status`). Only requests for a served resource are counted (not
/// discovery, not unknown paths); a request an injected fault refused is counted too (it was
/// made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// Requests with `verb` on `resource` (`plural` or `plural/subresource`).
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Requests with any of `verbs` on resources `matching` (a resource, with or without its
    /// subresource: `confluenceuserauths` also counts `confluenceuserauths/status`).
    pub fn sum(&self, verbs: &[&str], matching: impl Fn(&str) -> bool) -> u64 {
        self.0
            .iter()
            .filter(|((verb, resource), _)| verbs.contains(&verb.as_str()) && matching(resource))
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes ([`WRITE_VERBS`]) on resources `matching`.
    pub fn writes(&self, matching: impl Fn(&str) -> bool) -> u64 {
        self.sum(&WRITE_VERBS, matching)
    }

    /// What was counted after `earlier` (a snapshot of the same server taken before).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        let mut diff = BTreeMap::new();
        for (key, n) in &self.0 {
            let before = earlier.0.get(key).copied().unwrap_or(0);
            if *n > before {
                diff.insert(key.clone(), n - before);
            }
        }
        RequestCounts(diff)
    }

    /// Every non-zero counter: `((verb, resource), count)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.0.iter().map(|((v, r), n)| (v.as_str(), r.as_str(), *n))
    }
}

/// The live counters of one server.
#[derive(Debug, Default)]
pub struct Counter(Mutex<RequestCounts>);

impl Counter {
    /// Counts one request.
    pub fn count(&self, verb: &str, plural: &str, subresource: Option<&str>) {
        let resource = match subresource {
            Some(sub) => format!("{plural}/{sub}"),
            None => plural.to_string(),
        };
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts.0.entry((verb.to_string(), resource)).or_default() += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_verb_and_resource_with_subresources_apart() {
        let counter = Counter::default();
        counter.count("get", "secrets", None);
        counter.count("update", "secrets", None);
        counter.count("update", "secrets", None);
        counter.count("update", "confluenceuserauths", Some("status"));
        counter.count("list", "confluenceuserauths", None);
        let counts = counter.snapshot();
        assert_eq!(counts.get("update", "secrets"), 2);
        assert_eq!(counts.get("get", "secrets"), 1);
        assert_eq!(counts.get("update", "confluenceuserauths/status"), 1);
        assert_eq!(counts.get("update", "confluenceuserauths"), 0);
        assert_eq!(counts.get("delete", "secrets"), 0);
        assert_eq!(counts.writes(|_| true), 3);
        assert_eq!(counts.writes(|r| r.starts_with("confluenceuserauths")), 1);
        assert_eq!(counts.sum(&["get", "list"], |_| true), 2);
    }

    #[test]
    fn since_keeps_only_what_came_after_the_snapshot() {
        let counter = Counter::default();
        counter.count("update", "secrets", None);
        let before = counter.snapshot();
        counter.count("update", "secrets", None);
        counter.count("create", "events", None);
        let diff = counter.snapshot().since(&before);
        assert_eq!(diff.get("update", "secrets"), 1);
        assert_eq!(diff.get("create", "events"), 1);
        assert_eq!(
            diff.iter().collect::<Vec<_>>(),
            vec![("create", "events", 1), ("update", "secrets", 1)]
        );
        assert_eq!(before.since(&before), RequestCounts::default());
    }
}
