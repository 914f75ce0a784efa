//! `diff`: who moves between versions when NEW replaces OLD. A sticky user's
//! version is the slice their bucket falls in, so with the same salt the
//! share moving from version i to version j is exactly the overlap of OLD's
//! slice i with NEW's slice j (the rollouts' own thresholds, 2^32 scale). A
//! changed salt draws every bucket again: the shares are then those of
//! independent draws.

use serde::Serialize;
use serde_json::Value;

use canary_selector::config::{
    authority_host, prefix_takes, Config, Rollout, MAX_AUTHORITY_HOST_LEN,
};

use crate::explain::source_name;
use crate::hosts::{self, paths_text, Patterns, Unclaimed};
use crate::input::{self, PluginConfig};
use crate::{percent, share_percent, slice, At, Fatal, Report, BUCKETS};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    old: Side,
    new: Side,
    at: Option<String>,
    allow_backward: bool,
    /// Two configs without `rollouts`: their one rollout's change.
    #[serde(flatten)]
    one: Option<RolloutDiff>,
    /// A config with `rollouts` on either side: the change of each.
    #[serde(flatten)]
    many: Option<RolloutsDiff>,
    /// The filter's error for a config it rejects.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Side {
    file: String,
    resource: Option<String>,
    /// The salt of a config without `rollouts` (each rollout's is in its
    /// entry of `rollouts`).
    salt: Option<String>,
}

/// Who moves when one rollout replaces another.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RolloutDiff {
    salt_changed: bool,
    /// Users moving to another version (share > 0), OLD's order then NEW's.
    moves: Vec<Move>,
    /// Users keeping their version.
    stays: Vec<Move>,
    /// The moves to an earlier-listed version (same salt only).
    backward: Vec<Move>,
    rules: RuleChanges,
    notes: Vec<String>,
    verdict: String,
}

/// The change of each rollout, matched by name.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RolloutsDiff {
    /// NEW's rollouts in its order, then those only OLD has.
    rollouts: Vec<RolloutChange>,
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
    unchanged: Vec<String>,
    /// What NEW's filter does to a request none of its rollouts takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    unclaimed: Option<Unclaimed>,
    notes: Vec<String>,
    verdict: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RolloutChange {
    name: String,
    /// `added`, `removed`, `unchanged` (the same decisions, by the filter's
    /// `Rollout::fingerprint`, on the same hosts and path prefixes) or
    /// `changed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<Place>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<Place>,
    /// For an added rollout, where OLD sent the requests it takes; for a
    /// removed one, where NEW sends them.
    #[serde(skip_serializing_if = "Option::is_none")]
    elsewhere: Option<Elsewhere>,
    /// For a changed rollout: who moves.
    #[serde(flatten)]
    diff: Option<RolloutDiff>,
}

/// Where the other config sends a rollout's requests, by the filter's own
/// lookup in both configs of a host for each part of its hosts that the
/// two configs' patterns cut out, and a path for each of its path prefixes
/// and each of the other config's within them.
#[derive(Serialize)]
struct Elsewhere {
    /// The other config's rollouts that take some of them.
    rollouts: Vec<String>,
    /// The other config's rollouts take none of some of them.
    unclaimed: bool,
}

impl Elsewhere {
    /// Where `other` sends the requests that `own` takes to its rollout
    /// `rollout`; `listed` holds the host patterns of both.
    fn find(own: &Config, rollout: usize, other: &Config, listed: &[&str]) -> Elsewhere {
        let mut out = Elsewhere {
            rollouts: Vec::new(),
            unclaimed: false,
        };
        let Some(scope) = own.rollouts.get(rollout).and_then(|r| r.scope.as_ref()) else {
            return out;
        };
        // Every path: those under `/`, and one no prefix takes (OPTIONS's
        // `*`), which only a rollout of every path does.
        let every_path = ["/".to_string(), "*".to_string()];
        let own_paths = match scope.path_prefixes.as_slice() {
            [] => &every_path[..],
            prefixes => prefixes,
        };
        let mut paths: Vec<&str> = own_paths.iter().map(String::as_str).collect();
        let other_prefixes = other
            .rollouts
            .iter()
            .filter_map(|r| r.scope.as_ref())
            .flat_map(|s| &s.path_prefixes);
        for prefix in other_prefixes {
            let within = own_paths
                .iter()
                .any(|own| prefix_takes(own.as_bytes(), prefix.as_bytes()));
            if within && !paths.contains(&prefix.as_str()) {
                paths.push(prefix);
            }
        }
        let hosts = scope
            .hosts
            .iter()
            .flat_map(|pattern| hosts::probes_within(pattern, listed));
        for host in hosts {
            let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
            let host = authority_host(host.as_bytes(), &mut buf);
            for path in &paths {
                let path = || Some(path.as_bytes());
                // Another rollout of its own config may take this one.
                if own.rollout_for(host, path) != Some(rollout) {
                    continue;
                }
                match other.rollout_for(host, path) {
                    Some(i) => {
                        let name = other.rollouts.get(i).and_then(Rollout::name).unwrap_or("?");
                        if !out.rollouts.iter().any(|n| n == name) {
                            out.rollouts.push(name.to_string());
                        }
                    }
                    None => out.unclaimed = true,
                }
            }
        }
        out
    }

    /// `rollout a, b or no rollout`.
    fn text(&self) -> String {
        let mut parts = Vec::new();
        if !self.rollouts.is_empty() {
            parts.push(format!("rollout {}", self.rollouts.join(", ")));
        }
        if self.unclaimed {
            parts.push("no rollout".to_string());
        }
        parts.join(" or ")
    }
}

/// A rollout in its config.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Place {
    /// Its index in `rollouts` (0 for the one rollout of a config without).
    index: usize,
    /// Its host patterns; `None` for a config without `rollouts`, whose
    /// one rollout takes every host.
    hosts: Option<Vec<String>>,
    /// Empty for every path.
    path_prefixes: Vec<String>,
    salt: String,
}

impl Place {
    fn of(index: usize, rollout: &Rollout) -> Place {
        Place {
            index,
            hosts: rollout.scope.as_ref().map(|s| s.hosts.clone()),
            path_prefixes: rollout
                .scope
                .as_ref()
                .map(|s| s.path_prefixes.clone())
                .unwrap_or_default(),
            salt: rollout.salt.clone(),
        }
    }

    /// `hosts a, b; every path`.
    fn text(&self) -> String {
        match &self.hosts {
            Some(hosts) => format!(
                "hosts {}; {}",
                hosts.join(", "),
                paths_text(&self.path_prefixes)
            ),
            None => "every host".into(),
        }
    }
}

#[derive(Serialize, Clone)]
struct Move {
    from: String,
    to: String,
    /// Of all sticky users (of the rollout), 0 to 1.
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

fn side(p: &PluginConfig, config: Option<&Config>) -> Side {
    let one = config.filter(|c| c.index.is_none());
    Side {
        file: p.file.clone(),
        resource: p.resource.as_ref().map(ToString::to_string),
        salt: one.and_then(|c| c.rollouts.first()).map(|r| r.salt.clone()),
    }
}

/// Who moves when `new_p`'s config replaces `old_p`'s.
pub fn diff(
    old_p: &PluginConfig,
    new_p: &PluginConfig,
    at: &At,
    allow_backward: bool,
) -> DiffReport {
    let parsed = (
        Config::from_json(old_p.json.as_bytes()),
        Config::from_json(new_p.json.as_bytes()),
    );
    let mut report = DiffReport {
        old: side(old_p, parsed.0.as_ref().ok()),
        new: side(new_p, parsed.1.as_ref().ok()),
        at: at.text.clone(),
        allow_backward,
        one: None,
        many: None,
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
    let sides = (Sides::new(old_p, &old), Sides::new(new_p, &new));
    match (
        old.index.is_some(),
        new.index.is_some(),
        old.rollouts.first(),
        new.rollouts.first(),
    ) {
        (false, false, Some(o), Some(n)) => {
            let rules = (sides.0.rules(0), sides.1.rules(0));
            report.one = Some(analyse(o, n, rules, at, allow_backward));
        }
        _ => report.many = Some(per_rollout(&old, &new, &sides, at, allow_backward)),
    }
    report
}

/// A config's rollouts as JSON, for what the compiled rollout does not
/// keep (a rule's conditions as written).
struct Sides(Vec<Value>);

impl Sides {
    fn new(p: &PluginConfig, config: &Config) -> Sides {
        // Both configs were accepted, so both are JSON objects.
        let doc = serde_json::from_str::<Value>(&p.json).unwrap_or(Value::Null);
        Sides(match (&config.index, doc.get("rollouts")) {
            (Some(_), Some(Value::Array(entries))) => entries.clone(),
            _ => vec![doc],
        })
    }

    fn rules(&self, index: usize) -> Vec<Value> {
        self.0
            .get(index)
            .and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }
}

/// Each rollout of NEW against the rollout of OLD it replaces: the one of
/// the same name, or, when one side has no `rollouts`, its one rollout
/// (which took, or takes, every request).
fn per_rollout(
    old: &Config,
    new: &Config,
    sides: &(Sides, Sides),
    at: &At,
    allow_backward: bool,
) -> RolloutsDiff {
    let find = |config: &Config, name: &str| match &config.index {
        None => Some(0),
        Some(_) => config.rollouts.iter().position(|r| r.name() == Some(name)),
    };
    let mut pairs: Vec<(String, Option<usize>, Option<usize>)> = new
        .rollouts
        .iter()
        .enumerate()
        .filter_map(|(j, r)| {
            let name = r.name()?;
            Some((name.to_string(), find(old, name), Some(j)))
        })
        .collect();
    for (i, r) in old.rollouts.iter().enumerate() {
        if let Some(name) = r.name() {
            let kept = find(new, name);
            if new.index.is_some() && kept.is_none() {
                pairs.push((name.to_string(), Some(i), None));
            } else if new.index.is_none() {
                pairs.push((name.to_string(), Some(i), kept));
            }
        }
    }
    let mut out = RolloutsDiff {
        rollouts: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: Vec::new(),
        unclaimed: None,
        notes: Vec::new(),
        verdict: String::new(),
    };
    let unclaimed = new.index.as_ref().map(|_| Unclaimed::of(new));
    if let (None, Some(unclaimed)) = (&old.index, &unclaimed) {
        out.notes.push(format!("OLD has no `rollouts`: its one rollout took every request; each rollout is compared with it, and a request none of them takes now goes to no rollout ({})", unclaimed.short()));
    }
    if new.index.is_none() {
        out.notes.push("NEW has no `rollouts`: its one rollout takes every request, those no rollout took too; each rollout is compared with it".into());
    }
    out.unclaimed = unclaimed;
    // Probe hosts are picked clear of both configs' exact names.
    let mut listed = Patterns::of(old).map(|p| p.listed).unwrap_or_default();
    for pattern in Patterns::of(new).map(|p| p.listed).unwrap_or_default() {
        if !listed.contains(&pattern) {
            listed.push(pattern);
        }
    }
    for (name, i, j) in pairs {
        let o = i.and_then(|i| Some((i, old.rollouts.get(i)?)));
        let n = j.and_then(|j| Some((j, new.rollouts.get(j)?)));
        let mut change = RolloutChange {
            name: name.clone(),
            status: "changed",
            old: o.map(|(i, r)| Place::of(i, r)),
            new: n.map(|(j, r)| Place::of(j, r)),
            elsewhere: None,
            diff: None,
        };
        match (o, n) {
            (None, _) => {
                change.status = "added";
                change.elsewhere = j.map(|j| Elsewhere::find(new, j, old, &listed));
                out.added.push(name);
            }
            (_, None) => {
                change.status = "removed";
                change.elsewhere = i.map(|i| Elsewhere::find(old, i, new, &listed));
                out.removed.push(name);
            }
            (Some((_, a)), Some((_, b)))
                if a.fingerprint() == b.fingerprint() && same_scope(a, b) =>
            {
                change.status = "unchanged";
                out.unchanged.push(name);
            }
            (Some((i, a)), Some((j, b))) => {
                let rules = (sides.0.rules(i), sides.1.rules(j));
                let mut diff = analyse(a, b, rules, at, allow_backward);
                if let (Some(was), Some(is)) = (&a.scope, &b.scope) {
                    if !same_scope(a, b) {
                        diff.notes.push(format!(
                            "its scope changes (hosts {}; {} -> hosts {}; {}): requests to a host or path it takes or leaves change rollout (or go to none), and their users are bucketed by the rollout that takes them",
                            was.hosts.join(", "),
                            paths_text(&was.path_prefixes),
                            is.hosts.join(", "),
                            paths_text(&is.path_prefixes),
                        ));
                    }
                }
                change.diff = Some(diff);
                out.changed.push(name);
            }
        }
        out.rollouts.push(change);
    }
    out.verdict = overall_verdict(&out.rollouts, allow_backward);
    out
}

/// Whether two rollouts take the same requests: the same host patterns and
/// path prefixes, in any order. The fingerprint leaves the scope out (a
/// rollout that only takes other hosts keeps its guard's state), but who
/// the rollout's users are changes with it.
fn same_scope(a: &Rollout, b: &Rollout) -> bool {
    fn sorted(list: &[String]) -> Vec<&String> {
        let mut out: Vec<&String> = list.iter().collect();
        out.sort();
        out
    }
    match (&a.scope, &b.scope) {
        (Some(a), Some(b)) => {
            sorted(&a.hosts) == sorted(&b.hosts)
                && sorted(&a.path_prefixes) == sorted(&b.path_prefixes)
        }
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The verdict over every changed rollout: any backward move, any salt
/// changed, or forward only.
fn overall_verdict(rollouts: &[RolloutChange], allow_backward: bool) -> String {
    let diffs = || {
        rollouts
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.diff.as_ref()?)))
    };
    let backward: Vec<String> = diffs()
        .filter(|(_, d)| !d.backward.is_empty())
        .map(|(name, d)| format!("{name} ({})", total(&d.backward)))
        .collect();
    let salted: Vec<&str> = diffs()
        .filter(|(_, d)| d.salt_changed)
        .map(|(name, _)| name)
        .collect();
    let mut parts = Vec::new();
    match (backward.is_empty(), allow_backward) {
        (true, _) => {}
        (false, false) => parts.push(format!(
            "BACKWARD: users move to an earlier-listed version in rollout {}; pass --allow-backward if this is a rollback",
            backward.join(", ")
        )),
        (false, true) => parts.push(format!(
            "backward allowed: users move to an earlier-listed version in rollout {}",
            backward.join(", ")
        )),
    }
    if !salted.is_empty() {
        parts.push(format!(
            "salt changed in rollout {}: the ramp guarantee does not carry across this change for its users",
            salted.join(", ")
        ));
    }
    if parts.is_empty() {
        parts
            .push("forward only: no user of any rollout moves to an earlier-listed version".into());
    }
    parts.join("; ")
}

/// Who moves between versions when `new` replaces `old`.
fn analyse(
    old: &Rollout,
    new: &Rollout,
    rules: (Vec<Value>, Vec<Value>),
    at: &At,
    allow_backward: bool,
) -> RolloutDiff {
    let mut report = RolloutDiff {
        salt_changed: old.salt != new.salt,
        moves: Vec::new(),
        stays: Vec::new(),
        backward: Vec::new(),
        rules: rule_changes(&rules.0, &rules.1),
        notes: notes(old, new, at),
        verdict: String::new(),
    };
    let same_salt = !report.salt_changed;
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
                if same_salt && backward(old, new, &from.name, &to.name) {
                    report.backward.push(m.clone());
                }
                report.moves.push(m);
            }
        }
    }
    report.verdict = verdict(&report, old, allow_backward);
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

fn verdict(r: &RolloutDiff, old: &Rollout, allow_backward: bool) -> String {
    if r.salt_changed {
        return "salt changed: the ramp guarantee does not carry across this change".into();
    }
    match (r.backward.is_empty(), allow_backward) {
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
fn rule_changes(before: &[Value], after: &[Value]) -> RuleChanges {
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
        match find(before, &name(rule)).and_then(|i| Some((i, before.get(i)?))) {
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
    for rule in before {
        if find(after, &name(rule)).is_none() {
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

impl RolloutDiff {
    /// What a person reads, one line each; `salts` are OLD's and NEW's.
    fn lines(&self, salts: (&str, &str)) -> Vec<String> {
        let mut out = Vec::new();
        if self.salt_changed {
            out.push(format!(
                "every user is drawn again (salt {:?} -> {:?}): the shares below are those of independent draws",
                salts.0, salts.1
            ));
        }
        for m in &self.moves {
            out.push(format!("{} -> {}: {} of users", m.from, m.to, m.percent));
        }
        if self.moves.is_empty() {
            out.push("no user moves".into());
        }
        let stays: Vec<String> = self
            .stays
            .iter()
            .map(|m| format!("{} {}", m.from, m.percent))
            .collect();
        out.push(format!(
            "stay: {}",
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
                out.push(format!(
                    "rule {what}: {rule} (its share of traffic is not knowable)"
                ));
            }
        }
        for note in &self.notes {
            out.push(format!("note: {note}"));
        }
        out.push(self.verdict.clone());
        out
    }
}

impl RolloutsDiff {
    fn text(&self) -> String {
        let mut out = String::new();
        for r in &self.rollouts {
            let place = |p: &Option<Place>| p.as_ref().map(Place::text).unwrap_or_default();
            match (r.status, &r.diff) {
                ("changed", Some(diff)) => {
                    let hosts = |p: &Option<Place>| p.as_ref().is_some_and(|p| p.hosts.is_some());
                    let against = match (hosts(&r.old), hosts(&r.new)) {
                        (false, _) => " (against OLD's one rollout, which took every request)",
                        (_, false) => " (against NEW's one rollout, which takes every request)",
                        _ => "",
                    };
                    out.push_str(&format!("rollout {}: changed{against}\n", r.name));
                    let salt =
                        |p: &Option<Place>| p.as_ref().map(|p| p.salt.clone()).unwrap_or_default();
                    let (old_salt, new_salt) = (salt(&r.old), salt(&r.new));
                    for line in diff.lines((&old_salt, &new_salt)) {
                        out.push_str(&format!("  {line}\n"));
                    }
                }
                ("added", _) => {
                    let before = match &r.elsewhere {
                        Some(e) if !e.rollouts.is_empty() => format!(
                            ": its requests went to {} before; their users now get its versions, by its salt and weights",
                            e.text()
                        ),
                        _ => ": no rollout took its requests before".into(),
                    };
                    out.push_str(&format!(
                        "rollout {}: added ({}){before}\n",
                        r.name,
                        place(&r.new)
                    ));
                }
                ("removed", _) => {
                    let unclaimed = self.unclaimed.as_ref().map(Unclaimed::short);
                    let after = match (&r.elsewhere, unclaimed) {
                        (Some(e), _) if !e.rollouts.is_empty() => format!(
                            ": its requests go to {} now; their users get the versions of the rollout that takes them",
                            e.text()
                        ),
                        (_, Some(unclaimed)) => {
                            format!(": no rollout takes its requests now ({unclaimed})")
                        }
                        (_, None) => ": no rollout takes its requests now".into(),
                    };
                    out.push_str(&format!(
                        "rollout {}: removed ({}){after}\n",
                        r.name,
                        place(&r.old)
                    ));
                }
                (status, _) => out.push_str(&format!("rollout {}: {status}\n", r.name)),
            }
        }
        let counts: Vec<String> = [
            ("changed", &self.changed),
            ("unchanged", &self.unchanged),
            ("added", &self.added),
            ("removed", &self.removed),
        ]
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| format!("{} {what} ({})", names.len(), names.join(", ")))
        .collect();
        out.push_str(&format!("rollouts: {}\n", counts.join(", ")));
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out.push_str(&self.verdict);
        out.push('\n');
        out
    }

    fn failed(&self, allow_backward: bool) -> bool {
        !allow_backward
            && self
                .rollouts
                .iter()
                .filter_map(|r| r.diff.as_ref())
                .any(|d| !d.backward.is_empty())
    }
}

impl Report for DiffReport {
    fn text(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{e}\n");
        }
        match (&self.one, &self.many) {
            (Some(one), _) => {
                let salt = |s: &Side| s.salt.clone().unwrap_or_default();
                let (old, new) = (salt(&self.old), salt(&self.new));
                one.lines((&old, &new))
                    .into_iter()
                    .map(|l| l + "\n")
                    .collect()
            }
            (None, Some(many)) => many.text(),
            (None, None) => String::new(),
        }
    }

    fn failed(&self) -> bool {
        self.error.is_some()
            || self
                .one
                .as_ref()
                .is_some_and(|d| !d.backward.is_empty() && !self.allow_backward)
            || self
                .many
                .as_ref()
                .is_some_and(|m| m.failed(self.allow_backward))
    }
}
