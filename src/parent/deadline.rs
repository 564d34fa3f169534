//! Deadline arithmetic for the supervisor's `ppoll`: when to wake, and the
//! timespec that gets it there without rounding a deadline away.

use std::time::{Duration, Instant};

/// When a task started at `start` with `timeout` must be killed.
pub fn deadline_for(start: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| start.checked_add(t))
}

/// A deadline is due at its instant, not one tick later.
pub fn is_due(deadline: Instant, now: Instant) -> bool {
    deadline <= now
}

/// How long `ppoll` may sleep: until the earliest wake-up, or forever.
pub fn sleep_until_earliest(
    wakeups: impl IntoIterator<Item = Instant>,
    now: Instant,
) -> Option<Duration> {
    wakeups
        .into_iter()
        .min()
        .map(|at| at.saturating_duration_since(now))
}

/// Nanosecond timespec, so a deadline is met to the microsecond rather than
/// rounded up to the next millisecond as `poll` would.
pub fn to_timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_timeout_means_no_deadline() {
        assert_eq!(deadline_for(Instant::now(), None), None);
    }

    #[test]
    fn deadline_counts_from_the_start_given() {
        let start = Instant::now();
        let deadline = deadline_for(start, Some(Duration::from_millis(200))).expect("deadline");
        assert_eq!(deadline - start, Duration::from_millis(200));
        assert!(!is_due(deadline, start));
        assert!(is_due(deadline, deadline));
        assert!(is_due(deadline, deadline + Duration::from_nanos(1)));
    }

    #[test]
    fn a_huge_timeout_does_not_overflow() {
        assert_eq!(deadline_for(Instant::now(), Some(Duration::MAX)), None);
    }

    #[test]
    fn sleeps_until_the_earliest_and_never_negative() {
        let now = Instant::now();
        let later = now + Duration::from_secs(3);
        let sooner = now + Duration::from_millis(5);
        assert_eq!(
            sleep_until_earliest([later, sooner], now),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            sleep_until_earliest([now - Duration::from_secs(1)], now),
            Some(Duration::ZERO)
        );
        assert_eq!(sleep_until_earliest([], now), None);
    }

    #[test]
    fn timespec_keeps_sub_millisecond_precision() {
        let ts = to_timespec(Duration::new(2, 1_500));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (2, 1_500));
    }
}
