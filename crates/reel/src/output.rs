//! NDJSON on stdout. A closed pipe (`reel read-all | head`) ends the command quietly.

use std::io::{self, BufWriter, Stdout, Write};

use anyhow::Result;
use serde::Serialize;

/// Buffered NDJSON writer on stdout.
pub struct Ndjson {
    out: BufWriter<Stdout>,
    closed: bool,
}

impl Ndjson {
    pub fn stdout() -> Self {
        Self { out: BufWriter::with_capacity(1 << 16, io::stdout()), closed: false }
    }

    /// Writes one value as one line. Returns false once the reader has gone away.
    pub fn line(&mut self, value: &impl Serialize) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let result = serde_json::to_writer(&mut self.out, value)
            .map_err(io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"));
        self.handle(result)
    }

    /// Pushes buffered lines out (used when following).
    pub fn flush(&mut self) -> Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let result = self.out.flush();
        self.handle(result)
    }

    fn handle(&mut self, result: io::Result<()>) -> Result<bool> {
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        }
    }
}

/// Prints one value as a JSON line and flushes.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = Ndjson::stdout();
    out.line(value)?;
    out.flush()?;
    Ok(())
}
