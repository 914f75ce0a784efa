//! Reading the header map the host returns from `proxy_get_header_map_pairs`:
//! one host call for every header a config reads, instead of one call per
//! header (each ABI crossing costs more than scanning a few hundred bytes).
//!
//! Format (proxy-wasm ABI): a little-endian u32 count `n`, then `n` pairs of
//! u32 (key length, value length), then each key and value, each followed by
//! a NUL byte.

fn u32_at(buf: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

/// Fills `out[i]` with the value of the first header named `names[i]`
/// (lowercase), or `None` when absent. Returns false (and leaves `out`
/// untouched) if `buf` is not a well-formed map.
pub fn lookup<'a>(buf: &'a [u8], names: &[String], out: &mut [Option<&'a [u8]>]) -> bool {
    let Some(n) = u32_at(buf, 0) else {
        return false;
    };
    let Some(mut data) = n.checked_mul(8).and_then(|s| s.checked_add(4)) else {
        return false;
    };
    let mut found: [Option<&'a [u8]>; crate::config::MAX_HEADERS_READ] =
        [None; crate::config::MAX_HEADERS_READ];
    for i in 0..n {
        let (Some(key_len), Some(value_len)) = (u32_at(buf, 4 + i * 8), u32_at(buf, 8 + i * 8))
        else {
            return false;
        };
        let key_end = data.saturating_add(key_len);
        let value_start = key_end.saturating_add(1);
        let value_end = value_start.saturating_add(value_len);
        let (Some(key), Some(value)) = (buf.get(data..key_end), buf.get(value_start..value_end))
        else {
            return false;
        };
        data = value_end.saturating_add(1);
        for (slot, name) in found.iter_mut().zip(names) {
            if slot.is_none() && key == name.as_bytes() {
                *slot = Some(value);
            }
        }
    }
    for (o, f) in out.iter_mut().zip(found) {
        *o = f;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_first_values_and_absent_headers() {
        let buf = encode(&[
            (":path", b"/v1/models/m:predict"),
            ("x-user-id", b"alice"),
            ("cookie", b"a=1"),
            ("x-user-id", b"second"),
            ("x-empty", b""),
            ("x-odd", b"\xff\x00\xfe"),
        ]);
        let names: Vec<String> = ["x-user-id", "x-missing", "x-empty", "x-odd", ":path"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut out = [None; 5];
        assert!(lookup(&buf, &names, &mut out));
        assert_eq!(
            out,
            [
                Some(&b"alice"[..]),
                None,
                Some(&b""[..]),
                Some(&b"\xff\x00\xfe"[..]),
                Some(&b"/v1/models/m:predict"[..])
            ]
        );
    }

    #[test]
    fn malformed_maps_are_refused_without_panicking() {
        let good = encode(&[("x-user-id", b"alice")]);
        let names = vec!["x-user-id".to_string()];
        for cut in 0..good.len() - 1 {
            let mut out = [Some(&b"untouched"[..])];
            assert!(!lookup(&good[..cut], &names, &mut out), "cut at {cut}");
            assert_eq!(out, [Some(&b"untouched"[..])]);
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!lookup(&huge, &names, &mut [None]));
        let mut long_key = good.clone();
        long_key[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!lookup(&long_key, &names, &mut [None]));
        assert!(lookup(&0u32.to_le_bytes(), &names, &mut [None]));
    }
}
