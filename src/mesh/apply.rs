//! What an answer says of each rollout that polls it: the versions to hold
//! back, recorded for the proxy, and the series it could not use, by why.
//! Linear in the answer: each series is looked at once, then each rollout of
//! the poll once.

use std::collections::HashMap;

use super::{Poll, Sample};
use crate::config::Config;
use crate::shared::held::{record_held, Held};
use crate::shared::{Keys, SharedData};

/// The label of a series that names the rollout it is about, in a config
/// that lists `rollouts`.
pub const ROLLOUT_LABEL: &str = "rollout";

/// What an answer says of one rollout that polls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutVerdict {
    /// An index into the config's rollouts.
    pub rollout: usize,
    /// The canaries the answer names failing, bit `i` for version `i`
    /// (never the stable version's bit 0).
    pub failing: u32,
    /// Those this VM added to the rollout's held record: it counts and logs
    /// them, once for the proxy.
    pub added: u32,
}

/// Series of an answer the verdict did not use, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Named (by the `rollout` label) a rollout that does not poll this
    /// query, or that the config does not have.
    pub unknown_rollout: u64,
    /// Named no version of the rollouts it applies to, or had no version
    /// label.
    pub unknown_version: u64,
    /// Had a value that counts nothing: negative, NaN or infinite. A rule
    /// that names a failing version gives it a positive value (the shipped
    /// rules give 1).
    pub bad_value: u64,
}

impl Ignored {
    pub fn total(&self) -> u64 {
        self.unknown_rollout + self.unknown_version + self.bad_value
    }
}

/// What [`apply`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The rollouts of the poll with a failing version, in the poll's order.
    pub verdicts: Vec<RolloutVerdict>,
    pub ignored: Ignored,
}

/// Applies an answer of `poll` to the rollouts of `config` that poll it. A
/// series with a positive, finite value names a failing version in the
/// label the rollout's `versionLabel` says, of the rollout its `rollout`
/// label names (a series without one, or any series in a config without
/// `rollouts`, applies to every rollout of the poll); zero names nothing.
/// The stable version is never held back. Each failing version is recorded
/// in its rollout's held record, found by `records` (the rollout's keys and
/// push generation in this VM).
pub fn apply<'k>(
    samples: &[Sample],
    poll: &Poll,
    config: &Config,
    records: impl Fn(usize) -> Option<(&'k Keys, u32)>,
    store: &impl SharedData,
) -> Applied {
    let mut ignored = Ignored::default();
    // Each polled rollout's place in `poll.rollouts`.
    let mut place: HashMap<usize, usize> = HashMap::with_capacity(poll.rollouts.len());
    for (k, &i) in poll.rollouts.iter().enumerate() {
        place.insert(i, k);
    }
    let mut failing = vec![0u32; poll.rollouts.len()];
    // The (version label, version name) pairs the series that apply to
    // every rollout of the poll name, whether a rollout has each, and each
    // such series' pairs.
    let mut everyone: HashMap<(&str, &str), bool> = HashMap::new();
    let mut unlabeled: Vec<Vec<(&str, &str)>> = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for &i in &poll.rollouts {
        if let Some(label) = version_label(config, i) {
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
    }
    let scoped = config.index.is_some();
    for sample in samples {
        if sample.value == 0.0 {
            continue;
        }
        if !(sample.value.is_finite() && sample.value > 0.0) {
            ignored.bad_value += 1;
            continue;
        }
        let named = if scoped {
            sample.label(ROLLOUT_LABEL)
        } else {
            None
        };
        let Some(name) = named else {
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .filter_map(|&label| Some((label, sample.label(label)?)))
                .collect();
            for &pair in &pairs {
                everyone.entry(pair).or_insert(false);
            }
            unlabeled.push(pairs);
            continue;
        };
        let Some((i, k)) = config
            .rollout_named(name)
            .and_then(|i| Some((i, *place.get(&i)?)))
        else {
            ignored.unknown_rollout += 1;
            continue;
        };
        match version_of(config, i, sample) {
            Some(v) => {
                if let Some(bits) = failing.get_mut(k) {
                    *bits |= bit(v);
                }
            }
            None => ignored.unknown_version += 1,
        }
    }
    if !unlabeled.is_empty() {
        for (k, &i) in poll.rollouts.iter().enumerate() {
            let (Some(rollout), Some(label)) = (config.rollouts.get(i), version_label(config, i))
            else {
                continue;
            };
            for (v, version) in rollout.versions.iter().enumerate() {
                if let Some(used) = everyone.get_mut(&(label, version.name.as_str())) {
                    *used = true;
                    if let Some(bits) = failing.get_mut(k) {
                        *bits |= bit(v);
                    }
                }
            }
        }
        // A series is ignored once, when no rollout has a version it names.
        let unused = unlabeled
            .iter()
            .filter(|pairs| !pairs.iter().any(|p| everyone.get(p) == Some(&true)));
        ignored.unknown_version += unused.count() as u64;
    }
    let mut verdicts = Vec::new();
    for (&i, bits) in poll.rollouts.iter().zip(failing) {
        // The stable version is where users go: never held back.
        let bits = bits & !1;
        if bits == 0 {
            continue;
        }
        let added = match records(i) {
            Some((keys, generation)) => {
                let more = Held {
                    local: None,
                    mesh: bits,
                };
                record_held(store, &keys.held(), generation, more).mesh
            }
            None => 0,
        };
        verdicts.push(RolloutVerdict {
            rollout: i,
            failing: bits,
            added,
        });
    }
    Applied { verdicts, ignored }
}

fn bit(version: usize) -> u32 {
    u32::try_from(version)
        .ok()
        .and_then(|v| 1u32.checked_shl(v))
        .unwrap_or(0)
}

fn version_label(config: &Config, rollout: usize) -> Option<&str> {
    let mesh = config
        .rollouts
        .get(rollout)?
        .guard
        .as_ref()?
        .mesh
        .as_ref()?;
    Some(&mesh.version_label)
}

/// The version of rollout `i` that `sample` names in the rollout's version
/// label.
fn version_of(config: &Config, i: usize, sample: &Sample) -> Option<usize> {
    let name = sample.label(version_label(config, i)?)?;
    config
        .rollouts
        .get(i)?
        .versions
        .iter()
        .position(|v| v.name == name)
}
