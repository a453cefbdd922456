//! The injectable wall clock that decides whether a termination is due: the
//! consumer's due check, the dispatcher's and consumer's `MAX_FUTURE_DAYS` check,
//! `replay-dlq`'s re-check and the hold releaser all read "now" from a [`Clock`],
//! so tests move time forward without sleeping. Production uses
//! [`Clock::system`].
//!
//! This module only tells the time; it never sleeps, schedules or reads the
//! environment. Timeouts, backoff and visibility use tokio's monotonic time, not
//! this clock.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// A source of the current instant (UTC). Cheap to clone; clones share the
/// source, so a [`ManualClock`] moved forward is seen by every holder.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system clock (`Utc::now`).
    pub fn system() -> Self {
        Self(Arc::new(Utc::now))
    }

    /// A clock reading `f` (tests).
    pub fn from_fn(f: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The current instant by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now().to_rfc3339())
    }
}

/// A clock that stands still until moved (tests and rehearsals): every
/// [`Clock`] made from it by [`ManualClock::clock`] reads the same instant.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Sets the instant.
    pub fn set(&self, now: DateTime<Utc>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    }

    /// Moves the instant forward by `by` (backward when negative).
    pub fn advance(&self, by: Duration) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *t += by;
    }

    /// The instant it reads.
    pub fn now(&self) -> DateTime<Utc> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A [`Clock`] reading this manual clock.
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Clock::from_fn(move || me.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_is_shared_by_its_clocks() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let manual = ManualClock::new(t0);
        let a = manual.clock();
        let b = a.clone();
        manual.advance(Duration::hours(2));
        assert_eq!(a.now(), t0 + Duration::hours(2));
        assert_eq!(b.now(), a.now());
        assert!(Clock::system().now() > t0);
    }
}
