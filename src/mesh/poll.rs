//! The polls a config asks for, and whose turn it is to send one.

use crate::config::Config;
use crate::hash::murmur3_32;
use crate::shared::{record, words, SharedData};

/// One Prometheus query the proxy polls, and the rollouts that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    pub cluster: String,
    pub authority: String,
    /// `/api/v1/query?query=...`.
    pub path: String,
    /// The shortest `pollSeconds` of its rollouts.
    pub interval_ms: u64,
    /// The shortest `timeoutMs` of its rollouts (each below its interval).
    pub timeout_ms: u64,
    /// Indices into the config's rollouts.
    pub rollouts: Vec<usize>,
    /// Its place among the config's polls, which names its shared-data
    /// records (`crate::shared::Keys::poll_turn`): a push reuses them.
    pub index: usize,
    /// Which poll it is (a digest of cluster, authority and query): a turn
    /// record at the same place for another poll is no turn of this one.
    pub identity: u32,
}

/// The polls of a config: one per distinct (cluster, authority, query), in
/// the order the rollouts first ask for them.
pub fn polls(config: &Config) -> Vec<Poll> {
    let mut out: Vec<Poll> = Vec::new();
    for (i, rollout) in config.rollouts.iter().enumerate() {
        let Some(mesh) = rollout.guard.as_ref().and_then(|g| g.mesh.as_ref()) else {
            continue;
        };
        let same = |p: &&mut Poll| {
            p.cluster == mesh.cluster && p.authority == mesh.authority && p.path == mesh.path
        };
        match out.iter_mut().find(same) {
            Some(poll) => {
                poll.interval_ms = poll.interval_ms.min(mesh.poll_ms);
                poll.timeout_ms = poll.timeout_ms.min(mesh.timeout_ms);
                poll.rollouts.push(i);
            }
            None => {
                let mut id = mesh.cluster.as_bytes().to_vec();
                for part in [&mesh.authority, &mesh.path] {
                    id.push(0);
                    id.extend_from_slice(part.as_bytes());
                }
                out.push(Poll {
                    cluster: mesh.cluster.clone(),
                    authority: mesh.authority.clone(),
                    path: mesh.path.clone(),
                    interval_ms: mesh.poll_ms,
                    timeout_ms: mesh.timeout_ms,
                    rollouts: vec![i],
                    index: out.len(),
                    identity: murmur3_32(&id, 0x5eed),
                });
            }
        }
    }
    out
}

fn turn_record(identity: u32, sent_ms: i64) -> Vec<u8> {
    let [lo, hi] = [sent_ms as u32, (sent_ms >> 32) as u32];
    record(&[identity, lo, hi])
}

fn read_turn(bytes: &[u8]) -> Option<(u32, i64)> {
    let [identity, lo, hi] = words::<3>(bytes)?;
    Some((identity, i64::from(lo) | i64::from(hi as i32) << 32))
}

/// Creates the turn record at `key` for poll `identity`, never sent, if
/// there is none: see `crate::shared::ensure`.
pub fn ensure_turn(store: &impl SharedData, key: &str, identity: u32) {
    crate::shared::ensure(store, key, &turn_record(identity, i64::MIN));
}

/// Whether this VM sends poll `identity` now. The record at `key` says which
/// poll was last sent from there and when; the poll is due once `interval_ms`
/// has passed since (by the interval of the config asking now, so a push
/// that shortens it takes effect at the next tick), at once for a poll that
/// was never sent from there, and at once when the clock stepped back more
/// than an interval before the last one (a VM whose tick read the clock a
/// moment before another VM sent the poll is no clock stepping back). Of VMs
/// racing for a due poll, the one whose compare-and-swap moves the record on
/// sends it. `Err` holds when to ask again, so a VM asks only then.
pub fn take_turn(
    store: &impl SharedData,
    key: &str,
    identity: u32,
    now_ms: i64,
    interval_ms: u64,
) -> Result<(), i64> {
    let interval = i64::try_from(interval_ms).unwrap_or(i64::MAX);
    for _ in 0..4 {
        let (bytes, cas) = store.get(key);
        if let Some((id, sent)) = bytes.as_deref().and_then(read_turn) {
            let since = now_ms.saturating_sub(sent);
            if id == identity && (-interval..interval).contains(&since) {
                return Err(sent.saturating_add(interval));
            }
        }
        if store.set(key, &turn_record(identity, now_ms), cas) {
            return Ok(());
        }
        // Another VM took this turn: read when it did.
    }
    Err(now_ms.saturating_add(interval))
}

/// Gives back the turn of poll `identity` sent at `sent_ms`, if no VM took
/// another since: a push replaced the config that sent it before the
/// answer came, so the next tick of any VM sends it again rather than a
/// whole interval later.
pub fn release_turn(store: &impl SharedData, key: &str, identity: u32, sent_ms: i64) {
    let (bytes, cas) = store.get(key);
    if bytes.as_deref().and_then(read_turn) == Some((identity, sent_ms)) {
        store.set(key, &turn_record(identity, i64::MIN), cas);
    }
}
