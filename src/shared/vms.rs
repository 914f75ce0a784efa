//! The VMs of a proxy that wrote guard windows for a plugin: each window
//! is written by its own VM only, and a VM judging a rollout adds up the
//! windows of every VM listed here.
//!
//! The list only grows by compare-and-swap; a VM checks that it is listed
//! each time it writes a window, and adds itself back if a race, or the
//! bound, dropped it. A VM that ended stays listed until the bound drops it;
//! its windows age out of the guard's window by themselves.

use super::SharedData;

/// A VM's id: random, drawn once per VM (the glue's), so no two VMs of a
/// proxy share a window key.
pub type VmId = u64;

/// The most VMs listed; more drop the oldest. Far above Envoy's workers
/// (one VM each) on any machine.
pub const MAX_VMS: usize = 256;

fn decode(bytes: &[u8]) -> Vec<VmId> {
    bytes
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(VmId::from_le_bytes))
        .collect()
}

/// The VMs listed at `key`, with `me` among them (added if it was not).
pub fn listed(store: &impl SharedData, key: &str, me: VmId) -> Vec<VmId> {
    let mut vms = Vec::new();
    for _ in 0..4 {
        let (bytes, cas) = store.get(key);
        vms = bytes.as_deref().map(decode).unwrap_or_default();
        if vms.contains(&me) {
            return vms;
        }
        if vms.len() >= MAX_VMS {
            vms.drain(..=vms.len() - MAX_VMS);
        }
        vms.push(me);
        let encoded: Vec<u8> = vms.iter().flat_map(|v| v.to_le_bytes()).collect();
        if store.set(key, &encoded, cas) {
            return vms;
        }
    }
    // Lost every race this tick: listed on a later one.
    vms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    #[test]
    fn each_vm_lists_itself_once_and_the_oldest_go_past_the_bound() {
        let s = MemoryStore::default();
        assert_eq!(listed(&s, "v", 7), [7]);
        assert_eq!(listed(&s, "v", 9), [7, 9]);
        assert_eq!(listed(&s, "v", 7), [7, 9]);
        for vm in 100..100 + MAX_VMS as u64 {
            listed(&s, "v", vm);
        }
        let all = listed(&s, "v", 9);
        assert_eq!(all.len(), MAX_VMS);
        assert_eq!(all.last(), Some(&9), "re-added");
        assert!(!all.contains(&7));
    }
}
