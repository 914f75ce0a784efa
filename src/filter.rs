//! What the filter does to a stream, written against a narrow [`Host`] trait
//! so it runs natively in tests with a fake host. The proxy-wasm glue
//! (`glue.rs`) implements `Host` with SDK calls and does nothing else.

use std::fmt::Write as _;

use crate::config::Rollout;
use crate::decision::{decide, AnonymousId, Decision, Entropy, Live, Reason, Request};
use crate::guard::{grpc_code, Failure};

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
    /// A response header's value (`:status`, `content-type`, `grpc-status`),
    /// when the guard judges the response.
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
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
    /// Why it failed, if it did.
    pub failure: Option<Failure>,
    pub slow: bool,
}

/// When the guard can judge a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At its headers: an HTTP response, or a gRPC reply whose status came
    /// in the headers (trailers-only, as Envoy's own replies are).
    Now(Outcome),
    /// A gRPC response whose status comes in the trailers: judged there by
    /// [`on_response_trailers`], or failed by [`on_stream_lost`] if the
    /// stream ends without them.
    AtTrailers(AwaitingTrailers),
}

/// A gRPC response waiting for its `grpc-status` trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwaitingTrailers {
    pub version: usize,
    pub slow: bool,
}

/// gRPC's content type, `application/grpc` with or without a `+suffix`
/// (`+proto`, `+json`) or parameters. Not gRPC-Web, whose status travels in
/// the body.
fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// The failure a `grpc-status` value means, under the guard's error codes.
fn grpc_failure(rollout: &Rollout, status: &[u8]) -> Option<Failure> {
    let code = grpc_code(status);
    let counted = rollout
        .guard
        .as_ref()
        .is_some_and(|g| g.grpc_error_codes & 1 << code != 0);
    counted.then_some(Failure::Grpc(code))
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

/// Echoes the decision, sends the anonymous cookie, and says when the guard,
/// if it is on, can judge the response.
pub fn on_response_headers(
    rollout: &Rollout,
    pending: &Pending,
    host: &mut impl ResponseHost,
) -> Option<Verdict> {
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
    let slow = match (guard.slow, pending.started_ms) {
        (Some((bound_ms, _)), Some(started)) => {
            host.now_ms().saturating_sub(started) > i64::from(bound_ms)
        }
        _ => false,
    };
    let version = pending.version;
    // A gRPC call fails in its status, not its HTTP status (200 either way).
    if host
        .response_header("content-type")
        .is_some_and(|t| is_grpc(&t))
    {
        return Some(match host.response_header("grpc-status") {
            Some(status) => Verdict::Now(Outcome {
                version,
                failure: grpc_failure(rollout, &status),
                slow,
            }),
            None => Verdict::AtTrailers(AwaitingTrailers { version, slow }),
        });
    }
    let status = host.response_header(":status");
    let error = status
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
        .is_some_and(|s| (500..600).contains(&s));
    Some(Verdict::Now(Outcome {
        version,
        failure: error.then_some(Failure::Http5xx),
        slow,
    }))
}

/// Judges a gRPC response by the `grpc-status` of its trailers; none there
/// is a failure too.
pub fn on_response_trailers(
    rollout: &Rollout,
    awaiting: &AwaitingTrailers,
    grpc_status: Option<&[u8]>,
) -> Outcome {
    Outcome {
        version: awaiting.version,
        failure: match grpc_status {
            Some(status) => grpc_failure(rollout, status),
            None => Some(Failure::NoGrpcStatus),
        },
        slow: awaiting.slow,
    }
}

/// A gRPC stream that ended with no `grpc-status` at all (reset, cut
/// short): the call failed.
pub fn on_stream_lost(awaiting: &AwaitingTrailers) -> Outcome {
    Outcome {
        version: awaiting.version,
        failure: Some(Failure::NoGrpcStatus),
        slow: awaiting.slow,
    }
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

/// The counter of the failures the guard saw for a version, by kind (a gRPC
/// code name, `no_grpc_status` or `http_5xx`): what a trip was made of.
pub fn failure_metric_name(version: &str, failure: Failure) -> String {
    format!(
        "canary_selector.guard.failures.{version}.{}",
        failure.name()
    )
}
