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
#[derive(Clone, Debug, PartialEq)]
pub struct ClockBasedRetryStrategy {
    /// Wait before the first retry. Default 5 s.
    pub base_delay: Duration,
    /// Growth of the wait per attempt. Default 2.
    pub delay_factor: f64,
    /// Retries before the subscription stays in `Error`. Default 5.
    pub max_attempts: u32,
}

impl Default for ClockBasedRetryStrategy {
    fn default() -> Self {
        Self { base_delay: Duration::from_secs(5), delay_factor: 2.0, max_attempts: 5 }
    }
}

impl ClockBasedRetryStrategy {
    /// The wait before retry number `attempt + 1`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.delay_factor.max(1.0).powi(attempt.min(64) as i32);
        Duration::from_secs_f64((self.base_delay.as_secs_f64() * factor).min(86_400.0 * 365.0))
    }
}

impl RetryStrategy for ClockBasedRetryStrategy {
    fn exhausted(&self, subscription: &Subscription) -> bool {
        subscription.retry_attempt >= self.max_attempts
    }

    fn should_retry(&self, subscription: &Subscription, now: Timestamp) -> bool {
        if subscription.retry_attempt >= self.max_attempts {
            return false;
        }
        let due = subscription.last_saved_at.unix_micros() + self.delay(subscription.retry_attempt).as_micros() as i64;
        now.unix_micros() >= due
    }
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
}
