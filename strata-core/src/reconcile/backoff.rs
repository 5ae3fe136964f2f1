//! Restart policy and backoff: exponential delays with full jitter from a seedable generator.

use std::time::Duration;

/// How a service is restarted after failures (the manifest's `restart` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Ceiling of the delay before the first restart after a failure.
    pub initial: Duration,
    /// Upper bound of every delay.
    pub max: Duration,
    /// A failure after this long in `running` starts the backoff over at the first attempt.
    pub reset_after: Duration,
    /// This many failures within `quarantine_window` quarantine the service; 0 disables
    /// quarantine.
    pub quarantine_crashes: u32,
    pub quarantine_window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5 * 60),
            reset_after: Duration::from_secs(10 * 60),
            quarantine_crashes: 5,
            quarantine_window: Duration::from_secs(10 * 60),
        }
    }
}

impl RestartPolicy {
    /// The ceiling of the delay before restart `attempt` (1 = first restart after a failure):
    /// `min(max, initial * 2^(attempt-1))`, saturating rather than overflowing.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let doubled = 2u32
            .checked_pow(attempt.saturating_sub(1))
            .and_then(|factor| self.initial.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        doubled.min(self.max)
    }

    /// The delay before restart `attempt`: uniform in `[0, backoff_cap(attempt)]` ("full
    /// jitter"), so services that failed together do not restart in lockstep.
    pub fn backoff_delay(&self, attempt: u32, rng: &mut SplitMix64) -> Duration {
        rng.uniform_duration(self.backoff_cap(attempt))
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, seedable generator, plenty for jitter and
/// reproducible in tests. Not for secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration uniform in `[0, max]` at nanosecond resolution.
    pub fn uniform_duration(&mut self, max: Duration) -> Duration {
        // Multiply-shift maps 64 random bits r onto the span without the bias of a modulo:
        // (r * span) >> 64, computed in two halves because the span of a long duration exceeds
        // 64 bits and the full product would overflow u128.
        let span = max.as_nanos() + 1;
        let r = u128::from(self.next_u64());
        let (span_hi, span_lo) = (span >> 64, span & u128::from(u64::MAX));
        let pick = r * span_hi + ((r * span_lo) >> 64);
        let secs = u64::try_from(pick / 1_000_000_000).unwrap_or(u64::MAX);
        // The remainder is below 1e9, so it fits.
        let nanos = u32::try_from(pick % 1_000_000_000).unwrap_or(0);
        Duration::new(secs, nanos).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn cap_doubles_from_initial_up_to_max() {
        let p = policy(1000, 8000);
        let caps: Vec<u64> = (1..=6)
            .map(|a| p.backoff_cap(a).as_millis() as u64)
            .collect();
        assert_eq!(caps, [1000, 2000, 4000, 8000, 8000, 8000]);
        // attempt 0 is treated as the first attempt rather than half of it
        assert_eq!(p.backoff_cap(0), Duration::from_millis(1000));
    }

    #[test]
    fn cap_saturates_for_huge_attempts_and_durations() {
        let p = RestartPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            ..RestartPolicy::default()
        };
        assert_eq!(p.backoff_cap(u32::MAX), Duration::MAX);
        let p = policy(1000, 60_000);
        assert_eq!(p.backoff_cap(40), Duration::from_secs(60));
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn zero_initial_means_immediate_restart() {
        let p = policy(0, 60_000);
        let mut rng = SplitMix64::new(7);
        for attempt in 1..20 {
            assert_eq!(p.backoff_delay(attempt, &mut rng), Duration::ZERO);
        }
    }

    #[test]
    fn splitmix_matches_reference_output() {
        // First outputs for seed 1234567 from the reference C implementation (Vigna).
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let p = RestartPolicy::default();
        let draw = |seed| {
            let mut rng = SplitMix64::new(seed);
            (1..=5)
                .map(|a| p.backoff_delay(a, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn full_jitter_mean_is_half_the_cap_and_grows_with_attempts() {
        // Over many seeds the mean delay of attempt n is cap(n)/2 (uniform on [0, cap]), so the
        // means double from attempt to attempt until the cap is reached.
        let p = policy(1000, 16_000);
        let mut rng = SplitMix64::new(99);
        let mut means = Vec::new();
        for attempt in 1..=6 {
            let n = 4000u32;
            let total: Duration = (0..n).map(|_| p.backoff_delay(attempt, &mut rng)).sum();
            let mean = total / n;
            let half_cap = p.backoff_cap(attempt) / 2;
            let err = mean.abs_diff(half_cap).as_secs_f64() / half_cap.as_secs_f64();
            assert!(
                err < 0.05,
                "attempt {attempt}: mean {mean:?}, expected ~{half_cap:?}"
            );
            means.push(mean);
        }
        for w in means.windows(2).take(4) {
            assert!(w[1] > w[0], "means must grow: {means:?}");
        }
    }

    #[test]
    fn uniform_duration_stays_in_range_at_the_extremes() {
        let mut rng = SplitMix64::new(0);
        for _ in 0..1000 {
            assert!(rng.uniform_duration(Duration::MAX) <= Duration::MAX);
            assert_eq!(rng.uniform_duration(Duration::ZERO), Duration::ZERO);
            assert!(rng.uniform_duration(Duration::from_nanos(1)) <= Duration::from_nanos(1));
        }
    }
}
