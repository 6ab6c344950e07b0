//! Redis Streams: `XADD` with the entry id taken from the global position.
//!
//! Each event is added to the key its template names, with the entry id `<position>-0`. Redis
//! refuses an id that is not above the key's last one, so a replay (after a crash, a retry or a
//! reset) is recognised by Redis itself, with no time window: exactly once in effect. A batch is
//! one Lua script call, which Redis runs as a unit and which stops at the first failure, so no
//! later event is ever stored when an earlier one was not.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use reel_core::RecordedEvent;

use crate::envelope::{Envelope, Payload};
use crate::relay::{Delivery, Sink};
use crate::template::KeyTemplate;

/// Fields of every entry: the envelope's headers without metadata and tags, then data, metadata
/// and tags (the last two empty when the event has none).
const FIELDS: usize = 9;

/// The script that adds a batch's entries in order; an id at or below the key's top is an entry
/// already there (a replay) and counts as added. Returns the number added and the first error.
///
/// Each entry's `XADD` names its arguments one by one (`ARGV[a]`, `ARGV[a + 1]`, …) instead of
/// copying them into a table and unpacking it: the copy was most of the script's time.
fn add_batch_script() -> String {
    let values: Vec<String> = (0..=2 * FIELDS).map(|i| format!("ARGV[a + {i}]")).collect();
    let values = values.join(", ");
    format!(
        r"
local maxlen = tonumber(ARGV[1])
local a = 2
for i, key in ipairs(KEYS) do
    local reply
    if maxlen > 0 then
        reply = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, {values})
    else
        reply = redis.pcall('XADD', key, {values})
    end
    a = a + {step}
    if type(reply) == 'table' and reply.err and not string.find(reply.err, 'equal or smaller', 1, true) then
        return {{i - 1, reply.err}}
    end
end
return {{#KEYS, ''}}
",
        step = 1 + 2 * FIELDS
    )
}

/// Publishes to Redis Streams.
pub struct RedisStreamsSink {
    /// Reconnects by itself after Redis went away, so a relay in retry resumes when it is back.
    connection: ConnectionManager,
    keys: KeyTemplate,
    maxlen: Option<u64>,
    payload: Payload,
    script: redis::Script,
}

impl RedisStreamsSink {
    /// Connects to `url` (`redis://host:port/db`). `keys` names the stream key of each event;
    /// `maxlen` trims each key to about that many entries (`MAXLEN ~`).
    pub async fn connect(url: &str, keys: KeyTemplate, maxlen: Option<u64>) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // Reconnects quickly once Redis is back (the default backoff grows to seconds while it
        // is away); each attempt is bounded, and so is each answer.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_factor(50)
            .set_max_delay(1_000)
            .set_number_of_retries(3)
            .set_connection_timeout(std::time::Duration::from_secs(2))
            .set_response_timeout(RESPONSE_TIMEOUT);
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(Self { connection, keys, maxlen, payload: Payload::Data, script: redis::Script::new(&add_batch_script()) })
    }

    /// Writes each entry's `data` field as `payload` says (the event's data by default).
    pub fn with_payload(mut self, payload: Payload) -> Self {
        self.payload = payload;
        self
    }
}

/// How long a batch may wait for Redis's answer before Redis counts as unavailable.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[async_trait]
impl Sink for RedisStreamsSink {
    async fn publish(&self, batch: &[RecordedEvent]) -> Delivery {
        if batch.is_empty() {
            return Delivery::all(0);
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(self.maxlen.unwrap_or(0));
        for event in batch {
            invocation.key(self.keys.render(event));
            invocation.arg(format!("{}-0", event.position.0));
            let envelope = Envelope::of(event);
            let mut metadata = String::new();
            let mut tags = String::new();
            let mut fields = 3;
            for (name, value) in envelope.headers {
                if name == "reel-metadata" {
                    metadata = value;
                } else if name == "reel-tags" {
                    tags = value;
                } else {
                    invocation.arg(name).arg(value);
                    fields += 1;
                }
            }
            invocation.arg("data").arg(self.payload.of(event).as_ref());
            invocation.arg("metadata").arg(metadata);
            invocation.arg("tags").arg(tags);
            debug_assert_eq!(fields, FIELDS, "the script names {FIELDS} fields per entry");
        }
        let mut connection = self.connection.clone();
        // While Redis is away the connection manager keeps trying to reconnect and the call
        // would wait for it forever: a bounded wait turns that into an outage the relay shows
        // and retries. A batch that was stored after all is recognised by its entry ids.
        let reply =
            match tokio::time::timeout(RESPONSE_TIMEOUT, invocation.invoke_async::<(usize, String)>(&mut connection))
                .await
            {
                Ok(reply) => reply,
                Err(_) => return Delivery::unavailable(0, format!("Redis did not answer within {RESPONSE_TIMEOUT:?}")),
            };
        match reply {
            Ok((added, _)) if added >= batch.len() => Delivery::all(batch.len()),
            Ok((added, error)) => Delivery::refused(added, format!("Redis refused XADD: {error}")),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() => {
                Delivery::unavailable(0, format!("Redis unreachable: {e}"))
            }
            Err(e) => Delivery::refused(0, format!("Redis failed the batch: {e}")),
        }
    }
}
