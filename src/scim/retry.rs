//! Reading how long a server wants us to wait, and what it says about its rate
//! budget, from response headers: `Retry-After` (RFC 9110 §10.2.3: delay-seconds
//! or an HTTP-date) and Genesys's `inin-ratelimit-allowed`, `-count` and `-reset`
//! (genesys.md, "Rate limits and errors"). Pure functions of the headers and the
//! current time; no waiting happens here.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// `inin-ratelimit-allowed`: requests allowed in the current window.
pub const RATELIMIT_ALLOWED: &str = "inin-ratelimit-allowed";
/// `inin-ratelimit-count`: requests counted in the current window.
pub const RATELIMIT_COUNT: &str = "inin-ratelimit-count";
/// `inin-ratelimit-reset`: seconds until the window resets.
pub const RATELIMIT_RESET: &str = "inin-ratelimit-reset";

/// What `Retry-After` says, if it is readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// Wait this long from now (delay-seconds, or a future HTTP-date).
    Wait(Duration),
    /// An HTTP-date that has already passed: no wait beyond the caller's floor.
    Passed,
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Parses `Retry-After` as delay-seconds or an HTTP-date relative to `now`.
/// `None` when absent or unreadable (the caller falls back to
/// `inin-ratelimit-reset`, then to its own backoff).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<RetryAfter> {
    let raw = header_str(headers, RETRY_AFTER.as_str())?;
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(RetryAfter::Wait(Duration::from_secs(secs)));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(match at.duration_since(now) {
        Ok(wait) if !wait.is_zero() => RetryAfter::Wait(wait),
        _ => RetryAfter::Passed,
    })
}

/// A non-negative number of seconds, integer or decimal.
fn seconds(raw: &str) -> Option<Duration> {
    let secs = raw.parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The server's rate-limit headers, each `None` when absent or unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// `inin-ratelimit-allowed`.
    pub allowed: Option<u32>,
    /// `inin-ratelimit-count`.
    pub count: Option<u32>,
    /// `inin-ratelimit-reset`.
    pub reset: Option<Duration>,
}

impl RateHeaders {
    /// Reads the three headers.
    pub fn parse(headers: &HeaderMap) -> Self {
        let int = |name| header_str(headers, name).and_then(|v| v.parse::<u32>().ok());
        Self {
            allowed: int(RATELIMIT_ALLOWED),
            count: int(RATELIMIT_COUNT),
            reset: header_str(headers, RATELIMIT_RESET).and_then(seconds),
        }
    }

    /// True when any of them was present.
    pub fn any(&self) -> bool {
        self.allowed.is_some() || self.count.is_some() || self.reset.is_some()
    }
}

/// The wait a 429 (or 503) asks for, in design.md's order: `Retry-After` as
/// seconds or HTTP-date (a past date means no wait beyond `floor`), else
/// `inin-ratelimit-reset`, else `None` (the caller's jittered backoff). Never
/// less than `floor`.
pub fn server_wait(headers: &HeaderMap, now: SystemTime, floor: Duration) -> Option<Duration> {
    match retry_after(headers, now) {
        Some(RetryAfter::Wait(w)) => Some(w.max(floor)),
        Some(RetryAfter::Passed) => Some(floor),
        None => RateHeaders::parse(headers).reset.map(|w| w.max(floor)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const FLOOR: Duration = Duration::from_secs(1);

    #[test]
    fn seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            server_wait(&headers(&[("retry-after", "7")]), now, FLOOR),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(
            server_wait(&headers(&[("retry-after", &later)]), now, FLOOR),
            Some(Duration::from_secs(12))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(3600));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &earlier)]), now),
            Some(RetryAfter::Passed)
        );
        assert_eq!(
            server_wait(&headers(&[("retry-after", &earlier)]), now, FLOOR),
            Some(FLOOR)
        );
        assert_eq!(
            server_wait(&headers(&[("retry-after", "0")]), now, FLOOR),
            Some(FLOOR)
        );
    }

    #[test]
    fn garbage_or_missing_falls_back_to_reset_then_nothing() {
        let now = SystemTime::now();
        assert_eq!(
            server_wait(
                &headers(&[("retry-after", "soon-ish"), (RATELIMIT_RESET, "4")]),
                now,
                FLOOR
            ),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            server_wait(&headers(&[("retry-after", "-5")]), now, FLOOR),
            None
        );
        assert_eq!(server_wait(&HeaderMap::new(), now, FLOOR), None);
    }

    #[test]
    fn rate_headers() {
        let h = headers(&[
            (RATELIMIT_ALLOWED, "300"),
            (RATELIMIT_COUNT, "12"),
            (RATELIMIT_RESET, "2.5"),
        ]);
        assert_eq!(
            RateHeaders::parse(&h),
            RateHeaders {
                allowed: Some(300),
                count: Some(12),
                reset: Some(Duration::from_millis(2500)),
            }
        );
        assert!(!RateHeaders::parse(&HeaderMap::new()).any());
    }
}
