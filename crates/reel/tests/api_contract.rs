//! schemathesis against a running `reel serve`: no 5xx and no response that breaks the OpenAPI
//! document, for generated (valid and invalid) requests. Live (SSE) endpoints never end, so
//! they are left out here and tested in `serve.rs`. Needs `schemathesis` on PATH
//! (`pip install schemathesis`; `.ci/run` installs it).

mod common;

use std::process::Command;

use common::Cli;

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let cli = Cli::new();
    cli.ok(&["append", "unit-PL-1001", "--type", "DoorOpened", "--data", "{}"]);
    let out = cli.command().args(["consume", "reporter", "--mode", "once", "--print"]).output().unwrap();
    assert!(out.status.success());
    let server = cli.serve(&["--max-wait", "1"]);
    let run = Command::new("schemathesis")
        .args(["run", &format!("{}/openapi.json", server.base)])
        .args(["--exclude-path-regex", "/live$"])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        .args(["--max-examples", "40", "--request-timeout", "10"])
        .env("NO_COLOR", "1")
        .current_dir(cli.dir.path()) // its cache goes to the test's temp dir, not the checkout
        .output()
        .unwrap_or_else(|e| panic!("schemathesis is needed for this test (pip install schemathesis): {e}"));
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "schemathesis found problems:\n{report}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(report.contains("passed"), "{report}");
}
