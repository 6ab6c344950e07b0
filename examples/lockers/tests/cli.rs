//! The `lockers` binary's answers to bad flags: a non-zero exit and one line saying why, with
//! nothing created.

use std::process::Command;

fn lockers(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockers")).args(args).current_dir(dir).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

#[test]
fn bad_flags_exit_non_zero_with_one_line_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["serve", "--store", "ftp://x", "--mqtt", "off"], 2, "ftp:// is not supported"),
        (&["serve", "--projection", "eventlog", "--mqtt", "off"], 2, "NAME=VERSION"),
        (&["serve", "--projection", "nonsense=2", "--mqtt", "off"], 2, "no projection"),
        (&["serve", "--projection", "eventlog=0", "--mqtt", "off"], 2, "NAME=VERSION"),
        (&["serve", "--mqtt", "somewhere"], 2, "--mqtt must be host:port"),
        (&["serve", "--push-retry", "0", "--mqtt", "off"], 2, "--push-retry"),
        (&["demo", "--units", "0", "--mqtt", "off"], 2, "--units must be 1 to 100000"),
        (&["demo", "--rate=-1", "--mqtt", "off"], 2, "--rate"),
        (&["demo", "--rate", "lots"], 2, "invalid value 'lots'"),
        (&["fly"], 2, "unrecognized subcommand"),
        (&["demo", "--offline", "2", "--mqtt", "off"], 2, "--offline"),
        (&["simulate", "--heartbeat", "0", "--mqtt", "off"], 2, "--heartbeat"),
    ];
    for (args, code, says) in cases {
        let (got, stderr) = lockers(args, dir.path());
        assert_eq!(got, *code, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "{args:?}: {stderr}");
    }
    let (got, stderr) = lockers(&["projections", "retire", "nonsense", "1"], dir.path());
    assert_eq!(got, 1, "{stderr}");
    assert!(stderr.contains("no projection"), "{stderr}");
    // The simulator refuses to start when the platform is not there, saying where it looked.
    let (got, stderr) = lockers(
        &["simulate", "--units", "1", "--app", "http://127.0.0.1:9", "--mqtt", "off", "--units-dir", "u"],
        dir.path(),
    );
    assert_eq!(got, 1, "{stderr}");
    assert!(stderr.contains("reaching the platform's app API"), "{stderr}");
    let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(created.is_empty(), "refused commands created nothing: {created:?}");
}
