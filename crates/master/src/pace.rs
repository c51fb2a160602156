//! Heartbeat pacing: the interval each agent beats at, so that the whole fleet stays within the
//! master's heartbeat budget (`--max-heartbeats-per-second`, after Nomad's
//! `max_heartbeats_per_second`), and the silences the master tolerates at that interval.
//!
//! Pure: registration grants the first pace, and the health-stream watcher recomputes it from
//! the fleet size at every heartbeat and carries it in the acknowledgement. A small fleet beats
//! at the interval the agent asked for and is held to `--heartbeat-timeout-ms`; a fleet too
//! large for the budget beats more slowly, and its timeout stretches to at least 2.5 intervals,
//! so a lost heartbeat never marks a node down whatever the pace. A broken stream is still
//! noticed at once: pacing only changes how long a silent (frozen or partitioned) node takes.

use std::time::Duration;

/// Intervals stretched for the budget are rounded up to this step, so one agent joining or
/// leaving does not change every agent's pace.
const STEP: Duration = Duration::from_millis(100);

/// Shortest interval any agent may beat at.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// The master's pacing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    /// Heartbeats per second the whole fleet may send; 0: no budget.
    pub(crate) max_per_second: u32,
    /// Silence after which a node beating at its agreed interval is down.
    pub(crate) timeout: Duration,
}

/// How one session beats, and what silence means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    /// How often the agent sends a heartbeat.
    pub(crate) interval: Duration,
    /// Silence after which the node is suspect.
    pub(crate) suspect_after: Duration,
    /// Silence after which the node is down and its stream ends.
    pub(crate) timeout: Duration,
}

impl Pacing {
    /// The interval agreed at registration from the agent's proposal (`0`: the 1 s default):
    /// at least [`MIN_INTERVAL`], and at most half the timeout, so that one lost heartbeat
    /// never marks a node down.
    pub(crate) fn agreed(&self, proposed_ms: u32) -> Duration {
        let proposed =
            if proposed_ms == 0 { Duration::from_secs(1) } else { Duration::from_millis(u64::from(proposed_ms)) };
        proposed.clamp(MIN_INTERVAL, (self.timeout / 2).max(MIN_INTERVAL))
    }

    /// The pace of a node with `agreed` interval in a fleet of `fleet` beating nodes.
    pub(crate) fn pace(&self, agreed: Duration, fleet: usize) -> Pace {
        let spread = self.spread(fleet);
        let interval = agreed.max(spread);
        // Stretched only as far as a slower pace needs: two and a half intervals, so one lost
        // heartbeat never marks a node down.
        let timeout = if interval > agreed { self.timeout.max(interval * 5 / 2) } else { self.timeout };
        Pace { interval, suspect_after: (interval * 3 / 2).min(timeout / 2), timeout }
    }

    /// The shortest interval that keeps `fleet` nodes within the budget, rounded up to [`STEP`].
    fn spread(&self, fleet: usize) -> Duration {
        if self.max_per_second == 0 {
            return Duration::ZERO;
        }
        let fleet = u64::try_from(fleet).unwrap_or(u64::MAX);
        let step_ms = u64::try_from(STEP.as_millis()).unwrap_or(1);
        // fleet / max seconds, in steps: ceil(fleet * 1000 / (max * step_ms)).
        let steps = fleet.saturating_mul(1000).div_ceil(u64::from(self.max_per_second).saturating_mul(step_ms));
        Duration::from_millis(steps.saturating_mul(step_ms))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PACING: Pacing = Pacing { max_per_second: 200, timeout: Duration::from_millis(2500) };

    #[test]
    fn a_small_fleet_beats_at_its_agreed_interval_and_keeps_the_configured_timeout() {
        let pace = PACING.pace(Duration::from_secs(1), 150);
        assert_eq!(
            pace,
            Pace {
                interval: Duration::from_secs(1),
                suspect_after: Duration::from_millis(1250),
                timeout: Duration::from_millis(2500)
            }
        );
    }

    #[test]
    fn a_fleet_over_the_budget_is_spread_and_its_timeout_stretches_to_two_and_a_half_intervals() {
        let pace = PACING.pace(Duration::from_secs(1), 1000);
        assert_eq!(pace.interval, Duration::from_secs(5), "1,000 nodes at 200/s");
        assert_eq!(pace.timeout, Duration::from_millis(12_500), "2.5 intervals");
        assert_eq!(pace.suspect_after, Duration::from_millis(6250));
        assert_eq!(PACING.pace(Duration::from_secs(1), 1001).interval, Duration::from_millis(5100), "rounded up");
        let fast = PACING.pace(Duration::from_millis(100), 400);
        assert_eq!(fast.interval, Duration::from_secs(2), "whatever interval the agent asked for");
        assert_eq!(fast.timeout, Duration::from_secs(5), "not 25 intervals because the agent asked for 100 ms");
        let off = Pacing { max_per_second: 0, ..PACING };
        assert_eq!(off.pace(Duration::from_secs(1), 100_000), PACING.pace(Duration::from_secs(1), 1), "no budget");
    }

    #[test]
    fn the_agreed_interval_is_clamped_so_two_fit_in_the_timeout() {
        assert_eq!(PACING.agreed(1000), Duration::from_millis(1000));
        assert_eq!(PACING.agreed(10_000), Duration::from_millis(1250));
        assert_eq!(PACING.agreed(1), Duration::from_millis(50));
        assert_eq!(PACING.agreed(0), Duration::from_millis(1000));
        let tiny = Pacing { max_per_second: 200, timeout: Duration::from_millis(60) };
        assert_eq!(tiny.agreed(1000), MIN_INTERVAL, "never below the minimum, even for a timeout under 100 ms");
    }

    proptest! {
        #[test]
        fn every_pace_keeps_the_budget_and_tolerates_a_lost_heartbeat(
            max_per_second in 0u32..5000,
            timeout_ms in 100u64..600_000,
            proposed_ms in 0u32..120_000,
            fleet in 0usize..200_000,
        ) {
            let pacing = Pacing { max_per_second, timeout: Duration::from_millis(timeout_ms) };
            let agreed = pacing.agreed(proposed_ms);
            let pace = pacing.pace(agreed, fleet);
            prop_assert!(pace.interval >= agreed, "never faster than agreed");
            if max_per_second > 0 {
                let rate = fleet as f64 / pace.interval.as_secs_f64();
                prop_assert!(rate <= f64::from(max_per_second) * (1.0 + 1e-9), "{rate}/s over {max_per_second}/s");
            }
            prop_assert!(pace.timeout >= pace.interval * 2, "two heartbeats fit in the timeout: {pace:?}");
            prop_assert!(pace.timeout >= pacing.timeout, "never stricter than configured");
            prop_assert!(pace.suspect_after >= pace.interval && pace.suspect_after < pace.timeout, "{pace:?}");
            // One more node never makes anyone beat faster.
            prop_assert!(pacing.pace(agreed, fleet + 1).interval >= pace.interval);
        }
    }
}
