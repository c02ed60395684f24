//! Fault injection and call counters, per endpoint. A test queues "the next N calls of this
//! endpoint answer 5xx / 429 with `Retry-After` / are delayed", and reads how many calls each
//! endpoint (and each `grant_type` of `/oauth/token`) received. Control calls under `/_testbed`
//! are neither counted nor faulted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An Atlassian endpoint of the stand-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /authorize`.
    Authorize,
    /// `POST /oauth/token`.
    Token,
    /// `GET /oauth/token/accessible-resources`.
    AccessibleResources,
    /// `GET /me`.
    Me,
    /// `GET /ex/confluence/{cloudId}/wiki/rest/api/user/current`.
    ConfluenceUser,
    /// `GET /_edge/tenant_info` (and `/site/{host}/_edge/tenant_info`).
    TenantInfo,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Authorize,
        Endpoint::Token,
        Endpoint::AccessibleResources,
        Endpoint::Me,
        Endpoint::ConfluenceUser,
        Endpoint::TenantInfo,
    ];

    /// The name used in counters and in the HTTP control API.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Authorize => "authorize",
            Endpoint::Token => "token",
            Endpoint::AccessibleResources => "accessible_resources",
            Endpoint::Me => "me",
            Endpoint::ConfluenceUser => "confluence_user",
            Endpoint::TenantInfo => "tenant_info",
        }
    }
}

/// What an injected fault does to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer this HTTP status (meant for 5xx) with an error body in the endpoint's shape.
    Status {
        /// The status code.
        status: u16,
    },
    /// Answer 429 with `Retry-After: retry_after_secs`.
    RateLimited {
        /// Seconds in the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// Wait this long, then answer normally.
    Delay {
        /// Milliseconds to wait.
        millis: u64,
    },
}

impl Fault {
    /// A delay fault.
    pub fn delay(d: Duration) -> Fault {
        Fault::Delay {
            millis: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// How many calls each endpoint received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Calls per endpoint name (every endpoint is listed, zero included).
    pub endpoints: BTreeMap<String, u64>,
    /// `/oauth/token` calls per `grant_type` (`missing` when absent).
    pub grant_types: BTreeMap<String, u64>,
}

impl Counters {
    /// Calls of one endpoint.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.endpoints.get(endpoint.name()).copied().unwrap_or(0)
    }

    /// `/oauth/token` calls with one `grant_type`.
    pub fn grants(&self, grant_type: &str) -> u64 {
        self.grant_types.get(grant_type).copied().unwrap_or(0)
    }
}

/// Queued faults and the counters.
#[derive(Debug, Default)]
pub struct Faults {
    queues: BTreeMap<Endpoint, VecDeque<(u32, Fault)>>,
    counters: Counters,
}

impl Faults {
    /// The next `n` calls of `endpoint` (after those already queued) get `fault`.
    pub fn fail_next(&mut self, endpoint: Endpoint, n: u32, fault: Fault) {
        if n > 0 {
            self.queues.entry(endpoint).or_default().push_back((n, fault));
        }
    }

    /// Drops every queued fault.
    pub fn clear(&mut self) {
        self.queues.clear();
    }

    /// Counts a call and returns the fault it gets, if any.
    pub fn on_call(&mut self, endpoint: Endpoint, grant_type: Option<&str>) -> Option<Fault> {
        *self.counters.endpoints.entry(endpoint.name().to_owned()).or_default() += 1;
        if endpoint == Endpoint::Token {
            let g = grant_type.unwrap_or("missing").to_owned();
            *self.counters.grant_types.entry(g).or_default() += 1;
        }
        let queue = self.queues.get_mut(&endpoint)?;
        let (left, fault) = queue.front_mut()?;
        let fault = *fault;
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    /// A snapshot of the counters, with every endpoint listed.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        for e in Endpoint::ALL {
            c.endpoints.entry(e.name().to_owned()).or_default();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_and_calls_counted() {
        let mut f = Faults::default();
        f.fail_next(Endpoint::Token, 2, Fault::Status { status: 503 });
        f.fail_next(Endpoint::Token, 1, Fault::RateLimited { retry_after_secs: 7 });
        let got: Vec<_> = (0..4)
            .map(|_| f.on_call(Endpoint::Token, Some("refresh_token")))
            .collect();
        assert_eq!(
            got,
            [
                Some(Fault::Status { status: 503 }),
                Some(Fault::Status { status: 503 }),
                Some(Fault::RateLimited { retry_after_secs: 7 }),
                None
            ]
        );
        assert_eq!(f.on_call(Endpoint::Me, None), None);
        let c = f.counters();
        assert_eq!(c.calls(Endpoint::Token), 4);
        assert_eq!(c.calls(Endpoint::Me), 1);
        assert_eq!(c.calls(Endpoint::TenantInfo), 0);
        assert_eq!(c.grants("refresh_token"), 4);
    }
}
