//! What the VMs of one proxy share. Envoy runs one VM per worker thread (and
//! configures a short-lived one on the main thread first, to check a push),
//! each configuring itself from the same push; they agree through
//! proxy-wasm shared data, a key-value store with compare-and-swap, read
//! here through the narrow [`SharedData`] trait (the glue implements it with
//! host calls, tests with [`MemoryStore`]).
//!
//! Envoy never deletes a key, so keys are named by what is stable (the
//! plugin's name, a rollout's name, a poll's place in the config, a VM's
//! id), never by a hash of a config's form: a push reuses the keys of the
//! last one ([`Keys`]).
//!
//! What is safe when every worker runs the same code at the same instant
//! (the ABI has no insert-if-absent: a `set` of an absent key, or a `set`
//! without a token, always wins):
//! - counts are never shared by two writers: each VM writes its own window
//!   ([`crate::guard`]), readers add them up, so no interleaving loses one;
//! - every other record changes by compare-and-swap from a value read
//!   ([`push`], [`held`], [`vms`], the mesh's turn), so of VMs racing from
//!   one value exactly one moves it on, and the others read what it wrote;
//! - a record that is absent is created by a plain `set` of what the first
//!   compare-and-swap would have written. Envoy configures each push on the
//!   main thread before any worker sees it, so records are created there,
//!   alone; if workers ever raced to create one, they would all write the
//!   same thing, and the worst outcome is a log line written twice.
//!
//! The reasoning, and the test that runs several VMs through every
//! interleaving of their calls, are in docs/development.md ("Shared data").

use std::cell::RefCell;
use std::collections::HashMap;

pub mod gauged;
pub mod held;
pub mod push;
pub mod vms;

pub use gauged::{gauged_names, update_gauged};
pub use held::Held;
pub use push::{accept_push, News, Push};
pub use vms::VmId;

/// Proxy-wasm shared data: values with a compare-and-swap token.
pub trait SharedData {
    /// The value of `key` and its token (`None`s when absent).
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Sets `key`, unless `cas` is given and `key` changed since the read
    /// that returned it. True if it was set.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Shared data in memory, with the host's compare-and-swap rules (a token
/// on an absent key is no obstacle, as in Envoy): for native tests, where
/// several "VMs" share one store.
#[derive(Default)]
pub struct MemoryStore(RefCell<Records>);

impl MemoryStore {
    /// The keys set so far: what a proxy would hold for the VM's life.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.0.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }
}

impl SharedData for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.0.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        set_in(&mut self.0.borrow_mut(), key, value, cas)
    }
}

/// Each key's value and compare-and-swap token, as a host keeps them.
pub type Records = HashMap<String, (Vec<u8>, u32)>;

/// A `set` with the host's compare-and-swap rules: a token that is not the
/// key's current one loses; no token, or an absent key, always wins.
pub fn set_in(records: &mut Records, key: &str, value: &[u8], cas: Option<u32>) -> bool {
    let token = match records.get(key) {
        Some((_, current)) if cas.is_some_and(|c| c != *current) => return false,
        Some((_, current)) => current.wrapping_add(1),
        None => 1,
    };
    records.insert(key.into(), (value.to_vec(), token));
    true
}

/// The name a config without `rollouts` gives its one rollout in the
/// plugin's records of gauged rollouts: `=` cannot be in a rollout's name
/// (it frames the stat tags), so no rollout can take it.
pub const UNNAMED_ROLLOUT: &str = "=";

/// The shared-data keys of one rollout of one plugin, and the plugin's own.
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
    /// config without `rollouts`, whose rollout's keys are the plugin's.
    pub fn new(plugin: &str, rollout: Option<&str>) -> Keys {
        let plugin = format!("canary-selector.{plugin}");
        let prefix = match rollout {
            None => plugin.clone(),
            // Rollout names hold no `=` (they are stat tag values), so no
            // rollout name can hold a plugin's `.rollout=`; a plugin name is
            // Envoy's `<namespace>.<name>` from Istio (DNS labels, no `=`).
            Some(name) => format!("{plugin}.rollout={name}"),
        };
        Keys { plugin, prefix }
    }

    /// The rollout's last push: what it decides, where it applies, and the
    /// push's number ([`push::accept_push`]).
    pub fn last_config(&self) -> String {
        format!("{}.last-config", self.prefix)
    }

    /// The guard's window of VM `vm`: that VM's counts of the rollout
    /// ([`crate::guard::Guarded`]). One key per VM and rollout, whatever the
    /// number of pushes.
    pub fn window(&self, vm: VmId) -> String {
        format!("{}.window.{vm:016x}", self.prefix)
    }

    /// What holds the rollout's canaries back in its current push: the
    /// local verdict's trip and the mesh verdict's versions ([`held`]).
    pub fn held(&self) -> String {
        format!("{}.held", self.prefix)
    }

    /// The version names whose gauges were set ([`gauged_names`]).
    pub fn gauged_versions(&self) -> String {
        format!("{}.gauged-versions", self.prefix)
    }

    /// The whole config's last push, for the plugin's accepted-config line
    /// (the plugin's, whichever rollout's keys these are).
    pub fn last_push(&self) -> String {
        format!("{}.last-push", self.plugin)
    }

    /// The summary of the config serving now, which a rejected push names.
    pub fn serving(&self) -> String {
        format!("{}.serving", self.plugin)
    }

    /// The rollout names of the plugin whose gauges were set
    /// ([`gauged_names`]; [`UNNAMED_ROLLOUT`] for a config without
    /// `rollouts`): the rollouts the proxy has served.
    pub fn gauged_rollouts(&self) -> String {
        format!("{}.gauged-rollouts", self.plugin)
    }

    /// A count of the trips of every rollout of the plugin: a VM reads this
    /// one key on its tick, and the rollouts' [`Keys::held`] records only
    /// when it moved.
    pub fn trips(&self) -> String {
        format!("{}.trips", self.plugin)
    }

    /// The VMs that wrote a guard window of the plugin ([`vms`]).
    pub fn vms(&self) -> String {
        format!("{}.vms", self.plugin)
    }

    /// The turn of the config's `index`-th poll of Prometheus: which poll
    /// it is and when it was last sent (`crate::mesh::take_turn`).
    pub fn poll_turn(&self, index: usize) -> String {
        format!("{}.mesh.{index}.turn", self.plugin)
    }

    /// When the plugin last logged a line of kind `what` ([`log_due`]).
    pub fn logged(&self, what: &str) -> String {
        format!("{}.logged-{what}", self.plugin)
    }

    /// When the `index`-th poll last logged a line of kind `what`, so that
    /// each kind is logged at most once a minute per proxy
    /// ([`log_due`]).
    pub fn poll_logged(&self, index: usize, what: &str) -> String {
        format!("{}.mesh.{index}.logged-{what}", self.plugin)
    }
}

/// Creates the record at `key` with `initial` if it is absent. A root
/// context does this for the records its config will change by
/// compare-and-swap, before any stream: Envoy configures a push on its main
/// thread before any worker sees it, so the record exists, with a value no
/// VM acted on, by the time workers race to change it.
pub fn ensure(store: &impl SharedData, key: &str, initial: &[u8]) {
    if store.get(key).0.is_none() {
        store.set(key, initial, None);
    }
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

/// Whether a line logged under `key` may be logged now: at most once a
/// minute per proxy (the VMs share the record; of VMs racing, one logs).
pub fn log_due(store: &impl SharedData, key: &str, now_ms: i64) -> bool {
    let (record, cas) = store.get(key);
    let logged = record
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(i64::from_le_bytes);
    // A clock that stepped back is no reason to stay quiet.
    let quiet = logged.is_some_and(|at| (0..60_000).contains(&now_ms.saturating_sub(at)));
    !quiet && store.set(key, &now_ms.to_le_bytes(), cas)
}

fn read_u32(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|v| v.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// Little-endian words of a record, for the records' own decoders.
pub(crate) fn words<const N: usize>(record: &[u8]) -> Option<[u32; N]> {
    if record.len() != 4 * N {
        return None;
    }
    let mut out = [0u32; N];
    for (o, chunk) in out.iter_mut().zip(record.chunks_exact(4)) {
        *o = u32::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(out)
}

/// A record of little-endian words.
pub(crate) fn record(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Whether push `a` comes after push `b` (generations wrap).
pub(crate) fn later(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 > 0
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
    fn keys_of_rollouts_and_plugins_never_meet() {
        let plain = Keys::new("ns.p", None);
        let a = Keys::new("ns.p", Some("a"));
        let b = Keys::new("ns.p", Some("b"));
        assert_eq!(plain.last_config(), "canary-selector.ns.p.last-config");
        assert_eq!(
            a.last_config(),
            "canary-selector.ns.p.rollout=a.last-config"
        );
        assert_ne!(a.window(1), b.window(1));
        assert_ne!(a.window(1), plain.window(1));
        assert_ne!(a.window(1), a.window(2));
        assert_ne!(plain.last_config(), plain.last_push());
        assert_eq!(a.trips(), plain.trips(), "one trip board per plugin");
        assert_eq!(a.gauged_rollouts(), b.gauged_rollouts());
        assert_ne!(a.poll_logged(0, "failure"), a.poll_logged(0, "ignored"));
    }

    #[test]
    fn counters_count() {
        let s = MemoryStore::default();
        assert_eq!(count(&s, "t"), 0);
        bump(&s, "t");
        bump(&s, "t");
        assert_eq!(count(&s, "t"), 2);
    }

    #[test]
    fn a_line_is_due_once_a_minute_and_after_the_clock_stepped_back() {
        let s = MemoryStore::default();
        assert!(log_due(&s, "l", 100_000));
        assert!(!log_due(&s, "l", 159_999));
        assert!(log_due(&s, "l", 160_000));
        assert!(log_due(&s, "l", 10_000), "the clock stepped back");
        assert!(!log_due(&s, "l", 10_001));
    }
}
