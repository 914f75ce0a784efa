//! MurmurHash3 (x86, 32-bit), the hash Unleash and flagd use for sticky
//! bucketing. It is public, tiny, has reference implementations in every
//! language (Python: `mmh3.hash(key, 0, signed=False)`), and is fast on short
//! keys, which is all a user id is.
//!
//! The hasher is incremental so the filter can hash the config-time prefix
//! `salt + ":"` once and continue from that state with each user id, without
//! building the concatenated key on the request path.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Incremental MurmurHash3 x86_32. `Copy`, so a prefix state can be reused.
#[derive(Clone, Copy, Debug)]
pub struct Murmur3 {
    h: u32,
    /// Bytes of an incomplete 4-byte block, little-endian.
    tail: u32,
    tail_len: u32,
    total_len: u32,
}

#[inline]
fn scramble(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

#[inline]
fn mix_block(h: u32, k: u32) -> u32 {
    (h ^ scramble(k))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

impl Murmur3 {
    pub const fn new(seed: u32) -> Self {
        Murmur3 {
            h: seed,
            tail: 0,
            tail_len: 0,
            total_len: 0,
        }
    }

    pub fn write(&mut self, mut data: &[u8]) {
        // The key length enters the hash modulo 2^32, as in the reference.
        self.total_len = self.total_len.wrapping_add(data.len() as u32);
        // Top up a pending partial block first.
        while self.tail_len != 0 {
            let Some((&b, rest)) = data.split_first() else {
                return;
            };
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
            data = rest;
            if self.tail_len == 4 {
                self.h = mix_block(self.h, self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut blocks = data.chunks_exact(4);
        for block in &mut blocks {
            if let Ok(bytes) = <[u8; 4]>::try_from(block) {
                self.h = mix_block(self.h, u32::from_le_bytes(bytes));
            }
        }
        for &b in blocks.remainder() {
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
        }
    }

    pub fn finish(self) -> u32 {
        let mut h = self.h;
        if self.tail_len != 0 {
            h ^= scramble(self.tail);
        }
        h ^= self.total_len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// One-shot MurmurHash3 x86_32.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut m = Murmur3::new(seed);
    m.write(data);
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published reference vectors for MurmurHash3_x86_32.
    #[test]
    fn reference_vectors() {
        let cases: &[(&[u8], u32, u32)] = &[
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (b"\0\0\0\0", 0, 0x2362_f9de),
            (b"aaaa", 0x9747_b28c, 0x5a97_808a),
            (b"abc", 0, 0xb3dd_93fa),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2fa8_26cd,
            ),
        ];
        for &(data, seed, want) in cases {
            assert_eq!(murmur3_32(data, seed), want, "{:?} seed {seed:#x}", data);
        }
    }

    #[test]
    fn incremental_equals_one_shot_for_every_split() {
        let data = b"model-v1:user-0123456789-abcdefghij";
        let whole = murmur3_32(data, 0);
        for split in 0..=data.len() {
            let (a, b) = data.split_at(split);
            let mut m = Murmur3::new(0);
            m.write(a);
            m.write(b);
            assert_eq!(m.finish(), whole, "split at {split}");
        }
        // Many tiny writes too.
        let mut m = Murmur3::new(0);
        for byte in data.chunks(1) {
            m.write(byte);
        }
        assert_eq!(m.finish(), whole);
    }
}
