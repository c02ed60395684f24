//! PURE: what a credential needs next, decided from the clock, the stored token set and the
//! policy. No I/O here; the reconcilers act on the answer.
//!
//! - Refresh (or mint, for client credentials) at `expiresAt - lead`, where
//!   `lead = min(refreshBefore, lifetime / 3)` with a per-resource jitter of ±10 % of the lead,
//!   so a fleet does not refresh in one burst. The jitter comes from a stable hash of the
//!   resource's uid: one resource always gets the same offset, and a restart does not move it.
//! - Health checks every `healthCheckInterval`, counted from the last check or the grant.
//! - `ReauthorizationDue` from 14 days before the refresh token's absolute expiry.
//! - Nothing due: wait until the earliest of those instants (never a negative delay). A wait is
//!   at most [`MAX_WAIT`] so a lost event cannot park a credential for long.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// A refresh token dies 365 days after the first consent, whatever happens.
pub const REFRESH_TOKEN_MAX_AGE: SignedDuration = SignedDuration::from_hours(365 * 24);
/// From this long before the refresh token's absolute expiry, a new consent is due.
pub const REAUTHORIZATION_WINDOW: SignedDuration = SignedDuration::from_hours(14 * 24);
/// Longest wait between two looks at a credential.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Jitter: at most this fraction of the lead, either way.
pub const JITTER_FRACTION: f64 = 0.10;

/// How a credential is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// With the rotating refresh token (authorization code grants).
    Refresh,
    /// By minting a new token with the client credentials (service accounts).
    Mint,
}

/// What the planner needs from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `refreshBefore`.
    pub refresh_before: Duration,
    /// `healthCheckInterval`.
    pub health_check_interval: Duration,
    /// Refresh or mint.
    pub renewal: Renewal,
}

/// What the planner needs from the stored token set and status (no secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// When the access token was obtained.
    pub obtained_at: Timestamp,
    /// When the access token expires.
    pub expires_at: Timestamp,
    /// When the grant was consented (the refresh token dies 365 days later).
    pub consented_at: Timestamp,
    /// The last health check, if any (`status.lastHealthCheckTime`).
    pub last_health_check: Option<Timestamp>,
}

impl Facts {
    /// When the refresh token dies whatever happens.
    pub fn refresh_token_expires_at(&self) -> Timestamp {
        self.consented_at + REFRESH_TOKEN_MAX_AGE
    }

    /// True when the grant is newer than the last health check: the consent itself proved the
    /// site was reachable, so it counts as a successful check (and is announced once).
    ///
    /// Compared in whole seconds: Kubernetes stores `lastHealthCheckTime` without fractions.
    pub fn fresh_grant(&self) -> bool {
        self.last_health_check
            .is_none_or(|t| t.as_second() < self.consented_at.as_second())
    }
}

/// The next action for one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing stored, or the grant is past its absolute expiry: someone must consent.
    NeedsConsent,
    /// Refresh with the refresh token now.
    RefreshNow,
    /// Mint a new token with the client credentials now.
    Mint,
    /// Check the token against `accessible-resources` now.
    HealthCheck,
    /// Nothing is due: look again at this instant.
    WaitUntil(Timestamp),
}

/// The planner's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// What to do now.
    pub next: Next,
    /// When the access token is (or was) due for renewal (`status.nextRefreshTime`).
    pub refresh_at: Option<Timestamp>,
    /// The refresh token dies within [`REAUTHORIZATION_WINDOW`].
    pub reauthorization_due: bool,
}

/// A deterministic jitter in `[-1, 1]` (scaled by [`JITTER_FRACTION`] of the lead).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter(f64);

impl Jitter {
    /// No jitter.
    pub const NONE: Jitter = Jitter(0.0);

    /// A unit value, clamped to `[-1, 1]`.
    pub fn unit(value: f64) -> Self {
        Jitter(if value.is_finite() { value.clamp(-1.0, 1.0) } else { 0.0 })
    }

    /// A stable value for a resource (FNV-1a of its uid), the same on every replica and restart.
    pub fn for_key(key: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Map to [-1, 1].
        Jitter::unit((hash % 2001) as f64 / 1000.0 - 1.0)
    }

    /// The unit value.
    pub fn value(self) -> f64 {
        self.0
    }
}

/// The lead actually used: `min(refreshBefore, lifetime / 3)`.
pub fn lead(refresh_before: Duration, obtained_at: Timestamp, expires_at: Timestamp) -> SignedDuration {
    let lifetime = expires_at.duration_since(obtained_at).max(SignedDuration::ZERO);
    let refresh_before = SignedDuration::try_from(refresh_before).unwrap_or(SignedDuration::MAX);
    refresh_before.min(lifetime / 3)
}

/// When to refresh: `expiresAt - lead ± 10 % of lead`, never after expiry, never before the
/// token was obtained.
pub fn refresh_at(facts: &Facts, refresh_before: Duration, jitter: Jitter) -> Timestamp {
    let lead = lead(refresh_before, facts.obtained_at, facts.expires_at);
    let jittered = lead.as_secs_f64() * (1.0 + JITTER_FRACTION * jitter.value());
    let at = facts.expires_at - SignedDuration::from_secs_f64(jittered.max(0.0));
    at.clamp(facts.obtained_at.min(facts.expires_at), facts.expires_at)
}

/// Decides what a credential needs at `now`.
pub fn plan(now: Timestamp, facts: Option<&Facts>, policy: &Policy, jitter: Jitter) -> Plan {
    let Some(facts) = facts else {
        return Plan {
            next: Next::NeedsConsent,
            refresh_at: None,
            reauthorization_due: false,
        };
    };
    let refresh_at = refresh_at(facts, policy.refresh_before, jitter);
    let (reauthorization_due, grant_dead) = match policy.renewal {
        Renewal::Refresh => {
            let dies = facts.refresh_token_expires_at();
            (now >= dies - REAUTHORIZATION_WINDOW, now >= dies)
        }
        // Client credentials never need a person.
        Renewal::Mint => (false, false),
    };
    let plan = |next| Plan {
        next,
        refresh_at: Some(refresh_at),
        reauthorization_due,
    };
    if grant_dead {
        return plan(Next::NeedsConsent);
    }
    if now >= refresh_at {
        return plan(match policy.renewal {
            Renewal::Refresh => Next::RefreshNow,
            Renewal::Mint => Next::Mint,
        });
    }
    let interval = SignedDuration::try_from(policy.health_check_interval).unwrap_or(SignedDuration::MAX);
    let checked = match facts.last_health_check {
        Some(last) if !facts.fresh_grant() => last,
        _ => facts.consented_at,
    };
    let health_at = checked.checked_add(interval).unwrap_or(Timestamp::MAX);
    if now >= health_at {
        return plan(Next::HealthCheck);
    }
    let mut wake = refresh_at.min(health_at);
    if policy.renewal == Renewal::Refresh && !reauthorization_due {
        wake = wake.min(facts.refresh_token_expires_at() - REAUTHORIZATION_WINDOW);
    }
    plan(Next::WaitUntil(wake))
}

/// The delay until `at`, never negative, at most [`MAX_WAIT`].
pub fn delay_until(now: Timestamp, at: Timestamp) -> Duration {
    let delay = at.duration_since(now);
    if delay <= SignedDuration::ZERO {
        return Duration::ZERO;
    }
    Duration::try_from(delay).unwrap_or(MAX_WAIT).min(MAX_WAIT)
}

/// Backoff for a failed refresh or health check: exponential from 1 s (×2 per attempt, at most
/// 5 minutes) with ±20 % jitter, never shorter than Atlassian's `Retry-After`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>, jitter: Jitter) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.min(9));
    let capped = base.min(Duration::from_secs(300));
    let jittered = capped.as_secs_f64() * (1.0 + 0.2 * jitter.value());
    let delay = Duration::from_secs_f64(jittered.max(0.1));
    delay.max(retry_after.unwrap_or(Duration::ZERO))
}

/// Shortest retry [`retry_delay`] shortens a backoff to, so a token about to expire is not
/// hammered.
pub const MIN_RETRY: Duration = Duration::from_millis(500);

/// The wait before retrying a failed renewal (or the write of its result) while the access
/// token pods read expires at `expires_at`: the [`backoff`], but at most a third of the time the
/// token has left (never under [`MIN_RETRY`]), so several attempts still fit before it expires
/// (about eight in the last 10 s), and never shorter than Atlassian's `Retry-After`. An expired
/// token gets the plain backoff.
pub fn retry_delay(
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: Jitter,
    now: Timestamp,
    expires_at: Timestamp,
) -> Duration {
    let delay = backoff(attempt, retry_after, jitter);
    let Ok(left) = Duration::try_from(expires_at.duration_since(now)) else {
        return delay;
    };
    if left.is_zero() {
        return delay;
    }
    delay
        .min((left / 3).max(MIN_RETRY))
        .max(retry_after.unwrap_or(Duration::ZERO))
}

/// True when a retry after `delay` would come too late: the access token expires first.
pub fn expires_before_retry(now: Timestamp, expires_at: Timestamp, delay: Duration) -> bool {
    let retry = now + SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX);
    retry >= expires_at
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    // Far from expiry: the plain backoff (1 s, 2 s, 4 s, ... from attempt 0).
    #[case::far_from_expiry(3, None, 3600, secs(8))]
    #[case::retry_after_honoured(0, Some(secs(30)), 3600, secs(30))]
    // 9 s left: the 16 s backoff shrinks to a third of it, so attempts keep fitting.
    #[case::capped_to_a_third_of_what_is_left(4, None, 9, secs(3))]
    #[case::small_backoff_not_stretched(1, None, 9, secs(2))]
    #[case::expired_gets_the_plain_backoff(4, None, 0, secs(16))]
    // Retry-After wins even when the token dies first (the caller then reports Degraded).
    #[case::retry_after_beyond_expiry(4, Some(secs(20)), 9, secs(20))]
    fn retry_delays(
        #[case] attempt: u32,
        #[case] retry_after: Option<Duration>,
        #[case] left_secs: i64,
        #[case] want: Duration,
    ) {
        let now = at(0);
        let expires = at(left_secs);
        assert_eq!(retry_delay(attempt, retry_after, Jitter::NONE, now, expires), want);
    }

    #[test]
    fn retry_delay_floor_applies_when_a_third_of_what_is_left_is_tiny() {
        let now = at(0);
        let expires = now + SignedDuration::from_millis(900);
        assert_eq!(retry_delay(5, None, Jitter::NONE, now, expires), MIN_RETRY);
        // Expired already: the plain backoff (nothing left to protect).
        assert_eq!(retry_delay(5, None, Jitter::NONE, at(10), at(5)), secs(32));
    }

    const T0: i64 = 1_800_000_000;

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn policy(refresh_before: u64, health: u64, renewal: Renewal) -> Policy {
        Policy {
            refresh_before: secs(refresh_before),
            health_check_interval: secs(health),
            renewal,
        }
    }

    /// A token obtained at `obtained`, living `lifetime` seconds, consented at `consented`.
    fn facts(obtained: i64, lifetime: i64, consented: i64, checked: Option<i64>) -> Facts {
        Facts {
            obtained_at: at(obtained),
            expires_at: at(obtained + lifetime),
            consented_at: at(consented),
            last_health_check: checked.map(at),
        }
    }

    const DAY: i64 = 86_400;

    #[rstest]
    // Atlassian's 60-minute token, default 15 m lead: refresh at 45 m.
    #[case::hour_token_default_lead(
        facts(0, 3600, 0, Some(0)),
        policy(900, 900, Renewal::Refresh),
        100,
        Next::WaitUntil(at(900))
    )]
    #[case::health_check_due_first(
        facts(0, 3600, 0, Some(0)),
        policy(900, 900, Renewal::Refresh),
        900,
        Next::HealthCheck
    )]
    #[case::health_counted_from_last_check(
        facts(0, 3600, 0, Some(1000)),
        policy(900, 900, Renewal::Refresh),
        1500,
        Next::WaitUntil(at(1900))
    )]
    #[case::refresh_due_at_lead(
        facts(0, 3600, 0, Some(2600)),
        policy(900, 900, Renewal::Refresh),
        2700,
        Next::RefreshNow
    )]
    #[case::refresh_before_health(
        facts(0, 3600, 0, Some(0)),
        policy(900, 900, Renewal::Refresh),
        2700,
        Next::RefreshNow
    )]
    #[case::expired_token_refreshes(
        facts(0, 3600, 0, Some(0)),
        policy(900, 900, Renewal::Refresh),
        9999,
        Next::RefreshNow
    )]
    // A 30-second token: the lead is a third of its life, not the 15 minutes asked for.
    #[case::short_token_lead_is_a_third(
        facts(0, 30, 0, Some(0)),
        policy(900, 600, Renewal::Refresh),
        5,
        Next::WaitUntil(at(20))
    )]
    #[case::short_token_refresh_before_10s(
        facts(0, 30, 0, Some(0)),
        policy(10, 600, Renewal::Refresh),
        19,
        Next::WaitUntil(at(20))
    )]
    #[case::short_token_due(facts(0, 30, 0, Some(0)), policy(10, 600, Renewal::Refresh), 20, Next::RefreshNow)]
    #[case::client_credentials_mint(facts(0, 3600, 0, Some(0)), policy(900, 7200, Renewal::Mint), 2700, Next::Mint)]
    #[case::client_credentials_wait(
        facts(0, 3600, 0, Some(0)),
        policy(900, 7200, Renewal::Mint),
        10,
        Next::WaitUntil(at(2700))
    )]
    // A fresh grant counts as a check: no health check right after consent.
    #[case::fresh_grant_is_a_check(
        facts(5000, 3600, 5000, Some(10)),
        policy(900, 900, Renewal::Refresh),
        5001,
        Next::WaitUntil(at(5900))
    )]
    #[case::never_checked_counts_from_consent(
        facts(0, 3600, 0, None),
        policy(900, 600, Renewal::Refresh),
        599,
        Next::WaitUntil(at(600))
    )]
    // The grant past its absolute expiry cannot be refreshed.
    #[case::grant_past_365_days(facts(365 * DAY, 3600, 0, Some(365 * DAY)), policy(900, 900, Renewal::Refresh), 365 * DAY + 1, Next::NeedsConsent)]
    // The window opening is a wake-up instant.
    #[case::wakes_when_reauthorization_opens(facts(351 * DAY - 100, 3600, 0, Some(351 * DAY - 100)), policy(900, 900, Renewal::Refresh), 351 * DAY - 50, Next::WaitUntil(at(351 * DAY)))]
    fn plans_the_next_action(#[case] facts: Facts, #[case] policy: Policy, #[case] now: i64, #[case] expected: Next) {
        assert_eq!(plan(at(now), Some(&facts), &policy, Jitter::NONE).next, expected);
    }

    #[test]
    fn nothing_stored_needs_consent() {
        let p = plan(at(0), None, &policy(900, 900, Renewal::Refresh), Jitter::NONE);
        assert_eq!(p.next, Next::NeedsConsent);
        assert_eq!(p.refresh_at, None);
        assert!(!p.reauthorization_due);
    }

    #[rstest]
    #[case::far_from_limit(300 * DAY, false)]
    #[case::one_second_before_window(351 * DAY - 1, false)]
    #[case::window_opens(351 * DAY, true)]
    #[case::last_day(364 * DAY, true)]
    fn reauthorization_is_due_from_14_days_before_the_absolute_expiry(#[case] now: i64, #[case] due: bool) {
        let f = facts(now - 10, 3600, 0, Some(now - 10));
        let p = plan(at(now), Some(&f), &policy(900, 900, Renewal::Refresh), Jitter::NONE);
        assert_eq!(p.reauthorization_due, due);
        let health = at(now - 10 + 900);
        let expected = if due { health } else { health.min(at(351 * DAY)) };
        assert_eq!(p.next, Next::WaitUntil(expected), "the old grant keeps working");
    }

    #[test]
    fn client_credentials_never_need_reauthorization() {
        let f = facts(400 * DAY, 3600, 0, Some(400 * DAY));
        let p = plan(
            at(400 * DAY + 1),
            Some(&f),
            &policy(900, 900, Renewal::Mint),
            Jitter::NONE,
        );
        assert!(!p.reauthorization_due);
        assert_eq!(p.next, Next::WaitUntil(at(400 * DAY + 900)));
    }

    #[rstest]
    #[case::hour(3600, 900, 900)]
    #[case::thirty_seconds(30, 900, 10)]
    #[case::thirty_seconds_small_ask(30, 5, 5)]
    #[case::zero_lifetime(0, 900, 0)]
    fn the_lead_is_the_smaller_of_refresh_before_and_a_third(
        #[case] lifetime: i64,
        #[case] refresh_before: u64,
        #[case] expected: i64,
    ) {
        assert_eq!(
            lead(secs(refresh_before), at(0), at(lifetime)),
            SignedDuration::from_secs(expected)
        );
    }

    #[rstest]
    #[case(-1.0, 3600 - 810)]
    #[case(1.0, 3600 - 990)]
    #[case(0.5, 3600 - 945)]
    #[case(-7.0, 3600 - 810)]
    #[case(f64::NAN, 3600 - 900)]
    fn jitter_moves_the_refresh_by_at_most_ten_percent_of_the_lead(#[case] unit: f64, #[case] expected: i64) {
        let f = facts(0, 3600, 0, Some(0));
        assert_eq!(refresh_at(&f, secs(900), Jitter::unit(unit)), at(expected));
    }

    #[test]
    fn jitter_is_stable_per_resource_and_spread_across_a_fleet() {
        let a = Jitter::for_key("3f7c1e2a-0000-4000-8000-000000000001");
        assert_eq!(a, Jitter::for_key("3f7c1e2a-0000-4000-8000-000000000001"));
        let values: Vec<f64> = (0..200).map(|i| Jitter::for_key(&format!("uid-{i}")).value()).collect();
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(values.iter().any(|v| *v < -0.5) && values.iter().any(|v| *v > 0.5));
        let f = facts(0, 30, 0, Some(0));
        for i in 0..200 {
            let when = refresh_at(&f, secs(10), Jitter::for_key(&format!("uid-{i}")));
            assert!(when >= at(19) && when <= at(21), "{when}");
            assert!(when < f.expires_at, "never past expiry");
        }
    }

    #[rstest]
    #[case::future(at(100), 60, secs(40))]
    #[case::past(at(100), 200, Duration::ZERO)]
    #[case::far(at(100_000), 0, MAX_WAIT)]
    fn delays_are_never_negative_and_bounded(#[case] target: Timestamp, #[case] now: i64, #[case] expected: Duration) {
        assert_eq!(delay_until(at(now), target), expected);
    }

    #[rstest]
    #[case::first(0, None, secs(1))]
    #[case::third(2, None, secs(4))]
    #[case::capped(20, None, secs(300))]
    #[case::retry_after_wins(0, Some(secs(30)), secs(30))]
    #[case::backoff_beyond_retry_after(6, Some(secs(30)), secs(64))]
    fn backoff_grows_and_honours_retry_after(
        #[case] attempt: u32,
        #[case] retry_after: Option<Duration>,
        #[case] expected: Duration,
    ) {
        assert_eq!(backoff(attempt, retry_after, Jitter::NONE), expected);
        let high = backoff(attempt, retry_after, Jitter::unit(1.0));
        let low = backoff(attempt, retry_after, Jitter::unit(-1.0));
        assert!(low <= expected && expected <= high);
        assert!(low >= retry_after.unwrap_or_default());
    }

    #[rstest]
    #[case(10, 5, false)]
    #[case(10, 10, true)]
    #[case(10, 30, true)]
    fn degraded_only_when_the_token_expires_before_the_retry(
        #[case] expires_in: i64,
        #[case] delay: u64,
        #[case] degraded: bool,
    ) {
        assert_eq!(expires_before_retry(at(0), at(expires_in), secs(delay)), degraded);
    }

    /// The scheduling loop a reconciler runs, on paused tokio time: every refresh lands before
    /// expiry at the planned instant, nothing is called while nothing is due.
    #[tokio::test(start_paused = true)]
    async fn scheduled_refreshes_land_on_time_with_paused_time() {
        let start = tokio::time::Instant::now();
        let clock = |i: tokio::time::Instant| at(0) + SignedDuration::try_from(i - start).unwrap();
        let policy = policy(10, 3600, Renewal::Refresh);
        let jitter = Jitter::for_key("uid-a");
        let mut facts = facts(0, 30, 0, Some(0));
        let mut refreshes = Vec::new();
        let mut wakeups = 0;
        while refreshes.len() < 10 {
            let now = clock(tokio::time::Instant::now());
            match plan(now, Some(&facts), &policy, jitter).next {
                Next::RefreshNow => {
                    assert!(
                        now < facts.expires_at,
                        "refreshed at {now}, token expired at {}",
                        facts.expires_at
                    );
                    refreshes.push(now);
                    facts.obtained_at = now;
                    facts.expires_at = now + SignedDuration::from_secs(30);
                }
                Next::WaitUntil(t) => {
                    wakeups += 1;
                    tokio::time::sleep(delay_until(now, t)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // One wait per refresh: no busy loop, no call while nothing is due.
        assert_eq!(wakeups, 10);
        let expected_gap = 30.0 - 10.0 * (1.0 + JITTER_FRACTION * jitter.value());
        for pair in refreshes.windows(2) {
            let gap = pair[1].duration_since(pair[0]).as_secs_f64();
            assert!((gap - expected_gap).abs() < 0.01, "gap {gap}, expected {expected_gap}");
        }
    }

    /// Backoff on paused time: retries follow Retry-After and stop being "not degraded" exactly
    /// when the next retry would come after expiry.
    #[tokio::test(start_paused = true)]
    async fn retries_back_off_until_the_token_would_expire() {
        let start = tokio::time::Instant::now();
        let expires_at = at(60);
        let mut attempt = 0;
        let mut degraded_at = None;
        while degraded_at.is_none() {
            let now = at(0) + SignedDuration::try_from(tokio::time::Instant::now() - start).unwrap();
            let delay = backoff(attempt, Some(secs(5)), Jitter::NONE);
            if expires_before_retry(now, expires_at, delay) {
                degraded_at = Some((now, attempt));
                break;
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
        // 5 + 5 + 5 + 8 + 16 = 39 s elapsed; the next delay (32 s) passes 60 s.
        assert_eq!(degraded_at, Some((at(39), 5)));
    }
}
