//! Helpers for running the real `reel` binary against a temporary store.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temporary store (a SQLite file, or a fresh PostgreSQL schema) and a way to run `reel` on it.
pub struct Cli {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    /// `(url, schema)` when the store is PostgreSQL.
    pub postgres: Option<(String, String)>,
}

impl Cli {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("reel.db");
        Self { dir, store, postgres: None }
    }

    /// A store in a new schema of the PostgreSQL at DATABASE_URL (default the local server).
    pub fn postgres() -> Self {
        let url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        Self { postgres: Some((url, schema)), ..Self::new() }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reel"));
        match &self.postgres {
            Some((url, schema)) => command.env("REEL_STORE", url).env("REEL_SCHEMA", schema),
            None => command.env("REEL_STORE", &self.store),
        };
        command.current_dir(self.dir.path());
        command
    }

    /// Runs with `args` (and `stdin`), returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().expect("run reel")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn reel");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("wait reel")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "reel {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and expects failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "reel {args:?}: {stderr}");
        stderr
    }

    /// The store's head position, via `reel stats`.
    pub fn head(&self) -> u64 {
        let stats: serde_json::Value = serde_json::from_str(&self.ok(&["stats"])).expect("stats json");
        stats["head"].as_u64().expect("head")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

/// A `reel serve` process on a free port of 127.0.0.1, killed when dropped.
pub struct Served {
    pub child: std::process::Child,
    pub base: String,
}

impl Cli {
    /// Starts `reel serve --listen 127.0.0.1:0 <args>` and waits for its address.
    pub fn serve(&self, args: &[&str]) -> Served {
        self.spawn_server(&[&["serve", "--listen", "127.0.0.1:0"], args].concat())
    }

    /// Starts `reel <args>` (a command that serves HTTP and prints `{"listening": …}` first,
    /// such as `serve` or `edge`) and waits for its address.
    pub fn spawn_server(&self, args: &[&str]) -> Served {
        use std::io::BufRead;
        let mut child =
            self.command().args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn reel");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read address");
        let started: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("reel {args:?} did not start ({e}): {line:?}"));
        let base = started["listening"].as_str().expect("listening").to_string();
        Served { child, base }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status and body (JSON when it parses, else a string).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
}

/// The tests' HTTP client: no overall timeout, since live streams and long polls stay open.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(None).build().expect("an HTTP client")
}

impl Served {
    /// Sends a request; 4xx and 5xx are answers, not errors.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        token: Option<&str>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = http().request(method.clone(), format!("{}{path}", self.base));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if !body.is_empty() || method != reqwest::Method::GET {
            request = request.body(body.to_vec());
        }
        let response = request.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().expect("body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
        Answer { status, body, text }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, b"", None)
    }

    pub fn post_json(&self, path: &str, body: &str) -> Answer {
        self.call("POST", path, Some("application/json"), body.as_bytes(), None)
    }
}

/// Waits until `done` holds, checking every 100 ms; fails the test after `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
