//! A rollout's `versions`: names, weights, and the slice of the 2^32 bucket
//! scale each weight gives.

use super::names;
use super::raw::{Number, Object, RawVersion};
use super::rollout::Version;
use super::{decimal, err, ConfigError, MAX_VERSIONS, MAX_VERSION_NAME_LEN, WEIGHT_SUM_TOLERANCE};

/// The versions and their slice thresholds.
#[inline(never)]
pub(super) fn validate(
    raw: Option<Vec<Object<RawVersion>>>,
) -> Result<(Vec<Version>, Vec<u64>), ConfigError> {
    let Some(raw) = raw else {
        return err("versions", "is required: list at least one version");
    };
    if raw.is_empty() {
        return err("versions", "must list at least one version");
    }
    if raw.len() > MAX_VERSIONS {
        return err(
            "versions",
            format!("lists more than {MAX_VERSIONS} versions"),
        );
    }
    let mut versions: Vec<Version> = Vec::with_capacity(raw.len());
    for (i, Object(v)) in raw.into_iter().enumerate() {
        let field = format!("versions[{i}]");
        let name = v.name;
        names::label(
            &format!("{field}.name"),
            &name,
            MAX_VERSION_NAME_LEN,
            versions.iter().map(|seen| seen.name.as_str()),
        )?;
        let Number(weight) = v.weight;
        if !weight.is_finite() || !(0.0..=100.0).contains(&weight) {
            return err(
                format!("{field}.weight"),
                format!("{} is not between 0 and 100", decimal(weight)),
            );
        }
        if let Some(model) = &v.model {
            names::model_name(&format!("{field}.model"), model)?;
        }
        versions.push(Version {
            name,
            weight,
            model: v.model,
        });
    }
    let weights: Vec<f64> = versions.iter().map(|v| v.weight).collect();
    let sum: f64 = weights.iter().sum();
    if (sum - 100.0).abs() > WEIGHT_SUM_TOLERANCE {
        return err(
            "versions",
            format!("weights sum to {}, not 100", decimal(sum)),
        );
    }
    let thresholds = thresholds(&weights);
    Ok((versions, thresholds))
}

/// The index of the version named `name`; `field` names where it was used.
pub(super) fn version_index(
    versions: &[Version],
    field: &str,
    name: &str,
) -> Result<usize, ConfigError> {
    match versions.iter().position(|v| v.name == name) {
        Some(i) => Ok(i),
        None => {
            let known: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
            err(
                field,
                format!("{name:?} is not a listed version ({})", known.join(", ")),
            )
        }
    }
}

const BUCKETS: f64 = 4_294_967_296.0; // 2^32

/// Cumulative thresholds on the 2^32 bucket scale. Rounding is `floor` of the
/// running float sum, exactly as the README's Python snippet computes it, so
/// assignments are reproducible outside the filter. Monotone in the prefix
/// sums, which is what the ramp guarantee rests on.
pub(super) fn thresholds(weights: &[f64]) -> Vec<u64> {
    let mut acc = 0.0_f64;
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| {
            acc += w;
            ((acc * BUCKETS / 100.0).floor().clamp(0.0, BUCKETS)) as u64
        })
        .collect();
    // Buckets the rounded sums leave over go to the last version with a
    // positive weight: a weight-0 version never receives anyone.
    if let Some(last) = weights.iter().rposition(|&w| w > 0.0) {
        for t in out.iter_mut().skip(last) {
            *t = 1 << 32;
        }
    }
    out
}
