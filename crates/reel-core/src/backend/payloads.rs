//! Payloads of a page of events, copied into shared buffers instead of one allocation each.
//!
//! A reader that decodes a page of a thousand events would otherwise allocate (and its consumer
//! free, often on another thread) a thousand payload buffers. Measured on a full scan of 256 B
//! events, those allocations and frees were the larger part of what separated a page of owned
//! events from a loop that only decodes rows (docs/BENCHMARKS.md). Here small payloads are
//! copied into buffers of [`PagePayloads::BUFFER_BYTES`] and, once the page is read, handed out
//! as slices of them: one allocation per buffer, and a slice costs a reference count.
//!
//! What it costs the holder: a buffer stays allocated while any slice of it is held, so one
//! event kept for long keeps at most [`PagePayloads::BUFFER_BYTES`] alive. Payloads larger than
//! [`PagePayloads::OWN_ALLOCATION_BYTES`] get their own allocation, as before, so a large payload
//! never keeps others alive nor is kept alive by them.

use bytes::Bytes;

use crate::RecordedEvent;

/// The payloads of one page, in the order they were read. Make one per page, so that a consumer
/// dropping one page never touches the reference counts of the buffers of the next.
///
/// ```
/// use reel_core::backend::PagePayloads;
///
/// let mut payloads = PagePayloads::new();
/// payloads.push(b"{\"a\":1}");
/// payloads.push(b"{\"b\":2}");
/// let all: Vec<_> = payloads.finish().collect();
/// assert_eq!(&all[1][..], b"{\"b\":2}");
/// ```
#[derive(Default)]
pub struct PagePayloads {
    /// Filled buffers.
    full: Vec<Bytes>,
    /// The buffer being filled.
    current: Vec<u8>,
    spans: Vec<Span>,
}

/// Where one payload is: a range of a shared buffer, or an allocation of its own.
enum Span {
    Shared { buffer: usize, start: usize, end: usize },
    Own(Bytes),
}

impl PagePayloads {
    /// Most bytes one shared buffer holds (small enough for the allocator to keep its memory for
    /// reuse; with buffers of 256 KiB a profile of the scan showed page faults).
    pub const BUFFER_BYTES: usize = 64 * 1024;
    /// Payloads above this size are copied into an allocation of their own.
    pub const OWN_ALLOCATION_BYTES: usize = 8 * 1024;

    /// Payloads for one page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies the next event's payload.
    pub fn push(&mut self, payload: &[u8]) {
        if payload.len() > Self::OWN_ALLOCATION_BYTES {
            self.spans.push(Span::Own(Bytes::copy_from_slice(payload)));
            return;
        }
        if self.current.len() + payload.len() > Self::BUFFER_BYTES {
            self.full.push(std::mem::take(&mut self.current).into());
        }
        let needed = self.current.len() + payload.len();
        if needed > self.current.capacity() {
            // A buffer grows with its page (doubling, never past the bound), so a page of one
            // small event holds a small buffer: a server's live buffer keeps thousands of those.
            let capacity = needed.max(2 * self.current.capacity()).min(Self::BUFFER_BYTES);
            self.current.reserve_exact(capacity - self.current.len());
        }
        let start = self.current.len();
        self.current.extend_from_slice(payload);
        self.spans.push(Span::Shared { buffer: self.full.len(), start, end: self.current.len() });
    }

    /// Gives each of `events`, in order, the payload pushed for it (the events were built with
    /// an empty payload, one push each).
    pub fn fill_in(self, events: &mut [RecordedEvent]) {
        debug_assert_eq!(events.len(), self.spans.len());
        for (event, data) in events.iter_mut().zip(self.finish()) {
            event.data = data;
        }
    }

    /// The payloads, in the order they were pushed.
    pub fn finish(mut self) -> impl Iterator<Item = Bytes> {
        self.full.push(std::mem::take(&mut self.current).into());
        let buffers = self.full;
        self.spans.into_iter().map(move |span| match span {
            Span::Shared { buffer, start, end } => buffers[buffer].slice(start..end),
            Span::Own(bytes) => bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_payload_comes_back_unchanged_and_in_order_across_buffers_and_sizes() {
        let mut payloads = PagePayloads::new();
        let originals: Vec<Vec<u8>> = (0..3_000usize)
            .map(|i| {
                let len = match i % 7 {
                    0 => 0,
                    1 => PagePayloads::OWN_ALLOCATION_BYTES + 1,
                    2 => PagePayloads::OWN_ALLOCATION_BYTES,
                    _ => i % 700,
                };
                (0..len).map(|b| (b + i) as u8).collect()
            })
            .collect();
        for original in &originals {
            payloads.push(original);
        }
        let copies: Vec<Bytes> = payloads.finish().collect();
        assert_eq!(copies.len(), originals.len());
        for (original, copy) in originals.iter().zip(&copies) {
            assert_eq!(&copy[..], &original[..]);
        }
    }

    #[test]
    fn a_small_page_holds_a_small_buffer_and_no_buffer_passes_the_bound() {
        let mut payloads = PagePayloads::new();
        payloads.push(&[1u8; 100]);
        assert!(payloads.current.capacity() < 1024, "one small payload, {} bytes held", payloads.current.capacity());
        for _ in 0..2_000 {
            payloads.push(&[2u8; 300]);
            assert!(payloads.current.capacity() <= PagePayloads::BUFFER_BYTES);
        }
        assert!(payloads.full.len() >= 9, "600 KB of payloads fill several buffers");
    }

    #[test]
    fn small_payloads_share_a_buffer_and_large_ones_do_not() {
        let mut payloads = PagePayloads::new();
        payloads.push(b"first");
        payloads.push(&vec![7u8; PagePayloads::OWN_ALLOCATION_BYTES + 1]);
        payloads.push(b"second");
        let [first, large, second]: [Bytes; 3] = payloads.finish().collect::<Vec<_>>().try_into().unwrap();
        // Slices of one buffer: the second starts where the first ends; the large one is apart.
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
        assert!(large.as_ptr() < first.as_ptr() || large.as_ptr() > second.as_ptr());
    }
}
