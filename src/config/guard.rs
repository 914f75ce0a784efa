//! A rollout's `guard`: the thresholds that send a failing canary's users
//! back to the stable version (the judging itself is `crate::guard`'s), and
//! the mesh verdict it may read from Prometheus (`crate::mesh`).

use super::raw::{GrpcCode, Number, Object, RawGuard, RawMesh, WholeNumber};
use super::{decimal, err, ConfigError};
use crate::grpc;

/// The guard (see `guard.rs`): when a canary version's responses breach a
/// threshold over the window (the local verdict), or Prometheus names it
/// failing across the mesh (the mesh verdict), requests no rule pins go to
/// the stable version until a new config is pushed.
#[derive(Debug, Clone)]
pub struct Guard {
    pub window_ms: u64,
    pub min_requests: u32,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_above_stable: Option<f64>,
    /// Responses slower than this many ms count as slow: for
    /// `max_slow_rate`, and in the slow-response counters the mesh's rules
    /// read.
    pub slow_response_ms: Option<u32>,
    /// The largest share of slow responses a canary may have.
    pub max_slow_rate: Option<f64>,
    /// The gRPC status codes that count as errors: bit `c` for code `c`.
    pub grpc_error_codes: u32,
    pub mesh: Option<Mesh>,
}

impl Guard {
    /// The guard judges this proxy's own responses (it has a threshold);
    /// without one it follows the mesh verdict only.
    pub fn judges_locally(&self) -> bool {
        self.max_error_rate.is_some()
            || self.max_error_rate_above_stable.is_some()
            || self.max_slow_rate.is_some()
    }
}

/// `guard.mesh`: where Prometheus is, and the query whose series name the
/// failing canaries across the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// The Envoy cluster that reaches Prometheus (Istio:
    /// `outbound|9090||prometheus.istio-system.svc.cluster.local`).
    pub cluster: String,
    /// Its `:authority`.
    pub authority: String,
    /// The PromQL of the instant query.
    pub query: String,
    /// `/api/v1/query?query=<the query, percent-encoded>`, built once.
    pub path: String,
    /// The label of a series that names the version.
    pub version_label: String,
    pub poll_ms: u64,
    pub timeout_ms: u64,
}

pub const DEFAULT_MESH_POLL_SECONDS: u32 = 5;
pub const DEFAULT_MESH_TIMEOUT_MS: u32 = 1000;
pub const MAX_MESH_POLL_SECONDS: u32 = 3600;
pub const MAX_MESH_QUERY_LEN: usize = 4096;
/// Envoy clusters a call must never go to, by name: Istio's passthrough
/// clusters are ORIGINAL_DST, and an HTTP call from a Wasm filter to one has
/// crashed Envoy (envoy#14878); so are an ambient waypoint's HBONE clusters
/// (`connect_originate`, `inner_connect_originate`, `outer_connect_originate`,
/// `forward_inner_connect`, Istio's pilot/pkg/networking/core/waypoint.go),
/// and `encap` and `main_internal` lead into the waypoint's own internal
/// listeners (its tunnel and its inbound). `AllowAnyDynamicDNSCluster` (mesh mode
/// ALLOW_ANY_DYNAMIC_DNS) is a dynamic forward proxy: it resolves hosts the
/// HTTP filter of the request path found, which a call made from the tick
/// never passes. The black hole answers nothing.
const REFUSED_CLUSTERS: &[&str] = &[
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
    "BlackHoleCluster",
    "AllowAnyDynamicDNSCluster",
    "connect_originate",
    "inner_connect_originate",
    "outer_connect_originate",
    "forward_inner_connect",
    "encap",
    "main_internal",
];
/// Istio's inbound clusters (`inbound|<port>||`, `inbound|<port>|<name>|`)
/// lead to the pod's own workload, and since Istio 1.10 are ORIGINAL_DST.
/// A waypoint's `inbound-vip|...` clusters are not among them: they lead to a
/// service the waypoint serves, which may be Prometheus.
const REFUSED_CLUSTER_PREFIX: &str = "inbound|";

/// Why a call may not go to `cluster`, if it may not.
fn refused_cluster(cluster: &str) -> Option<&'static str> {
    if REFUSED_CLUSTERS.contains(&cluster) {
        Some("original-destination, dynamic forward proxy, tunnel or black hole")
    } else if cluster.starts_with(REFUSED_CLUSTER_PREFIX) {
        Some("Istio's inbound cluster: original-destination, to the pod's own workload")
    } else {
        None
    }
}

/// The gRPC codes counted as errors by default: the ones Envoy maps to HTTP
/// 5xx, that is the ones that mean the server failed (UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
pub const DEFAULT_GRPC_ERROR_CODES: u32 = 1 << 2 | 1 << 4 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15;

pub const MAX_GUARD_WINDOW_SECONDS: u32 = 3600;

fn rate(field: &str, v: Option<Number>) -> Result<Option<f64>, ConfigError> {
    match v {
        Some(Number(r)) if !(0.0..=1.0).contains(&r) => err(
            field,
            format!("{} is not a share between 0 and 1", decimal(r)),
        ),
        other => Ok(other.map(|Number(r)| r)),
    }
}

#[inline(never)]
pub(super) fn validate(g: RawGuard, n_versions: usize) -> Result<Guard, ConfigError> {
    if n_versions < 2 {
        return err(
            "guard",
            "needs at least two versions: it guards canaries against the first (stable) one",
        );
    }
    let window = g.window_seconds.map_or(60, |WholeNumber(n)| n);
    if !(1..=MAX_GUARD_WINDOW_SECONDS).contains(&window) {
        return err(
            "guard.windowSeconds",
            format!("must be 1 to {MAX_GUARD_WINDOW_SECONDS}"),
        );
    }
    let min_requests = g.min_requests.map_or(20, |WholeNumber(n)| n);
    if min_requests == 0 {
        return err("guard.minRequests", "must be at least 1");
    }
    let max_error_rate = rate("guard.maxErrorRate", g.max_error_rate)?;
    let max_error_rate_above_stable = rate(
        "guard.maxErrorRateAboveStable",
        g.max_error_rate_above_stable,
    )?;
    let mesh = match g.mesh {
        Some(Object(m)) => Some(validate_mesh(m)?),
        None => None,
    };
    let slow_response_ms = g.slow_response_ms.map(|WholeNumber(n)| n);
    let max_slow_rate = rate("guard.maxSlowRate", g.max_slow_rate)?;
    match (slow_response_ms, max_slow_rate) {
        (Some(0), _) => return err("guard.slowResponseMs", "must be at least 1"),
        (None, Some(_)) => return err("guard.slowResponseMs", "is required with maxSlowRate"),
        // Without a local bound, slow responses are still counted: the
        // mesh's rules read the counters.
        (Some(_), None) if mesh.is_none() => {
            return err(
                "guard.maxSlowRate",
                "is required with slowResponseMs (or guard.mesh, whose rules read the slow responses counted)",
            )
        }
        _ => {}
    }
    if max_error_rate.is_none()
        && max_error_rate_above_stable.is_none()
        && max_slow_rate.is_none()
        && mesh.is_none()
    {
        return err(
            "guard",
            "needs a threshold (maxErrorRate, maxErrorRateAboveStable, or slowResponseMs with maxSlowRate) or a mesh verdict (mesh)",
        );
    }
    let grpc_error_codes = match g.grpc_error_codes {
        None => DEFAULT_GRPC_ERROR_CODES,
        Some(codes) => {
            let mut bits = 0u32;
            for (i, GrpcCode(code)) in codes.into_iter().enumerate() {
                let field = format!("guard.grpcErrorCodes[{i}]");
                if code == 0 {
                    return err(field, "OK is a success; it cannot count as an error");
                }
                if bits & 1 << code != 0 {
                    let name = grpc::CODES.get(usize::from(code)).copied().unwrap_or("?");
                    return err(field, format!("{name} is listed twice"));
                }
                bits |= 1 << code;
            }
            bits
        }
    };
    Ok(Guard {
        window_ms: u64::from(window) * 1000,
        min_requests,
        max_error_rate,
        max_error_rate_above_stable,
        slow_response_ms,
        max_slow_rate,
        grpc_error_codes,
        mesh,
    })
}

/// `guard.mesh`.
fn validate_mesh(m: RawMesh) -> Result<Mesh, ConfigError> {
    let cluster = m.cluster;
    if cluster.is_empty() || cluster.len() > 512 || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return err(
            "guard.mesh.cluster",
            "must be an Envoy cluster name (1 to 512 visible ASCII characters)",
        );
    }
    if let Some(why) = refused_cluster(&cluster) {
        return err(
            "guard.mesh.cluster",
            format!(
                "{cluster:?} is not a cluster a call may go to ({why}); \
                 name Prometheus' own, such as outbound|9090||prometheus.istio-system.svc.cluster.local"
            ),
        );
    }
    let authority = m.authority;
    if authority.is_empty()
        || authority.len() > 255
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
    {
        return err(
            "guard.mesh.authority",
            format!("{authority:?} is not a host[:port]"),
        );
    }
    let query = m.query;
    if query.trim().is_empty() {
        return err("guard.mesh.query", "is empty");
    }
    if query.len() > MAX_MESH_QUERY_LEN {
        return err(
            "guard.mesh.query",
            format!("is longer than {MAX_MESH_QUERY_LEN} bytes"),
        );
    }
    let version_label = m.version_label.unwrap_or_else(|| "version".into());
    let mut chars = version_label.bytes();
    let label_ok = chars
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && chars.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && version_label.len() <= 128;
    if !label_ok {
        return err(
            "guard.mesh.versionLabel",
            format!("{version_label:?} is not a Prometheus label name"),
        );
    }
    let poll_seconds = m
        .poll_seconds
        .map_or(DEFAULT_MESH_POLL_SECONDS, |WholeNumber(n)| n);
    if !(1..=MAX_MESH_POLL_SECONDS).contains(&poll_seconds) {
        return err(
            "guard.mesh.pollSeconds",
            format!("must be 1 to {MAX_MESH_POLL_SECONDS}"),
        );
    }
    let timeout_ms = m
        .timeout_ms
        .map_or(DEFAULT_MESH_TIMEOUT_MS, |WholeNumber(n)| n);
    // One call ends before the next begins: a poll never piles up.
    if timeout_ms == 0 || u64::from(timeout_ms) >= u64::from(poll_seconds) * 1000 {
        return err(
            "guard.mesh.timeoutMs",
            "must be at least 1 and shorter than pollSeconds",
        );
    }
    let path = format!(
        "/api/v1/query?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", &query)
            .finish()
    );
    Ok(Mesh {
        cluster,
        authority,
        query,
        path,
        version_label,
        poll_ms: u64::from(poll_seconds) * 1000,
        timeout_ms: u64::from(timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::refused_cluster;
    use crate::config::Config;

    fn mesh_cluster_error(cluster: &str) -> Option<String> {
        let json = format!(
            r#"{{"versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}],
               "guard":{{"mesh":{{"cluster":{cluster:?},"authority":"prometheus:9090","query":"q"}}}}}}"#
        );
        match Config::from_json(json.as_bytes()) {
            Ok(_) => None,
            Err(e) => {
                assert_eq!(e.field, "guard.mesh.cluster", "{e}");
                Some(e.to_string())
            }
        }
    }

    #[test]
    fn istio_clusters_a_call_must_not_reach_are_refused() {
        for cluster in [
            "PassthroughCluster",
            "InboundPassthroughClusterIpv4",
            "BlackHoleCluster",
            "AllowAnyDynamicDNSCluster",
            "connect_originate",
            "inner_connect_originate",
            "outer_connect_originate",
            "forward_inner_connect",
            "encap",
            "main_internal",
            "inbound|8080||",
            "inbound|9090|http|prometheus.istio-system.svc.cluster.local",
        ] {
            let e = mesh_cluster_error(cluster).unwrap_or_else(|| panic!("{cluster} was accepted"));
            assert!(e.contains("is not a cluster a call may go to"), "{e}");
            assert!(
                e.contains("outbound|9090||prometheus.istio-system.svc.cluster.local"),
                "{e}"
            );
        }
        assert!(mesh_cluster_error("inbound|8080||")
            .is_some_and(|e| e.contains("Istio's inbound cluster")));
    }

    #[test]
    fn clusters_that_reach_prometheus_are_taken() {
        for cluster in [
            "outbound|9090||prometheus.istio-system.svc.cluster.local",
            "canary-selector-prometheus",
            "prometheus",
            // Only the names themselves are refused, not names that contain them.
            "outbound|9090||inbound.example.com",
            "my-connect_originate",
            "Encap",
            // A waypoint's cluster for a service it serves.
            "inbound-vip|9090|http|prometheus.istio-system.svc.cluster.local",
        ] {
            assert_eq!(refused_cluster(cluster), None, "{cluster}");
            assert_eq!(mesh_cluster_error(cluster), None, "{cluster}");
        }
    }
}
