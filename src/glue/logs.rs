//! The filter's log lines: what a push changed, a trip, a poll that failed
//! or was partly ignored, a rejected config. One line each, whatever a
//! config holds (version, rule and rollout names are validated visible
//! ASCII; model names and body field names hold no control character).

use crate::config::{decimal, ConfigError, Guard, Rollout};
use crate::guard::{describe_failures, Trip};
use crate::mesh::{Poll, PollFailure};
use crate::shared::News;

fn of(rollout: &Rollout) -> String {
    rollout
        .name()
        .map(|n| format!(" of rollout {n}"))
        .unwrap_or_default()
}

fn version(rollout: &Rollout, i: usize) -> &str {
    rollout.versions.get(i).map_or("?", |v| v.name.as_str())
}

/// What a push did to a rollout of a config with `rollouts` (a config
/// without them has only its `config accepted` line).
pub fn pushed(rollout: &Rollout, news: News, scoped: bool) -> Option<String> {
    let name = rollout.name().filter(|_| scoped)?;
    let summary = rollout.summary();
    Some(match news {
        News::Seen => return None,
        News::New => format!("rollout {name} accepted: {summary}"),
        News::Restarted => format!(
            "rollout {name} restarted: what it decides changed, so its guard starts afresh: {summary}"
        ),
        News::Moved => {
            let (hosts, prefixes, models) = rollout
                .scope
                .as_ref()
                .map(|s| (s.hosts.join(" "), s.path_prefixes.join(" "), s.models.join(" ")))
                .unwrap_or_default();
            let prefixes = if prefixes.is_empty() {
                "every path".to_string()
            } else {
                prefixes
            };
            let models = if models.is_empty() {
                "any model".to_string()
            } else {
                models
            };
            format!(
                "rollout {name} moved: now on hosts {hosts}, paths {prefixes}, models {models}; what it decides is unchanged, so its guard window, trips and schedule go on"
            )
        }
    })
}

/// A push let go of what the rollout's guard held back.
pub fn guard_reset(rollout: &Rollout) -> String {
    format!(
        "guard reset{}: a new config was pushed; canary versions get their share again",
        of(rollout)
    )
}

/// The local verdict tripped.
pub fn tripped(rollout: &Rollout, config: &Guard, t: &Trip) -> String {
    let name = |i: usize| version(rollout, i);
    let failed = match describe_failures(t.counts.failures) {
        kinds if kinds.is_empty() => kinds,
        kinds => format!("; {kinds}"),
    };
    format!(
        "guard tripped{}: {} {} over the last {}s: {} of {} responses failed (rate {}{}), {} slow; \
         stable {}: {} of {} failed (rate {}). Every request no rule pins now goes to {} \
         until a new config is pushed",
        of(rollout),
        name(t.version),
        t.cause,
        config.window_ms / 1000,
        t.counts.errors,
        t.counts.requests,
        decimal(t.counts.error_rate()),
        failed,
        t.counts.slow,
        name(0),
        t.stable.errors,
        t.stable.requests,
        decimal(t.stable.error_rate()),
        name(0),
    )
}

/// The mesh verdict named versions (`bits`) failing.
pub fn mesh_tripped(rollout: &Rollout, query: &str, bits: u32) -> String {
    let names: Vec<&str> = (1..rollout.versions.len().min(32))
        .filter(|&v| bits >> v & 1 == 1)
        .map(|v| version(rollout, v))
        .collect();
    format!(
        "guard tripped{} by the mesh verdict: Prometheus names {} failing ({query}). Every request no rule \
         pins to {} now goes to {} until a new config is pushed",
        of(rollout),
        names.join(", "),
        names.join(", "),
        version(rollout, 0),
    )
}

pub fn poll_failed(poll: &Poll, failure: PollFailure) -> String {
    format!(
        "mesh verdict: the poll of {} (cluster {}) failed ({}); the last verdict holds",
        poll.authority,
        poll.cluster,
        failure.name()
    )
}

pub fn series_ignored(poll: &Poll, n: u64) -> String {
    format!(
        "mesh verdict: {n} series of the answer of {} name no rollout polling it, or no version of the rollout they apply to; ignored",
        poll.authority
    )
}

pub fn values_ignored(poll: &Poll, n: u64) -> String {
    format!(
        "mesh verdict: {n} series of the answer of {} have a value that is negative, NaN or infinite; ignored \
         (a failing version's series must be positive: the shipped rules give 1)",
        poll.authority
    )
}

/// A config rejected; `serving` summarises the one that keeps serving.
pub fn rejected(e: &ConfigError, serving: Option<&str>) -> String {
    match serving {
        Some(summary) => {
            format!("config rejected: {e}. The config accepted before keeps serving: {summary}")
        }
        None => format!("config rejected: {e}"),
    }
}
