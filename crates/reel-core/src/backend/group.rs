//! Group commit plumbing shared by the backends: the job a caller submits, why one request of a
//! group is refused, and handing each caller its share of the group's answers.

use tokio::sync::oneshot;

use crate::{AppendRequest, AppendResult, ReelError};

/// Appends submitted together (one `append` or `append_many` call), answered together.
pub struct WriteJob {
    /// The requests, each atomic on its own.
    pub requests: Vec<AppendRequest>,
    /// Where the answers go, one per request in order.
    pub reply: oneshot::Sender<Vec<Result<AppendResult, ReelError>>>,
    /// When the caller queued it (how long it waited for the writer is a stage of its latency).
    pub submitted: std::time::Instant,
    /// When the writer took it and answered it, kept only while a store records where appends
    /// spend their time (benchmarks): the caller then splits its own latency per append.
    pub trace: Option<std::sync::Arc<JobTrace>>,
}

/// When the writer took a job and when it answered it. The writer fills it; the caller reads it
/// after the answer arrived.
#[derive(Debug, Default)]
pub struct JobTrace {
    /// The writer took the job off its queue.
    pub taken: std::sync::OnceLock<std::time::Instant>,
    /// The writer handed the job its answer.
    pub answered: std::sync::OnceLock<std::time::Instant>,
}

impl WriteJob {
    /// A job queued now.
    pub fn new(requests: Vec<AppendRequest>, reply: oneshot::Sender<Vec<Result<AppendResult, ReelError>>>) -> Self {
        Self { requests, reply, submitted: std::time::Instant::now(), trace: None }
    }

    /// A job queued now whose writer notes in `trace` when it took and answered it.
    pub fn traced(
        requests: Vec<AppendRequest>,
        reply: oneshot::Sender<Vec<Result<AppendResult, ReelError>>>,
        trace: std::sync::Arc<JobTrace>,
    ) -> Self {
        Self { trace: Some(trace), ..Self::new(requests, reply) }
    }

    /// Notes that the writer took the job now (when it is traced).
    pub fn note_taken(&self) {
        if let Some(trace) = &self.trace {
            let _ = trace.taken.set(std::time::Instant::now());
        }
    }

    /// How many events the job carries (groups are bounded by it).
    pub fn event_count(&self) -> usize {
        self.requests.iter().map(|r| r.events.len()).sum()
    }
}

/// Why a request of a group was not stored.
#[derive(Debug)]
pub enum Rejected {
    /// Its own checks failed (expected version, duplicate id); the other requests go on.
    Check(ReelError),
    /// The database failed while writing; the whole group rolls back.
    Write(ReelError),
}

impl From<ReelError> for Rejected {
    fn from(e: ReelError) -> Self {
        Rejected::Check(e)
    }
}

/// The requests of a group, in submission order, for one transaction.
pub fn requests_of(group: &[WriteJob]) -> Vec<&AppendRequest> {
    group.iter().flat_map(|job| job.requests.iter()).collect()
}

/// Hands each job its answers: `results` holds one per request, in the order of [`requests_of`].
/// A caller that stopped waiting is not an error: its events are committed either way.
pub fn answer(group: Vec<WriteJob>, results: Vec<Result<AppendResult, ReelError>>) {
    let mut results = results.into_iter();
    for job in group {
        let answers: Vec<_> = results.by_ref().take(job.requests.len()).collect();
        if let Some(trace) = &job.trace {
            let _ = trace.answered.set(std::time::Instant::now());
        }
        let _ = job.reply.send(answers);
    }
}

/// Answers every request of every job with `error` (the group could not even start).
pub fn fail_all(group: Vec<WriteJob>, error: &ReelError) {
    for job in group {
        let _ = job.reply.send(job.requests.iter().map(|_| Err(error.clone())).collect());
    }
}
