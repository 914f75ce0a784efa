//! The plugin configuration: the public contract (JSON, camelCase, unknown
//! fields rejected), parsed once per config push into an immutable, validated
//! [`Rollout`]. Every error names the field it is about and the reason.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::guard::GRPC_CODES;
use crate::hash::Murmur3;
use crate::matcher::StringMatch;

pub const DEFAULT_ROUTING_HEADER: &str = "x-canary-version";
pub const DEFAULT_ANONYMOUS_COOKIE_MAX_AGE: u32 = 30 * 24 * 3600;

/// Bounds on what one config may hold. They keep per-request work and memory
/// bounded whatever a config push contains.
pub const MAX_VERSIONS: usize = 16;
pub const MAX_RULES: usize = 32;
pub const MAX_CONDITIONS_PER_RULE: usize = 8;
pub const MAX_USER_ID_SOURCES: usize = 8;
/// Distinct request headers a config may read (rules, user ids, `cookie`).
pub const MAX_HEADERS_READ: usize = 32;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_VERSION_NAME_LEN: usize = 64;
pub const MAX_MATCH_VALUE_LEN: usize = 1024;
pub const MAX_REGEX_LEN: usize = 512;
/// regex-lite's size limit for one compiled rule regex (its own estimate of
/// the compiled program's heap, in bytes). Matching time grows with it.
pub const MAX_REGEX_SIZE: usize = 64 * 1024;
/// Regex conditions in one config: with [`MAX_REGEX_SIZE`] this bounds the
/// regex work one request can cause, whatever the rules.
pub const MAX_REGEXES: usize = 16;
/// Groups nested deeper than this are refused (regex-lite's nest limit).
pub const MAX_REGEX_NESTING: u32 = 32;
pub const MAX_SALT_LEN: usize = 256;
/// Characters a version name may not hold: they frame the stat tags in the
/// metrics' names (`version=.=model-v2;.;`, Istio's encoding).
pub const STAT_TAG_FRAMING: &str = ";=";
/// How far the weights may sum away from 100 (float rounding in configs
/// written as `33.3333`).
const WEIGHT_SUM_TOLERANCE: f64 = 1e-6;

/// A config that cannot be used: the field (a JSON path such as
/// `versions[1].weight`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    /// One line whatever the config holds: control characters (a newline in
    /// a JSON key, say) are escaped, so a config cannot forge log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.field[..], ": ", &self.reason[..]] {
            for c in part.chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        reason: reason.into(),
    })
}

// ---------------------------------------------------------------------------
// The JSON shape, as written by users (and by Istio from `pluginConfig`).
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    routing_header: Option<String>,
    versions: Option<Vec<Object<RawVersion>>>,
    stickiness: Option<Object<RawStickiness>>,
    #[serde(default)]
    rules: Vec<Object<RawRule>>,
    response_header: Option<String>,
    response_reason_header: Option<String>,
    guard: Option<Object<RawGuard>>,
    schedule: Option<Object<RawSchedule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGuard {
    window_seconds: Option<WholeNumber>,
    min_requests: Option<WholeNumber>,
    max_error_rate: Option<Number>,
    max_error_rate_above_stable: Option<Number>,
    slow_response_ms: Option<WholeNumber>,
    max_slow_rate: Option<Number>,
    grpc_error_codes: Option<Vec<GrpcCode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSchedule {
    start: String,
    steps: Vec<Object<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStep {
    after_seconds: WholeNumber,
    weights: OrderedMap<Number>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawVersion {
    name: String,
    weight: Number,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStickiness {
    #[serde(default)]
    user_id_headers: Vec<String>,
    #[serde(default)]
    user_id_cookies: Vec<String>,
    salt: Option<String>,
    anonymous_cookie: Option<Object<RawAnonymousCookie>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAnonymousCookie {
    name: String,
    max_age_seconds: Option<WholeNumber>,
    #[serde(default)]
    secure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    name: String,
    #[serde(rename = "match")]
    match_: Option<Object<RawMatch>>,
    version: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    #[serde(default)]
    headers: OrderedMap<Object<RawStringMatch>>,
    #[serde(default)]
    cookies: OrderedMap<Object<RawStringMatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

/// A JSON object read into `T`. serde's derive would also take a positional
/// array (`["model-v1", 90]`) for a struct; the contract names every field.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectOnly(PhantomData)).map(Object)
    }
}

/// A JSON object as (key, value) pairs in the order written, duplicates kept
/// (validation rejects them), where a map would silently keep the last one.
struct OrderedMap<T>(Vec<(String, T)>);

impl<T> Default for OrderedMap<T> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Pairs<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(OrderedMap(pairs))
            }
        }
        d.deserialize_map(Pairs(PhantomData))
    }
}

/// Any JSON number (`10`, `10.0`, `0.5`), named as JSON names it in errors
/// ("expected a number", not "expected f64").
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnyNumber;
        impl Visitor<'_> for AnyNumber {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                Ok(v as f64)
            }
        }
        d.deserialize_f64(AnyNumber).map(Number)
    }
}

/// A whole number from 0 to `u32::MAX`. Istio delivers `pluginConfig`
/// numbers as doubles (`10.0`), so any JSON number with no fraction is one.
struct WholeNumber(u32);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Number(v) = Number::deserialize(d)?;
        if v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&v) {
            return Err(de::Error::custom(format!(
                "expected a whole number from 0 to {}, got {}",
                u32::MAX,
                decimal(v)
            )));
        }
        Ok(WholeNumber(v as u32))
    }
}

/// A gRPC status code, by name (`"INTERNAL"`) or number (`13`).
struct GrpcCode(u8);

impl<'de> Deserialize<'de> for GrpcCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameOrNumber;
        impl Visitor<'_> for NameOrNumber {
            type Value = u8;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a gRPC status code, as a name such as \"INTERNAL\" or a number from 1 to 16",
                )
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<u8, E> {
                match GRPC_CODES.iter().position(|&c| c == name) {
                    Some(code) => Ok(code as u8),
                    None => Err(E::custom(format!(
                        "{name:?} is not a gRPC status code ({})",
                        GRPC_CODES.join(", ")
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
                u8::try_from(v)
                    .ok()
                    .filter(|&c| usize::from(c) < GRPC_CODES.len())
                    .ok_or_else(|| E::custom(format!("{v} is not a gRPC status code (0 to 16)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
                Err(E::custom(format!(
                    "{v} is not a gRPC status code (0 to 16)"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<u8, E> {
                // Istio delivers numbers as doubles.
                if v.fract() == 0.0 && (0.0..=255.0).contains(&v) {
                    return self.visit_u64(v as u64);
                }
                Err(E::custom(format!(
                    "{} is not a gRPC status code (0 to 16)",
                    decimal(v)
                )))
            }
        }
        d.deserialize_any(NameOrNumber).map(GrpcCode)
    }
}

/// A number with up to six decimals and no trailing zeros, for messages.
pub fn decimal(v: f64) -> String {
    let text = format!("{v:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

/// Reads one JSON object, and nothing after it, into the raw config; an
/// error names the field (a JSON path such as `versions[1].weight`).
fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let raw = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, e.into_inner())
    })?;
    reader.end().map_err(|e| json_error(".", e))?;
    Ok(raw)
}

fn json_error(path: &str, e: serde_json::Error) -> ConfigError {
    let text = e.to_string();
    // serde_path_to_error writes `.` for the top level, `?` for the place
    // the text broke off at before naming a field, and nothing for a
    // top-level key that is empty.
    let field = match path.trim_end_matches(".?") {
        "." | "?" => "(config)",
        "" => "\"\"",
        known => known,
    };
    let reason = match e.classify() {
        // The path says where a value is wrong; serde_json's line and column
        // would only repeat it.
        serde_json::error::Category::Data => {
            let position = format!(" at line {} column {}", e.line(), e.column());
            text.strip_suffix(&position).unwrap_or(&text).to_string()
        }
        // Broken JSON: the position is where to look.
        _ => text,
    };
    ConfigError {
        field: field.into(),
        reason,
    }
}

// ---------------------------------------------------------------------------
// The validated form used on the request path.
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Version {
    pub name: String,
    pub weight: f64,
}

/// Where a value is read from. Headers are referenced by slot, an index into
/// [`Rollout::headers`], so the host can fetch each header at most once per
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header { slot: usize },
    Cookie { slot: usize, name: Box<[u8]> },
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

/// A validated config: everything the request path needs, precomputed.
#[derive(Debug)]
pub struct Rollout {
    pub routing_header: String,
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
    /// Distinct (lowercase) request header names the config reads.
    pub headers: Vec<String>,
    pub guard: Option<Guard>,
    pub schedule: Option<Schedule>,
}

impl Rollout {
    /// Parses and validates a plugin config (the JSON text Istio or Envoy
    /// delivers).
    pub fn from_json(bytes: &[u8]) -> Result<Rollout, ConfigError> {
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                return err(
                    "(config)",
                    format!("is not UTF-8 (byte {} is not valid)", e.valid_up_to()),
                )
            }
        };
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.is_empty() {
            return err("(config)", "is empty; at least `versions` is required");
        }
        if !text.starts_with('{') {
            return err("(config)", "must be a JSON object");
        }
        validate(parse(text)?)
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

    /// One line describing the accepted config, for the info log. It holds no
    /// user data.
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

fn validate(raw: RawConfig) -> Result<Rollout, ConfigError> {
    let written = validate_written_headers(
        raw.routing_header.as_deref(),
        raw.response_header,
        raw.response_reason_header,
    )?;
    let (versions, thresholds) = validate_versions(raw.versions)?;
    let mut slots = HeaderSlots(Vec::new());
    let stickiness = validate_stickiness(
        raw.stickiness.map(|Object(s)| s).unwrap_or_default(),
        &versions,
        &written.routing,
        &mut slots,
    )?;
    let rules = validate_rules(raw.rules, &versions, &mut slots)?;
    let guard = match raw.guard {
        Some(Object(g)) => Some(validate_guard(g, versions.len())?),
        None => None,
    };
    let schedule = match raw.schedule {
        Some(Object(s)) => Some(validate_schedule(s, &versions, &thresholds)?),
        None => None,
    };
    Ok(Rollout {
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
        headers: slots.0,
        guard,
        schedule,
    })
}

// --- Names -------------------------------------------------------------------

/// RFC 9110 `tchar`: what a header or cookie name may hold.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validates a header name and returns it lowercased. `allow_pseudo` admits
/// Envoy's pseudo-headers (`:path`, `:authority`, ...) for matching.
fn header_name(field: &str, name: &str, allow_pseudo: bool) -> Result<String, ConfigError> {
    let body = match name.strip_prefix(':') {
        Some(rest) if allow_pseudo => rest,
        Some(_) => {
            return err(
                field,
                format!("{name:?} is a pseudo-header; use a regular header"),
            )
        }
        None => name,
    };
    token(field, "header", name, body)?;
    Ok(name.to_ascii_lowercase())
}

fn cookie_name(field: &str, name: &str) -> Result<Box<[u8]>, ConfigError> {
    token(field, "cookie", name, name)?;
    Ok(name.as_bytes().into())
}

/// Checks a header or cookie name (`kind`): `body` (the name without a
/// pseudo-header's colon) is a non-empty HTTP token and `name` is not too long.
fn token(field: &str, kind: &str, name: &str, body: &str) -> Result<(), ConfigError> {
    if body.is_empty() {
        return err(field, format!("{kind} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return err(
            field,
            format!("{kind} name is longer than {MAX_NAME_LEN} bytes"),
        );
    }
    if !body.bytes().all(is_tchar) {
        return err(
            field,
            format!(
                "{name:?} is not a valid {kind} name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ),
        );
    }
    Ok(())
}

/// Distinct request headers the config reads, each with a slot: the host
/// fetches each at most once per request.
struct HeaderSlots(Vec<String>);

impl HeaderSlots {
    fn slot(&mut self, field: &str, name: String) -> Result<usize, ConfigError> {
        if let Some(i) = self.0.iter().position(|h| *h == name) {
            return Ok(i);
        }
        if self.0.len() >= MAX_HEADERS_READ {
            return err(
                field,
                format!("the config reads more than {MAX_HEADERS_READ} distinct headers"),
            );
        }
        self.0.push(name);
        Ok(self.0.len() - 1)
    }

    fn cookie(&mut self, field: &str, name: &str) -> Result<Source, ConfigError> {
        Ok(Source::Cookie {
            name: cookie_name(field, name)?,
            slot: self.slot(field, "cookie".into())?,
        })
    }
}

// --- routingHeader, responseHeader, responseReasonHeader ---------------------

/// Headers the filter must never write: framing, hop-by-hop and the ones
/// Envoy treats specially.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

fn written_header(field: &str, name: &str) -> Result<String, ConfigError> {
    let name = header_name(field, name, false)?;
    if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("x-envoy-") {
        return err(
            field,
            format!("{name:?} is reserved and cannot be written by the filter"),
        );
    }
    Ok(name)
}

/// The headers the filter writes, lowercased.
struct WrittenHeaders {
    routing: String,
    response: Option<String>,
    reason: Option<String>,
}

#[inline(never)]
fn validate_written_headers(
    routing: Option<&str>,
    response: Option<String>,
    reason: Option<String>,
) -> Result<WrittenHeaders, ConfigError> {
    let routing = written_header("routingHeader", routing.unwrap_or(DEFAULT_ROUTING_HEADER))?;
    let response = match response {
        Some(h) => Some(written_header("responseHeader", &h)?),
        None => None,
    };
    let reason = match reason {
        Some(h) => Some(written_header("responseReasonHeader", &h)?),
        None => None,
    };
    if reason.is_some() && reason == response {
        return err(
            "responseReasonHeader",
            "is the same header as responseHeader",
        );
    }
    Ok(WrittenHeaders {
        routing,
        response,
        reason,
    })
}

// --- versions ----------------------------------------------------------------

/// The versions and their slice thresholds.
#[inline(never)]
fn validate_versions(
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
    // Where Envoy does not extract the stat tags (an Istio sidecar without
    // the extraStatTags line), the version name is part of the Prometheus
    // metric name, with every character but letters and digits turned into
    // `_`: `model-v2` and `model.v2` would share one series.
    let metric_name = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut versions: Vec<Version> = Vec::with_capacity(raw.len());
    for (i, Object(v)) in raw.into_iter().enumerate() {
        let field = format!("versions[{i}]");
        let name = v.name;
        if name.is_empty() {
            return err(format!("{field}.name"), "is empty");
        }
        if name.len() > MAX_VERSION_NAME_LEN {
            return err(
                format!("{field}.name"),
                format!("is longer than {MAX_VERSION_NAME_LEN} bytes"),
            );
        }
        // Visible ASCII only: a valid header value that cannot smuggle CR/LF,
        // spaces or control bytes into the routing header.
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return err(
                format!("{field}.name"),
                format!("{name:?} is not a valid header value (visible ASCII, no spaces)"),
            );
        }
        // The name is a stat tag value, framed as `version=.=<name>;.;`
        // (Istio's encoding, see `filter::MetricNames`): `;` or `=` in it
        // could end the value early or start another tag.
        if let Some(c) = name.chars().find(|c| STAT_TAG_FRAMING.contains(*c)) {
            return err(
                format!("{field}.name"),
                format!("{name:?} holds {c:?}, which frames the metrics' stat tags"),
            );
        }
        if versions.iter().any(|seen| seen.name == name) {
            return err(format!("{field}.name"), format!("{name:?} is listed twice"));
        }
        if let Some(seen) = versions
            .iter()
            .find(|seen| metric_name(&seen.name) == metric_name(&name))
        {
            return err(
                format!("{field}.name"),
                format!(
                    "{:?} and {name:?} would share one Prometheus metric name where the stat tags are not extracted",
                    seen.name
                ),
            );
        }
        let Number(weight) = v.weight;
        if !weight.is_finite() || !(0.0..=100.0).contains(&weight) {
            return err(
                format!("{field}.weight"),
                format!("{} is not between 0 and 100", decimal(weight)),
            );
        }
        versions.push(Version { name, weight });
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
fn version_index(versions: &[Version], field: &str, name: &str) -> Result<usize, ConfigError> {
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
fn thresholds(weights: &[f64]) -> Vec<u64> {
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

// --- stickiness --------------------------------------------------------------

struct Stickiness {
    user_ids: Vec<Source>,
    salt: String,
    salt_is_default: bool,
    salted: Murmur3,
    anonymous_cookie: Option<AnonymousCookie>,
}

#[inline(never)]
fn validate_stickiness(
    st: RawStickiness,
    versions: &[Version],
    routing_header: &str,
    slots: &mut HeaderSlots,
) -> Result<Stickiness, ConfigError> {
    let n_sources = st.user_id_headers.len() + st.user_id_cookies.len();
    if n_sources > MAX_USER_ID_SOURCES {
        return err(
            "stickiness",
            format!("userIdHeaders and userIdCookies list more than {MAX_USER_ID_SOURCES} sources"),
        );
    }
    let mut user_ids = Vec::with_capacity(n_sources + 1);
    for (i, h) in st.user_id_headers.iter().enumerate() {
        let field = format!("stickiness.userIdHeaders[{i}]");
        let name = header_name(&field, h, false)?;
        if name == routing_header {
            return err(field, "is the routing header, which the filter overwrites");
        }
        let source = Source::Header {
            slot: slots.slot(&field, name)?,
        };
        if user_ids.contains(&source) {
            return err(field, format!("{h:?} is listed twice"));
        }
        user_ids.push(source);
    }
    for (i, c) in st.user_id_cookies.iter().enumerate() {
        let field = format!("stickiness.userIdCookies[{i}]");
        let source = slots.cookie(&field, c)?;
        if user_ids.contains(&source) {
            return err(field, format!("{c:?} is listed twice"));
        }
        user_ids.push(source);
    }
    let anonymous_cookie = match st.anonymous_cookie {
        Some(Object(c)) => {
            let source = slots.cookie("stickiness.anonymousCookie.name", &c.name)?;
            // The generated id is read back like any other user id cookie.
            if !user_ids.contains(&source) {
                user_ids.push(source);
            }
            let max_age_seconds = c
                .max_age_seconds
                .map_or(DEFAULT_ANONYMOUS_COOKIE_MAX_AGE, |WholeNumber(n)| n);
            if max_age_seconds == 0 {
                return err(
                    "stickiness.anonymousCookie.maxAgeSeconds",
                    "must be at least 1",
                );
            }
            Some(AnonymousCookie {
                name: c.name,
                max_age_seconds,
                secure: c.secure,
            })
        }
        None => None,
    };
    let salt_is_default = st.salt.is_none();
    let salt = match st.salt {
        Some(s) => s,
        // The stable (first) version's name: constant through a rollout, and
        // new when the canary is promoted to stable, so each rollout exposes a
        // different set of users first.
        None => versions.first().map(|v| v.name.clone()).unwrap_or_default(),
    };
    if salt.len() > MAX_SALT_LEN {
        return err(
            "stickiness.salt",
            format!("is longer than {MAX_SALT_LEN} bytes"),
        );
    }
    let mut salted = Murmur3::new(0);
    salted.write(salt.as_bytes());
    salted.write(b":");
    Ok(Stickiness {
        user_ids,
        salt,
        salt_is_default,
        salted,
        anonymous_cookie,
    })
}

// --- rules -------------------------------------------------------------------

#[inline(never)]
fn validate_rules(
    raw: Vec<Object<RawRule>>,
    versions: &[Version],
    slots: &mut HeaderSlots,
) -> Result<Vec<Rule>, ConfigError> {
    if raw.len() > MAX_RULES {
        return err("rules", format!("lists more than {MAX_RULES} rules"));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.len());
    let mut regexes = 0;
    for (i, Object(r)) in raw.into_iter().enumerate() {
        let field = format!("rules[{i}]");
        if r.name.is_empty() || r.name.len() > MAX_NAME_LEN {
            return err(
                format!("{field}.name"),
                format!("must be 1 to {MAX_NAME_LEN} bytes"),
            );
        }
        if !r.name.bytes().all(|b| b.is_ascii_graphic()) {
            return err(
                format!("{field}.name"),
                "must be visible ASCII without spaces",
            );
        }
        if rules.iter().any(|seen| seen.name == r.name) {
            return err(
                format!("{field}.name"),
                format!("{:?} is used by an earlier rule", r.name),
            );
        }
        let version = version_index(versions, &format!("{field}.version"), &r.version)?;
        let match_ = r.match_.map(|Object(m)| m).unwrap_or_default();
        let (headers, cookies) = (match_.headers.0, match_.cookies.0);
        let n = headers.len() + cookies.len();
        if n == 0 {
            return err(
                format!("{field}.match"),
                "needs at least one header or cookie condition",
            );
        }
        if n > MAX_CONDITIONS_PER_RULE {
            return err(
                format!("{field}.match"),
                format!("has more than {MAX_CONDITIONS_PER_RULE} conditions"),
            );
        }
        let mut conditions = Vec::with_capacity(n);
        let mut seen_headers: Vec<String> = Vec::new();
        // A rule may read the routing header itself (a client asking for a
        // version, as testers do with `x-canary-version: v2`): it sees what
        // the client sent, before the filter replaces it. That is a
        // deliberate opening, the operator's choice.
        for (h, Object(m)) in &headers {
            let cfield = format!("{field}.match.headers.{h}");
            let name = header_name(&cfield, h, true)?;
            if seen_headers.contains(&name) {
                return err(
                    cfield,
                    "is listed twice (header names are case-insensitive)",
                );
            }
            seen_headers.push(name.clone());
            conditions.push(Condition {
                source: Source::Header {
                    slot: slots.slot(&cfield, name)?,
                },
                matcher: string_match(&cfield, m, &mut regexes)?,
            });
        }
        for (i, (c, Object(m))) in cookies.iter().enumerate() {
            let cfield = format!("{field}.match.cookies.{c}");
            if cookies.iter().take(i).any(|(seen, _)| seen == c) {
                return err(cfield, "is listed twice");
            }
            conditions.push(Condition {
                source: slots.cookie(&cfield, c)?,
                matcher: string_match(&cfield, m, &mut regexes)?,
            });
        }
        rules.push(Rule {
            name: r.name,
            conditions,
            version,
        });
    }
    Ok(rules)
}

/// One condition's match; `regexes` counts the config's regex conditions.
#[inline(never)]
fn string_match(
    field: &str,
    raw: &RawStringMatch,
    regexes: &mut usize,
) -> Result<StringMatch, ConfigError> {
    let m = match (&raw.exact, &raw.prefix, &raw.regex) {
        (Some(v), None, None) => {
            check_match_value(&format!("{field}.exact"), v)?;
            StringMatch::Exact(v.as_bytes().into())
        }
        (None, Some(v), None) => {
            check_match_value(&format!("{field}.prefix"), v)?;
            StringMatch::Prefix(v.as_bytes().into())
        }
        (None, None, Some(pattern)) => {
            let field = format!("{field}.regex");
            *regexes += 1;
            if *regexes > MAX_REGEXES {
                return err(
                    field,
                    format!("is one regex too many: a config may hold {MAX_REGEXES}"),
                );
            }
            if pattern.len() > MAX_REGEX_LEN {
                return err(field, format!("regex is longer than {MAX_REGEX_LEN} bytes"));
            }
            StringMatch::Regex(whole_value_regex(pattern).map_err(|e| ConfigError {
                field,
                reason: format!("invalid regex: {e}"),
            })?)
        }
        (None, None, None) => return err(field, "needs one of exact, prefix or regex"),
        _ => return err(field, "takes exactly one of exact, prefix or regex"),
    };
    Ok(m)
}

/// Compiles a rule regex to match whole values, as Istio's (RE2) regex match
/// does. The pattern is grouped before anchoring, so `a|b` cannot escape the
/// anchors, and a pattern that only balances once wrapped (`a)|(b`) fails.
pub fn whole_value_regex(pattern: &str) -> Result<regex_lite::Regex, regex_lite::Error> {
    let compile = |p: &str| {
        regex_lite::RegexBuilder::new(p)
            .size_limit(MAX_REGEX_SIZE)
            .nest_limit(MAX_REGEX_NESTING)
            .build()
    };
    compile(pattern)?;
    compile(&format!("^(?:{pattern})$"))
}

fn check_match_value(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.len() > MAX_MATCH_VALUE_LEN {
        return err(field, format!("is longer than {MAX_MATCH_VALUE_LEN} bytes"));
    }
    Ok(())
}

// --- guard -------------------------------------------------------------------

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
fn validate_guard(g: RawGuard, n_versions: usize) -> Result<Guard, ConfigError> {
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

// --- schedule ----------------------------------------------------------------

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
fn validate_schedule(
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
        let thresholds = thresholds(&weights);
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
