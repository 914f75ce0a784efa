//! A rollout's `schedule`: steps of weights that take over at set times, so a
//! ramp moves on by itself, only ever forward.

use super::raw::{Number, Object, RawSchedule, WholeNumber};
use super::rollout::Version;
use super::{decimal, err, versions, ConfigError, WEIGHT_SUM_TOLERANCE};

/// A scheduled ramp: from `at_ms` on, a step's weights replace the listed
/// ones.
#[derive(Debug)]
pub struct Step {
    pub at_ms: i64,
    pub weights: Vec<f64>,
    pub thresholds: Vec<u64>,
}

#[derive(Debug)]
pub struct Schedule {
    pub start_ms: i64,
    pub steps: Vec<Step>,
}

pub const MAX_SCHEDULE_STEPS: usize = 32;

/// An RFC 3339 time (`2026-12-01T09:00:00Z`, `2026-12-01T10:00:00.5+01:00`)
/// as Unix milliseconds; fractions beyond milliseconds are dropped. Every
/// proxy computes the live weights from its own clock, so this conversion is
/// all they must agree on.
pub fn rfc3339_ms(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[inline(never)]
pub(super) fn validate(
    s: RawSchedule,
    versions: &[Version],
    listed: &[u64],
) -> Result<Schedule, ConfigError> {
    let Some(start_ms) = rfc3339_ms(&s.start) else {
        return err(
            "schedule.start",
            format!(
                "{:?} is not an RFC 3339 time such as 2026-12-01T09:00:00Z",
                s.start
            ),
        );
    };
    if s.steps.is_empty() || s.steps.len() > MAX_SCHEDULE_STEPS {
        return err(
            "schedule.steps",
            format!("must list 1 to {MAX_SCHEDULE_STEPS} steps"),
        );
    }
    let mut steps: Vec<Step> = Vec::with_capacity(s.steps.len());
    let mut previous: Vec<u64> = listed.to_vec();
    for (i, Object(raw)) in s.steps.into_iter().enumerate() {
        let field = format!("schedule.steps[{i}]");
        let WholeNumber(after) = raw.after_seconds;
        let at_ms = start_ms.saturating_add(i64::from(after) * 1000);
        if steps.last().is_some_and(|prev| at_ms <= prev.at_ms) {
            return err(
                format!("{field}.afterSeconds"),
                "must be later than the previous step's",
            );
        }
        let named = raw.weights.0;
        let mut weights = vec![0.0; versions.len()];
        for (name, Number(w)) in &named {
            let wfield = format!("{field}.weights.{name}");
            let Some(index) = versions.iter().position(|v| v.name == *name) else {
                return err(wfield, "is not a listed version");
            };
            if !w.is_finite() || !(0.0..=100.0).contains(w) {
                return err(wfield, format!("{} is not between 0 and 100", decimal(*w)));
            }
            if named.iter().filter(|(n, _)| n == name).count() > 1 {
                return err(wfield, "is listed twice");
            }
            if let Some(slot) = weights.get_mut(index) {
                *slot = *w;
            }
        }
        let sum: f64 = weights.iter().sum();
        if (sum - 100.0).abs() > WEIGHT_SUM_TOLERANCE {
            return err(
                format!("{field}.weights"),
                format!("sum to {}, not 100", decimal(sum)),
            );
        }
        let thresholds = versions::thresholds(&weights);
        // The ramp guarantee across steps: weight only ever moves to
        // later-listed versions, so no user is moved back by the schedule.
        if thresholds
            .iter()
            .zip(&previous)
            .any(|(now, before)| now > before)
        {
            return err(
                format!("{field}.weights"),
                "move weight back to an earlier-listed version than the previous step; a schedule may only ramp forward",
            );
        }
        previous.clone_from(&thresholds);
        steps.push(Step {
            at_ms,
            weights,
            thresholds,
        });
    }
    Ok(Schedule { start_ms, steps })
}
