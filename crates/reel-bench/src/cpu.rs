//! CPU time, so a benchmark point can say whether the machine ran out of CPU and who used it:
//! the whole machine's from `/proc/stat`, one process's from `/proc/<pid>/stat`.
//!
//! Both count in the kernel's user-visible clock ticks (`USER_HZ`), which Linux fixes at 100
//! per second on every architecture this runs on.

/// Ticks per second of `/proc` CPU counters.
const TICKS_PER_SECOND: f64 = 100.0;

/// The machine's CPU counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// CPU used between two readings of [`MachineCpu`], in CPU-seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// User, system and interrupt time of every process (the guest's own work).
    pub busy: f64,
    /// Idle and waiting for I/O.
    pub idle: f64,
    /// Taken by the hypervisor for others: time this machine wanted a CPU and did not get one.
    pub steal: f64,
}

impl MachineCpu {
    /// Reads the counters now; `None` where `/proc/stat` is not there (not Linux).
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal guest guest_nice
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        let field = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// What was used since `self` was read.
    pub fn used_since(&self) -> Option<CpuUse> {
        let now = Self::now()?;
        let seconds = |a: u64, b: u64| a.saturating_sub(b) as f64 / TICKS_PER_SECOND;
        Some(CpuUse {
            busy: seconds(now.busy, self.busy),
            idle: seconds(now.idle, self.idle),
            steal: seconds(now.steal, self.steal),
        })
    }
}

impl CpuUse {
    /// The busy share of all CPU time that passed (1.0: every CPU busy all the time).
    pub fn busy_share(&self) -> f64 {
        let total = self.busy + self.idle + self.steal;
        if total > 0.0 {
            self.busy / total
        } else {
            0.0
        }
    }

    /// Busy CPU-microseconds per event.
    pub fn micros_per_event(&self, events: u64) -> f64 {
        self.busy * 1e6 / events.max(1) as f64
    }

    /// One line for a table's note: busy share, steal, CPU per event.
    pub fn describe(&self, events: u64) -> String {
        format!(
            "CPU {:.0} % busy, {:.0} % stolen, {:.0} CPU-µs per event",
            self.busy_share() * 100.0,
            self.steal / (self.busy + self.idle + self.steal).max(f64::MIN_POSITIVE) * 100.0,
            self.micros_per_event(events)
        )
    }
}

/// User plus system CPU-seconds this process has used so far.
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // state (3), …, utime (14), stime (15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// For each thread name of this process, the time its threads have so far spent runnable but
/// waiting for a CPU (the run-queue wait of `/proc/self/task/*/schedstat`), in nanoseconds.
/// Threads that end between two readings drop out of the second.
pub fn run_queue_wait_by_thread() -> std::collections::BTreeMap<String, u64> {
    let mut waits = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return waits };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string();
        let wait = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|f| f.parse::<u64>().ok()));
        if let Some(wait) = wait {
            *waits.entry(name).or_insert(0) += wait;
        }
    }
    waits
}

/// The run-queue wait per thread name between two readings of [`run_queue_wait_by_thread`].
pub fn run_queue_wait_since(
    before: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, std::time::Duration> {
    run_queue_wait_by_thread()
        .into_iter()
        .map(|(name, after)| {
            let waited = after.saturating_sub(before.get(&name).copied().unwrap_or(0));
            (name, std::time::Duration::from_nanos(waited))
        })
        .filter(|(_, waited)| !waited.is_zero())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_forward_and_shares_stay_in_bounds() {
        let before = MachineCpu::now().expect("/proc/stat on Linux");
        let own_before = own_cpu_seconds().expect("/proc/self/stat on Linux");
        // Spin long enough for the 10 ms ticks to count it.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = before.used_since().expect("/proc/stat on Linux");
        let own = own_cpu_seconds().expect("/proc/self/stat on Linux") - own_before;
        assert!(used.busy > 0.0, "the machine was busy spinning: {used:?}");
        assert!(own > 0.0, "this process used CPU spinning");
        assert!((0.0..=1.0).contains(&used.busy_share()));
        assert!(used.describe(1000).contains("CPU-µs per event"));
        let waits = run_queue_wait_by_thread();
        assert!(!waits.is_empty(), "this process's threads are listed with their run-queue wait");
    }
}
