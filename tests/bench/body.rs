//! Native micro-benchmark of the body scan (`cargo bench --bench body`): MiB
//! of OpenAI-style chat body scanned per CPU second by `body::scan`, read
//! from memory in slices as the glue reads Envoy's buffer, for bodies of
//! 1 KiB, 64 KiB and 1 MiB with `model` first or last, asking for `model`
//! alone or with three user-id fields; and `serde_json::from_slice::<Value>`
//! on the same bodies (the whole body in memory, everything built) for
//! reference.
//!
//! CPU time is this thread's (`/proc/thread-self/schedstat`, wall time where
//! there is none), so another process on the machine slows a figure less.
//! Each figure is the median of 9 batches of at least 50 ms. The release
//! profile is the module's (opt-level "z"), as `cargo bench` builds it.

#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Instant;

use canary_selector::body::{self, BodySource, Field};

/// The body in memory, given a slice at a time (copied, as the host does).
struct Mem<'a>(&'a [u8]);

impl BodySource for Mem<'_> {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        let end = self.0.len().min(start.saturating_add(max));
        self.0.get(start..end).map(<[u8]>::to_vec)
    }
}

/// Text as written in a JSON string: prose, code, escapes, non-ASCII.
fn text(len: usize, seed: usize) -> String {
    const PIECES: &[&str] = &[
        "The quick brown fox jumps over the lazy dog. ",
        "Explain the difference between ",
        r#"a \"canary\" and a blue/green rollout"#,
        r"\n\n",
        r#"```python\nprint(\"hi\")\n```"#,
        r" caf\u00e9 ",
        " naïve façade ",
        " 日本語のテキスト ",
        " 😀 ",
        r"\ud83d\ude80 ",
        r"C:\\path\\to\\file ",
        r"\t- item\n",
        " 1,234.56 ",
        " see http://example.com/a?b=c ",
    ];
    let mut s = String::new();
    let mut i = seed;
    while s.len() < len {
        s.push_str(PIECES[i % PIECES.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s
}

/// A chat completion request of about `size` bytes.
fn chat(size: usize, model_last: bool) -> Vec<u8> {
    let model = r#""model":"llama-3-8b-instruct""#;
    let rest = r#""user":"alice@example.com","safety_identifier":"user-8d1f","prompt_cache_key":"conv-42","temperature":0.7,"stream":false"#;
    let mut messages = String::new();
    let mut k = 0;
    while messages.len() + 250 < size {
        if k > 0 {
            messages.push(',');
        }
        let role = ["system", "user", "assistant"][k % 3];
        let room = size - 250 - messages.len();
        let len = room.min(if k % 3 == 0 { 300 } else { 3000 });
        messages.push_str(&format!(
            r#"{{"role":"{role}","content":"{}"}}"#,
            text(len.saturating_sub(40).max(1), k)
        ));
        k += 1;
    }
    let body = if model_last {
        format!(r#"{{"messages":[{messages}],{rest},{model}}}"#)
    } else {
        format!(r#"{{{model},"messages":[{messages}],{rest}}}"#)
    };
    serde_json::from_str::<serde_json::Value>(&body).expect("the bench body is JSON");
    body.into_bytes()
}

/// This thread's CPU time in ns.
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// MiB per CPU second of `once` on `body`: the median of 9 batches.
fn rate(body: &[u8], mut once: impl FnMut(&[u8])) -> f64 {
    let clock = || cpu_ns().unwrap_or_else(|| START.with(|s| s.elapsed().as_nanos() as u64));
    let warm = Instant::now();
    let mut per_batch = 1;
    while warm.elapsed().as_millis() < 50 {
        once(black_box(body));
        per_batch += 1;
    }
    let mut rates: Vec<f64> = (0..9)
        .map(|_| {
            let start = clock();
            for _ in 0..per_batch {
                once(black_box(body));
            }
            let ns = clock().saturating_sub(start).max(1) as f64;
            (body.len() * per_batch) as f64 / (1 << 20) as f64 / (ns / 1e9)
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

thread_local! {
    static START: Instant = Instant::now();
}

fn main() {
    let model_only: &[&str] = &["model"];
    let with_ids: &[&str] = &["model", "user", "safety_identifier", "prompt_cache_key"];
    println!(
        "body::scan, slices of {} KiB, MiB per CPU second (ms per body):",
        body::SLICE >> 10
    );
    println!(
        "{:<24} {:>22} {:>22} {:>22}",
        "body", "scan: model", "scan: model + 3 ids", "from_slice::<Value>"
    );
    for size in [1 << 10, 64 << 10, 1 << 20] {
        for last in [false, true] {
            let bytes = chat(size, last);
            let check = body::scan(&mut Mem(&bytes), bytes.len(), with_ids, 1024)
                .expect("the bench body scans");
            assert!(check
                .fields
                .iter()
                .all(|f| matches!(f, Field::Present { .. })));
            let scan = |fields: &'static [&'static str]| {
                move |b: &[u8]| {
                    black_box(body::scan(&mut Mem(b), b.len(), fields, 1024).ok());
                }
            };
            let cells: Vec<String> = [
                rate(&bytes, scan(model_only)),
                rate(&bytes, scan(with_ids)),
                rate(&bytes, |b| {
                    black_box(serde_json::from_slice::<serde_json::Value>(b).ok());
                }),
            ]
            .iter()
            .map(|r| {
                let ms = bytes.len() as f64 / (1 << 20) as f64 / r * 1e3;
                format!("{r:.0} ({ms:.3} ms)")
            })
            .collect();
            let name = format!(
                "{} KiB, model {}",
                size >> 10,
                if last { "last" } else { "first" }
            );
            println!(
                "{name:<24} {:>22} {:>22} {:>22}",
                cells[0], cells[1], cells[2]
            );
        }
    }
}
