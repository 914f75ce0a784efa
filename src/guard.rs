//! The guard: per-version response counts over a sliding window, and the
//! judgement that trips it. Pure; the glue counts responses into a per-VM
//! [`Window`] ([`Guarded`], one per guarded rollout), merges it into one
//! proxy-wide window kept in proxy-wasm shared data on each tick
//! (compare-and-swap), and judges the merged window, so one trip covers every
//! worker of the pod.
//!
//! The window is a ring of [`SLOTS`] time slots of `window / SLOTS` each;
//! slots older than the window fall out as time moves on.

use crate::config::Guard;
use crate::shared::{self, Keys, Push, SharedData};

pub const SLOTS: usize = 10;
const HEADER: usize = 8;
/// The shared-data format; 2 added `Counts::failures`, 3 the generation.
const FORMAT: u8 = 3;
/// Bytes of one `Counts` in the shared-data form.
const COUNTS_BYTES: usize = 16;

/// gRPC status codes, by number (grpc's `doc/statuscodes.md`).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The gRPC code a client reads from a `grpc-status` value (digits): a code
/// it does not know, or a value that is not one, is UNKNOWN (2).
pub fn grpc_code(value: &[u8]) -> u8 {
    Some(value)
        .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u8>().ok())
        .filter(|&c| usize::from(c) < GRPC_CODES.len())
        .unwrap_or(2)
}

/// Why a response counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An HTTP response with a 5xx status.
    Http5xx,
    /// A gRPC status the guard counts as an error (`guard.grpcErrorCodes`).
    Grpc(u8),
    /// A gRPC stream that ended without a `grpc-status` (reset or cut short).
    NoGrpcStatus,
}

impl Failure {
    /// Every failure, in the order [`Failure::index`] numbers them.
    pub fn all() -> impl Iterator<Item = Failure> {
        (0..GRPC_CODES.len() as u8)
            .map(Failure::Grpc)
            .chain([Failure::NoGrpcStatus, Failure::Http5xx])
    }

    /// 0 to 16 for gRPC codes, then 17 and 18: the bit in
    /// [`Counts::failures`], and an index for per-failure counters.
    pub fn index(self) -> usize {
        match self {
            Failure::Grpc(code) => usize::from(code),
            Failure::NoGrpcStatus => GRPC_CODES.len(),
            Failure::Http5xx => GRPC_CODES.len() + 1,
        }
    }

    /// As logs and metric names say it: `INTERNAL`, `no_grpc_status`, `http_5xx`.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Grpc(code) => GRPC_CODES
                .get(usize::from(code))
                .copied()
                .unwrap_or("UNKNOWN"),
            Failure::NoGrpcStatus => "no_grpc_status",
            Failure::Http5xx => "http_5xx",
        }
    }
}

/// The failures a set of [`Counts::failures`] bits names, for a log line.
pub fn describe_failures(bits: u32) -> String {
    let names: Vec<&str> = Failure::all()
        .filter(|f| bits & (1 << f.index()) != 0)
        .map(Failure::name)
        .collect();
    names.join(", ")
}

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
        if other.versions != self.versions || other.slot_ms != self.slot_ms {
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

    /// The shared-data form: a header (format, tripped version + 1 or 0,
    /// two zero bytes, the generation), then each slot's epoch and counts,
    /// little-endian.
    pub fn encode(&self, stamp: Stamp) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + SLOTS * (8 + COUNTS_BYTES * self.versions));
        let tripped = stamp
            .tripped
            .map_or(0, |v| u8::try_from(v + 1).unwrap_or(u8::MAX));
        out.extend_from_slice(&[FORMAT, tripped, 0, 0]);
        out.extend_from_slice(&stamp.generation.to_le_bytes());
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
    /// of this shape: the window and its stamp. `None` for anything else
    /// (absent, another format, another shape).
    pub fn decode(bytes: &[u8], versions: usize, window_ms: u64) -> Option<(Window, Stamp)> {
        let mut w = Window::new(versions, window_ms);
        if bytes.len() != HEADER + SLOTS * (8 + COUNTS_BYTES * versions)
            || bytes.first() != Some(&FORMAT)
        {
            return None;
        }
        let tripped = match *bytes.get(1)? {
            0 => None,
            v => Some(usize::from(v) - 1),
        };
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
        Some((
            w,
            Stamp {
                generation,
                tripped,
            },
        ))
    }
}

/// What the shared window says besides its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// The push it counts for: the glue numbers each new config of a plugin,
    /// so a pushed config starts on a fresh window even if it was seen
    /// before (A, B, then A again), and a VM that configured before the first
    /// one wrote the fresh window does not read the old one.
    pub generation: u32,
    /// The version that tripped the guard, if it has.
    pub tripped: Option<usize>,
}

/// Why a canary version tripped the guard, with the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub version: usize,
    pub counts: Counts,
    pub stable: Counts,
    pub cause: &'static str,
}

/// The guard of one rollout in one VM.
#[derive(Debug)]
pub struct Guarded {
    /// Responses counted on this VM since the last merge into shared data.
    pub local: Window,
    /// Latched until a new config of the rollout is pushed.
    pub tripped: bool,
    /// The rollout's push this window counts for ([`Push::generation`]).
    generation: u32,
    keys: Keys,
    /// Shared-data key of the proxy-wide window: the rollout's keys and its
    /// fingerprint, so VMs on different configs (during a push) never
    /// share one.
    window_key: String,
    versions: usize,
    window_ms: u64,
}

/// What a tick's look at the shared window found.
#[derive(Debug, Clone, PartialEq)]
pub enum Judged {
    Quiet,
    /// Another VM tripped the guard: this one holds traffic on stable too.
    Latched,
    /// This VM's merge tripped it, with the figures (for the log line).
    Tripped(Trip),
}

impl Guarded {
    /// The guard of a rollout of `versions` versions whose config has
    /// `fingerprint`, as this VM takes part in its `push`. The first VM
    /// starts a fresh window (a push starts one even for a config seen
    /// before: A, B, then A again), which also gives every later merge a
    /// compare-and-swap token. The others start latched if this push's
    /// window has tripped: the config this proxy already runs, in a new
    /// root (another worker's VM, or a listener update that kept the config,
    /// as Envoy Gateway does on every listener change), must not send users
    /// to the canary until the first tick. A window of another generation is
    /// not this push's: the first VM may not have replaced it yet.
    pub fn start(
        store: &impl SharedData,
        keys: Keys,
        fingerprint: u32,
        push: Push,
        config: &Guard,
        versions: usize,
    ) -> Guarded {
        let local = Window::new(versions, config.window_ms);
        let window_key = keys.guard_window(fingerprint);
        let tripped = if push.first {
            let stamp = Stamp {
                generation: push.generation,
                tripped: None,
            };
            store.set(&window_key, &local.encode(stamp), None);
            false
        } else {
            store
                .get(&window_key)
                .0
                .and_then(|b| Window::decode(&b, versions, config.window_ms))
                .is_some_and(|(_, s)| s.generation == push.generation && s.tripped.is_some())
        };
        Guarded {
            local,
            tripped,
            generation: push.generation,
            keys,
            window_key,
            versions,
            window_ms: config.window_ms,
        }
    }

    /// The shared window and the version that tripped it, if it is this
    /// push's or none is there yet; `None` when a later push of the same
    /// config (A, B, A) runs beside this one, which Envoy is about to drop:
    /// leave it the window.
    fn shared(&self, bytes: Option<Vec<u8>>) -> Option<(Window, Option<usize>)> {
        let decoded = bytes.and_then(|b| Window::decode(&b, self.versions, self.window_ms));
        match decoded {
            Some((w, s)) if s.generation == self.generation => Some((w, s.tripped)),
            Some((_, s)) if s.generation.wrapping_sub(self.generation) as i32 > 0 => None,
            // Absent, or an earlier push's.
            _ => Some((Window::new(self.versions, self.window_ms), None)),
        }
    }

    /// Merges this VM's counts into the proxy-wide window and judges it
    /// (compare-and-swap: retried when another VM wrote between the read and
    /// the write). A trip is latched, written to the window for the other
    /// VMs, marked for the next push's log, and counted on the plugin's trip
    /// board.
    pub fn merge_and_judge(
        &mut self,
        store: &impl SharedData,
        config: &Guard,
        now_ms: u64,
    ) -> Judged {
        if self.tripped {
            return Judged::Quiet;
        }
        for _ in 0..8 {
            let (bytes, cas) = store.get(&self.window_key);
            let Some((mut shared, tripped)) = self.shared(bytes) else {
                self.local.clear();
                return Judged::Quiet;
            };
            if tripped.is_some() {
                return self.latch();
            }
            if self.local.is_empty() {
                return Judged::Quiet;
            }
            shared.merge(&self.local);
            let trip = judge(config, &shared.totals(now_ms));
            let encoded = shared.encode(Stamp {
                generation: self.generation,
                tripped: trip.as_ref().map(|t| t.version),
            });
            if !store.set(&self.window_key, &encoded, cas) {
                continue;
            }
            self.local.clear();
            let Some(trip) = trip else {
                return Judged::Quiet;
            };
            self.tripped = true;
            store.set(&self.keys.guard_tripped(), b"1", None);
            shared::bump(store, &self.keys.trips());
            return Judged::Tripped(trip);
        }
        Judged::Quiet
    }

    /// Reads the shared window for a trip another VM made, without merging:
    /// for a VM that counted nothing of the rollout since its last tick.
    pub fn learn_trip(&mut self, store: &impl SharedData) -> Judged {
        if self.tripped {
            return Judged::Quiet;
        }
        match self.shared(store.get(&self.window_key).0) {
            Some((_, Some(_))) => self.latch(),
            _ => Judged::Quiet,
        }
    }

    fn latch(&mut self) -> Judged {
        self.tripped = true;
        self.local.clear();
        Judged::Latched
    }
}

/// Clears the mark a tripped guard left (see [`Keys::guard_tripped`]) when a
/// new config of its rollout is pushed: true if there was one, for the
/// "guard reset" log line.
pub fn reset_mark(store: &impl SharedData, keys: &Keys) -> bool {
    let key = keys.guard_tripped();
    let (mark, cas) = store.get(&key);
    mark.as_deref() == Some(b"1") && store.set(&key, b"0", cas)
}

/// Judges the window totals: the first canary version (index >= 1) with
/// at least `min_requests` responses that breaches a threshold.
pub fn judge(guard: &Guard, totals: &[Counts]) -> Option<Trip> {
    let stable = totals.first().copied().unwrap_or_default();
    totals.iter().enumerate().skip(1).find_map(|(version, &c)| {
        if c.requests < guard.min_requests {
            return None;
        }
        let cause = if guard.max_error_rate.is_some_and(|max| c.error_rate() > max) {
            "error rate above maxErrorRate"
        } else if guard
            .max_error_rate_above_stable
            .is_some_and(|max| c.error_rate() - stable.error_rate() > max)
        {
            "error rate above the stable version's by more than maxErrorRateAboveStable"
        } else if guard.max_slow_rate.is_some_and(|max| c.slow_rate() > max) {
            "share of slow responses above maxSlowRate"
        } else {
            return None;
        };
        Some(Trip {
            version,
            counts: c,
            stable,
            cause,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(min: u32, max: Option<f64>, above: Option<f64>, slow: Option<(u32, f64)>) -> Guard {
        Guard {
            window_ms: 10_000,
            min_requests: min,
            max_error_rate: max,
            max_error_rate_above_stable: above,
            slow_response_ms: slow.map(|(ms, _)| ms),
            max_slow_rate: slow.map(|(_, max)| max),
            grpc_error_codes: crate::config::DEFAULT_GRPC_ERROR_CODES,
            mesh: None,
        }
    }

    #[test]
    fn grpc_status_values_read_as_clients_read_them() {
        for (value, code) in [
            (&b"0"[..], 0),
            (b"13", 13),
            (b"16", 16),
            (b"17", 2),
            (b"99999", 2),
            (b"", 2),
            (b"-1", 2),
            (b" 13", 2),
            (b"+5", 2),
            (b"013", 13),
            (b"\xff", 2),
        ] {
            assert_eq!(grpc_code(value), code, "{value:?}");
        }
        assert_eq!(Failure::all().count(), 19);
        assert!(Failure::all().enumerate().all(|(i, f)| f.index() == i));
        assert_eq!(describe_failures(0), "");
        assert_eq!(
            describe_failures(1 << 14 | 1 << Failure::Http5xx.index()),
            "UNAVAILABLE, http_5xx"
        );
    }

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
        for tripped in [None, Some(2)] {
            let stamp = Stamp {
                generation: 0xdead_beef,
                tripped,
            };
            let bytes = w.encode(stamp);
            let (back, s) = Window::decode(&bytes, 3, 30_000).unwrap();
            assert_eq!(back, w);
            assert_eq!(s, stamp);
        }
        let bytes = w.encode(Stamp::default());
        assert!(Window::decode(&bytes, 2, 30_000).is_none(), "other shape");
        assert!(Window::decode(&bytes[1..], 3, 30_000).is_none());
        assert!(Window::decode(b"", 3, 30_000).is_none());
    }

    #[test]
    fn judge_thresholds() {
        let c = |requests, errors, slow| Counts {
            requests,
            errors,
            slow,
            failures: 0,
        };
        // Not enough requests to judge.
        assert!(judge(
            &guard(50, Some(0.1), None, None),
            &[c(100, 0, 0), c(49, 49, 0)]
        )
        .is_none());
        // Absolute.
        let trip = judge(
            &guard(50, Some(0.1), None, None),
            &[c(100, 0, 0), c(50, 6, 0)],
        )
        .unwrap();
        assert_eq!((trip.version, trip.counts.errors), (1, 6));
        assert!(judge(
            &guard(50, Some(0.1), None, None),
            &[c(100, 0, 0), c(50, 5, 0)]
        )
        .is_none());
        // Relative to stable: both failing alike does not trip.
        let rel = guard(50, None, Some(0.05), None);
        assert!(judge(&rel, &[c(1000, 200, 0), c(100, 22, 0)]).is_none());
        assert!(judge(&rel, &[c(1000, 200, 0), c(100, 26, 0)]).is_some());
        // Slow responses.
        let slow = guard(10, None, None, Some((500, 0.2)));
        assert!(judge(&slow, &[c(0, 0, 0), c(10, 0, 2)]).is_none());
        assert_eq!(
            judge(&slow, &[c(0, 0, 0), c(10, 0, 3)]).unwrap().cause,
            "share of slow responses above maxSlowRate"
        );
        // The stable version itself never trips; the first breaching canary is named.
        assert!(judge(&guard(1, Some(0.0), None, None), &[c(10, 10, 0)]).is_none());
        let three = judge(
            &guard(1, Some(0.1), None, None),
            &[c(10, 0, 0), c(10, 0, 0), c(10, 5, 0)],
        )
        .unwrap();
        assert_eq!(three.version, 2);
    }
}
