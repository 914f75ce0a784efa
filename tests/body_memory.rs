//! The body scan's memory is bounded: one slice, one key and the wanted
//! values, whatever the body holds (a 3 MiB string nobody reads, a 2 MiB
//! model, 100,000 messages, nesting to the bound, a key just under its
//! bound). Measured natively as the peak of this thread's live heap under a
//! counting global allocator, with the body itself allocated beforehand.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use canary_selector::body::{self, BodySource, Field, DEFAULT_MAX_VALUE, MAX_DEPTH, SLICE};

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grow(n: usize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + n);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

struct Counting;

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size);
        shrink(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The body in memory, a copy of each slice handed out (as the host does).
struct Mem<'a>(&'a [u8]);

impl BodySource for Mem<'_> {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        let end = self.0.len().min(start.saturating_add(max));
        self.0.get(start..end).map(<[u8]>::to_vec)
    }
}

/// The scan's result, and the most heap it held at once beyond what was
/// live before it.
fn peak_of_scan(body: &[u8], fields: &[&str]) -> (Result<body::Scanned, body::Unreadable>, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let result = body::scan(&mut Mem(body), body.len(), fields, DEFAULT_MAX_VALUE);
    let peak = PEAK.with(Cell::get) - before;
    (result, peak)
}

/// One slice, the key scratch and the token copy (each at most
/// 6 * max_value + 2 bytes), serde_json's deserializer, and a little slack.
const BOUND: usize = SLICE + 4 * (6 * DEFAULT_MAX_VALUE + 2) + 4096;

#[test]
fn memory_is_one_slice_and_the_wanted_values() {
    let fields = &["model", "user", "safety_identifier", "prompt_cache_key"];
    let messages: String = (0..100_000)
        .map(|i| format!(r#"{{"role":"user","content":"message {i} caf\u00e9 😀"}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let deep = MAX_DEPTH - 1;
    let key = "k".repeat(6 * DEFAULT_MAX_VALUE);
    let bodies = [
        (
            "a 3 MiB string nobody reads",
            format!(
                r#"{{"messages":[{{"content":"{}"}}],"model":"m","user":"u"}}"#,
                "c".repeat(3 << 20)
            ),
        ),
        (
            "a 2 MiB model",
            format!(r#"{{"model":"{}","user":"u"}}"#, "m".repeat(2 << 20)),
        ),
        (
            "100,000 messages",
            format!(r#"{{"messages":[{messages}],"model":"m"}}"#),
        ),
        (
            "nesting to the bound",
            format!(
                r#"{{"a":{}"{}"{},"model":"m"}}"#,
                "[".repeat(deep),
                "x".repeat(1 << 20),
                "]".repeat(deep)
            ),
        ),
        (
            "a key just under its bound, 300 times",
            format!(r#"{{{}"model":"m"}}"#, format!(r#""{key}":1,"#).repeat(300)),
        ),
        (
            "four values at the bound",
            format!(
                r#"{{"model":"{v}","user":"{v}","safety_identifier":"{v}","prompt_cache_key":"{v}"}}"#,
                v = "\\u00e9".repeat(DEFAULT_MAX_VALUE / 2)
            ),
        ),
    ];
    for (what, body) in bodies {
        let (result, peak) = peak_of_scan(body.as_bytes(), fields);
        let found = result.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            !matches!(found.fields[0], Field::Absent),
            "{what}: {found:?}"
        );
        println!("{what}: {} bytes, peak heap {peak} bytes", body.len());
        assert!(
            peak <= BOUND,
            "{what}: the scan held {peak} bytes (bound {BOUND})"
        );
    }
}

#[test]
fn a_failed_scan_holds_no_more() {
    // Too deep, too long a key, not UTF-8 at the end of a long body.
    let bodies = [
        format!(r#"{{"a":{}"#, "[".repeat(100_000)),
        format!(r#"{{"{}":1}}"#, "k".repeat(1 << 20)),
    ];
    for body in &bodies {
        let (result, peak) = peak_of_scan(body.as_bytes(), &["model"]);
        assert!(result.is_err());
        assert!(peak <= BOUND, "held {peak} bytes");
    }
    let mut bad = format!("{{\"a\":\"{}", "x".repeat(1 << 20)).into_bytes();
    bad.extend_from_slice(b"\xff\"}");
    let (result, peak) = peak_of_scan(&bad, &["model"]);
    assert_eq!(result, Err(body::Unreadable::NotUtf8));
    assert!(peak <= BOUND, "held {peak} bytes");
}
