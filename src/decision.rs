//! The per-request decision: rules first (first match wins), then the stable
//! bucket of the first user id found, then an anonymous pick. Pure: the
//! request is read through [`Request`], randomness comes from [`Entropy`].

use crate::config::{Rollout, Rule, Source};
use crate::matcher::{cookie_value, trim};

/// Read access to the request being decided.
pub trait Request {
    /// The value of request header `name` (lowercase). `slot` is the header's
    /// index in [`Rollout::headers`]; a host may use it to fetch each header
    /// at most once per request. With repeated headers, the host returns the
    /// first value.
    fn header(&mut self, slot: usize, name: &str) -> Option<&[u8]>;

    /// The value of the top-level string field `name` of the request's JSON
    /// body, once the body was read (`None` before, or without one).
    fn body_field(&mut self, _name: &str) -> Option<&[u8]> {
        None
    }
}

/// Randomness for anonymous requests. Not security sensitive: a client can
/// always send a user id of its choice, so ids only need to be well spread.
pub trait Entropy {
    fn next_u64(&mut self) -> u64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched.
    Rule,
    /// A user id was found and hashed.
    Sticky,
    /// No user id: a random pick, or a newly generated id sent back in the
    /// anonymous cookie.
    Anonymous,
    /// The guard has tripped: the request would have gone to a canary and
    /// goes to the stable version instead.
    Guard,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Rule,
        Reason::Sticky,
        Reason::Anonymous,
        Reason::Guard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Sticky => "sticky",
            Reason::Anonymous => "anonymous",
            Reason::Guard => "guard",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A generated anonymous id: 128 random bits as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnonymousId(pub [u8; 32]);

impl AnonymousId {
    pub fn generate(rng: &mut impl Entropy) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        let words = [rng.next_u64(), rng.next_u64()];
        for (i, o) in out.iter_mut().enumerate() {
            let word = words.get(i / 16).copied().unwrap_or(0);
            let nibble = (word >> ((i % 16) * 4)) & 0xf;
            *o = HEX.get(nibble as usize).copied().unwrap_or(b'0');
        }
        AnonymousId(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What a decision rested on, before the guard: the rule that matched, or
/// the bucket and where its id came from. The filter only needs the version
/// and the reason; `canary-selector explain` prints this, so that it shows
/// the very path the filter took (a few words in a value returned by copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// `Rollout::rules[index]` matched.
    Rule { index: usize },
    /// The id read from `Rollout::user_ids[source]` is in `bucket`.
    UserId { source: usize, bucket: u32 },
    /// No user id: `bucket` is the bucket of the id generated for the
    /// anonymous cookie ([`Decision::new_id`]), or else a random draw.
    Anonymous { bucket: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into [`Rollout::versions`].
    pub version: usize,
    pub reason: Reason,
    pub basis: Basis,
    /// Set when the filter generated an id that must be sent back in the
    /// anonymous cookie.
    pub new_id: Option<AnonymousId>,
}

/// The value `source` reads from the request.
pub fn read_source<'r>(
    rollout: &Rollout,
    req: &'r mut impl Request,
    source: &Source,
) -> Option<&'r [u8]> {
    match source {
        Source::Header { slot } => {
            let name = rollout.headers.get(*slot)?;
            req.header(*slot, name)
        }
        Source::Cookie { slot, name } => {
            let header_name = rollout.headers.get(*slot)?;
            cookie_value(req.header(*slot, header_name)?, name)
        }
        Source::BodyField { name } => req.body_field(name),
    }
}

/// What the decision needs to know about the moment and the proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    /// Unix time in ms, for scheduled ramps.
    pub now_ms: i64,
    /// The versions the guard holds back, bit `i` for version `i`: they
    /// receive only what rules pin to them. A local trip holds back every
    /// canary ([`ALL_CANARIES`]); the mesh verdict the versions it names.
    /// The stable version (bit 0) is never held back.
    pub held_back: u32,
}

pub use crate::shared::held::ALL_CANARIES;

/// Whether every condition of `rule` holds for the request.
pub fn rule_holds(rollout: &Rollout, rule: &Rule, req: &mut impl Request) -> bool {
    rule.conditions
        .iter()
        .all(|c| read_source(rollout, req, &c.source).is_some_and(|value| c.matcher.matches(value)))
}

pub fn decide(
    rollout: &Rollout,
    req: &mut impl Request,
    rng: &mut impl Entropy,
    live: Live,
) -> Decision {
    let mut d = choose(rollout, req, rng, live.now_ms);
    let held = u32::try_from(d.version)
        .ok()
        .and_then(|v| live.held_back.checked_shr(v))
        .is_some_and(|bits| bits & 1 == 1);
    if held && d.reason != Reason::Rule && d.version != 0 {
        d.version = 0;
        d.reason = Reason::Guard;
    }
    d
}

fn choose(
    rollout: &Rollout,
    req: &mut impl Request,
    rng: &mut impl Entropy,
    now_ms: i64,
) -> Decision {
    for (index, rule) in rollout.rules.iter().enumerate() {
        if rule_holds(rollout, rule, req) {
            return Decision {
                version: rule.version,
                reason: Reason::Rule,
                basis: Basis::Rule { index },
                new_id: None,
            };
        }
    }

    let thresholds = rollout.thresholds_at(now_ms);
    for (source, from) in rollout.user_ids.iter().enumerate() {
        let Some(id) = read_source(rollout, req, from).map(trim) else {
            continue;
        };
        if id.is_empty() {
            continue;
        }
        let bucket = rollout.bucket_of(id);
        return Decision {
            version: rollout.version_of_bucket_in(thresholds, bucket),
            reason: Reason::Sticky,
            basis: Basis::UserId { source, bucket },
            new_id: None,
        };
    }

    if rollout.anonymous_cookie.is_some() {
        // The cookie carries an id, not a version: the user is bucketed like
        // any other id, so the split stays exact and later weight changes
        // move anonymous users exactly as they move known ones.
        let id = AnonymousId::generate(rng);
        let bucket = rollout.bucket_of(id.as_bytes());
        return Decision {
            version: rollout.version_of_bucket_in(thresholds, bucket),
            reason: Reason::Anonymous,
            basis: Basis::Anonymous { bucket },
            new_id: Some(id),
        };
    }
    let bucket = (rng.next_u64() >> 32) as u32;
    Decision {
        version: rollout.version_of_bucket_in(thresholds, bucket),
        reason: Reason::Anonymous,
        basis: Basis::Anonymous { bucket },
        new_id: None,
    }
}

/// wyrand: a small, fast, well-distributed PRNG. Seeded from the host's
/// randomness once per VM; anonymous picks do not need more.
pub struct WyRand(pub u64);

impl Entropy for WyRand {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
}
