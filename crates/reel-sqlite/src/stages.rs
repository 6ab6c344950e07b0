//! Where an append's time goes inside the embedded store, stage by stage.
//!
//! Recorded only when `SqliteOptions::record_stages` is on (the benchmarks turn it on), so the
//! cause of a slow tail is a figure instead of a guess. Every append job gets one sample per
//! stage it went through; group stages (write, commit) are counted once for each job of the group,
//! because each of them waited for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The stages of one append, in the order they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Queued by the caller until the writer thread took it.
    QueueWait,
    /// The writer gathering the other jobs of its group.
    GroupAssembly,
    /// `BEGIN IMMEDIATE`, the checks and the inserts, before `COMMIT`.
    Write,
    /// `COMMIT`: WAL frames written and fsync'd; with checkpoints inside commits, also SQLite's
    /// automatic checkpoint when this commit crossed its threshold.
    Commit,
    /// A checkpoint the writer ran itself after answering its group (`CheckpointMode::AfterAnswer`, or one inside a commit, measured apart from it).
    Checkpoint,
    /// Handing the answers to the callers.
    Reply,
    /// From the answer handed over until the caller's task ran again (its runtime's scheduling).
    WakeUp,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 7] = [
        Stage::QueueWait,
        Stage::GroupAssembly,
        Stage::Write,
        Stage::Commit,
        Stage::Checkpoint,
        Stage::Reply,
        Stage::WakeUp,
    ];

    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue wait",
            Stage::GroupAssembly => "group assembly",
            Stage::Write => "write",
            Stage::Commit => "commit (WAL write + fsync)",
            Stage::Checkpoint => "checkpoint",
            Stage::Reply => "reply",
            Stage::WakeUp => "caller wake-up",
        }
    }
}

/// Quantiles of one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSummary {
    /// Which stage.
    pub stage: Stage,
    /// Samples recorded.
    pub count: usize,
    /// Median in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile in milliseconds.
    pub p999_ms: f64,
    /// Longest sample in milliseconds.
    pub max_ms: f64,
    /// Sum of all samples in milliseconds (where the time went in total).
    pub total_ms: f64,
}

/// Most samples kept per stage (about 4 MiB each); later ones are dropped.
const MAX_SAMPLES: usize = 1 << 20;

/// The appends whose whole time (as their caller saw it) was at or above a quantile, and where
/// that time went on average: waiting in the queue, inside the writer (group assembly, write,
/// commit, a checkpoint, reply), and waiting to be run again after the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendSplit {
    /// The quantile of the whole time the appends were chosen from (0 for every append).
    pub from_quantile: f64,
    /// How many appends.
    pub appends: usize,
    /// Their mean whole time in milliseconds.
    pub total_ms: f64,
    /// Of which queued before the writer took them.
    pub queued_ms: f64,
    /// Of which between the writer taking them and answering them.
    pub in_writer_ms: f64,
    /// Of which between the answer and the caller running again.
    pub wake_up_ms: f64,
}

/// One append's parts, in microseconds: queued, in the writer, waking up.
type Parts = [u32; 3];

/// Samples per stage, in microseconds, and each traced append's parts.
#[derive(Default)]
pub(crate) struct StageRecorder {
    samples: Mutex<[Vec<u32>; Stage::ALL.len()]>,
    appends: Mutex<Vec<Parts>>,
}

/// A duration in whole microseconds, as samples are kept.
fn micros(duration: Duration) -> u32 {
    duration.as_micros().min(u32::MAX as u128) as u32
}

/// The index of quantile `q` among `len` sorted samples (0 when there are none).
fn rank(len: usize, q: f64) -> usize {
    ((len.max(1) - 1) as f64 * q).round() as usize
}

impl StageRecorder {
    /// Records `duration` for `stage`, `times` times (once per job that waited for it).
    pub(crate) fn record(&self, stage: Stage, duration: Duration, times: usize) {
        let micros = micros(duration);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut samples[stage as usize];
        let room = MAX_SAMPLES.saturating_sub(list.len()).min(times);
        list.extend(std::iter::repeat_n(micros, room));
    }

    /// Records one append whose writer noted when it took and answered it, and which its caller
    /// saw answered at `resumed`.
    pub(crate) fn record_append(&self, submitted: Instant, trace: &reel_core::backend::JobTrace, resumed: Instant) {
        let (Some(&taken), Some(&answered)) = (trace.taken.get(), trace.answered.get()) else {
            return;
        };
        let between = |from: Instant, to: Instant| to.saturating_duration_since(from);
        let wake_up = between(answered, resumed);
        self.record(Stage::WakeUp, wake_up, 1);
        let mut appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        if appends.len() < MAX_SAMPLES {
            appends.push([micros(between(submitted, taken)), micros(between(taken, answered)), micros(wake_up)]);
        }
    }

    /// How the traced appends' time splits, for every append and for those at or above each of
    /// `quantiles` of the whole time; forgets them.
    pub(crate) fn take_splits(&self, quantiles: &[f64]) -> Vec<AppendSplit> {
        let mut appends = std::mem::take(&mut *self.appends.lock().unwrap_or_else(|e| e.into_inner()));
        appends.sort_unstable_by_key(|parts| parts.iter().map(|&p| p as u64).sum::<u64>());
        std::iter::once(0.0)
            .chain(quantiles.iter().copied())
            .map(|q| {
                let chosen = &appends[rank(appends.len(), q).min(appends.len())..];
                let mean = |i: usize| {
                    chosen.iter().map(|parts| parts[i] as f64).sum::<f64>() / chosen.len().max(1) as f64 / 1000.0
                };
                let (queued_ms, in_writer_ms, wake_up_ms) = (mean(0), mean(1), mean(2));
                AppendSplit {
                    from_quantile: q,
                    appends: chosen.len(),
                    total_ms: queued_ms + in_writer_ms + wake_up_ms,
                    queued_ms,
                    in_writer_ms,
                    wake_up_ms,
                }
            })
            .collect()
    }

    /// Quantiles of every stage recorded so far, and forgets them.
    pub(crate) fn take(&self) -> Vec<StageSummary> {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        Stage::ALL
            .iter()
            .map(|stage| {
                let mut list = std::mem::take(&mut samples[*stage as usize]);
                list.sort_unstable();
                let at = |q: f64| {
                    if list.is_empty() {
                        0.0
                    } else {
                        list[rank(list.len(), q)] as f64 / 1000.0
                    }
                };
                StageSummary {
                    stage: *stage,
                    count: list.len(),
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                    p999_ms: at(0.999),
                    max_ms: at(1.0),
                    total_ms: list.iter().map(|&m| m as f64).sum::<f64>() / 1000.0,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_recorded_samples_and_take_starts_over() {
        let recorder = StageRecorder::default();
        for ms in 1..=100u64 {
            recorder.record(Stage::Commit, Duration::from_millis(ms), 1);
        }
        recorder.record(Stage::Write, Duration::from_micros(250), 3);
        let summary = recorder.take();
        let commit = summary.iter().find(|s| s.stage == Stage::Commit).unwrap();
        assert_eq!((commit.count, commit.p50_ms, commit.p99_ms, commit.max_ms), (100, 51.0, 99.0, 100.0));
        let write = summary.iter().find(|s| s.stage == Stage::Write).unwrap();
        assert_eq!((write.count, write.p50_ms, write.total_ms), (3, 0.25, 0.75));
        assert!(recorder.take().iter().all(|s| s.count == 0), "take forgets what it returned");
    }

    #[test]
    fn an_append_splits_into_queue_writer_and_wake_up_and_the_slowest_are_chosen_by_whole_time() {
        let recorder = StageRecorder::default();
        let start = Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        // 99 appends of 1 ms (0.1 queued, 0.8 in the writer, 0.1 waking) and one of 5 ms that
        // spent 3 ms waking up.
        for _ in 0..99 {
            let trace = reel_core::backend::JobTrace::default();
            trace.taken.set(at(100)).unwrap();
            trace.answered.set(at(900)).unwrap();
            recorder.record_append(start, &trace, at(1_000));
        }
        let slow = reel_core::backend::JobTrace::default();
        slow.taken.set(at(1_000)).unwrap();
        slow.answered.set(at(2_000)).unwrap();
        recorder.record_append(start, &slow, at(5_000));
        // The 0.999 quantile of 100 appends is the slowest alone.
        let splits = recorder.take_splits(&[0.999]);
        let all = &splits[0];
        assert_eq!(all.appends, 100);
        assert!((all.total_ms - 1.04).abs() < 1e-9, "{all:?}");
        let tail = &splits[1];
        assert_eq!((tail.appends, tail.queued_ms, tail.in_writer_ms, tail.wake_up_ms), (1, 1.0, 1.0, 3.0));
        let wake = recorder.take().into_iter().find(|s| s.stage == Stage::WakeUp).unwrap();
        assert_eq!((wake.count, wake.max_ms), (100, 3.0));
        assert!(recorder.take_splits(&[0.99])[0].appends == 0, "take_splits forgets what it returned");
    }
}
