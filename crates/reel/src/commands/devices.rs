//! `reel devices register|list|forget`: the platform's devices. Agents (`reel edge`) appear by
//! themselves with their first heartbeat; units without the agent are registered with the
//! endpoint the platform pings and pushes configuration to (`push`) or fetches events from
//! (`fetch`). The work runs in `reel serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use reel_core::{check_device_name, check_display_name, PresenceStore, UnitLink, UnitRegistration};
use reel_server::{Presence, PresenceOptions};

use crate::exit::InvalidInput;
use crate::output::print_json;
use crate::Cli;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    #[command(subcommand)]
    pub command: DevicesCommand,
}

#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// Register a unit that does not run `reel edge`: the platform pings it at --interval,
    /// and pushes its configuration to it (--link push: POST to the endpoint, one event per
    /// request, `Idempotency-Key` = event id) or fetches its events from it (--link fetch: the
    /// endpoint serves Reel's HTTP API).
    Register {
        /// The unit's name (its streams are unit-NAME and unit-NAME-*; its configuration
        /// unitconfig-NAME).
        name: String,
        /// http://… where the platform reaches it.
        #[arg(long)]
        endpoint: String,
        /// push or fetch.
        #[arg(long)]
        link: String,
        /// Seconds between pings (and fetches); it counts as offline after 1.5× this in silence.
        #[arg(long, default_value_t = 60.0)]
        interval: f64,
        /// Its name for people.
        #[arg(long)]
        display_name: Option<String>,
    },
    /// The presence table: one JSON line per device.
    List,
    /// Forget a device's presence row and registration (its events stay).
    Forget {
        /// The device's name.
        name: String,
    },
}

async fn presence_store(cli: &Cli) -> Result<(Arc<dyn PresenceStore>, Presence)> {
    let stores = crate::store::open_with_subscriptions(cli).await?;
    let Some(rows) = stores.presence else {
        bail!(InvalidInput(
            "devices are kept in the store itself: use --store with a file or postgres://…, not a server URL".into()
        ));
    };
    let presence = Presence::new(stores.events, rows.clone(), PresenceOptions::default());
    Ok((rows, presence))
}

pub async fn run(cli: &Cli, args: &DevicesArgs) -> Result<()> {
    match &args.command {
        DevicesCommand::Register { name, endpoint, link, interval, display_name } => {
            check_device_name(name).map_err(|e| InvalidInput(e.to_string()))?;
            let link = UnitLink::parse(link).map_err(|e| InvalidInput(e.to_string()))?;
            if !endpoint.starts_with("http://") || endpoint.len() <= "http://".len() {
                bail!(InvalidInput(format!("--endpoint must be an http:// URL, got {endpoint:?}")));
            }
            if !(1.0..=86_400.0).contains(interval) {
                bail!(InvalidInput(format!("--interval must be 1 to 86400 seconds, got {interval}")));
            }
            if let Some(display) = display_name {
                check_display_name(display, "--display-name").map_err(|e| InvalidInput(e.to_string()))?;
            }
            let (rows, _) = presence_store(cli).await?;
            let unit = UnitRegistration {
                device: name.clone(),
                display_name: display_name.clone(),
                interval: Duration::from_secs_f64(*interval),
                endpoint: endpoint.clone(),
                link,
            };
            rows.register_unit(&unit).await.context("registering the unit")?;
            print_json(&serde_json::json!({"registered": name, "endpoint": endpoint, "link": link.as_str()}))
        }
        DevicesCommand::List => {
            let (_, presence) = presence_store(cli).await?;
            let mut out = crate::output::Ndjson::stdout();
            for device in presence.devices().await? {
                if !out.line(&device)? {
                    break;
                }
            }
            out.flush()?;
            Ok(())
        }
        DevicesCommand::Forget { name } => {
            check_device_name(name).map_err(|e| InvalidInput(e.to_string()))?;
            let (rows, _) = presence_store(cli).await?;
            if !rows.forget_device(name).await? {
                bail!(reel_core::ReelError::InvalidArgument(format!("no device named {name}")));
            }
            print_json(&serde_json::json!({"forgotten": name}))
        }
    }
}
