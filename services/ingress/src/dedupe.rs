//! Recently seen webhook `MessageSid`s, so a retried webhook is published once.
//!
//! Each sid gets a cell that is filled once its event is acknowledged by the broker. A retry
//! that arrives while the first attempt is still publishing waits for it; a retry after a
//! failed attempt publishes again. The memory is bounded: the oldest sids are forgotten first.
//! The event id is derived from the sid too, so consumers can drop any duplicate that escapes
//! this per-process memory (a restart, a second instance).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// Bounded memory of recently published message sids.
pub(crate) struct RecentMessages {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    cells: HashMap<String, Arc<OnceCell<()>>>,
    order: VecDeque<String>,
}

/// Whether publishing happened now or had happened before.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Published,
    Duplicate,
}

impl RecentMessages {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::default() }
    }

    fn cell(&self, sid: &str) -> Arc<OnceCell<()>> {
        let mut inner = self.inner.lock().expect("dedupe lock");
        if let Some(cell) = inner.cells.get(sid) {
            return cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        inner.cells.insert(sid.to_owned(), cell.clone());
        inner.order.push_back(sid.to_owned());
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.cells.remove(&oldest);
            }
        }
        cell
    }

    /// Runs `publish` unless `sid` was already published; concurrent calls for one sid run it
    /// at most once at a time.
    pub(crate) async fn publish_once<F, Fut, E>(&self, sid: &str, publish: F) -> Result<Outcome, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let cell = self.cell(sid);
        let mut ran = false;
        cell.get_or_try_init(|| {
            ran = true;
            publish()
        })
        .await?;
        Ok(if ran { Outcome::Published } else { Outcome::Duplicate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_once_per_sid_and_retries_after_failure() {
        let recent = RecentMessages::new(2);
        let fail = recent.publish_once("SM1", || async { Err::<(), _>("broker down") }).await;
        assert_eq!(fail, Err("broker down"));
        assert_eq!(recent.publish_once("SM1", || async { Ok::<_, ()>(()) }).await, Ok(Outcome::Published));
        assert_eq!(recent.publish_once("SM1", || async { Ok::<_, ()>(()) }).await, Ok(Outcome::Duplicate));
    }

    #[tokio::test]
    async fn forgets_the_oldest_beyond_capacity() {
        let recent = RecentMessages::new(2);
        for sid in ["SM1", "SM2", "SM3"] {
            recent.publish_once(sid, || async { Ok::<_, ()>(()) }).await.unwrap();
        }
        assert_eq!(recent.publish_once("SM3", || async { Ok::<_, ()>(()) }).await, Ok(Outcome::Duplicate));
        assert_eq!(recent.publish_once("SM1", || async { Ok::<_, ()>(()) }).await, Ok(Outcome::Published));
    }
}
