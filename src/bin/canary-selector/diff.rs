//! `diff`: who moves between versions when NEW replaces OLD. A sticky user's
//! version is the slice their bucket falls in, so with the same salt the
//! share moving from version i to version j is exactly the overlap of OLD's
//! slice i with NEW's slice j (the rollouts' own thresholds, 2^32 scale). A
//! changed salt draws every bucket again: the shares are then those of
//! independent draws.

use serde::Serialize;
use serde_json::Value;

use canary_selector::config::Rollout;

use crate::explain::source_name;
use crate::input::{self, PluginConfig};
use crate::{percent, share_percent, slice, At, Fatal, Report, BUCKETS};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    old: Side,
    new: Side,
    at: Option<String>,
    salt_changed: bool,
    /// Users moving to another version (share > 0), OLD's order then NEW's.
    moves: Vec<Move>,
    /// Users keeping their version.
    stays: Vec<Move>,
    /// The moves to an earlier-listed version (same salt only).
    backward: Vec<Move>,
    allow_backward: bool,
    rules: RuleChanges,
    notes: Vec<String>,
    verdict: String,
    /// The filter's error for a config it rejects.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Side {
    file: String,
    resource: Option<String>,
    salt: Option<String>,
}

#[derive(Serialize, Clone)]
struct Move {
    from: String,
    to: String,
    /// Of all sticky users, 0 to 1.
    share: f64,
    percent: String,
    /// Exact, on the 2^32 bucket scale (same salt only).
    #[serde(skip_serializing_if = "Option::is_none")]
    buckets: Option<u64>,
}

#[derive(Serialize, Default)]
struct RuleChanges {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

pub fn run(old: &str, new: &str, at: At, allow_backward: bool) -> Result<DiffReport, Fatal> {
    if old == "-" && new == "-" {
        return Err(Fatal("-: stdin can be read only once".into()));
    }
    let (old, new) = (input::load_one(old)?, input::load_one(new)?);
    Ok(diff(&old, &new, &at, allow_backward))
}

fn side(p: &PluginConfig, rollout: Option<&Rollout>) -> Side {
    Side {
        file: p.file.clone(),
        resource: p.resource.as_ref().map(ToString::to_string),
        salt: rollout.map(|r| r.salt.clone()),
    }
}

fn diff(old_p: &PluginConfig, new_p: &PluginConfig, at: &At, allow_backward: bool) -> DiffReport {
    let parsed = (
        Rollout::from_json(old_p.json.as_bytes()),
        Rollout::from_json(new_p.json.as_bytes()),
    );
    let mut report = DiffReport {
        old: side(old_p, parsed.0.as_ref().ok()),
        new: side(new_p, parsed.1.as_ref().ok()),
        at: at.text.clone(),
        salt_changed: false,
        moves: Vec::new(),
        stays: Vec::new(),
        backward: Vec::new(),
        allow_backward,
        rules: RuleChanges::default(),
        notes: Vec::new(),
        verdict: String::new(),
        error: None,
    };
    let (old, new) = match parsed {
        (Ok(old), Ok(new)) => (old, new),
        (Err(e), _) => {
            report.error = Some(format!("{}: rejected: {e}", old_p.origin()));
            return report;
        }
        (_, Err(e)) => {
            report.error = Some(format!("{}: rejected: {e}", new_p.origin()));
            return report;
        }
    };
    let same_salt = old.salt == new.salt;
    report.salt_changed = !same_salt;
    let (t_old, t_new) = (old.thresholds_at(at.ms), new.thresholds_at(at.ms));
    for (i, from) in old.versions.iter().enumerate() {
        let (lo, hi) = slice(t_old, i);
        for (j, to) in new.versions.iter().enumerate() {
            let (lo2, hi2) = slice(t_new, j);
            let (share, buckets) = if same_salt {
                let overlap = hi.min(hi2).saturating_sub(lo.max(lo2));
                (overlap as f64 / BUCKETS, Some(overlap))
            } else {
                let share = (hi - lo) as f64 / BUCKETS * ((hi2 - lo2) as f64 / BUCKETS);
                (share, None)
            };
            if share == 0.0 {
                continue;
            }
            let m = Move {
                from: from.name.clone(),
                to: to.name.clone(),
                share,
                percent: buckets.map_or_else(|| share_percent(share), percent),
                buckets,
            };
            if from.name == to.name {
                report.stays.push(m);
            } else {
                if same_salt && backward(&old, &new, &from.name, &to.name) {
                    report.backward.push(m.clone());
                }
                report.moves.push(m);
            }
        }
    }
    report.rules = rule_changes(old_p, new_p);
    report.notes = notes(&old, &new, at);
    report.verdict = verdict(&report, &old);
    report
}

/// A move to a version listed before the user's (in NEW's order, or OLD's
/// for a version NEW no longer lists): what the ramp guarantee rules out.
fn backward(old: &Rollout, new: &Rollout, from: &str, to: &str) -> bool {
    let position = |r: &Rollout, name: &str| r.versions.iter().position(|v| v.name == name);
    match (position(new, from), position(new, to)) {
        (Some(a), Some(b)) => b < a,
        _ => matches!((position(old, from), position(old, to)), (Some(a), Some(b)) if b < a),
    }
}

fn total(moves: &[Move]) -> String {
    if moves.iter().all(|m| m.buckets.is_some()) {
        percent(moves.iter().filter_map(|m| m.buckets).sum())
    } else {
        share_percent(moves.iter().map(|m| m.share).sum())
    }
}

fn listed(moves: &[Move]) -> String {
    moves
        .iter()
        .map(|m| format!("{} -> {} {}", m.from, m.to, m.percent))
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(r: &DiffReport, old: &Rollout) -> String {
    if r.salt_changed {
        return "salt changed: the ramp guarantee does not carry across this change".into();
    }
    match (r.backward.is_empty(), r.allow_backward) {
        (true, _) => format!(
            "forward only: no user moves to an earlier-listed version (salt {:?} unchanged)",
            old.salt
        ),
        (false, false) => format!(
            "BACKWARD: {} of users move to an earlier-listed version ({}); pass --allow-backward if this is a rollback",
            total(&r.backward),
            listed(&r.backward)
        ),
        (false, true) => format!(
            "backward allowed: {} of users move to an earlier-listed version ({})",
            total(&r.backward),
            listed(&r.backward)
        ),
    }
}

/// Rules by name: added, removed, changed (version, conditions or
/// position). Who a rule catches depends on traffic, so they are listed, not
/// counted.
fn rule_changes(old: &PluginConfig, new: &PluginConfig) -> RuleChanges {
    // Both configs were accepted, so both are JSON objects.
    let rules = |p: &PluginConfig| -> Vec<Value> {
        serde_json::from_str::<Value>(&p.json)
            .ok()
            .and_then(|v| v.get("rules").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    };
    let (before, after) = (rules(old), rules(new));
    let name = |r: &Value| {
        r.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let version = |r: &Value| {
        r.get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let find = |list: &[Value], n: &str| list.iter().position(|r| name(r) == n);
    let mut out = RuleChanges::default();
    for (j, rule) in after.iter().enumerate() {
        match find(&before, &name(rule)).and_then(|i| Some((i, before.get(i)?))) {
            None => out
                .added
                .push(format!("{} -> {}", name(rule), version(rule))),
            Some((i, was)) => {
                let mut what = Vec::new();
                if version(was) != version(rule) {
                    what.push(format!("version {} -> {}", version(was), version(rule)));
                }
                if was.get("match") != rule.get("match") {
                    what.push("match".to_string());
                }
                if i != j {
                    what.push(format!("position {i} -> {j}"));
                }
                if !what.is_empty() {
                    out.changed
                        .push(format!("{} ({})", name(rule), what.join(", ")));
                }
            }
        }
    }
    for rule in &before {
        if find(&after, &name(rule)).is_none() {
            out.removed.push(name(rule));
        }
    }
    out
}

fn notes(old: &Rollout, new: &Rollout, at: &At) -> Vec<String> {
    let mut notes = Vec::new();
    let sources = |r: &Rollout| -> String {
        let names: Vec<String> = r.user_ids.iter().map(|s| source_name(r, s)).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    };
    if sources(old) != sources(new) {
        notes.push(format!(
            "user id sources change ({} -> {}): a user whose id is read from another header or cookie may get another bucket",
            sources(old),
            sources(new)
        ));
    }
    if old.schedule.is_some() || new.schedule.is_some() {
        notes.push(format!(
            "a schedule is in force: shares are those at {}",
            at.text.as_deref().unwrap_or("this moment")
        ));
    }
    notes
}

impl Report for DiffReport {
    fn text(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{e}\n");
        }
        let mut out = String::new();
        if self.salt_changed {
            out.push_str(&format!(
                "every user is drawn again (salt {:?} -> {:?}): the shares below are those of independent draws\n",
                self.old.salt.as_deref().unwrap_or_default(),
                self.new.salt.as_deref().unwrap_or_default()
            ));
        }
        for m in &self.moves {
            out.push_str(&format!("{} -> {}: {} of users\n", m.from, m.to, m.percent));
        }
        if self.moves.is_empty() {
            out.push_str("no user moves\n");
        }
        let stays: Vec<String> = self
            .stays
            .iter()
            .map(|m| format!("{} {}", m.from, m.percent))
            .collect();
        out.push_str(&format!(
            "stay: {}\n",
            if stays.is_empty() {
                "nobody".into()
            } else {
                stays.join(", ")
            }
        ));
        for (what, list) in [
            ("added", &self.rules.added),
            ("removed", &self.rules.removed),
            ("changed", &self.rules.changed),
        ] {
            for rule in list {
                out.push_str(&format!(
                    "rule {what}: {rule} (its share of traffic is not knowable)\n"
                ));
            }
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out.push_str(&self.verdict);
        out.push('\n');
        out
    }

    fn failed(&self) -> bool {
        self.error.is_some() || (!self.backward.is_empty() && !self.allow_backward)
    }
}
