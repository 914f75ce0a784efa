//! What the VMs of one proxy share. Envoy runs one VM per worker thread (and
//! one on the main thread), each configuring itself from the same push;
//! they agree through proxy-wasm shared data, a key-value store with
//! compare-and-swap, read here through the narrow [`SharedData`] trait (the
//! glue implements it with host calls, tests with [`MemoryStore`]).
//!
//! Keys carry the plugin's name (`<namespace>.<name>`) and, for a config
//! that lists `rollouts`, the rollout's name ([`Keys`]): two plugins, or two
//! rollouts of one plugin, never share a record.

use std::cell::RefCell;
use std::collections::HashMap;

/// Proxy-wasm shared data: values with a compare-and-swap token.
pub trait SharedData {
    /// The value of `key` and its token (`None`s when absent).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Sets `key`, unless `cas` is given and `key` changed since the read
    /// that returned it. True if it was set.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Shared data in memory, with the host's compare-and-swap rules: for
/// native tests, where several "VMs" share one store.
#[derive(Default)]
pub struct MemoryStore(RefCell<HashMap<String, (Vec<u8>, u32)>>);

impl SharedData for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.0.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut map = self.0.borrow_mut();
        let token = match map.get(key) {
            Some((_, current)) if cas.is_some_and(|c| c != *current) => return false,
            Some((_, current)) => current.wrapping_add(1),
            None => 1,
        };
        map.insert(key.into(), (value.to_vec(), token));
        true
    }
}

/// The shared-data keys of one rollout of one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `canary-selector.<plugin>`: the plugin's own records.
    plugin: String,
    /// The rollout's records: the plugin's prefix, and the rollout's name
    /// if it has one.
    prefix: String,
}

impl Keys {
    /// The keys of the rollout `rollout` of plugin `plugin`; `None` for a
    /// config without `rollouts`, whose keys are the plugin's own.
    pub fn new(plugin: &str, rollout: Option<&str>) -> Keys {
        let plugin = format!("canary-selector.{plugin}");
        let prefix = match rollout {
            None => plugin.clone(),
            // Rollout names hold no `=` (they are stat tag values), so no
            // plugin name can end where a rollout's begins.
            Some(name) => format!("{plugin}.rollout={name}"),
        };
        Keys { plugin, prefix }
    }

    /// The digest and generation of the last config pushed ([`accept_push`]).
    pub fn last_config(&self) -> String {
        format!("{}.last-config", self.prefix)
    }

    /// The guard's proxy-wide window for the config `fingerprint`.
    pub fn guard_window(&self, fingerprint: u32) -> String {
        format!("{}.guard.{fingerprint:08x}", self.prefix)
    }

    /// "1" while the guard of the current config has tripped, so that the
    /// next push can say it reset it.
    pub fn guard_tripped(&self) -> String {
        format!("{}.guard-tripped", self.prefix)
    }

    /// The versions the mesh verdict tripped for the rollout's current push
    /// (`crate::mesh::record_trips`).
    pub fn mesh_trips(&self) -> String {
        format!("{}.mesh-trips", self.prefix)
    }

    /// The version names whose gauges were set ([`gauged_names`]).
    pub fn gauged_versions(&self) -> String {
        format!("{}.gauged-versions", self.prefix)
    }

    /// The rollout names of the plugin's configs ([`gauged_names`]); the
    /// plugin's, whichever rollout's keys these are.
    pub fn gauged_rollouts(&self) -> String {
        format!("{}.gauged-rollouts", self.plugin)
    }

    /// A count of the guard trips of every rollout of the plugin (the
    /// plugin's, whichever rollout's keys these are): a VM reads this one
    /// key on its tick, and the windows only when it moved.
    pub fn trips(&self) -> String {
        format!("{}.trips", self.plugin)
    }
}

/// How a VM takes part in a push of a config (or of one rollout of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Push {
    /// This VM is the first of the proxy to accept this config: it logs it,
    /// and starts the guard's window afresh.
    pub first: bool,
    /// The push's number: the first VM to accept a config that differs from
    /// the last one gives it the next; the others read it. A guard window of
    /// another generation is never this push's (A, B, then A again starts
    /// afresh).
    pub generation: u32,
}

/// Records the push of a config whose digest is `digest` at `key` (the
/// digest, then the generation), and says how this VM takes part in it.
pub fn accept_push(store: &impl SharedData, key: &str, digest: u32) -> Push {
    let digest = digest.to_le_bytes();
    let generation_of = |record: &[u8]| {
        record
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    for _ in 0..4 {
        let (seen, cas) = store.get(key);
        let seen = seen.unwrap_or_default();
        if seen.get(..4) == Some(&digest[..]) {
            return Push {
                first: false,
                generation: generation_of(&seen),
            };
        }
        let generation = generation_of(&seen).wrapping_add(1);
        let mut record = digest.to_vec();
        record.extend_from_slice(&generation.to_le_bytes());
        if store.set(key, &record, cas) {
            return Push {
                first: true,
                generation,
            };
        }
        // Lost a race with another VM that just recorded it (that VM
        // logs): read its generation.
    }
    Push {
        first: false,
        generation: 0,
    }
}

/// Envoy keeps a gauge at its last value until the process ends, so a push
/// that drops a version (or a whole rollout) would leave its gauges showing
/// the old values (and alerts firing). A record in shared data keeps the
/// names whose gauges were set (space separated; names hold no spaces):
/// given that record and the names of the config being installed, returns
/// the names to zero and the new record (the config's names first, then
/// the older ones, at most `keep`). Dropped names stay in the record, so a
/// VM that set a gauge after another zeroed it is corrected on the next push.
pub fn gauged_names<'a>(record: &'a [u8], names: &[&str], keep: usize) -> (Vec<&'a str>, Vec<u8>) {
    let dropped: Vec<&str> = std::str::from_utf8(record)
        .unwrap_or("")
        .split(' ')
        .filter(|name| !name.is_empty() && !names.contains(name))
        .collect();
    let kept: Vec<&str> = names
        .iter()
        .copied()
        .chain(dropped.iter().copied())
        .take(keep)
        .collect();
    (dropped, kept.join(" ").into_bytes())
}

/// Updates the record of gauged names at `key` ([`gauged_names`]) with
/// compare-and-swap, and returns the dropped names, to zero.
pub fn update_gauged(
    store: &impl SharedData,
    key: &str,
    names: &[&str],
    keep: usize,
) -> Vec<String> {
    for _ in 0..4 {
        let (record, cas) = store.get(key);
        let record = record.unwrap_or_default();
        let (dropped, next) = gauged_names(&record, names, keep);
        let dropped = dropped.into_iter().map(String::from).collect();
        // On a lost race the other VM's record holds the same names.
        if next == record || store.set(key, &next, cas) {
            return dropped;
        }
    }
    Vec::new()
}

/// Adds one to the counter at `key` (compare-and-swap).
pub fn bump(store: &impl SharedData, key: &str) {
    for _ in 0..8 {
        let (value, cas) = store.get(key);
        let next = read_u32(value.as_deref()).wrapping_add(1);
        if store.set(key, &next.to_le_bytes(), cas) {
            return;
        }
    }
}

/// The counter at `key` ([`bump`]), 0 while absent.
pub fn count(store: &impl SharedData, key: &str) -> u32 {
    read_u32(store.get(key).0.as_deref())
}

fn read_u32(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|v| v.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_store_swaps_like_the_host() {
        let s = MemoryStore::default();
        assert_eq!(s.get("k"), (None, None));
        assert!(s.set("k", b"a", Some(7)), "an absent key takes any token");
        let (v, cas) = s.get("k");
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        assert!(s.set("k", b"b", cas));
        assert!(!s.set("k", b"c", cas), "a stale token loses");
        assert!(s.set("k", b"d", None), "no token always wins");
    }

    #[test]
    fn the_first_vm_numbers_a_push_and_the_others_read_it() {
        let s = MemoryStore::default();
        let a = accept_push(&s, "p", 0xa);
        assert_eq!(
            a,
            Push {
                first: true,
                generation: 1
            }
        );
        assert_eq!(
            accept_push(&s, "p", 0xa),
            Push {
                first: false,
                generation: 1
            }
        );
        assert_eq!(
            accept_push(&s, "p", 0xb),
            Push {
                first: true,
                generation: 2
            }
        );
        // A revert is a new push.
        assert_eq!(
            accept_push(&s, "p", 0xa),
            Push {
                first: true,
                generation: 3
            }
        );
        // Another key (another rollout) counts its own pushes.
        assert_eq!(
            accept_push(&s, "q", 0xa),
            Push {
                first: true,
                generation: 1
            }
        );
    }

    #[test]
    fn keys_of_rollouts_and_plugins_never_meet() {
        let plain = Keys::new("ns.p", None);
        let a = Keys::new("ns.p", Some("a"));
        let b = Keys::new("ns.p", Some("b"));
        assert_eq!(plain.last_config(), "canary-selector.ns.p.last-config");
        assert_eq!(
            a.last_config(),
            "canary-selector.ns.p.rollout=a.last-config"
        );
        assert_ne!(a.guard_window(1), b.guard_window(1));
        assert_ne!(a.guard_window(1), plain.guard_window(1));
        assert_eq!(a.trips(), plain.trips(), "one trip board per plugin");
        assert_eq!(a.gauged_rollouts(), b.gauged_rollouts());
    }

    #[test]
    fn counters_count() {
        let s = MemoryStore::default();
        assert_eq!(count(&s, "t"), 0);
        bump(&s, "t");
        bump(&s, "t");
        assert_eq!(count(&s, "t"), 2);
    }
}
