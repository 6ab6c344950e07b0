//! The web UI end to end in headless Chromium (Debian's `chromium`, `playwright-core` from
//! `e2e/node_modules`; `.ci/run` installs both) against a real `lockers demo` process with a
//! fleet of 12 units (agents, an MQTT unit through the local Mosquitto, a fetched unit):
//! reserve a locker and see it unavailable, take a unit offline and see it marked Offline
//! and back, see its event log grow, export CSV. Screenshots are kept under the cargo target
//! directory (`lockers-*.png`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_ui_reserves_shows_units_going_offline_and_exports_the_event_log() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("e2e/node_modules/playwright-core").exists(),
        "playwright-core is needed: run `npm ci --prefix e2e` (and `apt-get install chromium`)"
    );
    assert!(
        std::net::TcpStream::connect("127.0.0.1:1883").is_ok(),
        "Mosquitto must run at 127.0.0.1:1883 for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lockersui{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockers"))
        .args(["demo", "--units", "12", "--rate", "1", "--reservations", "0", "--offline", "0", "--heartbeat", "1"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--reel-listen",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:1883",
            "--mqtt-prefix",
            &prefix,
        ])
        .arg("--store")
        .arg(dir.path().join("platform.db"))
        .arg("--units-dir")
        .arg(dir.path().join("units"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("lockers demo starts");
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("the demo prints its URL first, said {line:?}"))
        .trim_end_matches('/')
        .to_string();
    let shots = tempfile::tempdir().unwrap();
    let run = Command::new("node")
        .arg(root.join("e2e/lockers.mjs"))
        .arg(&base)
        .arg(shots.path())
        .output()
        .unwrap_or_else(|e| panic!("node is needed for the browser test: {e}"));
    drop(demo);
    assert!(
        run.status.success(),
        "the UI test failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let kept = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let _ = std::fs::create_dir_all(&kept);
    for name in [
        "lockers-units.png",
        "lockers-reserve.png",
        "lockers-unit-offline.png",
        "lockers-unit.png",
        "lockers-availability.png",
    ] {
        let shot = shots.path().join(name);
        assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "{name} was saved");
        let _ = std::fs::copy(&shot, kept.join(name));
    }
}
