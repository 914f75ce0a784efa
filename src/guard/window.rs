//! The guard's sliding window: per-version response counts in a ring of
//! [`SLOTS`] time slots of `window / SLOTS` each; slots older than the
//! window fall out as time moves on. Its shared-data form is what each VM
//! writes of its own counts ([`super::Guarded`]).

pub const SLOTS: usize = 10;
const HEADER: usize = 8;
/// The shared-data format; 2 added `Counts::failures`, 3 the generation, 4
/// made it one VM's window (the trip moved to `crate::shared::held`).
const FORMAT: u8 = 4;
/// Bytes of one `Counts` in the shared-data form.
const COUNTS_BYTES: usize = 16;

use super::Failure;

/// One version's responses in a slot, or over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u32,
    pub errors: u32,
    pub slow: u32,
    /// Which failures the errors were: bit [`Failure::index`] of each.
    pub failures: u32,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.slow = self.slow.saturating_add(other.slow);
        self.failures |= other.failures;
    }

    fn rate(part: u32, whole: u32) -> f64 {
        if whole == 0 {
            0.0
        } else {
            f64::from(part) / f64::from(whole)
        }
    }

    pub fn error_rate(&self) -> f64 {
        Self::rate(self.errors, self.requests)
    }

    pub fn slow_rate(&self) -> f64 {
        Self::rate(self.slow, self.requests)
    }
}

/// Counts per version in a ring of time slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    versions: usize,
    slot_ms: u64,
    /// The slot number (time / slot_ms) each ring entry holds; 0 = empty.
    epochs: [u64; SLOTS],
    /// `SLOTS * versions` counts, slot-major.
    counts: Vec<Counts>,
}

impl Window {
    pub fn new(versions: usize, window_ms: u64) -> Window {
        Window {
            versions,
            slot_ms: (window_ms / SLOTS as u64).max(1),
            epochs: [0; SLOTS],
            counts: vec![Counts::default(); SLOTS * versions],
        }
    }

    pub fn slot_ms(&self) -> u64 {
        self.slot_ms
    }

    /// The versions it counts.
    pub fn versions(&self) -> usize {
        self.versions
    }

    /// Whether `other` counts the same versions in slots of the same length
    /// (only such windows merge).
    pub fn same_shape(&self, other: &Window) -> bool {
        self.versions == other.versions && self.slot_ms == other.slot_ms
    }

    fn epoch(&self, now_ms: u64) -> u64 {
        // +1 so that epoch 0 can mean "empty".
        now_ms / self.slot_ms + 1
    }

    /// The counts of the slot for `epoch`, recycling the ring entry if it
    /// holds an older slot; `None` if the entry holds a newer one (the epoch
    /// has already left the window).
    fn slot_mut(&mut self, epoch: u64) -> Option<&mut [Counts]> {
        let i = (epoch % SLOTS as u64) as usize;
        let held = *self.epochs.get(i)?;
        if held > epoch {
            return None;
        }
        let range = i * self.versions..(i + 1) * self.versions;
        if held < epoch {
            if let Some(e) = self.epochs.get_mut(i) {
                *e = epoch;
            }
            self.counts.get_mut(range.clone())?.fill(Counts::default());
        }
        self.counts.get_mut(range)
    }

    /// Counts one response of `version`.
    pub fn record(&mut self, now_ms: u64, version: usize, failure: Option<Failure>, slow: bool) {
        let epoch = self.epoch(now_ms);
        if let Some(c) = self.slot_mut(epoch).and_then(|s| s.get_mut(version)) {
            c.add(Counts {
                requests: 1,
                errors: u32::from(failure.is_some()),
                slow: u32::from(slow),
                failures: failure.map_or(0, |f| 1 << f.index()),
            });
        }
    }

    /// Adds `other`'s slots (same shape) into this window.
    pub fn merge(&mut self, other: &Window) {
        if !self.same_shape(other) {
            return;
        }
        for (i, &epoch) in other.epochs.iter().enumerate() {
            if epoch == 0 {
                continue;
            }
            let theirs = other
                .counts
                .get(i * other.versions..(i + 1) * other.versions);
            if let (Some(ours), Some(theirs)) = (self.slot_mut(epoch), theirs) {
                for (o, t) in ours.iter_mut().zip(theirs) {
                    o.add(*t);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.epochs.iter().all(|&e| e == 0)
    }

    pub fn clear(&mut self) {
        self.epochs = [0; SLOTS];
        self.counts.fill(Counts::default());
    }

    /// Totals per version over the window ending at `now_ms`.
    pub fn totals(&self, now_ms: u64) -> Vec<Counts> {
        let now = self.epoch(now_ms);
        let mut totals = vec![Counts::default(); self.versions];
        for (i, &epoch) in self.epochs.iter().enumerate() {
            if epoch == 0 || epoch > now || now - epoch >= SLOTS as u64 {
                continue;
            }
            if let Some(slot) = self.counts.get(i * self.versions..(i + 1) * self.versions) {
                for (t, c) in totals.iter_mut().zip(slot) {
                    t.add(*c);
                }
            }
        }
        totals
    }

    /// The shared-data form: a header (format, three zero bytes, the push
    /// generation the counts belong to), then each slot's epoch and counts,
    /// little-endian.
    pub fn encode(&self, generation: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + SLOTS * (8 + COUNTS_BYTES * self.versions));
        out.extend_from_slice(&[FORMAT, 0, 0, 0]);
        out.extend_from_slice(&generation.to_le_bytes());
        for (i, epoch) in self.epochs.iter().enumerate() {
            out.extend_from_slice(&epoch.to_le_bytes());
            for c in self
                .counts
                .get(i * self.versions..(i + 1) * self.versions)
                .unwrap_or(&[])
            {
                out.extend_from_slice(&c.requests.to_le_bytes());
                out.extend_from_slice(&c.errors.to_le_bytes());
                out.extend_from_slice(&c.slow.to_le_bytes());
                out.extend_from_slice(&c.failures.to_le_bytes());
            }
        }
        out
    }

    /// Reads the shared-data form written by [`Window::encode`] for a window
    /// of this shape: the window and its generation. `None` for anything
    /// else (absent, another format, another shape).
    pub fn decode(bytes: &[u8], versions: usize, window_ms: u64) -> Option<(Window, u32)> {
        let mut w = Window::new(versions, window_ms);
        if bytes.len() != HEADER + SLOTS * (8 + COUNTS_BYTES * versions)
            || bytes.first() != Some(&FORMAT)
        {
            return None;
        }
        let mut words = bytes.get(4..)?.chunks_exact(4).map(|c| {
            let mut b = [0u8; 4];
            b.copy_from_slice(c);
            u32::from_le_bytes(b)
        });
        let generation = words.next()?;
        for i in 0..SLOTS {
            let (lo, hi) = (words.next()?, words.next()?);
            *w.epochs.get_mut(i)? = u64::from(lo) | u64::from(hi) << 32;
            for c in w.counts.get_mut(i * versions..(i + 1) * versions)? {
                *c = Counts {
                    requests: words.next()?,
                    errors: words.next()?,
                    slow: words.next()?,
                    failures: words.next()?,
                };
            }
        }
        Some((w, generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{describe_failures, Failure};

    #[test]
    fn window_slides() {
        let mut w = Window::new(2, 10_000); // 1 s slots
        for t in 0..20_000u64 {
            if t % 100 == 0 {
                w.record(t, 1, (t % 200 == 0).then_some(Failure::Http5xx), false);
            }
        }
        // At t = 19.999 s the window holds 10.0 s .. 19.999 s: 100 responses.
        let totals = w.totals(19_999);
        assert_eq!(totals[1].requests, 100);
        assert_eq!(totals[1].errors, 50);
        assert_eq!(totals[0], Counts::default());
        // Much later, everything has left the window.
        assert_eq!(w.totals(60_000)[1].requests, 0);
    }

    #[test]
    fn late_records_for_slots_that_left_the_ring_are_dropped() {
        let mut w = Window::new(1, 10_000);
        w.record(50_000, 0, None, false);
        w.record(10_000, 0, Some(Failure::Http5xx), false); // same ring entry, older slot
        assert_eq!(w.totals(50_000)[0].errors, 0);
    }

    #[test]
    fn merge_adds_by_slot() {
        let mut shared = Window::new(2, 10_000);
        let mut a = Window::new(2, 10_000);
        let mut b = Window::new(2, 10_000);
        for t in [1_000u64, 2_000, 3_000] {
            a.record(t, 1, Some(Failure::Grpc(13)), false);
            b.record(t, 1, None, true);
        }
        a.record(3_000, 1, Some(Failure::NoGrpcStatus), false);
        shared.merge(&a);
        shared.merge(&b);
        let t = shared.totals(3_000)[1];
        assert_eq!((t.requests, t.errors, t.slow), (7, 4, 3));
        assert_eq!(describe_failures(t.failures), "INTERNAL, no_grpc_status");
        // A newer slot replaces the ring entry it shares with an old one;
        // the other old slots have left the 10 s window by then.
        let mut c = Window::new(2, 10_000);
        c.record(13_000, 1, None, false);
        shared.merge(&c);
        assert_eq!(shared.totals(13_000)[1].requests, 1);
        assert_eq!(
            shared.totals(10_999)[1].requests,
            4,
            "t = 1 s and 2 s slots still held"
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut w = Window::new(3, 30_000);
        w.record(123_456, 2, Some(Failure::Grpc(14)), true);
        w.record(150_000, 0, None, false);
        let bytes = w.encode(0xdead_beef);
        let (back, generation) = Window::decode(&bytes, 3, 30_000).unwrap();
        assert_eq!(back, w);
        assert_eq!(generation, 0xdead_beef);
        assert!(Window::decode(&bytes, 2, 30_000).is_none(), "other shape");
        assert!(Window::decode(&bytes[1..], 3, 30_000).is_none());
        assert!(Window::decode(b"", 3, 30_000).is_none());
    }
}
