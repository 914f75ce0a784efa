//! A rollout's `guard`: the thresholds that send a failing canary's users
//! back to the stable version (the judging itself is `crate::guard`'s).

use super::raw::{GrpcCode, Number, RawGuard, WholeNumber};
use super::{decimal, err, ConfigError};
use crate::guard::GRPC_CODES;

/// The guard (see `guard.rs`): when a canary version's responses breach a
/// threshold over the window, requests no rule pins go to the stable version
/// until a new config is pushed.
#[derive(Debug, Clone)]
pub struct Guard {
    pub window_ms: u64,
    pub min_requests: u32,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_above_stable: Option<f64>,
    /// (bound in ms, largest allowed share of responses slower than it).
    pub slow: Option<(u32, f64)>,
    /// The gRPC status codes that count as errors: bit `c` for code `c`.
    pub grpc_error_codes: u32,
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
    let slow = match (
        g.slow_response_ms.map(|WholeNumber(n)| n),
        rate("guard.maxSlowRate", g.max_slow_rate)?,
    ) {
        (Some(ms), Some(max)) if ms > 0 => Some((ms, max)),
        (Some(_), Some(_)) => return err("guard.slowResponseMs", "must be at least 1"),
        (None, None) => None,
        (Some(_), None) => return err("guard.maxSlowRate", "is required with slowResponseMs"),
        (None, Some(_)) => return err("guard.slowResponseMs", "is required with maxSlowRate"),
    };
    if max_error_rate.is_none() && max_error_rate_above_stable.is_none() && slow.is_none() {
        return err(
            "guard",
            "needs a threshold: maxErrorRate, maxErrorRateAboveStable, or slowResponseMs with maxSlowRate",
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
                    let name = GRPC_CODES.get(usize::from(code)).copied().unwrap_or("?");
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
        slow,
        grpc_error_codes,
    })
}
