//! Device presence on the platform: heartbeats keep a row per device current, and a sweep turns
//! changes between online and offline into events (`UnitCameOnline`, `UnitWentOffline` in
//! `unitpresence-NAME`).
//!
//! Heartbeats are not events: a fleet of thousands sending one every few seconds would fill the
//! log with nothing new. A device is offline once it has been silent for a multiple of its own
//! declared interval (1.5× by default), so a device that reports rarely is not shown offline
//! early. Each change carries a session number (the count of times the device came online) and
//! the presence state is the stream folded by rules that ignore a late or repeated event: a
//! `UnitWentOffline` only ends the session it names, a `UnitCameOnline` only starts a newer one.
//!
//! Sweeping is split between processes by partitions of the device names' hashes (16^k, as
//! `reel consume --partitions` splits streams), each held under a lease that another process
//! takes over when it lapses. Every change is appended with the presence stream's exact expected
//! version, so two processes that both think they hold a partition (a paused one whose lease
//! lapsed) cannot record the same change twice: the loser folds the stream and goes on from it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reel_core::api::{DeviceEntry, HeartbeatAnswer, HeartbeatBody};
use reel_core::{
    check_device_name, check_display_name, presence_stream, DevicePresence, Direction, EventStore, ExpectedVersion,
    Heartbeat, NewEvent, PresenceState, PresenceStore, RecordedEvent, ReelError, StreamName, StreamVersion, Timestamp,
};
use serde_json::json;

/// More work for the devices of the partitions a process holds, done after each sweep with
/// their presence as it stands (the platform's side of units without the agent: pinging them,
/// pushing configuration to them, fetching their events).
#[async_trait::async_trait]
pub trait PartitionWork: Send + Sync {
    /// Does what is due at `now` for `devices` (those of this process's partitions).
    async fn run(&self, now: Timestamp, devices: &[DevicePresence]);
}

/// How presence is decided and the work split.
#[derive(Clone, Debug)]
pub struct PresenceOptions {
    /// A device is offline after this many of its declared intervals pass without a heartbeat.
    pub offline_after: f64,
    /// Clock skew beyond this is reported (`clock_skew_reported`).
    pub skew_threshold: Duration,
    /// Devices are split into 16^digits partitions between sweeping processes (0: one).
    pub partition_digits: u8,
    /// How often held partitions are swept.
    pub sweep_every: Duration,
    /// How long a partition's lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        Self {
            offline_after: 1.5,
            skew_threshold: Duration::from_secs(5),
            partition_digits: 1,
            sweep_every: Duration::from_millis(250),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// The platform's presence of devices, over an event store and its presence rows.
#[derive(Clone)]
pub struct Presence {
    events: Arc<dyn EventStore>,
    rows: Arc<dyn PresenceStore>,
    options: PresenceOptions,
    work: Option<Arc<dyn PartitionWork>>,
}

/// Longest declared heartbeat interval: a day.
const MAX_INTERVAL_MS: u64 = 86_400_000;

impl Presence {
    /// Presence kept in `rows`, its changes appended to `events`.
    pub fn new(events: Arc<dyn EventStore>, rows: Arc<dyn PresenceStore>, options: PresenceOptions) -> Self {
        Self { events, rows, options, work: None }
    }

    /// Also runs `work` for the held partitions' devices after each sweep.
    pub fn with_work(mut self, work: Arc<dyn PartitionWork>) -> Self {
        self.work = Some(work);
        self
    }

    /// Records `device`'s heartbeat received at `now`; bad fields are `InvalidArgument` and
    /// record nothing.
    pub async fn heartbeat(
        &self,
        device: &str,
        body: &HeartbeatBody,
        now: Timestamp,
    ) -> Result<HeartbeatAnswer, ReelError> {
        check_device_name(device)?;
        let invalid = |what: String| Err(ReelError::InvalidArgument(what));
        if !(1_000..=MAX_INTERVAL_MS).contains(&body.interval_ms) {
            return invalid(format!("interval_ms must be 1000 to {MAX_INTERVAL_MS}, got {}", body.interval_ms));
        }
        if body.rtt_ms.is_some_and(|rtt| rtt > 3_600_000) {
            return invalid("rtt_ms must be at most 3600000 (an hour)".into());
        }
        if let Some(name) = &body.display_name {
            check_display_name(name, "display_name")?;
        }
        if body.config_version.is_some_and(|v| v > i64::MAX as u64) {
            return invalid("config_version is a stream version: at most 9223372036854775807".into());
        }
        if body.clock_ms <= 0 {
            return invalid(format!("clock_ms must be the device's clock in Unix milliseconds, got {}", body.clock_ms));
        }
        let now_ms = now.unix_micros() / 1_000;
        // The reading was taken when the heartbeat left; it arrives about half a round trip later.
        let clock_skew_ms =
            body.clock_ms.saturating_add(i64::from(body.rtt_ms.unwrap_or(0) / 2)).saturating_sub(now_ms);
        self.rows
            .record_heartbeat(&Heartbeat {
                device: device.to_string(),
                display_name: body.display_name.clone(),
                interval: Duration::from_millis(body.interval_ms),
                rtt_ms: body.rtt_ms,
                clock_skew_ms,
                config_version: body.config_version,
                received_at: now,
            })
            .await?;
        Ok(HeartbeatAnswer { server_clock_ms: now_ms, clock_skew_ms })
    }

    /// Every device the platform has heard from, as the presence table shows it.
    pub async fn devices(&self) -> Result<Vec<DeviceEntry>, ReelError> {
        let threshold = self.options.skew_threshold.as_millis() as i64;
        Ok(self
            .rows
            .devices()
            .await?
            .into_iter()
            .map(|d| DeviceEntry {
                online: d.state.online,
                session: d.state.session,
                since: d.state.since,
                rtt_ms: d.rtt_ms,
                last_heard_at: (d.last_heard_at.unix_micros() > 0).then_some(d.last_heard_at),
                interval_ms: d.interval_ms,
                clock_skew_reported: d.clock_skew_ms.abs() > threshold,
                clock_skew_ms: d.clock_skew_ms,
                config_version: d.config_version,
                config_acked_at: d.config_acked_at,
                display_name: d.display_name,
                link: d.endpoint.as_ref().map(|(_, link)| link.as_str().to_string()),
                endpoint: d.endpoint.map(|(endpoint, _)| endpoint),
                link_error: d.link_error,
                device: d.device,
            })
            .collect())
    }

    /// Records every change of the devices in `partitions` (of 16^digits) at `now`; returns
    /// how many it recorded.
    pub async fn sweep(&self, now: Timestamp, partitions: &HashSet<u32>) -> Result<usize, ReelError> {
        let devices = self.rows.devices().await?;
        let (changed, _) = self.sweep_as(now, partitions, "", devices).await?;
        Ok(changed)
    }

    /// [`Self::sweep`] over `devices` (the rows as just read), naming the deciding process in
    /// each event's metadata (`recorded_by`); also returns the partitions' devices with their
    /// presence after the sweep.
    async fn sweep_as(
        &self,
        now: Timestamp,
        partitions: &HashSet<u32>,
        owner: &str,
        devices: Vec<DevicePresence>,
    ) -> Result<(usize, Vec<DevicePresence>), ReelError> {
        let mut changed = 0;
        let mut swept = Vec::new();
        for mut device in devices {
            if !partitions.contains(&self.partition_of(&device.device)?) {
                continue;
            }
            let online = !device.is_silent(now, self.options.offline_after);
            if online == device.state.online {
                swept.push(device);
                continue;
            }
            let stream = presence_stream(&device.device)?;
            let state = device.state;
            let (event_type, data, next) = if online {
                let session = state.session + 1;
                let data = json!({"device": device.device, "session": session, "rtt_ms": device.rtt_ms});
                (
                    "UnitCameOnline",
                    data,
                    PresenceState { online, session, changes: state.changes + 1, since: Some(now) },
                )
            } else {
                let silent_ms = (now.unix_micros() - device.last_heard_at.unix_micros()) / 1_000;
                let data = json!({
                    "device": device.device, "session": state.session,
                    "last_heard_at": device.last_heard_at, "silent_ms": silent_ms,
                });
                (
                    "UnitWentOffline",
                    data,
                    PresenceState { online, changes: state.changes + 1, since: Some(now), ..state },
                )
            };
            let expected = match state.changes {
                0 => ExpectedVersion::NoStream,
                n => ExpectedVersion::Exact(StreamVersion(n - 1)),
            };
            let mut event = NewEvent::new(event_type, data.to_string());
            if !owner.is_empty() {
                let mut metadata = serde_json::Map::new();
                metadata.insert("recorded_by".into(), owner.into());
                event = event.with_metadata(metadata);
            }
            match self.events.append(&stream, expected, vec![event]).await {
                Ok(_) => {
                    tracing::info!(device = %device.device, session = next.session, "{event_type}");
                    self.rows.save_presence_state(&device.device, &next).await?;
                    device.state = next;
                    changed += 1;
                }
                // Another process recorded a change first, or someone appended to the stream:
                // the stream decides; the next sweep goes on from it.
                Err(ReelError::WrongExpectedVersion { .. }) => {
                    let folded = fold(&self.read_all_of(&stream).await?);
                    self.rows.save_presence_state(&device.device, &folded).await?;
                    device.state = folded;
                }
                Err(e) => return Err(e),
            }
            swept.push(device);
        }
        Ok((changed, swept))
    }

    /// The partition `device` falls in.
    fn partition_of(&self, device: &str) -> Result<u32, ReelError> {
        Ok(match self.options.partition_digits {
            0 => 0,
            digits => StreamName::new(format!("unit-{device}"))?.partition(digits),
        })
    }

    async fn read_all_of(&self, stream: &StreamName) -> Result<Vec<RecordedEvent>, ReelError> {
        let mut events = Vec::new();
        loop {
            let from = StreamVersion(events.len() as u64);
            match self.events.read_stream(stream, from, Direction::Forward, 1_000).await {
                Ok(page) if page.is_empty() => return Ok(events),
                Ok(page) => events.extend(page),
                Err(ReelError::StreamNotFound { .. }) => return Ok(events),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sweeps the partitions this process holds until `stop` turns true. `owner` names this
    /// process in the leases. Each process takes its fair share (the partitions divided by the
    /// processes whose membership lease is live), gives up what is beyond it when others join,
    /// and takes over partitions whose lease lapsed when one dies.
    pub async fn run(self, owner: String, mut stop: tokio::sync::watch::Receiver<bool>) {
        let count = match self.options.partition_digits {
            0 => 1,
            digits => 16u32.pow(u32::from(digits.min(4))),
        };
        let member = format!("{MEMBERS}{owner}");
        let offset = owner.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % count;
        let set = PartitionSet { count, offset, width: usize::from(self.options.partition_digits.max(1)) };
        let mut held = HashSet::new();
        let mut claimed_at: Option<std::time::Instant> = None;
        let mut idle = false;
        loop {
            // One read of the rows per round, for the decision to claim and for the sweep.
            let devices = match self.rows.devices().await {
                Ok(devices) => devices,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the presence rows; trying again");
                    Vec::new()
                }
            };
            // A server without devices (most of them) renews only its membership and claims no
            // partitions; it claims its share within one sweep interval of the first heartbeat or
            // registration.
            let no_devices = held.is_empty() && devices.is_empty();
            let first_devices = idle && !no_devices;
            if first_devices || claimed_at.is_none_or(|at| at.elapsed() >= self.options.lease_ttl / 3) {
                match self.claim_share(&owner, &member, &set, &held, !no_devices).await {
                    Ok(now_held) => held = now_held,
                    Err(e) => tracing::warn!(error = %e, "could not claim presence partitions; trying again"),
                }
                idle = no_devices;
                claimed_at = Some(std::time::Instant::now());
            }
            if !held.is_empty() && !devices.is_empty() {
                let now = Timestamp::now();
                match self.sweep_as(now, &held, &owner, devices).await {
                    Ok((_, devices)) => {
                        if let Some(work) = &self.work {
                            work.run(now, &devices).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "presence sweep failed; trying again"),
                }
            }
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(self.options.sweep_every) => {}
            }
        }
        // Leave at once rather than when the leases lapse.
        for partition in held {
            let _ = self.rows.release_partition(&set.name(partition), &owner).await;
        }
        let _ = self.rows.release_partition(&member, &owner).await;
    }

    /// Renews this process's membership and, with `partitions`, takes (or keeps) its fair share
    /// of partitions.
    async fn claim_share(
        &self,
        owner: &str,
        member: &str,
        set: &PartitionSet,
        held: &HashSet<u32>,
        partitions: bool,
    ) -> Result<HashSet<u32>, ReelError> {
        let ttl = self.options.lease_ttl;
        let now = Timestamp::now();
        self.rows.claim_partition(member, owner, now, ttl).await?;
        if !partitions {
            return Ok(HashSet::new());
        }
        let members = self.rows.count_claims(MEMBERS, now).await?.max(1) as u32;
        let fair = set.count.div_ceil(members) as usize;
        let mut taken = HashSet::new();
        for i in 0..set.count {
            let partition = (set.offset + i) % set.count;
            if taken.len() < fair {
                if self.rows.claim_partition(&set.name(partition), owner, now, ttl).await? {
                    taken.insert(partition);
                }
            } else if held.contains(&partition) {
                self.rows.release_partition(&set.name(partition), owner).await?;
            }
        }
        Ok(taken)
    }
}

/// The partitions of presence work and where this process starts looking among them.
struct PartitionSet {
    count: u32,
    /// Processes start their search at different partitions, so they rarely contend.
    offset: u32,
    /// Hex digits in a partition's name.
    width: usize,
}

impl PartitionSet {
    /// The lease name of `partition` (`presence:3a`).
    fn name(&self, partition: u32) -> String {
        format!("presence:{partition:0width$x}", width = self.width)
    }
}

/// Lease names of the processes that sweep presence (one each, renewed with its partitions).
const MEMBERS: &str = "presence-member:";

/// A presence stream folded: a `UnitCameOnline` starts a session only when it is newer than the
/// latest; a `UnitWentOffline` ends only the current session. A late or repeated event (or
/// anything else in the stream) changes nothing.
pub fn fold(events: &[RecordedEvent]) -> PresenceState {
    let mut state = PresenceState::default();
    for event in events {
        state.changes = event.stream_version.0 + 1;
        let Ok(data) = serde_json::from_slice::<serde_json::Value>(&event.data) else { continue };
        let Some(session) = data["session"].as_u64() else { continue };
        match event.event_type.as_str() {
            "UnitCameOnline" if session > state.session => {
                state = PresenceState { online: true, session, since: Some(event.recorded_at), ..state };
            }
            "UnitWentOffline" if session == state.session && state.online => {
                state = PresenceState { online: false, since: Some(event.recorded_at), ..state };
            }
            _ => {}
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use reel_core::{EventId, Position};

    fn recorded(version: u64, event_type: &str, session: u64) -> RecordedEvent {
        RecordedEvent {
            position: Position(version + 1),
            stream: StreamName::new("unitpresence-a").unwrap(),
            stream_version: StreamVersion(version),
            id: EventId::new_v7(),
            event_type: event_type.into(),
            data: serde_json::to_vec(&json!({"session": session})).unwrap().into(),
            metadata: Default::default(),
            tags: Vec::new(),
            recorded_at: Timestamp::from_unix_micros(version as i64),
        }
    }

    #[test]
    fn a_late_or_repeated_change_does_not_flip_the_state_back() {
        let online_again = [
            recorded(0, "UnitCameOnline", 1),
            recorded(1, "UnitWentOffline", 1),
            recorded(2, "UnitCameOnline", 2),
            recorded(3, "UnitWentOffline", 1), // late: ends a session that is over
            recorded(4, "UnitCameOnline", 2),  // repeated
            recorded(5, "UnitCameOnline", 1),  // late
        ];
        let state = fold(&online_again);
        assert_eq!((state.online, state.session, state.changes), (true, 2, 6));
        assert_eq!(state.since, Some(Timestamp::from_unix_micros(2)), "online since the session began");
        let offline = fold(&online_again[..2]);
        assert_eq!((offline.online, offline.session, offline.changes), (false, 1, 2));
        let twice =
            [recorded(0, "UnitCameOnline", 1), recorded(1, "UnitWentOffline", 1), recorded(2, "UnitWentOffline", 1)];
        assert!(!fold(&twice).online);
        assert_eq!(fold(&[]), PresenceState::default());
    }
}
