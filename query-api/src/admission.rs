//! Admission control: a bounded number of queries (SQL statements and panel computations) run
//! at once on one server; the next ones wait briefly for a slot and are then turned away with
//! 503 and Retry-After, so that a burst queues or sheds instead of exhausting memory, threads
//! or the shared memory pool.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

pub struct Admission {
    slots: Arc<Semaphore>,
    max: usize,
    wait: Duration,
}

/// A running query's slot; dropping it lets the next one in.
pub type Slot = OwnedSemaphorePermit;

impl Admission {
    pub fn new(max: usize, wait: Duration) -> Self {
        let max = max.max(1);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            wait,
        }
    }

    /// A slot, waiting at most the configured time for one.
    pub async fn admit(&self) -> Result<Slot, ApiError> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(ApiError::Overloaded {
                retry_after_secs: 1,
                message: format!(
                    "the server is running its limit of {} queries; retry shortly",
                    self.max
                ),
            }),
        }
    }

    /// Queries running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_past_the_limit_waits_then_is_turned_away() {
        let a = Admission::new(2, Duration::from_millis(50));
        let one = a.admit().await.unwrap();
        let _two = a.admit().await.unwrap();
        assert_eq!(a.running(), 2);
        match a.admit().await {
            Err(ApiError::Overloaded { .. }) => {}
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
        drop(one);
        assert!(
            a.admit().await.is_ok(),
            "a freed slot admits the next query"
        );
    }
}
