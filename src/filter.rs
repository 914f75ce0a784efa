//! What the filter does to a stream, written against a narrow [`Host`] trait
//! so it runs natively in tests with a fake host. The proxy-wasm glue
//! (`glue.rs`) implements `Host` with SDK calls and does nothing else.

use std::fmt::Write as _;

use crate::config::Rollout;
use crate::decision::{decide, AnonymousId, Decision, Entropy, Live, Reason, Request};

/// The host operations the filter needs on the request path.
pub trait Host: Request {
    /// Replaces every value of a request header with `value`. The router
    /// then picks the route again: Envoy clears its route cache when a
    /// module of ABI 0.2.1 (the SDK's) changes request headers.
    fn set_request_header(&mut self, name: &str, value: &[u8]);
    /// Counts one decision.
    fn count(&mut self, version: usize, reason: Reason);
}

/// The host operations needed when the response headers pass.
pub trait ResponseHost {
    fn set_response_header(&mut self, name: &str, value: &[u8]);
    fn add_response_header(&mut self, name: &str, value: &[u8]);
    /// The response's `:status`, when the guard needs it.
    fn status(&mut self) -> Option<u16>;
    /// Unix time in ms, when the guard times responses.
    fn now_ms(&mut self) -> i64;
}

/// What the response phase still has to do for a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub version: usize,
    pub reason: Reason,
    pub new_id: Option<AnonymousId>,
    /// When the request headers passed (Unix ms), if the guard times
    /// responses.
    pub started_ms: Option<i64>,
}

/// A response the guard counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub version: usize,
    pub error: bool,
    pub slow: bool,
}

/// Decides the version, writes the routing header (replacing whatever the
/// client sent) and counts. Returns the work left for the response,
/// if any.
pub fn on_request_headers(
    rollout: &Rollout,
    host: &mut impl Host,
    rng: &mut impl Entropy,
    live: Live,
) -> (Decision, Option<Pending>) {
    let d = decide(rollout, host, rng, live);
    let name = rollout
        .versions
        .get(d.version)
        .map_or(&b""[..], |v| v.name.as_bytes());
    host.set_request_header(&rollout.routing_header, name);
    host.count(d.version, d.reason);
    let respond = rollout.response_header.is_some()
        || rollout.response_reason_header.is_some()
        || rollout.guard.is_some()
        || d.new_id.is_some();
    let timed = rollout.guard.as_ref().is_some_and(|g| g.slow.is_some());
    let pending = respond.then_some(Pending {
        version: d.version,
        reason: d.reason,
        new_id: d.new_id,
        started_ms: timed.then_some(live.now_ms),
    });
    (d, pending)
}

/// Echoes the decision, sends the anonymous cookie, and returns what the
/// guard must count, if it is on.
pub fn on_response_headers(
    rollout: &Rollout,
    pending: &Pending,
    host: &mut impl ResponseHost,
) -> Option<Outcome> {
    if let Some(header) = &rollout.response_reason_header {
        host.set_response_header(header, pending.reason.as_str().as_bytes());
    }
    if let (Some(header), Some(v)) = (
        &rollout.response_header,
        rollout.versions.get(pending.version),
    ) {
        host.set_response_header(header, v.name.as_bytes());
    }
    if let (Some(id), Some(cookie)) = (&pending.new_id, &rollout.anonymous_cookie) {
        let mut value = String::with_capacity(cookie.name.len() + 96);
        value.push_str(&cookie.name);
        value.push('=');
        value.extend(id.as_bytes().iter().map(|&b| char::from(b)));
        let _ = write!(
            value,
            "; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
            cookie.max_age_seconds
        );
        if cookie.secure {
            value.push_str("; Secure");
        }
        host.add_response_header("set-cookie", value.as_bytes());
    }
    let guard = rollout.guard.as_ref()?;
    // The guard protects users: traffic a rule pins (testers debugging a
    // canary, perhaps at weight 0) is not counted.
    if pending.reason == Reason::Rule {
        return None;
    }
    let error = host.status().is_some_and(|s| (500..600).contains(&s));
    let slow = match (guard.slow, pending.started_ms) {
        (Some((bound_ms, _)), Some(started)) => {
            host.now_ms().saturating_sub(started) > i64::from(bound_ms)
        }
        _ => false,
    };
    Some(Outcome {
        version: pending.version,
        error,
        slow,
    })
}

/// The guard's trip counter and state gauge (1 while tripped).
pub const GUARD_TRIPS_METRIC: &str = "canary_selector.guard.trips";
pub const GUARD_TRIPPED_METRIC: &str = "canary_selector.guard.tripped";

/// The proxy-wasm metric name for a (version, reason) pair. Envoy files it
/// under `wasmcustom.`; its Prometheus output drops that prefix, giving
/// `canary_selector_requests_<version>_<reason>`. Istio's default stats
/// inclusion keeps every name starting with `wasm`, so these are exported.
pub fn metric_name(version: &str, reason: Reason) -> String {
    format!("canary_selector.requests.{version}.{}", reason.as_str())
}
