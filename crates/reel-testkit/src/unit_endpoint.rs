//! A unit's HTTP endpoint for tests of the platform's pings and configuration pushes: answers
//! `GET` while up, keeps every `POST` (its `Idempotency-Key` and JSON body) and refuses the first
//! ones when told to. One request per connection, on a thread of its own.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The endpoint, running until the process ends.
pub struct UnitEndpoint {
    /// `http://127.0.0.1:PORT/config`.
    pub url: String,
    /// While false every request is answered 503 (the unit is away).
    pub up: Arc<AtomicBool>,
    /// Every delivery received: (idempotency key, body), refused ones included.
    pub posts: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl UnitEndpoint {
    /// Starts one that answers 500 to its first `fail_posts` deliveries.
    pub fn start(fail_posts: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the unit");
        let url = format!("http://{}/config", listener.local_addr().expect("its address"));
        let up = Arc::new(AtomicBool::new(true));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let failures = AtomicUsize::new(fail_posts);
        let (is_up, received) = (up.clone(), posts.clone());
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(mut socket) = socket else { continue };
                let Some((head, body)) = read_request(&mut socket) else { continue };
                let status = if !is_up.load(Ordering::SeqCst) {
                    "503 Service Unavailable"
                } else if head.starts_with("post") {
                    let key = head.lines().find_map(|l| l.strip_prefix("idempotency-key:")).unwrap_or("").trim();
                    let body = serde_json::from_slice(&body).expect("a JSON delivery");
                    received.lock().expect("deliveries").push((key.to_string(), body));
                    let refused = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                    if refused.is_ok() {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    }
                } else {
                    "200 OK"
                };
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes());
            }
        });
        Self { url, up, posts }
    }

    /// How many deliveries it received.
    pub fn deliveries(&self) -> usize {
        self.posts.lock().expect("deliveries").len()
    }
}

/// One request: its head (lower case) and body, read by its content length.
fn read_request(socket: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = socket.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
        if request.len() >= end + 4 + length {
            return Some((head, request[end + 4..end + 4 + length].to_vec()));
        }
    }
}
