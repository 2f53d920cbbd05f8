//! Foreground latency, as the layout transition's mover sees it: moving data backs off while
//! S3 requests take clearly longer than they did before the transition began.
//!
//! Every S3 request's time to its response headers (what a client waits before data flows,
//! whatever the object's size) feeds two averages: a slow one, the *baseline*, taken only
//! while nothing moves, and a fast one, the *recent* latency. While the recent latency stays
//! within [`ALLOWED`] times the baseline the mover runs at its throttle; above it, the mover
//! waits before each object, longer the further above it is (up to [`MAX_DELAY`]). With no
//! request for [`IDLE`] there is no foreground to protect and no wait.
//!
//! Each node computes its own wish and publishes it in its `node/layout` report; a mover
//! takes the largest wish of the nodes it checks before each batch, so a node whose drives
//! the moves load slows every mover, not only its own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recent latency up to this multiple of the baseline costs the mover nothing.
pub const ALLOWED: f64 = 2.0;
/// The longest wait before one object.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// Without a request for this long, the recent latency is stale: no wait.
pub const IDLE: Duration = Duration::from_secs(2);
/// Wait per unit of the ratio above [`ALLOWED`].
const STEP: Duration = Duration::from_millis(100);
/// Weights of a new sample in the slow (baseline) and fast (recent) averages.
const SLOW: f64 = 0.01;
const FAST: f64 = 0.1;

#[derive(Default)]
pub struct Pace {
    state: Mutex<State>,
}

#[derive(Default, Clone, Copy)]
struct State {
    baseline: Option<f64>,
    recent: Option<f64>,
    last: Option<Instant>,
    moving: bool,
}

fn average(old: Option<f64>, sample: f64, weight: f64) -> f64 {
    match old {
        Some(a) => a + weight * (sample - a),
        None => sample,
    }
}

/// The wait before the next object for a `recent` latency against a `baseline` (seconds).
pub fn backoff(baseline: Option<f64>, recent: Option<f64>) -> Duration {
    let (Some(base), Some(recent)) = (baseline, recent) else {
        return Duration::ZERO;
    };
    if base <= 0.0 || recent <= base * ALLOWED {
        return Duration::ZERO;
    }
    STEP.mul_f64(recent / base - ALLOWED).min(MAX_DELAY)
}

impl Pace {
    /// One S3 request took `seconds` to its response headers.
    pub fn observe(&self, seconds: f64) {
        let mut s = self.state.lock().expect("not poisoned");
        s.recent = Some(average(s.recent, seconds, FAST));
        if !s.moving {
            s.baseline = Some(average(s.baseline, seconds, SLOW));
        }
        s.last = Some(Instant::now());
    }

    /// Whether this node's mover is moving data (the baseline is kept as it was meanwhile).
    pub fn set_moving(&self, moving: bool) {
        self.state.lock().expect("not poisoned").moving = moving;
    }

    /// How long this node wishes movers to wait before each object.
    pub fn delay(&self) -> Duration {
        let s = *self.state.lock().expect("not poisoned");
        if s.last.is_none_or(|t| t.elapsed() > IDLE) {
            return Duration::ZERO;
        }
        backoff(s.baseline, s.recent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_above_twice_the_baseline_and_at_most_a_second() {
        assert_eq!(backoff(None, Some(1.0)), Duration::ZERO, "no baseline yet");
        assert_eq!(backoff(Some(0.010), None), Duration::ZERO);
        assert_eq!(backoff(Some(0.010), Some(0.020)), Duration::ZERO);
        assert_eq!(backoff(Some(0.010), Some(0.030)), Duration::from_millis(100));
        assert_eq!(backoff(Some(0.010), Some(0.050)), Duration::from_millis(300));
        assert_eq!(backoff(Some(0.010), Some(10.0)), MAX_DELAY);
    }

    #[test]
    fn the_baseline_holds_while_moving_and_idle_means_no_wait() {
        let p = Pace::default();
        assert_eq!(p.delay(), Duration::ZERO, "nothing observed");
        for _ in 0..200 {
            p.observe(0.010);
        }
        assert_eq!(p.delay(), Duration::ZERO);
        p.set_moving(true);
        for _ in 0..100 {
            p.observe(0.050);
        }
        // the baseline stayed at 10 ms, the recent latency rose to about 50 ms
        let d = p.delay();
        assert!(
            d >= Duration::from_millis(250) && d <= Duration::from_millis(300),
            "{d:?}"
        );
        // without moving, the baseline would have followed
        let q = Pace::default();
        for _ in 0..200 {
            q.observe(0.010);
        }
        for _ in 0..100 {
            q.observe(0.050);
        }
        assert!(q.delay() < d, "{:?} vs {d:?}", q.delay());
        // no foreground request for a while: nothing to protect
        p.state.lock().unwrap().last = Some(Instant::now() - IDLE - Duration::from_millis(1));
        assert_eq!(p.delay(), Duration::ZERO);
    }
}
