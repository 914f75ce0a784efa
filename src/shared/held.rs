//! What holds a rollout's canaries back, for the proxy: the local verdict's
//! trip and the versions the mesh verdict named, recorded per push
//! generation, latched until the rollout's next generation. A VM that starts
//! later, or missed a poll, reads it and holds the same versions back.

use super::{later, record, words, SharedData};

/// Every version but the stable one (bit 0): what a local trip holds back.
pub const ALL_CANARIES: u32 = !1;

/// The versions held back in one push of a rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// The canary whose breach tripped the local verdict: it holds back
    /// every canary.
    pub local: Option<usize>,
    /// The versions the mesh verdict named failing, bit `i` for version `i`.
    pub mesh: u32,
}

impl Held {
    /// The versions held back, bit `i` for version `i` (never the stable
    /// version's bit 0): they receive only what rules pin to them.
    pub fn versions(&self) -> u32 {
        let local = if self.local.is_some() {
            ALL_CANARIES
        } else {
            0
        };
        (local | self.mesh) & ALL_CANARIES
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_none() && self.mesh == 0
    }

    /// Both together; the first local trip stays the one named.
    pub fn and(self, other: Held) -> Held {
        Held {
            local: self.local.or(other.local),
            mesh: self.mesh | other.mesh,
        }
    }

    /// What `self` holds that `before` did not.
    pub fn beyond(self, before: Held) -> Held {
        Held {
            local: self.local.filter(|_| before.local.is_none()),
            mesh: self.mesh & !before.mesh,
        }
    }

    fn encode(self, generation: u32) -> Vec<u8> {
        let local = self
            .local
            .and_then(|v| u32::try_from(v + 1).ok())
            .unwrap_or(0);
        record(&[generation, local, self.mesh])
    }

    fn decode(bytes: &[u8]) -> Option<(u32, Held)> {
        let [generation, local, mesh] = words::<3>(bytes)?;
        let local = local.checked_sub(1).and_then(|v| usize::try_from(v).ok());
        Some((generation, Held { local, mesh }))
    }
}

/// A record of no push (generation 0 is none's), holding nothing back.
pub fn empty_record() -> Vec<u8> {
    Held::default().encode(0)
}

/// What the record at `key` holds back for push `generation` (nothing for
/// another push's record, or none).
pub fn read(store: &impl SharedData, key: &str, generation: u32) -> Held {
    match store.get(key).0.as_deref().and_then(Held::decode) {
        Some((g, held)) if g == generation => held,
        _ => Held::default(),
    }
}

/// Adds `more` to what the record at `key` holds back for push `generation`
/// (compare-and-swap), and returns what this call added: the VM that adds a
/// trip counts and logs it, once for the proxy. A record of an earlier push
/// is replaced (a new push starts with nothing held back); one of a later
/// push is left alone (this VM's config is on its way out).
pub fn record_held(store: &impl SharedData, key: &str, generation: u32, more: Held) -> Held {
    for _ in 0..8 {
        let (bytes, cas) = store.get(key);
        let known = match bytes.as_deref().and_then(Held::decode) {
            Some((g, held)) if g == generation => held,
            Some((g, _)) if later(g, generation) => return Held::default(),
            _ => Held::default(),
        };
        let added = more.beyond(known);
        if added.is_empty() {
            return added;
        }
        if store.set(key, &known.and(more).encode(generation), cas) {
            return added;
        }
    }
    Held::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn mesh(bits: u32) -> Held {
        Held {
            local: None,
            mesh: bits,
        }
    }

    #[test]
    fn trips_are_latched_per_generation_and_added_once() {
        let s = MemoryStore::default();
        assert_eq!(read(&s, "h", 3), Held::default());
        assert_eq!(record_held(&s, "h", 3, mesh(0b010)), mesh(0b010));
        assert_eq!(
            record_held(&s, "h", 3, mesh(0b010)),
            Held::default(),
            "known"
        );
        assert_eq!(record_held(&s, "h", 3, mesh(0b110)), mesh(0b100));
        let local = Held {
            local: Some(2),
            mesh: 0,
        };
        assert_eq!(record_held(&s, "h", 3, local), local);
        let first = Held {
            local: Some(1),
            mesh: 0,
        };
        assert_eq!(
            record_held(&s, "h", 3, first),
            Held::default(),
            "one local trip"
        );
        assert_eq!(
            read(&s, "h", 3),
            Held {
                local: Some(2),
                mesh: 0b110
            }
        );
        assert_eq!(read(&s, "h", 3).versions(), ALL_CANARIES);
        // An earlier push's config leaves the record alone; a later push
        // starts afresh.
        assert_eq!(record_held(&s, "h", 2, mesh(0b1000)), Held::default());
        assert_eq!(read(&s, "h", 4), Held::default());
        assert_eq!(record_held(&s, "h", 4, mesh(0b1000)), mesh(0b1000));
        assert_eq!(read(&s, "h", 3), Held::default());
    }

    #[test]
    fn the_stable_version_is_never_held_back() {
        assert_eq!(mesh(0b011).versions(), 0b010);
    }
}
