//! What the filter does to a stream, written against a narrow [`Host`] trait
//! so it runs natively in tests with a fake host. The proxy-wasm glue
//! (`glue.rs`) implements `Host` with SDK calls and does nothing else.

use std::fmt::Write as _;

use crate::config::{Config, Rollout};
use crate::decision::{decide, AnonymousId, Decision, Entropy, Live, Reason, Request};
use crate::grpc;
use crate::guard::Failure;

/// The host operations the filter needs on the request path.
pub trait Host: Request {
    /// Replaces every value of a request header with `value`. The router
    /// then picks the route again: Envoy clears its route cache when a
    /// module of ABI 0.2.1 (the SDK's) changes request headers.
    fn set_request_header(&mut self, name: &str, value: &[u8]);
    /// Removes every value of a request header, if the request has one.
    fn remove_request_header(&mut self, name: &str);
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

/// A response the guard counts (traffic a rule pinned never is), and the
/// response counters with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub version: usize,
    pub reason: Reason,
    /// Why it failed, if it did.
    pub failure: Option<Failure>,
    /// Slower than the guard's `slowResponseMs` (never without one).
    pub slow: bool,
}

/// When the guard can judge a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judging {
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
    pub reason: Reason,
    pub slow: bool,
}

impl AwaitingTrailers {
    fn judged(&self, failure: Option<Failure>) -> Outcome {
        Outcome {
            version: self.version,
            reason: self.reason,
            failure,
            slow: self.slow,
        }
    }
}

/// The failure a `grpc-status` value means, under the guard's error codes.
fn grpc_failure(rollout: &Rollout, status: &[u8]) -> Option<Failure> {
    let code = grpc::code(status);
    let counted = rollout
        .guard
        .as_ref()
        .is_some_and(|g| g.grpc_error_codes & 1 << code != 0);
    counted.then_some(Failure::Grpc(code))
}

/// Decides the version, writes the routing header (replacing whatever the
/// client sent) and counts. Returns the work left for the response, if any:
/// a stream the config gives nothing to do there costs no more than Envoy's
/// call of the exported callback.
pub fn on_request_headers(
    rollout: &Rollout,
    host: &mut impl Host,
    rng: &mut impl Entropy,
    live: Live,
) -> (Decision, Option<Pending>) {
    let d = decide(rollout, host, rng, live);
    let pending = apply(rollout, &d, host, live);
    (d, pending)
}

/// Carries out decision `d`: writes the routing header (replacing whatever
/// the client sent), removes the other rollouts' and counts it. Returns the
/// work left for the response.
pub fn apply(rollout: &Rollout, d: &Decision, host: &mut impl Host, live: Live) -> Option<Pending> {
    let name = rollout
        .versions
        .get(d.version)
        .map_or(&b""[..], |v| v.name.as_bytes());
    host.set_request_header(&rollout.routing_header, name);
    for other in &rollout.foreign_routing_headers {
        host.remove_request_header(other);
    }
    host.count(d.version, d.reason);
    let respond = rollout.response_header.is_some()
        || rollout.response_reason_header.is_some()
        || rollout.guard.is_some()
        || d.new_id.is_some();
    let timed = rollout
        .guard
        .as_ref()
        .is_some_and(|g| g.slow_response_ms.is_some());
    respond.then_some(Pending {
        version: d.version,
        reason: d.reason,
        new_id: d.new_id,
        started_ms: timed.then_some(live.now_ms),
    })
}

/// A request no rollout of `config` takes: the routing headers its rollouts
/// write are removed (unless `passUnclaimedRoutingHeaders`), so that a
/// client cannot pick a version by a host or path spelling no rollout lists;
/// nothing else changes.
pub fn on_unclaimed_request(config: &Config, host: &mut impl Host) {
    for name in &config.unclaimed_removes {
        host.remove_request_header(name);
    }
}

/// Echoes the decision, sends the anonymous cookie, and says when the guard,
/// if it is on, can judge the response.
pub fn on_response_headers(
    rollout: &Rollout,
    pending: &Pending,
    host: &mut impl ResponseHost,
) -> Option<Judging> {
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
    let slow = match (guard.slow_response_ms, pending.started_ms) {
        (Some(bound_ms), Some(started)) => {
            host.now_ms().saturating_sub(started) > i64::from(bound_ms)
        }
        _ => false,
    };
    let awaiting = AwaitingTrailers {
        version: pending.version,
        reason: pending.reason,
        slow,
    };
    // A gRPC call fails in its status, not its HTTP status (200 either way).
    if host
        .response_header("content-type")
        .is_some_and(|t| grpc::is_grpc(&t))
    {
        return Some(match host.response_header("grpc-status") {
            Some(status) => Judging::Now(awaiting.judged(grpc_failure(rollout, &status))),
            None => Judging::AtTrailers(awaiting),
        });
    }
    let status = host.response_header(":status");
    let error = status
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
        .is_some_and(|s| (500..600).contains(&s));
    Some(Judging::Now(
        awaiting.judged(error.then_some(Failure::Http5xx)),
    ))
}

/// Judges a gRPC response by the `grpc-status` of its trailers; none there
/// is a failure too.
pub fn on_response_trailers(
    rollout: &Rollout,
    awaiting: &AwaitingTrailers,
    grpc_status: Option<&[u8]>,
) -> Outcome {
    awaiting.judged(match grpc_status {
        Some(status) => grpc_failure(rollout, status),
        None => Some(Failure::NoGrpcStatus),
    })
}

/// A gRPC stream that ended with no `grpc-status` at all (reset, cut
/// short): the call failed.
pub fn on_stream_lost(awaiting: &AwaitingTrailers) -> Outcome {
    awaiting.judged(Some(Failure::NoGrpcStatus))
}

// ---------------------------------------------------------------------------
// Metrics.
// ---------------------------------------------------------------------------

/// The stat tags in the metrics' names, each written `<tag>=.=<value>;.;`:
/// Istio's encoding, which its `extraStatTags` setting turns into Prometheus
/// labels with the extractor `(<tag>=\.=(.*?);\.;)` per tag (Istio's
/// bootstrap template; `envoy/envoy.yaml` has the same six). `rollout` is
/// only in the names of a config that lists `rollouts`, `result` only in
/// the mesh verdict's poll counter.
pub const STAT_TAGS: [&str; 6] = [
    "plugin", "rollout", "version", "reason", "failure", "result",
];

/// The proxy-wasm metric names of one plugin, or of one rollout of it.
/// Envoy files them under `wasmcustom.`; with the tags extracted, its
/// Prometheus output drops that prefix and the tags, and the name left is
/// the one written last (`canary_selector_requests_total{plugin=
/// "models.canary-selector",rollout="iris",version="model-v2",
/// reason="sticky"}`). Istio's default stats inclusion keeps every name
/// starting with `wasm`, so they are all exported.
pub struct MetricNames {
    /// The tags every name starts with: the plugin's name (Istio:
    /// `<namespace>.<name>`) and the rollout's, if it has one.
    scope: String,
}

/// The tag-value framing ([`crate::config::STAT_TAG_FRAMING`]) and anything
/// but visible ASCII in a plugin name become `_`; Istio's plugin names
/// (Kubernetes names and a dot) have none.
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !crate::config::STAT_TAG_FRAMING.contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl MetricNames {
    /// The names of plugin `plugin`'s metrics; of its rollout `rollout`'s,
    /// for a config that lists `rollouts`.
    pub fn new(plugin: &str, rollout: Option<&str>) -> Self {
        let mut scope = format!("plugin=.={};.;", tag_value(plugin));
        if let Some(rollout) = rollout {
            let _ = write!(scope, "rollout=.={};.;", tag_value(rollout));
        }
        MetricNames { scope }
    }

    /// `plugin=.=<p>;.;` (and `rollout=.=<r>;.;`), then each `(tag,
    /// value)`, then the metric's own name. Tag values never hold the
    /// framing: version and rollout names are validated, reasons and failure
    /// kinds are our own words.
    fn name(&self, tags: &[(&str, &str)], metric: &str) -> String {
        let mut out = self.scope.clone();
        for (tag, value) in tags {
            let _ = write!(out, "{tag}=.={value};.;");
        }
        out.push_str(metric);
        out
    }

    fn by_decision(&self, version: &str, reason: Reason, metric: &str) -> String {
        self.name(&[("version", version), ("reason", reason.as_str())], metric)
    }

    /// Decisions (counter).
    pub fn requests(&self, version: &str, reason: Reason) -> String {
        self.by_decision(version, reason, "canary_selector_requests_total")
    }

    /// Responses the guard judged (counter).
    pub fn responses(&self, version: &str, reason: Reason) -> String {
        self.by_decision(version, reason, "canary_selector_responses_total")
    }

    /// Those of them that failed (counter).
    pub fn failed_responses(&self, version: &str, reason: Reason) -> String {
        self.by_decision(version, reason, "canary_selector_failed_responses_total")
    }

    /// Those slower than the guard's `slowResponseMs` (counter).
    pub fn slow_responses(&self, version: &str, reason: Reason) -> String {
        self.by_decision(version, reason, "canary_selector_slow_responses_total")
    }

    /// The failed responses by kind, a gRPC code name (`INTERNAL`),
    /// `no_grpc_status` or `http_5xx`: what a trip was made of (counter).
    pub fn failures(&self, version: &str, failure: Failure) -> String {
        self.name(
            &[("version", version), ("failure", failure.name())],
            "canary_selector_failures_total",
        )
    }

    /// The version's live weight in millionths of the users (gauge).
    pub fn weight(&self, version: &str) -> String {
        self.name(&[("version", version)], "canary_selector_weight_ppm")
    }

    /// 1 for the stable (first) version, 0 for the others (gauge).
    pub fn stable(&self, version: &str) -> String {
        self.name(&[("version", version)], "canary_selector_stable_version")
    }

    /// 1 while the guard holds traffic on stable (gauge).
    pub fn guard_tripped(&self) -> String {
        self.name(&[], "canary_selector_guard_tripped")
    }

    /// Trips, by the canary version that breached (counter).
    pub fn guard_trips(&self, version: &str) -> String {
        self.name(&[("version", version)], "canary_selector_guard_trips_total")
    }

    /// Requests no rollout of the config takes, their routing headers
    /// removed (counter; a plugin's, not a rollout's).
    pub fn no_rollout_requests(&self) -> String {
        self.name(&[], "canary_selector_no_rollout_requests_total")
    }

    /// The mesh verdict's polls of Prometheus by result: `ok`, or why it
    /// gave no verdict (`crate::mesh::PollFailure::name`) (counter; a
    /// plugin's).
    pub fn mesh_polls(&self, result: &str) -> String {
        self.name(&[("result", result)], "canary_selector_mesh_polls_total")
    }

    /// Series of a poll's answer the verdict did not use, by why
    /// (`unknown_rollout`, `unknown_version`, `bad_value`; counter; a
    /// plugin's).
    pub fn mesh_ignored_series(&self, reason: &str) -> String {
        self.name(
            &[("reason", reason)],
            "canary_selector_mesh_ignored_series_total",
        )
    }

    /// The responses the guard's window holds for a version, every worker's
    /// added up, as last judged (gauge): how close a canary is to
    /// `minRequests`.
    pub fn window_responses(&self, version: &str) -> String {
        self.name(
            &[("version", version)],
            "canary_selector_guard_window_responses",
        )
    }

    /// Those of them that failed (gauge).
    pub fn window_failed_responses(&self, version: &str) -> String {
        self.name(
            &[("version", version)],
            "canary_selector_guard_window_failed_responses",
        )
    }

    /// Requests whose model the filter needed from the body and did not
    /// learn, by why (`crate::plan::Unknown::as_str`; counter; a plugin's).
    pub fn model_unknown(&self, reason: &str) -> String {
        self.name(&[("reason", reason)], "canary_selector_model_unknown_total")
    }

    /// Request bodies the filter read (counter; a plugin's).
    pub fn bodies_read(&self) -> String {
        self.name(&[], "canary_selector_bodies_read_total")
    }

    /// Versions the mesh verdict tripped (counter; `guard_trips` counts the
    /// local guard's).
    pub fn mesh_trips(&self, version: &str) -> String {
        self.name(&[("version", version)], "canary_selector_mesh_trips_total")
    }
}

/// A weight (a percentage) in millionths, as the weight gauge shows it: the
/// finest step the README promises (0.001%) is 10.
pub fn weight_ppm(percent: f64) -> u64 {
    (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u64
}
