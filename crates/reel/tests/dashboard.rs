//! The dashboard in headless Chromium (Debian's `chromium` and `playwright-core` from
//! `e2e/node_modules`; `.ci/run` installs both): see a subscription, pause it, see the status
//! change and a new event arrive in the live tail, see the devices table and sort it, and save a
//! screenshot
//! (`target/dashboard.png` under the cargo target directory).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Cli;

#[test]
fn the_dashboard_pauses_a_subscription_shows_the_live_tail_and_the_devices() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("e2e/node_modules/playwright-core").exists(),
        "playwright-core is needed: run `npm ci --prefix e2e` (and `apt-get install chromium`)"
    );
    let cli = Cli::new();
    cli.ok(&["append", "unit-PL-1001", "--type", "DoorOpened", "--data", r#"{"door":1}"#]);
    let out = cli.command().args(["consume", "reporter", "--mode", "once", "--print"]).output().unwrap();
    assert!(out.status.success());
    cli.ok(&["subscriptions", "reactivate", "--id", "reporter"]);
    // Two devices: a unit registered but never heard (offline), and an agent's heartbeat.
    cli.ok(&["devices", "register", "PL-0999", "--endpoint", "http://127.0.0.1:9/config", "--link", "push"]);
    let server = cli.serve(&[]);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let beat = format!(
        r#"{{"interval_ms":60000,"clock_ms":{clock},"rtt_ms":12,"display_name":"Station One","config_version":2}}"#
    );
    assert_eq!(server.post_json("/devices/PL-1001/heartbeat", &beat).status, 200);
    let screenshot = std::env::temp_dir().join(format!("reel-dashboard-{}.png", std::process::id()));
    let append_url = format!("{}/streams/unit-PL-1002", server.base);
    let run = Command::new("node")
        .arg(root.join("e2e/dashboard.mjs"))
        .arg(&server.base)
        .arg(&screenshot)
        .args(["curl", "-sf", "-XPOST", "-H", "content-type: application/json", "-d"])
        .arg(r#"{"type":"LiveFromTest","data":{}}"#)
        .arg(&append_url)
        .output()
        .unwrap_or_else(|e| panic!("node is needed for the dashboard test: {e}"));
    assert!(
        run.status.success(),
        "dashboard test failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(std::fs::metadata(&screenshot).map(|m| m.len() > 10_000).unwrap_or(false), "a screenshot was saved");
    let status = server.get("/subscriptions").body["subscriptions"][0]["status"].clone();
    assert_eq!(status, "paused", "the click paused it in the store");
    let kept = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let _ = std::fs::create_dir_all(&kept);
    let _ = std::fs::copy(&screenshot, kept.join("dashboard.png"));
}
