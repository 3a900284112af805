//! The wall clock a service reads: the system's, or one a test holds still and moves, so that
//! rules with deadlines (a window closing, a notice falling due) are tested without racing the
//! real clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, from the system or from a test.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands at `millis` until it is moved ([`Clock::set_millis`]); its clones
    /// share the time.
    pub fn manual(millis: i64) -> Self {
        Self { manual: Some(Arc::new(AtomicI64::new(millis))) }
    }

    /// Milliseconds since the Unix epoch, now.
    pub fn now_millis(&self) -> i64 {
        match &self.manual {
            Some(millis) => millis.load(Ordering::SeqCst),
            None => crate::now_millis(),
        }
    }

    /// Moves a manual clock to `millis` (never back: an earlier time is ignored). The system
    /// clock cannot be moved: a programming error, reported by a panic.
    pub fn set_millis(&self, millis: i64) {
        let manual = self.manual.as_ref().expect("only a manual clock can be moved");
        manual.fetch_max(millis, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_stands_still_until_moved_forward_and_its_clones_follow() {
        let clock = Clock::manual(1_000);
        let clone = clock.clone();
        assert_eq!(clone.now_millis(), 1_000);
        clock.set_millis(5_000);
        assert_eq!(clone.now_millis(), 5_000);
        clock.set_millis(2_000);
        assert_eq!(clone.now_millis(), 5_000, "never back");
        let system = Clock::system().now_millis();
        assert!((system - crate::now_millis()).abs() < 60_000);
    }
}
