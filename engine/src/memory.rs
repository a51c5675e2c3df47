//! One memory pool for a whole server, and each query's share of it.
//!
//! ```text
//! server pool (--server-memory-mb) <- QueryShare (--query-memory-mb) <- one query's operators
//! jobs pool (--jobs-memory-mb)                                        <- a job's queries
//! ```
//!
//! A query's reservations count against its own share and against the server's pool: 200
//! concurrent queries can never take 200 x the per-query limit, and one query can never take
//! the whole server. Whichever runs out first fails the query with `ResourcesExhausted`,
//! which the API answers with 422 (the query is the caller's to narrow).

use std::fmt::{Display, Formatter};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::common::{resources_datafusion_err, Result as DfResult};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The pool all queries of a server share.
pub fn server_pool(bytes: usize) -> Arc<dyn MemoryPool> {
    Arc::new(GreedyMemoryPool::new(bytes))
}

/// The flag that sets the jobs' pool: its errors name it, and [`crate::EngineError`] passes an
/// error naming it on as it is (it already says what to do).
pub(crate) const JOBS_MEMORY_FLAG: &str = "--jobs-memory-mb";

/// The pool the jobs of a process share: rollups (scheduled or run by a purge), a purge's
/// verification, exports. Apart from the queries' pool, so that a rollup never takes the
/// memory of the API's queries, nor they its memory. Past it, the reservation fails with an
/// error naming the setting; spill stays off, so the job fails (the scheduler runs it again on
/// its next tick; a purge reports the error and its request can be run again).
pub fn jobs_pool(bytes: usize) -> Arc<dyn MemoryPool> {
    Arc::new(JobsPool {
        bytes: Bounded::new(bytes),
    })
}

/// Bytes held against a limit.
#[derive(Debug)]
struct Bounded {
    limit: usize,
    used: AtomicUsize,
}

impl Bounded {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    fn grow(&self, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    /// Takes `additional` more bytes, or, when that would pass the limit, takes nothing and
    /// answers the bytes held.
    fn try_grow(&self, additional: usize) -> Result<(), usize> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let next = used.checked_add(additional)?;
                (next <= self.limit).then_some(next)
            })
            .map(|_| ())
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct JobsPool {
    bytes: Bounded,
}

impl Display for JobsPool {
    fn fmt(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        let (used, limit) = (self.bytes.used(), self.bytes.limit);
        write!(f, "jobs pool (used: {used} of {limit} bytes)")
    }
}

impl MemoryPool for JobsPool {
    fn name(&self) -> &str {
        "jobs"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.bytes.grow(additional);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.bytes.shrink(shrink);
    }

    fn try_grow(&self, _reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.bytes.try_grow(additional).map_err(|used| {
            resources_datafusion_err!(
                "the jobs' memory is used up: they hold {used} bytes, one asked for \
                 {additional} more, the limit is {} bytes ({JOBS_MEMORY_FLAG}, [storage] \
                 jobs_memory_mb); raise it, or run fewer jobs at once",
                self.bytes.limit
            )
        })
    }

    fn reserved(&self) -> usize {
        self.bytes.used()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.bytes.limit)
    }
}

/// One query's share of a shared pool.
#[derive(Debug)]
pub struct QueryShare {
    shared: Arc<dyn MemoryPool>,
    bytes: Bounded,
}

impl QueryShare {
    pub fn new(shared: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self {
            shared,
            bytes: Bounded::new(limit),
        }
    }
}

impl Display for QueryShare {
    fn fmt(&self, f: &mut Formatter<'_>) -> std::fmt::Result {
        let (used, limit) = (self.bytes.used(), self.bytes.limit);
        write!(
            f,
            "query share (used: {used} of {limit} bytes) of {}",
            self.shared
        )
    }
}

impl MemoryPool for QueryShare {
    fn name(&self) -> &str {
        "query_share"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.bytes.grow(additional);
        self.shared.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.bytes.shrink(shrink);
        self.shared.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.bytes.try_grow(additional).map_err(|used| {
            resources_datafusion_err!(
                "the query's memory share is used up: it holds {used} bytes, asked for {additional} more, its limit is {} bytes",
                self.bytes.limit
            )
        })?;
        if let Err(e) = self.shared.try_grow(reservation, additional) {
            self.bytes.shrink(additional);
            return Err(resources_datafusion_err!(
                "the server's memory for queries is in use by other queries ({e}); retry shortly"
            ));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.bytes.used()
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.bytes.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn a_query_is_bounded_by_its_share_and_by_the_server() {
        let server = server_pool(1000);
        let a: Arc<dyn MemoryPool> = Arc::new(QueryShare::new(server.clone(), 600));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryShare::new(server.clone(), 600));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(500).unwrap();
        assert!(ra.try_grow(200).is_err(), "past its own share");
        rb.try_grow(400).unwrap();
        let e = rb.try_grow(200).unwrap_err();
        assert!(e.to_string().contains("other queries"), "{e}");
        assert_eq!(server.reserved(), 900);
        assert_eq!(b.reserved(), 400, "a refused grow is not counted");
        drop(ra);
        assert_eq!(server.reserved(), 400);
        rb.try_grow(200).unwrap();
    }

    #[test]
    fn jobs_are_bounded_by_their_pool_and_the_error_names_the_setting() {
        let jobs = jobs_pool(1000);
        let a = MemoryConsumer::new("a").register(&jobs);
        let b = MemoryConsumer::new("b").register(&jobs);
        a.try_grow(700).unwrap();
        let e = b.try_grow(400).unwrap_err().to_string();
        assert!(
            e.contains("--jobs-memory-mb") && e.contains("700 bytes"),
            "{e}"
        );
        assert_eq!(jobs.reserved(), 700, "a refused grow is not counted");
        b.try_grow(300).unwrap();
        drop(a);
        assert_eq!(jobs.reserved(), 300);
        b.try_grow(600).unwrap();
    }
}
