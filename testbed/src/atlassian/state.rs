//! The stand-in's mutable state behind one lock: the world, the token store, the fault queues
//! and counters, the controllable clock and the per-test knobs. Both the Rust API
//! ([`super::StandIn`]) and the HTTP control API (`/_testbed/...`) act through these methods.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::faults::{BearerCounters, Faults, RefreshCall};
use super::oauth::AuthRequest;
use super::tokens::{DEFAULT_ACCESS_LIFETIME_SECS, TokenStore};
use super::world::World;

/// The state shared by the server tasks and the handle.
pub(crate) type Shared = Arc<Mutex<State>>;

/// Locks the state; a poisoned lock (a panicked holder) is still usable.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the stand-in knows.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) world: World,
    pub(crate) tokens: TokenStore,
    pub(crate) faults: Faults,
    /// The clock: real time plus this offset, or a frozen instant plus it.
    clock_offset: SignedDuration,
    frozen_at: Option<Timestamp>,
    /// Lifetime of 3LO access tokens, seconds.
    pub(crate) access_lifetime: i64,
    /// Lifetime of client-credentials access tokens, seconds.
    pub(crate) service_lifetime: i64,
    /// Who consents at `/authorize` (default: the first account added).
    pub(crate) consenting: Option<String>,
    /// The site the next consent picks (then cleared; default: the account's first site).
    pub(crate) consent_site_next: Option<String>,
    /// Whether the next consent is declined.
    pub(crate) decline_next: bool,
    /// A scope the next consent leaves out of the grant (then cleared).
    pub(crate) withhold_next: Option<String>,
    /// Whether `/authorize` shows a consent page instead of consenting at once.
    pub(crate) consent_page: bool,
    /// Authorization requests waiting on the consent page, by request id.
    pub(crate) pending: HashMap<String, AuthRequest>,
    /// Every refresh call, oldest first.
    pub(crate) refresh_calls: Vec<RefreshCall>,
    /// Bearer tokens presented to the gateway endpoints, by outcome.
    pub(crate) bearer: BearerCounters,
}

impl Default for State {
    fn default() -> Self {
        State {
            world: World::default(),
            tokens: TokenStore::default(),
            faults: Faults::default(),
            clock_offset: SignedDuration::ZERO,
            frozen_at: None,
            access_lifetime: DEFAULT_ACCESS_LIFETIME_SECS,
            service_lifetime: DEFAULT_ACCESS_LIFETIME_SECS,
            consenting: None,
            consent_site_next: None,
            decline_next: false,
            withhold_next: None,
            consent_page: false,
            pending: HashMap::new(),
            refresh_calls: Vec::new(),
            bearer: BearerCounters::default(),
        }
    }
}

/// Seconds in a duration, saturating.
pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl State {
    /// The stand-in's current time.
    pub(crate) fn now(&self) -> Timestamp {
        let base = self.frozen_at.unwrap_or_else(Timestamp::now);
        base.checked_add(self.clock_offset).unwrap_or(Timestamp::MAX)
    }

    /// Moves the clock forward.
    pub(crate) fn advance_clock(&mut self, by: Duration) {
        let by = SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX);
        self.clock_offset = self.clock_offset.saturating_add(by);
    }

    /// Stops the clock at its current time: from now on only `advance_clock` moves it.
    pub(crate) fn freeze_clock(&mut self) {
        if self.frozen_at.is_none() {
            self.frozen_at = Some(Timestamp::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let mut st = State::default();
        st.freeze_clock();
        let t0 = st.now();
        assert_eq!(st.now(), t0);
        st.advance_clock(Duration::from_secs(90));
        assert_eq!(st.now().duration_since(t0), SignedDuration::from_secs(90));
        // Freezing again keeps the instant.
        st.freeze_clock();
        assert_eq!(st.now().duration_since(t0), SignedDuration::from_secs(90));
    }

    #[test]
    fn a_running_clock_carries_the_offset() {
        let mut st = State::default();
        st.advance_clock(Duration::from_secs(86_400));
        let ahead = st.now().duration_since(Timestamp::now());
        assert!(ahead > SignedDuration::from_secs(86_300), "{ahead:?}");
    }
}
