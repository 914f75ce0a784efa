//! The config of a case: rollouts with versions, some polling one of a few
//! queries, and the polls the filter makes of them.

use canary_selector::config::MAX_VERSIONS;
use serde_json::{json, Value};

use super::shuffle;
use crate::runner::Rng;

const QUERIES: &[&str] = &[
    "canary_selector:canary_failing",
    "up == 0",
    "canary_selector:quality_failing{plugin=\"p\"}",
];
pub(super) const VERSION_LABELS: &[&str] =
    &["version", "destination_version", "model_version", "v"];
/// Rollout names, no two the same once the filter's metric names fold them.
pub(super) const ROLLOUT_NAMES: &[&str] = &[
    "iris", "flowers", "m0", "m1", "m2", "Iris", "iris-v2", "a.b", "tulips", "x", "~", "9",
];
/// Version names, likewise.
pub(super) const VERSION_NAMES: &[&str] = &[
    "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15",
    "v16", "iris-v1", "iris-v2", "canary", "stable", "B", "b", "model.v2",
];

#[derive(Debug, Clone)]
pub(super) struct MeshSpec {
    query: usize,
    label: String,
    /// Whether the JSON says `versionLabel` (it may leave out "version").
    label_written: bool,
    poll_seconds: u32,
    timeout_ms: u32,
}

#[derive(Debug, Clone)]
pub(super) struct RolloutSpec {
    pub(super) name: String,
    pub(super) versions: Vec<String>,
    pub(super) mesh: Option<MeshSpec>,
}

#[derive(Debug, Clone)]
pub(super) struct MeshConfig {
    pub(super) scoped: bool,
    pub(super) rollouts: Vec<RolloutSpec>,
}

pub(super) fn gen_config(rng: &mut Rng) -> MeshConfig {
    let scoped = !rng.one_in(4);
    let n = match (scoped, rng.below(10)) {
        (false, _) => 1,
        (true, 0) => rng.range(13, 60),
        _ => rng.range(1, 6),
    };
    let queries = rng.range(1, QUERIES.len());
    let mut names: Vec<String> = ROLLOUT_NAMES.iter().map(|s| s.to_string()).collect();
    shuffle(rng, &mut names);
    let rollouts = (0..n)
        .map(|i| {
            let mesh = (!scoped || !rng.one_in(6)).then(|| {
                let label = if rng.one_in(3) {
                    rng.pick(VERSION_LABELS).to_string()
                } else {
                    "version".to_string()
                };
                let poll_seconds = rng.pick(&[1, 2, 5, 60, 3600]);
                let timeout_ms =
                    rng.range(1, (poll_seconds as usize * 1000 - 1).min(30_000)) as u32;
                MeshSpec {
                    query: rng.below(queries),
                    label_written: label != "version" || rng.one_in(2),
                    label,
                    poll_seconds,
                    timeout_ms,
                }
            });
            let n_versions = if rng.one_in(8) {
                rng.range(5, MAX_VERSIONS)
            } else {
                rng.range(if mesh.is_some() { 2 } else { 1 }, 4)
            };
            let mut versions: Vec<String> = VERSION_NAMES.iter().map(|s| s.to_string()).collect();
            shuffle(rng, &mut versions);
            versions.truncate(n_versions);
            RolloutSpec {
                name: names.get(i).cloned().unwrap_or_else(|| format!("r{i}")),
                versions,
                mesh,
            }
        })
        .collect();
    MeshConfig { scoped, rollouts }
}

impl MeshConfig {
    pub(super) fn json(&self) -> String {
        let rollouts: Vec<Value> = self
            .rollouts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let versions: Vec<Value> = r
                    .versions
                    .iter()
                    .enumerate()
                    .map(|(k, v)| json!({ "name": v, "weight": if k == 0 { 100 } else { 0 } }))
                    .collect();
                let mut o = json!({ "versions": versions });
                if let Some(m) = &r.mesh {
                    let mut mesh = json!({
                        "cluster": "prom",
                        "authority": "prom:9090",
                        "query": QUERIES[m.query],
                        "pollSeconds": m.poll_seconds,
                        "timeoutMs": m.timeout_ms,
                    });
                    if m.label_written {
                        mesh["versionLabel"] = json!(m.label);
                    }
                    o["guard"] = json!({ "mesh": mesh });
                }
                if self.scoped {
                    o["name"] = json!(r.name);
                    o["hosts"] = json!([format!("r{i}.example.com")]);
                }
                o
            })
            .collect();
        if self.scoped {
            json!({ "rollouts": rollouts }).to_string()
        } else {
            rollouts[0].to_string()
        }
    }

    /// The polls: the rollouts asking each query, in the order the config
    /// first asks it; each with the shortest interval and timeout.
    pub(super) fn polls(&self) -> Vec<(Vec<usize>, u64, u64)> {
        let mut out: Vec<(usize, Vec<usize>, u64, u64)> = Vec::new();
        for (i, r) in self.rollouts.iter().enumerate() {
            let Some(m) = &r.mesh else { continue };
            let (ms, timeout) = (u64::from(m.poll_seconds) * 1000, u64::from(m.timeout_ms));
            match out.iter_mut().find(|p| p.0 == m.query) {
                Some(p) => {
                    p.1.push(i);
                    p.2 = p.2.min(ms);
                    p.3 = p.3.min(timeout);
                }
                None => out.push((m.query, vec![i], ms, timeout)),
            }
        }
        out.into_iter().map(|(_, r, ms, t)| (r, ms, t)).collect()
    }

    pub(super) fn label(&self, rollout: usize) -> &str {
        self.rollouts[rollout].mesh.as_ref().unwrap().label.as_str()
    }

    /// The labels any rollout reads its versions from.
    pub(super) fn labels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rollouts {
            if let Some(m) = &r.mesh {
                if !out.contains(&m.label.as_str()) {
                    out.push(&m.label);
                }
            }
        }
        out
    }
}
