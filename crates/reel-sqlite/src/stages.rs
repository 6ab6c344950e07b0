//! Where an append's time goes inside the embedded store, stage by stage.
//!
//! Recorded only when `SqliteOptions::record_stages` is on (the benchmarks turn it on), so the
//! cause of a slow tail is a figure instead of a guess. Every append job gets one sample per
//! stage it went through; group stages (write, commit) are counted once for each job of the group,
//! because each of them waited for it.

use std::sync::Mutex;
use std::time::Duration;

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
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 6] =
        [Stage::QueueWait, Stage::GroupAssembly, Stage::Write, Stage::Commit, Stage::Checkpoint, Stage::Reply];

    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue wait",
            Stage::GroupAssembly => "group assembly",
            Stage::Write => "write",
            Stage::Commit => "commit (WAL write + fsync)",
            Stage::Checkpoint => "checkpoint",
            Stage::Reply => "reply",
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

/// Samples per stage, in microseconds.
#[derive(Default)]
pub(crate) struct StageRecorder {
    samples: Mutex<[Vec<u32>; 6]>,
}

impl StageRecorder {
    /// Records `duration` for `stage`, `times` times (once per job that waited for it).
    pub(crate) fn record(&self, stage: Stage, duration: Duration, times: usize) {
        let micros = duration.as_micros().min(u32::MAX as u128) as u32;
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut samples[stage as usize];
        let room = MAX_SAMPLES.saturating_sub(list.len()).min(times);
        list.extend(std::iter::repeat_n(micros, room));
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
                        list[((list.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
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
}
