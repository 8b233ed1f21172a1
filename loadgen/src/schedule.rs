//! When requests are due: a rate over wall-clock time (constant, or a profile's curve
//! compressed and scaled), and arrivals drawn from it (evenly spaced or Poisson).
//!
//! Invariant: the schedule is fixed before the run; nothing the switch does moves it. A
//! request is due at its time whether or not earlier ones were answered.

use std::sync::Arc;
use std::time::Duration;

use crate::profile::Profile;
use crate::rng::Rng;

/// How arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arrivals {
    /// Evenly spaced at the current rate.
    #[default]
    Uniform,
    /// Exponential gaps at the current rate (independent arrivals, as from many payers).
    Poisson,
}

impl std::str::FromStr for Arrivals {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uniform" => Ok(Self::Uniform),
            "poisson" => Ok(Self::Poisson),
            other => Err(format!("{other:?}: \"uniform\" or \"poisson\"")),
        }
    }
}

/// The rate over the run.
#[derive(Debug, Clone)]
pub enum Shape {
    Constant {
        tps: f64,
    },
    Profile {
        profile: Arc<Profile>,
        /// Profile time at the run's start (seconds from day 0's midnight).
        from_s: f64,
        /// Profile seconds per wall second (86,400 plays a day in a second).
        speed: f64,
        /// Requests per second at level 1.0 (the profile's average times the scale).
        tps_per_level: f64,
    },
}

/// The whole run's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub shape: Shape,
    pub duration: Duration,
}

impl Schedule {
    pub fn constant(tps: f64, duration: Duration) -> Self {
        Self { shape: Shape::Constant { tps }, duration }
    }

    /// Total requests per second due at `wall_s` seconds into the run.
    pub fn rate_at(&self, wall_s: f64) -> f64 {
        match &self.shape {
            Shape::Constant { tps } => *tps,
            Shape::Profile { profile, from_s, speed, tps_per_level } => {
                profile.level_at(from_s + wall_s * speed) * tps_per_level
            }
        }
    }

    /// The profile time at `wall_s`, for display.
    pub fn profile_time(&self, wall_s: f64) -> Option<f64> {
        match &self.shape {
            Shape::Constant { .. } => None,
            Shape::Profile { from_s, speed, .. } => Some(from_s + wall_s * speed),
        }
    }

    /// Requests due in the whole run (the integral of the rate).
    pub fn expected_requests(&self) -> f64 {
        let seconds = self.duration.as_secs_f64();
        match &self.shape {
            Shape::Constant { tps } => tps * seconds,
            Shape::Profile { profile, from_s, speed, tps_per_level } => {
                profile.mean_level(*from_s, from_s + seconds * speed) * tps_per_level * seconds
            }
        }
    }

    /// The highest rate of the run.
    pub fn peak_rate(&self) -> f64 {
        let seconds = self.duration.as_secs_f64();
        (0..=1000).map(|i| self.rate_at(seconds * f64::from(i) / 1000.0)).fold(0.0, f64::max)
    }
}

/// One stream's arrivals: `share` of the schedule's rate, from `seed`.
#[derive(Debug, Clone)]
pub struct ArrivalStream {
    schedule: Arc<Schedule>,
    share: f64,
    kind: Arrivals,
    rng: Rng,
    /// The next arrival's due time, nanoseconds from the run's start.
    next_ns: f64,
    end_ns: f64,
}

/// Below this rate a stream re-checks the schedule every `IDLE_STEP` instead of waiting
/// for a gap that would overshoot a rising curve.
const IDLE_RATE: f64 = 0.5;
const IDLE_STEP_NS: f64 = 100_000_000.0;

impl ArrivalStream {
    pub fn new(schedule: Arc<Schedule>, share: f64, kind: Arrivals, rng: Rng) -> Self {
        let end_ns = schedule.duration.as_nanos() as f64;
        let mut stream = Self { schedule, share, kind, rng, next_ns: 0.0, end_ns };
        // The first arrival is one gap in: a thousand streams do not all fire at zero.
        stream.next_ns = stream.gap_from(0.0) * stream.rng.unit();
        stream
    }

    fn gap_from(&mut self, at_ns: f64) -> f64 {
        let rate = self.schedule.rate_at(at_ns / 1e9) * self.share;
        if rate < IDLE_RATE {
            return IDLE_STEP_NS;
        }
        let gap = 1e9 / rate;
        match self.kind {
            Arrivals::Uniform => gap,
            Arrivals::Poisson => gap * self.rng.exponential(),
        }
    }

    /// The next arrival's due time in nanoseconds from the start, or `None` once the run's
    /// duration is over.
    pub fn peek(&self) -> Option<u64> {
        (self.next_ns < self.end_ns).then_some(self.next_ns as u64)
    }

    /// Consumes the arrival [`ArrivalStream::peek`] returned; `false` if that was an idle
    /// re-check rather than a request.
    pub fn advance(&mut self) -> bool {
        let at = self.next_ns;
        let rate = self.schedule.rate_at(at / 1e9) * self.share;
        self.next_ns = at + self.gap_from(at);
        rate >= IDLE_RATE || self.rng.chance(rate * IDLE_STEP_NS / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(schedule: Schedule, share: f64, kind: Arrivals, seed: u64) -> u64 {
        let mut stream = ArrivalStream::new(Arc::new(schedule), share, kind, Rng::new(seed));
        let mut n = 0;
        let mut last = 0;
        while let Some(at) = stream.peek() {
            assert!(at >= last, "arrivals are in order");
            last = at;
            n += u64::from(stream.advance());
        }
        n
    }

    #[test]
    fn streams_deliver_their_share_of_the_rate() {
        let second = Duration::from_secs(10);
        let uniform = count(Schedule::constant(10_000.0, second), 0.25, Arrivals::Uniform, 1);
        assert!((24_990..=25_010).contains(&uniform), "{uniform}");
        let poisson = count(Schedule::constant(10_000.0, second), 0.25, Arrivals::Poisson, 1);
        assert!((24_000..=26_000).contains(&poisson), "{poisson}");
        // A rate too low for a gap per check still arrives on average.
        let trickle = count(Schedule::constant(2.0, Duration::from_secs(2000)), 0.1, Arrivals::Uniform, 3);
        assert!((300..=500).contains(&trickle), "{trickle}");
    }

    #[test]
    fn a_profile_compressed_keeps_its_shape_and_count() {
        let profile = Arc::new(Profile::load("new-years-eve").unwrap());
        let from_s = crate::profile::parse_clock("d0 23:00").unwrap();
        let schedule = Schedule {
            shape: Shape::Profile { profile: profile.clone(), from_s, speed: 120.0, tps_per_level: 1000.0 },
            duration: Duration::from_secs(60),
        };
        // 60 wall seconds at 120x: profile time 23:00 to 01:00. At wall 25 s: 23:50.
        assert!((schedule.rate_at(25.0) - 2535.0).abs() < 1.0);
        let expected = schedule.expected_requests();
        let actual = count(schedule.clone(), 1.0, Arrivals::Uniform, 9) as f64;
        assert!((actual / expected - 1.0).abs() < 0.01, "{actual} vs {expected}");
        assert!((schedule.peak_rate() - 2535.0).abs() < 1.0);
    }
}
