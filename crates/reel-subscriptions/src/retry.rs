//! When a failed subscription is tried again, and the clock that decides it.

use std::sync::Mutex;
use std::time::Duration;

use reel_core::{Subscription, Timestamp};

/// A source of the current time (a controllable one in tests).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// Starts at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        if let Ok(mut now) = self.0.lock() {
            *now = Timestamp::from_unix_micros(now.unix_micros() + by.as_micros() as i64);
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| Timestamp::now())
    }
}

/// Decides whether a subscription in `Error` is tried again now.
pub trait RetryStrategy: Send + Sync {
    /// True when `subscription` (in `Error`) should retry the step that failed.
    fn should_retry(&self, subscription: &Subscription, now: Timestamp) -> bool;

    /// True when no retry will ever come (then a subscriber that parks failures parks the event).
    fn exhausted(&self, subscription: &Subscription) -> bool;
}

/// Retry after `base_delay × delay_factor^attempt`, at most `max_attempts` times.
///
/// A failure the handler marked [`reel_core::Unavailable`] (its broker or database is
/// unreachable) is retried without limit, the wait growing the same way up to
/// `max_unavailable_delay`, so an outage of any length ends with the subscription resuming by
/// itself; it is never parked. That wait is jittered (between half and all of it, decided by
/// when the failure was saved), so a thousand devices that lost the same server at once do not
/// all come back in the same instant.
#[derive(Clone, Debug, PartialEq)]
pub struct ClockBasedRetryStrategy {
    /// Wait before the first retry. Default 5 s.
    pub base_delay: Duration,
    /// Growth of the wait per attempt. Default 2.
    pub delay_factor: f64,
    /// Retries before the subscription stays in `Error`. Default 5.
    pub max_attempts: u32,
    /// Longest wait between retries of an unavailable handler. Default 30 s.
    pub max_unavailable_delay: Duration,
}

impl Default for ClockBasedRetryStrategy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(5),
            delay_factor: 2.0,
            max_attempts: 5,
            max_unavailable_delay: Duration::from_secs(30),
        }
    }
}

impl ClockBasedRetryStrategy {
    /// The wait before retry number `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.delay_factor.max(1.0).powi(attempt.min(64) as i32);
        Duration::from_secs_f64((self.base_delay.as_secs_f64() * factor).min(86_400.0 * 365.0))
    }

    fn unavailable(subscription: &Subscription) -> bool {
        subscription.error.as_ref().is_some_and(|e| e.is_unavailable())
    }
}

impl RetryStrategy for ClockBasedRetryStrategy {
    fn exhausted(&self, subscription: &Subscription) -> bool {
        !Self::unavailable(subscription) && subscription.retry_attempt >= self.max_attempts
    }

    fn should_retry(&self, subscription: &Subscription, now: Timestamp) -> bool {
        let delay = if Self::unavailable(subscription) {
            let full = self.delay(subscription.retry_attempt).min(self.max_unavailable_delay);
            full.mul_f64(0.5 + 0.5 * jitter(subscription.last_saved_at, subscription.retry_attempt))
        } else if subscription.retry_attempt >= self.max_attempts {
            return false;
        } else {
            self.delay(subscription.retry_attempt)
        };
        now.unix_micros() >= subscription.last_saved_at.unix_micros() + delay.as_micros() as i64
    }
}

/// A number in [0, 1) fixed by the failure's save time and attempt (SplitMix64), so every look
/// at one failed attempt sees the same wait and different subscriptions see different ones.
fn jitter(saved_at: Timestamp, attempt: u32) -> f64 {
    let mut x = (saved_at.unix_micros() as u64) ^ (u64::from(attempt) << 40);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Never retry: a failed subscription waits for an operator.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetry;

impl RetryStrategy for NoRetry {
    fn exhausted(&self, _: &Subscription) -> bool {
        true
    }

    fn should_retry(&self, _: &Subscription, _: Timestamp) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_core::{RunMode, SubscriptionId};

    #[test]
    fn delays_grow_and_attempts_run_out() {
        let strategy = ClockBasedRetryStrategy::default();
        assert_eq!(strategy.delay(0), Duration::from_secs(5));
        assert_eq!(strategy.delay(3), Duration::from_secs(40));
        let clock = ManualClock::new(Timestamp::from_unix_micros(0));
        let mut s = Subscription::new(SubscriptionId::new("s").unwrap(), "g", RunMode::FromBeginning, clock.now());
        clock.advance(Duration::from_millis(4_999));
        assert!(!strategy.should_retry(&s, clock.now()));
        clock.advance(Duration::from_millis(1));
        assert!(strategy.should_retry(&s, clock.now()));
        s.retry_attempt = 5;
        clock.advance(Duration::from_secs(10_000));
        assert!(!strategy.should_retry(&s, clock.now()), "after max_attempts it stays in Error");
        assert!(!NoRetry.should_retry(&s, clock.now()));
    }

    #[test]
    fn an_unavailable_handler_is_retried_without_limit_and_never_exhausted() {
        let strategy = ClockBasedRetryStrategy::default();
        let clock = ManualClock::new(Timestamp::from_unix_micros(0));
        let mut s = Subscription::new(SubscriptionId::new("s").unwrap(), "g", RunMode::FromBeginning, clock.now());
        s.fail_at(reel_core::Unavailable("broker down".into()).to_string(), None).unwrap();
        s.retry_attempt = 1_000;
        assert!(!strategy.exhausted(&s), "an outage never exhausts the retries, so nothing is parked for it");
        let saved = s.last_saved_at;
        clock.advance(Duration::from_millis(14_999));
        assert!(!strategy.should_retry(&s, clock.now()), "waits at least half of max_unavailable_delay");
        clock.advance(Duration::from_millis(15_001));
        assert!(strategy.should_retry(&s, clock.now()), "waits at most max_unavailable_delay, whatever the attempt");
        assert_eq!(s.last_saved_at, saved);

        s.fail_at("event cannot be handled", None).unwrap();
        assert!(strategy.exhausted(&s), "an ordinary failure still runs out of retries");
        assert!(!strategy.should_retry(&s, clock.now()));
    }

    #[test]
    fn waits_for_an_outage_are_spread_so_a_fleet_does_not_come_back_at_once() {
        let strategy = ClockBasedRetryStrategy { max_unavailable_delay: Duration::from_secs(10), ..Default::default() };
        // A thousand subscriptions that failed within the same second, at their 20th attempt.
        let waits: Vec<u64> = (0..1_000)
            .map(|i| {
                let at = Timestamp::from_unix_micros(1_800_000_000_000_000 + i * 997);
                let mut s = Subscription::new(SubscriptionId::new("uplink").unwrap(), "g", RunMode::FromBeginning, at);
                s.fail_at(reel_core::Unavailable("central server down".into()).to_string(), None).unwrap();
                s.last_saved_at = at;
                s.retry_attempt = 20;
                // The first whole millisecond at which it retries.
                (0..=10_000u64)
                    .find(|ms| {
                        strategy.should_retry(&s, Timestamp::from_unix_micros(at.unix_micros() + *ms as i64 * 1_000))
                    })
                    .unwrap()
            })
            .collect();
        assert!(waits.iter().all(|w| (5_000..=10_000).contains(w)), "between half and all of the longest wait");
        let seconds: std::collections::BTreeSet<u64> = waits.iter().map(|w| w / 1_000).collect();
        assert!(seconds.len() >= 5, "spread over the window, not all at once: {seconds:?}");
        let mean = waits.iter().sum::<u64>() as f64 / waits.len() as f64;
        assert!((7_000.0..8_000.0).contains(&mean), "about evenly spread: mean {mean}");
    }
}
