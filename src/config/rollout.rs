//! The compiled rollout: everything the request path needs for the requests
//! one rollout takes, precomputed once per push, and the validation that
//! builds it from its JSON shape, one section at a time.

use super::guard::{self, Guard};
use super::names::{self, HeaderSlots};
use super::raw::{Object, RawRollout};
use super::schedule::{self, Schedule, Step};
use super::scope::Scope;
use super::{decimal, err, rules, stickiness, versions, Config, ConfigError};
use crate::hash::{murmur3_32, Murmur3};
use crate::matcher::StringMatch;

#[derive(Debug)]
pub struct Version {
    pub name: String,
    pub weight: f64,
    /// The model name a request that gets this version asks for: the
    /// filter rewrites the body's `model` string (and `modelHeader`) to it.
    pub model: Option<String>,
}

/// Where a value is read from. Headers are referenced by slot, an index into
/// [`Rollout::headers`], so the host can fetch each header at most once per
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header {
        slot: usize,
    },
    Cookie {
        slot: usize,
        name: Box<[u8]>,
    },
    /// A top-level string field of the JSON body (`user`).
    BodyField {
        name: Box<str>,
    },
}

#[derive(Debug)]
pub struct Condition {
    pub source: Source,
    pub matcher: StringMatch,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub conditions: Vec<Condition>,
    pub version: usize,
}

#[derive(Debug)]
pub struct AnonymousCookie {
    pub name: String,
    pub max_age_seconds: u32,
    pub secure: bool,
}

/// A validated rollout: everything the request path needs, precomputed.
#[derive(Debug)]
pub struct Rollout {
    /// Its name, hosts and path prefixes, if it is an entry of `rollouts`.
    pub scope: Option<Scope>,
    pub routing_header: String,
    /// The other rollouts' routing headers (of a config with `rollouts`,
    /// unless `passUnclaimedRoutingHeaders`): removed from a request this
    /// rollout takes, so that a client cannot pick another rollout's
    /// version on it (two rollouts of one host and prefix, told apart by
    /// model, are routed by their headers alone).
    pub foreign_routing_headers: Vec<String>,
    pub response_header: Option<String>,
    pub response_reason_header: Option<String>,
    pub versions: Vec<Version>,
    /// `thresholds[i]` is the exclusive upper bound, on the 2^32 bucket
    /// scale, of version `i`'s slice: `floor(cumulative_percent * 2^32 / 100)`,
    /// and exactly 2^32 for the last version.
    pub thresholds: Vec<u64>,
    pub rules: Vec<Rule>,
    /// User id sources in the order they are tried.
    pub user_ids: Vec<Source>,
    pub salt: String,
    pub salt_is_default: bool,
    /// Hash state after `salt + ":"`, continued with each user id.
    pub salted: Murmur3,
    pub anonymous_cookie: Option<AnonymousCookie>,
    /// Distinct (lowercase) request header names the rollout reads.
    pub headers: Vec<String>,
    pub guard: Option<Guard>,
    pub schedule: Option<Schedule>,
    /// [`Rollout::fingerprint`].
    fingerprint: u32,
}

impl Rollout {
    /// Parses and validates a config without `rollouts` (one rollout for
    /// every request) into its rollout; a config with `rollouts` is
    /// [`Config::from_json`]'s.
    pub fn from_json(bytes: &[u8]) -> Result<Rollout, ConfigError> {
        let config = Config::from_json(bytes)?;
        if config.index.is_some() {
            return err(
                "rollouts",
                "holds several rollouts: read this config with Config::from_json",
            );
        }
        match config.rollouts.into_iter().next() {
            Some(rollout) => Ok(rollout),
            None => err("(config)", "holds no rollout"),
        }
    }

    /// The rollout's name (its `rollouts` entry's `name`), if it is one of a
    /// list.
    pub fn name(&self) -> Option<&str> {
        self.scope.as_ref().map(|s| s.name.as_str())
    }

    /// Regex conditions in the rollout's rules.
    pub fn regexes(&self) -> usize {
        self.rules
            .iter()
            .flat_map(|r| &r.conditions)
            .filter(|c| matches!(c.matcher, StringMatch::Regex(_)))
            .count()
    }

    /// A digest of what the rollout decides, to tell a push that changed it
    /// from one that left it as it was or only moved it (its guard's window
    /// and trip survive those). Taken when the rollout was validated, over
    /// the derived `Debug` form of the compiled rollout before its scope was
    /// attached, so no field of a decision can be left out of it and none of
    /// its scope (name aside, which keys its state) is in it: the same
    /// decisions give the same digest however the JSON was written (key
    /// order, spacing, `10` or `10.0`), whatever hosts, path prefixes or
    /// place in the list the rollout has.
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }

    /// The version of a bucket under the listed weights.
    pub fn version_of_bucket(&self, bucket: u32) -> usize {
        self.version_of_bucket_in(&self.thresholds, bucket)
    }

    /// The slice thresholds live at `now_ms` (Unix ms): the latest schedule
    /// step that has begun, else the listed weights.
    pub fn thresholds_at(&self, now_ms: i64) -> &[u64] {
        self.step_at(now_ms)
            .map_or(&self.thresholds, |step| &step.thresholds)
    }

    /// The percentage of users of version `i` at `now_ms` (the latest
    /// schedule step that has begun, else the listed weight).
    pub fn weight_at(&self, now_ms: i64, i: usize) -> f64 {
        match self.step_at(now_ms) {
            Some(step) => step.weights.get(i).copied().unwrap_or(0.0),
            None => self.versions.get(i).map_or(0.0, |v| v.weight),
        }
    }

    fn step_at(&self, now_ms: i64) -> Option<&Step> {
        self.schedule
            .as_ref()
            .and_then(|s| s.steps.iter().rev().find(|step| now_ms >= step.at_ms))
    }

    pub fn version_of_bucket_in(&self, thresholds: &[u64], bucket: u32) -> usize {
        let b = u64::from(bucket);
        thresholds
            .iter()
            .position(|&t| b < t)
            .unwrap_or(self.versions.len().saturating_sub(1))
    }

    /// The bucket of a user id: MurmurHash3_x86_32(salt + ":" + id, seed 0),
    /// over at most [`crate::MAX_USER_ID_LEN`] bytes of the id.
    pub fn bucket_of(&self, user_id: &[u8]) -> u32 {
        let id = user_id.get(..crate::MAX_USER_ID_LEN).unwrap_or(user_id);
        let mut h = self.salted;
        h.write(id);
        h.finish()
    }

    /// One line describing the accepted rollout, for the info log. It holds
    /// no user data.
    pub fn summary(&self) -> String {
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|v| format!("{}={}%", v.name, decimal(v.weight)))
            .collect();
        let rules: Vec<String> = self
            .rules
            .iter()
            .filter_map(|r| {
                let v = self.versions.get(r.version)?;
                Some(format!("{}->{}", r.name, v.name))
            })
            .collect();
        let ids: Vec<String> = self
            .user_ids
            .iter()
            .map(|s| match s {
                Source::Header { slot } => format!(
                    "header {}",
                    self.headers.get(*slot).map_or("?", String::as_str)
                ),
                Source::Cookie { name, .. } => {
                    format!("cookie {}", String::from_utf8_lossy(name))
                }
                Source::BodyField { name } => format!("body field {name}"),
            })
            .collect();
        format!(
            "routing header {}; versions {}; rules [{}]; user ids [{}]; salt {:?}{}; anonymous users {}; response header {}",
            self.routing_header,
            versions.join(" "),
            rules.join(", "),
            ids.join(", "),
            &self.salt,
            if self.salt_is_default { " (default: first version)" } else { "" },
            match &self.anonymous_cookie {
                Some(c) => format!("get cookie {}", c.name),
                None => "random per request".into(),
            },
            self.response_header.as_deref().unwrap_or("off"),
        )
    }
}

// ---------------------------------------------------------------------------
// Validation: one validator per section of the contract.
//
// Each validator stays a function of its own (`#[inline(never)]`): Envoy's
// V8 compiles every function of the module with TurboFan when it loads it,
// and the memory that takes grows faster than the function, so one 14 KB
// function inlining them all cost about 3 MiB more of every proxy's memory
// than these (BENCHMARKS.md, "Memory").
// ---------------------------------------------------------------------------

/// The fields of a rollout present in `raw` (to reject at the top level of a
/// config that lists `rollouts`).
pub(super) fn fields_present(raw: &RawRollout) -> Vec<&'static str> {
    [
        ("routingHeader", raw.routing_header.is_some()),
        ("versions", raw.versions.is_some()),
        ("stickiness", raw.stickiness.is_some()),
        ("rules", raw.rules.is_some()),
        ("responseHeader", raw.response_header.is_some()),
        ("responseReasonHeader", raw.response_reason_header.is_some()),
        ("guard", raw.guard.is_some()),
        ("schedule", raw.schedule.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, present)| present.then_some(field))
    .collect()
}

/// One rollout, its scope left to the caller. Errors name fields as a
/// single-rollout config has them (`versions[1].weight`).
pub(super) fn validate(raw: RawRollout) -> Result<Rollout, ConfigError> {
    let written = names::validate_written_headers(
        raw.routing_header.as_deref(),
        raw.response_header,
        raw.response_reason_header,
    )?;
    let (versions, thresholds) = versions::validate(raw.versions)?;
    let mut slots = HeaderSlots::default();
    let stickiness = stickiness::validate(
        raw.stickiness.map(|Object(s)| s).unwrap_or_default(),
        &versions,
        &written.routing,
        &mut slots,
    )?;
    let rules = rules::validate(raw.rules.unwrap_or_default(), &versions, &mut slots)?;
    let guard = match raw.guard {
        Some(Object(g)) => Some(guard::validate(g, versions.len())?),
        None => None,
    };
    let schedule = match raw.schedule {
        Some(Object(s)) => Some(schedule::validate(s, &versions, &thresholds)?),
        None => None,
    };
    let mut rollout = Rollout {
        scope: None,
        foreign_routing_headers: Vec::new(),
        routing_header: written.routing,
        response_header: written.response,
        response_reason_header: written.reason,
        versions,
        thresholds,
        rules,
        user_ids: stickiness.user_ids,
        salt: stickiness.salt,
        salt_is_default: stickiness.salt_is_default,
        salted: stickiness.salted,
        anonymous_cookie: stickiness.anonymous_cookie,
        headers: slots.into_names(),
        guard,
        schedule,
        fingerprint: 0,
    };
    rollout.fingerprint = murmur3_32(format!("{rollout:?}").as_bytes(), 0x5eed);
    Ok(rollout)
}
