//! Time as the reconciler sees it: instants measured from an epoch the caller picks.
//!
//! The reconciler never reads a clock. The supervisor passes the current time of a monotonic
//! clock (time since it started, say) on every call; only differences between instants matter.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// An instant, as the time elapsed since the caller's epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The caller's epoch.
    pub const EPOCH: Self = Self(Duration::ZERO);

    pub const fn from_duration(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// `self + d`, saturating instead of overflowing (an absurd policy must not panic).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// `self - earlier`, or zero when `earlier` is later (a caller whose clock went backwards).
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{}", human(self.0))
    }
}

/// A duration the way an operator writes it: `0s`, `250ms`, `1.5s`, `5m`, `1m30s`, `2h5m`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        let ms = d.subsec_millis();
        return if ms == 0 && d.subsec_nanos() > 0 {
            format!("{}µs", d.subsec_micros())
        } else if ms == 0 {
            "0s".to_owned()
        } else {
            format!("{ms}ms")
        };
    }
    if secs < 60 {
        let ms = d.subsec_millis();
        if ms == 0 {
            return format!("{secs}s");
        }
        let frac = format!("{ms:03}");
        return format!("{secs}.{}s", frac.trim_end_matches('0'));
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m, s) {
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_like_manifest_values() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(15), "15µs"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(1234), "1.234s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(7500), "2h5m"),
        ];
        for (d, want) in cases {
            assert_eq!(human(d), want, "{d:?}");
        }
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_secs(10);
        assert_eq!(
            t.saturating_add(Duration::from_secs(5)),
            Timestamp::from_secs(15)
        );
        assert_eq!(
            Timestamp::from_duration(Duration::MAX).saturating_add(Duration::from_secs(1)),
            Timestamp::from_duration(Duration::MAX)
        );
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_secs(40)),
            Duration::ZERO
        );
    }
}
