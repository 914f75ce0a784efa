//! The seeded runner of every fuzz target: a SplitMix64 generator and
//! `run`, which replays any case alone from (run seed, case index). Shared by
//! the targets in this directory and by the CLI's (`cli_scope`, inside the
//! binary, which includes this file by path), so that `FUZZ_SEED`,
//! `FUZZ_CASES`, `FUZZ_SECONDS` and `FUZZ_CASE` mean the same for each.
// Each includer uses a part of it.
#![allow(dead_code)]

use std::fmt::Debug;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Instant;

/// cargo's arguments for the test target that includes this file: the
/// CLI's binary, or tests/fuzz.
const TEST_TARGET: &str = match option_env!("CARGO_BIN_NAME") {
    Some(_) => "--features cli --bin canary-selector",
    None => "--test fuzz",
};

/// SplitMix64: tiny, seedable, good enough to drive a generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    pub fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `check(generate(rng))` on many cases, each from its own seed derived
/// from (run seed, case index), so any case can be replayed alone. `check`
/// returns how many inputs the case tried. On a panic (a crash of the code
/// under test, or a broken invariant) prints the input and how to replay it.
pub fn run<I: Debug>(target: &str, generate: impl Fn(&mut Rng) -> I, check: impl Fn(&I) -> u64) {
    let seed = env_u64("FUZZ_SEED").unwrap_or(0x5eed_cafe);
    let seconds = env_u64("FUZZ_SECONDS");
    let cases = env_u64("FUZZ_CASES").unwrap_or(400);
    let only = env_u64("FUZZ_CASE");
    let start = Instant::now();
    let (mut inputs, mut done) = (0u64, 0u64);
    for index in 0u64.. {
        match (only, seconds) {
            (Some(i), _) if index > i => break,
            (Some(i), _) if index < i => continue,
            (None, Some(s)) if start.elapsed().as_secs() >= s => break,
            (None, None) if index >= cases => break,
            _ => {}
        }
        let mut rng = Rng(seed ^ index.wrapping_mul(0xd134_2543_de82_ef95));
        let input = generate(&mut rng);
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(n) => inputs += n,
            Err(panic) => {
                let mut shown = format!("{input:#?}");
                let cut = (0..=shown.len().min(6000))
                    .rev()
                    .find(|&i| shown.is_char_boundary(i));
                shown.truncate(cut.unwrap_or(0));
                eprintln!(
                    "fuzz {target}: case {index} failed. Input:\n{shown}\n\
                     Replay: FUZZ_SEED={seed} FUZZ_CASE={index} cargo test --release {TEST_TARGET} {target} -- --nocapture"
                );
                resume_unwind(panic);
            }
        }
        done += 1;
    }
    eprintln!(
        "\nfuzz {target}: {inputs} inputs ({done} cases) in {:.1} s, 0 panics, FUZZ_SEED={seed}",
        start.elapsed().as_secs_f64()
    );
}

/// Breaks a JSON text in 1 to 3 places: a bit flipped, a byte of JSON's
/// grammar or of multi-byte or invalid UTF-8 inserted, bytes cut or the
/// rest cut off, a piece repeated, a random byte inserted.
pub fn mutate_json_bytes(rng: &mut Rng, body: &mut Vec<u8>) {
    const BYTES: &[u8] = b"\"\\{}[]:, \n0e-tnu\xff\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x00\x1f";
    for _ in 0..rng.range(1, 4) {
        let at = rng.below(body.len() + 1);
        match rng.below(6) {
            0 if at < body.len() => body[at] ^= 1 << rng.below(8),
            1 => body.insert(at, rng.pick(BYTES)),
            2 if at < body.len() => {
                let end = rng.range(at, body.len().min(at + 8));
                body.drain(at..end);
            }
            3 => body.truncate(at),
            4 if at < body.len() => {
                let end = rng.range(at, body.len().min(at + 16));
                let piece = body[at..end].to_vec();
                body.splice(at..at, piece);
            }
            _ => body.insert(at, rng.u64() as u8),
        }
    }
}
