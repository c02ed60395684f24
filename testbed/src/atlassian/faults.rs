//! Fault injection and call counters, per endpoint. A test queues "the next N calls of this
//! endpoint answer 5xx / 429 with `Retry-After` / are delayed", or gives a share of every call
//! a fault ("30 % of token calls answer 503"), and reads how many calls each endpoint (and each
//! `grant_type` of `/oauth/token`) received. Control calls under `/_testbed` are neither counted
//! nor faulted.

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

/// One `/oauth/token` call with `grant_type=refresh_token`, as the stand-in saw it: what a
/// test needs to check backoff (no call of a family before the `Retry-After` it was given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshCall {
    /// When it arrived (the monotonic clock of the process; the stand-in's own clock may jump).
    pub at: std::time::Instant,
    /// The token family (one per consent) of the refresh token sent; `None` for a token the
    /// stand-in never issued (or none sent).
    pub family: Option<usize>,
    /// The account of that family.
    pub account_id: Option<String>,
    /// The injected fault it got, if any.
    pub fault: Option<Fault>,
    /// The HTTP status of the answer.
    pub status: u16,
}

/// How the bearer tokens presented to the gateway endpoints (accessible-resources, `/me`, the
/// Confluence API) fared: a test asserts nobody ever used an expired one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BearerCounters {
    /// Live tokens.
    pub accepted: u64,
    /// Requests without a bearer token.
    pub missing: u64,
    /// Tokens never issued.
    pub unknown: u64,
    /// Tokens past their expiry.
    pub expired: u64,
    /// Tokens of a revoked family.
    pub revoked: u64,
}

/// Queued faults, shares of calls that get a fault, and the counters.
#[derive(Debug)]
pub struct Faults {
    queues: BTreeMap<Endpoint, VecDeque<(u32, Fault)>>,
    /// Per endpoint, `(share, fault)`: a call draws once and gets the first fault whose
    /// cumulative share exceeds the draw (so the shares add up, at most to 1).
    ratios: BTreeMap<Endpoint, Vec<(f64, Fault)>>,
    /// State of the draw (splitmix64): random by default, fixed by [`Faults::seed`].
    rng: u64,
    counters: Counters,
}

impl Default for Faults {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // Without randomness the draws are still spread; only their order repeats.
        let _ = getrandom::fill(&mut seed);
        Faults {
            queues: BTreeMap::new(),
            ratios: BTreeMap::new(),
            rng: u64::from_le_bytes(seed),
            counters: Counters::default(),
        }
    }
}

impl Faults {
    /// From now on, a share `ratio` (0..=1) of the calls of `endpoint` get `fault`, on top of
    /// the shares already given (a call gets at most one of them; queued faults go first).
    pub fn fail_ratio(&mut self, endpoint: Endpoint, ratio: f64, fault: Fault) {
        if ratio.is_finite() && ratio > 0.0 {
            self.ratios.entry(endpoint).or_default().push((ratio.min(1.0), fault));
        }
    }

    /// Makes the draws of [`Faults::fail_ratio`] repeatable.
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed;
    }

    /// A uniform draw in `[0, 1)` (splitmix64).
    fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fault a share rule gives this call, if any.
    fn ratio_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        if self.ratios.get(&endpoint).is_none_or(Vec::is_empty) {
            return None;
        }
        let u = self.draw();
        let mut cumulative = 0.0;
        for (ratio, fault) in self.ratios.get(&endpoint)? {
            cumulative += ratio;
            if u < cumulative {
                return Some(*fault);
            }
        }
        None
    }

    /// The next `n` calls of `endpoint` (after those already queued) get `fault`.
    pub fn fail_next(&mut self, endpoint: Endpoint, n: u32, fault: Fault) {
        if n > 0 {
            self.queues.entry(endpoint).or_default().push_back((n, fault));
        }
    }

    /// Drops every queued fault and every share rule.
    pub fn clear(&mut self) {
        self.queues.clear();
        self.ratios.clear();
    }

    /// Counts a call and returns the fault it gets, if any.
    pub fn on_call(&mut self, endpoint: Endpoint, grant_type: Option<&str>) -> Option<Fault> {
        *self.counters.endpoints.entry(endpoint.name().to_owned()).or_default() += 1;
        if endpoint == Endpoint::Token {
            let g = grant_type.unwrap_or("missing").to_owned();
            *self.counters.grant_types.entry(g).or_default() += 1;
        }
        let Some((left, fault)) = self.queues.get_mut(&endpoint).and_then(|q| q.front_mut()) else {
            return self.ratio_fault(endpoint);
        };
        let fault = *fault;
        *left -= 1;
        if *left == 0
            && let Some(queue) = self.queues.get_mut(&endpoint)
        {
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

    #[test]
    fn shares_of_calls_get_their_faults_and_queued_faults_go_first() {
        let mut f = Faults::default();
        f.seed(42);
        f.fail_ratio(Endpoint::Token, 0.2, Fault::Status { status: 503 });
        f.fail_ratio(Endpoint::Token, 0.1, Fault::RateLimited { retry_after_secs: 2 });
        f.fail_next(Endpoint::Token, 3, Fault::Status { status: 500 });
        let got: Vec<_> = (0..10_003).map(|_| f.on_call(Endpoint::Token, None)).collect();
        assert_eq!(got[..3], [Some(Fault::Status { status: 500 }); 3]);
        let count = |fault: Fault| got[3..].iter().filter(|g| **g == Some(fault)).count();
        let unavailable = count(Fault::Status { status: 503 });
        let limited = count(Fault::RateLimited { retry_after_secs: 2 });
        let clean = got[3..].iter().filter(|g| g.is_none()).count();
        // 10,000 draws: the binomial spread is about 40 and 30 calls; 250 is over 6 of it.
        assert!((1750..=2250).contains(&unavailable), "{unavailable}");
        assert!((750..=1250).contains(&limited), "{limited}");
        assert_eq!(unavailable + limited + clean, 10_000);
        assert_eq!(count(Fault::Status { status: 500 }), 0, "a queued fault is used up");
        // Other endpoints are untouched; the same seed draws the same faults.
        assert_eq!(f.on_call(Endpoint::Me, None), None);
        let mut again = Faults::default();
        again.seed(42);
        again.fail_ratio(Endpoint::Token, 0.2, Fault::Status { status: 503 });
        again.fail_ratio(Endpoint::Token, 0.1, Fault::RateLimited { retry_after_secs: 2 });
        let repeat: Vec<_> = (0..10_000).map(|_| again.on_call(Endpoint::Token, None)).collect();
        assert_eq!(repeat, got[3..]);
        // Cleared: no fault any more.
        f.clear();
        assert!((0..1000).all(|_| f.on_call(Endpoint::Token, None).is_none()));
    }
}
