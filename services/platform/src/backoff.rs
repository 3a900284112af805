//! Waits between retries: doubling from a first wait up to a cap, optionally spread by jitter
//! so that many retrying callers do not come back at once. Pure: the caller sleeps.

use std::time::Duration;

/// The waits of one retrying caller.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits starting at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first.min(max), max }
    }

    /// The next wait; the one after is twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// The next wait spread by `jitter` (a random number in `[0, 1)`): between half and one and
    /// a half times [`Backoff::next_wait`].
    pub fn next_jittered(&mut self, jitter: f64) -> Duration {
        self.next_wait().mul_f64(0.5 + jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_jitter_spreads_them_by_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..4).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        let mut jittered = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        assert_eq!(jittered.next_jittered(0.0), Duration::from_millis(100));
        assert_eq!(jittered.next_jittered(1.0), Duration::from_millis(600));
        assert_eq!(Backoff::new(Duration::from_secs(60), Duration::from_secs(1)).next_wait(), Duration::from_secs(1));
    }
}
