//! Target `config_bytes`: `Rollout::from_json` on arbitrary and byte-mutated input.

use super::*;

// ---------------------------------------------------------------------------
// Target: config_bytes.
// ---------------------------------------------------------------------------

/// Text with a readable Debug form for the failure report.
struct Text(Vec<u8>);

impl Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn gen_config_bytes(rng: &mut Rng) -> Text {
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u0000",
        b"\\ud800",
        b"\\n",
        b"null",
        b"true",
        b"-0",
        b"1e999",
        b"1e-999",
        b"100",
        b"0.5",
        b"-1",
        b"NaN",
        b"\"versions\"",
        b"\"weight\"",
        b"\"name\"",
        b"\"rules\"",
        b"\"match\"",
        b"\"regex\"",
        b"\"schedule\"",
        b"\"guard\"",
        b"\"steps\"",
        b"\xff",
        b"\xef\xbb\xbf",
        b" ",
        b"\t",
        b"\n",
    ];
    if rng.one_in(4) {
        let len = rng.range(0, 200);
        let bytes = (0..len)
            .map(|_| {
                if rng.one_in(2) {
                    rng.pick(b"{}[]\",:0123456789.e-")
                } else {
                    rng.u64() as u8
                }
            })
            .collect();
        return Text(bytes);
    }
    let mut bytes = serde_json::to_vec(&gen_spec(rng).json()).unwrap();
    for _ in 0..rng.range(1, 4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] = rng.u64() as u8,
            1 => {
                let token: &[u8] = rng.pick(TOKENS);
                bytes.splice(at..at, token.iter().copied()).for_each(drop);
            }
            2 => bytes.truncate(at),
            3 => {
                let end = (at + rng.range(1, 30)).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {
                let end = (at + rng.range(1, 60)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy).for_each(drop);
            }
        }
    }
    Text(bytes)
}

#[test]
fn config_bytes() {
    run("config_bytes", gen_config_bytes, |input| {
        let first = parse(&input.0).map(|r| r.summary());
        // Deterministic: the same bytes give the same verdict.
        assert_eq!(first, parse(&input.0).map(|r| r.summary()));
        1
    });
}
