//! The shared, adaptive request-rate limiter: one budget of SCIM requests per
//! minute for every worker of the process (`RATE_LIMIT_PER_MINUTE`), and one
//! "hold off until" instant that a 429 anywhere sets for everyone.
//!
//! Token-bucket accounting is governor's (GCRA); this module adds what governor
//! does not do: lowering the budget when the server says the real one is lower
//! (`inin-ratelimit-allowed`, 429s), raising it back slowly, and a shared pause.
//! It knows nothing about HTTP or SCIM: callers pass the numbers they read.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Governor};
use tokio::time::Instant;
use tracing::Instrument as _;

type DirectGovernor = Governor<NotKeyed, InMemoryState, DefaultClock>;

/// Why a request was not let through before the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Every worker is holding off (after a 429) until after the deadline.
    #[error(
        "requests are paused for {} s after a rate-limit response, past the deadline",
        wait.as_secs_f64().ceil()
    )]
    PausedPastDeadline {
        /// How long the pause still lasts.
        wait: Duration,
    },
    /// The budget has no room for a request before the deadline.
    #[error("the request budget has no room before the deadline")]
    BudgetPastDeadline,
}

/// How fast the budget moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adaptation {
    /// The smallest time between two decreases: many workers that see the same
    /// burst of 429s must lower the rate once, not once each. Default 5 s.
    pub decrease_spacing: Duration,
    /// How long the rate must stay undisturbed before each step back up.
    /// Default 10 s.
    pub increase_spacing: Duration,
    /// The window the server's `inin-ratelimit-allowed` counts over: Genesys
    /// Cloud's limits are per minute (genesys.md). A simulator with a shorter
    /// window says so here, so `allowed` converts to the same per-minute rate.
    pub server_window: Duration,
}

impl Default for Adaptation {
    fn default() -> Self {
        Self {
            decrease_spacing: Duration::from_secs(5),
            increase_spacing: Duration::from_secs(10),
            server_window: Duration::from_secs(60),
        }
    }
}

/// A cheap-to-clone handle (an `Arc` inside) on the process-wide SCIM request
/// budget. Every SCIM request, GETs included, calls [`RateLimiter::acquire`] first.
///
/// Adaptation (additive increase, multiplicative decrease):
/// - a 429 ([`RateLimiter::on_rate_limited`]) halves the rate, at most once per
///   5 s (by default), and pauses every worker for the server's wait;
/// - `inin-ratelimit-allowed` (per the server's window, a minute on Genesys)
///   below the current rate lowers it to that value, and
///   a window shown as used up (`count >= allowed`) pauses until
///   `inin-ratelimit-reset` ([`RateLimiter::observe`]);
/// - after 10 s (by default) without a change, a successful response raises the rate
///   by a twentieth of the configured ceiling, never above the ceiling nor above
///   the last `allowed` the server announced.
///
/// Source: genesys.md, "Rate limits and errors" (headers, per-client limits).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    ceiling: NonZeroU32,
    floor: NonZeroU32,
    adaptation: Adaptation,
    clock: DefaultClock,
    state: Mutex<State>,
}

struct State {
    rate: NonZeroU32,
    governor: Arc<DirectGovernor>,
    pause_until: Option<Instant>,
    last_decrease: Option<Instant>,
    last_change: Instant,
    announced: Option<NonZeroU32>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("ceiling_per_minute", &self.inner.ceiling)
            .field("per_minute", &self.current_per_minute())
            .finish()
    }
}

/// The governor for `rate` requests per minute. The burst is a tenth of the
/// minute's budget so that a fresh limiter (start-up, or after a rate change) does
/// not release a whole minute's worth at once.
fn governor_for(rate: NonZeroU32, clock: &DefaultClock) -> Arc<DirectGovernor> {
    let burst = NonZeroU32::new((rate.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_minute(rate).allow_burst(burst);
    Arc::new(Governor::direct_with_clock(quota, clock.clone()))
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests a minute across all clones; that
    /// figure is also the ceiling adaptation never exceeds. Halving after 429s
    /// never goes below a twentieth of it (at least 1 a minute); a budget the
    /// server announces is followed even below that. Adapts with
    /// the default [`Adaptation`].
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self::adaptive(per_minute, Adaptation::default())
    }

    /// [`RateLimiter::per_minute`] with its own adaptation speed.
    pub fn adaptive(per_minute: NonZeroU32, adaptation: Adaptation) -> Self {
        let clock = DefaultClock::default();
        let floor = NonZeroU32::new((per_minute.get() / 20).max(1)).unwrap_or(NonZeroU32::MIN);
        let state = State {
            rate: per_minute,
            governor: governor_for(per_minute, &clock),
            pause_until: None,
            last_decrease: None,
            last_change: Instant::now(),
            announced: None,
        };
        Self {
            inner: Arc::new(Inner {
                ceiling: per_minute,
                floor,
                adaptation,
                clock,
                state: Mutex::new(state),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain
        // numbers; they are still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current budget, requests per minute.
    pub fn current_per_minute(&self) -> u32 {
        self.state().rate.get()
    }

    /// The configured ceiling, requests per minute.
    pub fn ceiling_per_minute(&self) -> u32 {
        self.inner.ceiling.get()
    }

    /// How long every worker still holds off, if a pause is in force.
    pub fn paused_for(&self) -> Option<Duration> {
        let now = Instant::now();
        self.state()
            .pause_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Waits until a request may be sent: past any shared pause, then through the
    /// budget. Errors, without waiting in vain, when either would run past
    /// `deadline`. Each call is one `rate_limit.wait` span, and a request let
    /// through records its wait in the rate-limiter wait histogram.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), LimitError> {
        let span = crate::telemetry::rate_limit_span();
        let started = Instant::now();
        let result = self.wait_turn(deadline).instrument(span.clone()).await;
        if result.is_ok() {
            crate::telemetry::finish_rate_limit(&span, started.elapsed());
        }
        result
    }

    async fn wait_turn(&self, deadline: Instant) -> Result<(), LimitError> {
        loop {
            let (pause, governor) = {
                let st = self.state();
                (st.pause_until, Arc::clone(&st.governor))
            };
            let now = Instant::now();
            if let Some(until) = pause
                && until > now
            {
                if until > deadline {
                    return Err(LimitError::PausedPastDeadline { wait: until - now });
                }
                tokio::time::sleep_until(until).await;
                continue;
            }
            match governor.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.inner.clock.now());
                    if Instant::now() + wait > deadline {
                        return Err(LimitError::BudgetPastDeadline);
                    }
                    // Re-check after the wait: a 429 elsewhere may have paused us,
                    // or the rate may have changed (a new governor).
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Holds every worker off for `wait` (from now). A later pause wins over an
    /// earlier one; a shorter one never shortens a pause in force.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut st = self.state();
        if st.pause_until.is_none_or(|current| current < until) {
            st.pause_until = Some(until);
        }
    }

    /// A 429 was received: pauses everyone for `wait` and halves the budget (at
    /// most once per 5 s, never below the floor).
    pub fn on_rate_limited(&self, wait: Duration) {
        self.pause_for(wait);
        let now = Instant::now();
        let mut st = self.state();
        if st
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < self.inner.adaptation.decrease_spacing)
        {
            return;
        }
        let halved = (st.rate.get() / 2).max(self.inner.floor.get());
        self.set_rate(&mut st, halved, now, true);
    }

    /// Reads the server's own view of the budget from a response's
    /// `inin-ratelimit-allowed`, `inin-ratelimit-count` and `inin-ratelimit-reset`
    /// (seconds until the window resets), any of which may be absent. Lowers the
    /// rate to `allowed` (per [`Adaptation::server_window`], converted to a
    /// minute), pauses everyone until the reset when the window is used up
    /// (`count >= allowed`), and otherwise counts the response as a success
    /// toward a slow increase.
    pub fn observe(&self, allowed: Option<u32>, count: Option<u32>, reset: Option<Duration>) {
        let now = Instant::now();
        if let (Some(allowed), Some(count), Some(reset)) = (allowed, count, reset)
            && allowed > 0
            && count >= allowed
        {
            self.pause_for(reset);
        }
        let allowed = allowed.and_then(|a| self.per_minute_of(a));
        let mut st = self.state();
        if let Some(allowed) = allowed {
            st.announced = Some(allowed);
            if allowed < st.rate {
                // The server's own figure wins over the floor, which only stops
                // blind halving from spiralling down.
                self.set_rate(&mut st, allowed.get(), now, true);
                return;
            }
        }
        self.maybe_increase(&mut st, now);
    }

    /// A successful response without rate-limit headers: may raise the rate.
    pub fn on_success(&self) {
        let now = Instant::now();
        let mut st = self.state();
        self.maybe_increase(&mut st, now);
    }

    /// `allowed` per server window as a per-minute rate.
    fn per_minute_of(&self, allowed: u32) -> Option<NonZeroU32> {
        let window = self.inner.adaptation.server_window.as_secs_f64();
        if window <= 0.0 {
            return None;
        }
        let per_minute = (f64::from(allowed) * 60.0 / window).round();
        NonZeroU32::new(per_minute.clamp(0.0, f64::from(u32::MAX)) as u32)
    }

    fn maybe_increase(&self, st: &mut State, now: Instant) {
        let cap = st
            .announced
            .map_or(self.inner.ceiling, |a| a.min(self.inner.ceiling));
        if st.rate >= cap
            || now.duration_since(st.last_change) < self.inner.adaptation.increase_spacing
        {
            return;
        }
        let step = (self.inner.ceiling.get() / 20).max(1);
        let to = st.rate.get().saturating_add(step).min(cap.get());
        self.set_rate(st, to, now, false);
    }

    fn set_rate(&self, st: &mut State, to: u32, now: Instant, decrease: bool) {
        let Some(to) = NonZeroU32::new(to) else {
            return;
        };
        if decrease {
            st.last_decrease = Some(now);
        }
        st.last_change = now;
        if to != st.rate {
            tracing::info!(
                from = st.rate.get(),
                to = to.get(),
                "SCIM request budget changed (requests per minute)"
            );
            st.rate = to;
            st.governor = governor_for(to, &self.inner.clock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn eager() -> Adaptation {
        Adaptation {
            decrease_spacing: Duration::ZERO,
            increase_spacing: Duration::ZERO,
            ..Adaptation::default()
        }
    }

    #[tokio::test]
    async fn burst_is_a_tenth_then_the_budget_refuses_before_the_deadline() {
        let limiter = RateLimiter::per_minute(nz(60));
        // 60/min: a burst of 6, then one a second.
        let soon = Instant::now() + Duration::from_millis(100);
        for _ in 0..6 {
            limiter.acquire(soon).await.unwrap();
        }
        assert_eq!(
            limiter.acquire(soon).await,
            Err(LimitError::BudgetPastDeadline)
        );
    }

    #[tokio::test]
    async fn a_429_halves_once_and_pauses_every_clone() {
        let limiter = RateLimiter::per_minute(nz(300));
        let other = limiter.clone();
        limiter.on_rate_limited(Duration::from_secs(30));
        limiter.on_rate_limited(Duration::from_secs(1));
        assert_eq!(
            other.current_per_minute(),
            150,
            "two 429s together halve once"
        );
        let wait = other.paused_for().unwrap();
        assert!(
            wait > Duration::from_secs(25),
            "a shorter pause shortened it"
        );
        let soon = Instant::now() + Duration::from_secs(1);
        assert!(matches!(
            other.acquire(soon).await,
            Err(LimitError::PausedPastDeadline { .. })
        ));
    }

    #[tokio::test]
    async fn acquire_waits_out_a_pause_within_the_deadline() {
        let limiter = RateLimiter::per_minute(nz(600));
        limiter.pause_for(Duration::from_millis(200));
        limiter
            .acquire(Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            limiter.paused_for(),
            None,
            "acquire returned during the pause"
        );
    }

    #[tokio::test]
    async fn announced_budget_lowers_the_rate_and_caps_the_increase() {
        let limiter = RateLimiter::adaptive(nz(300), eager());
        limiter.observe(Some(120), Some(3), Some(Duration::from_secs(40)));
        assert_eq!(limiter.current_per_minute(), 120);
        assert!(limiter.paused_for().is_none(), "window not used up");
        limiter.observe(Some(120), Some(4), Some(Duration::from_secs(40)));
        assert_eq!(
            limiter.current_per_minute(),
            120,
            "never above what was announced"
        );
        limiter.observe(Some(300), Some(4), Some(Duration::from_secs(40)));
        assert_eq!(limiter.current_per_minute(), 135, "one step of ceiling/20");
    }

    #[tokio::test]
    async fn allowed_counts_over_the_server_window() {
        let limiter = RateLimiter::adaptive(
            nz(600),
            Adaptation {
                server_window: Duration::from_secs(2),
                ..eager()
            },
        );
        // 5 per 2 s is 150 a minute.
        limiter.observe(Some(5), Some(1), Some(Duration::from_secs(1)));
        assert_eq!(limiter.current_per_minute(), 150);
        // An announced budget is followed below the halving floor (30).
        limiter.observe(Some(0), Some(0), Some(Duration::from_secs(1)));
        assert_eq!(limiter.current_per_minute(), 150, "zero is not a budget");
        let limiter = RateLimiter::adaptive(
            nz(600),
            Adaptation {
                server_window: Duration::from_secs(4),
                ..eager()
            },
        );
        limiter.observe(Some(1), Some(0), Some(Duration::from_secs(1)));
        assert_eq!(limiter.current_per_minute(), 15);
    }

    #[tokio::test]
    async fn increases_are_spaced() {
        let limiter = RateLimiter::adaptive(
            nz(300),
            Adaptation {
                decrease_spacing: Duration::ZERO,
                increase_spacing: Duration::from_secs(3600),
                ..Adaptation::default()
            },
        );
        limiter.on_rate_limited(Duration::from_millis(1));
        assert_eq!(limiter.current_per_minute(), 150);
        limiter.on_success();
        assert_eq!(limiter.current_per_minute(), 150);
    }

    #[tokio::test]
    async fn a_used_up_window_pauses_until_its_reset() {
        let limiter = RateLimiter::per_minute(nz(300));
        limiter.observe(Some(300), Some(300), Some(Duration::from_secs(30)));
        let wait = limiter.paused_for().unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn the_rate_never_drops_below_the_floor_nor_rises_above_the_ceiling() {
        let limiter = RateLimiter::adaptive(nz(100), eager());
        for _ in 0..10 {
            limiter.on_rate_limited(Duration::from_millis(1));
        }
        assert_eq!(limiter.current_per_minute(), 5);
        for _ in 0..100 {
            limiter.on_success();
        }
        assert_eq!(limiter.current_per_minute(), 100);
    }
}
