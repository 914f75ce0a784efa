//! The plugin configuration: the public contract (JSON, camelCase, unknown
//! fields rejected), parsed once per config push into an immutable, validated
//! [`Rollout`]. Every error names the field it is about and the reason.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Deserializer};

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
/// Compiled instructions of all a config's regexes together.
pub const MAX_REGEX_TOTAL: usize = 32_768;
pub const MAX_SALT_LEN: usize = 256;
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

/// A config string in a message, quoted, with control characters escaped so
/// that a config cannot forge log lines. (Not `{:?}`: Rust's debug escaping
/// brings Unicode tables into the module.)
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => {
                    f.write_char('\\')?;
                    f.write_char(c)?;
                }
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

// ---------------------------------------------------------------------------
// The JSON shape, as written by users (and by Istio from `pluginConfig`).
// The reader (`crate::json`) gives a struct only a JSON object, never the
// positional array serde's derive would also take.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    routing_header: Option<String>,
    versions: Option<Vec<RawVersion>>,
    #[serde(default)]
    stickiness: RawStickiness,
    #[serde(default)]
    rules: Vec<RawRule>,
    response_header: Option<String>,
    response_reason_header: Option<String>,
    guard: Option<RawGuard>,
    schedule: Option<RawSchedule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGuard {
    #[serde(default, deserialize_with = "whole_number")]
    window_seconds: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    min_requests: Option<u32>,
    max_error_rate: Option<f64>,
    max_error_rate_above_stable: Option<f64>,
    #[serde(default, deserialize_with = "whole_number")]
    slow_response_ms: Option<u32>,
    max_slow_rate: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSchedule {
    start: String,
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStep {
    #[serde(deserialize_with = "whole_number")]
    after_seconds: Option<u32>,
    #[serde(deserialize_with = "ordered_map")]
    weights: Vec<(String, f64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawVersion {
    name: String,
    weight: f64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStickiness {
    #[serde(default)]
    user_id_headers: Vec<String>,
    #[serde(default)]
    user_id_cookies: Vec<String>,
    salt: Option<String>,
    anonymous_cookie: Option<RawAnonymousCookie>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAnonymousCookie {
    name: String,
    #[serde(default, deserialize_with = "whole_number")]
    max_age_seconds: Option<u32>,
    #[serde(default)]
    secure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    name: String,
    #[serde(rename = "match", default)]
    match_: RawMatch,
    version: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    #[serde(default, deserialize_with = "ordered_map")]
    headers: Vec<(String, RawStringMatch)>,
    #[serde(default, deserialize_with = "ordered_map")]
    cookies: Vec<(String, RawStringMatch)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

/// A JSON object as (key, value) pairs in the order written, duplicates kept
/// (validation rejects them), instead of a map that would silently keep the
/// last one.
fn ordered_map<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<(String, T)>, D::Error> {
    struct Pairs<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<T> {
        type Value = Vec<(String, T)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    d.deserialize_map(Pairs(std::marker::PhantomData))
}

/// Formats a number with up to six decimals, without pulling float
/// formatting (a large part of a Wasm module) into the build.
pub fn decimal(v: f64) -> String {
    if !v.is_finite() {
        return "not a finite number".into();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let micro = (v.abs() * 1e6).round();
    if micro >= 1e18 {
        return format!("{sign}a very large number");
    }
    let micro = micro as u64;
    let (int, frac) = (micro / 1_000_000, micro % 1_000_000);
    if frac == 0 {
        return format!("{sign}{int}");
    }
    let frac = format!("{frac:06}");
    format!("{sign}{int}.{}", frac.trim_end_matches('0'))
}

/// Istio delivers `pluginConfig` numbers as JSON doubles (`10.0`); accept any
/// JSON number that is a whole number in range.
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = f64::deserialize(d)?;
    if v.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&v) {
        return Err(serde::de::Error::custom(format!(
            "expected a whole number from 0 to {}, got {}",
            u32::MAX,
            decimal(v)
        )));
    }
    Ok(Some(v as u32))
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
}

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
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return err("(config)", "is empty; at least `versions` is required");
        }
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return err("(config)", "must be a JSON object");
        }
        // One JSON object and nothing after it.
        let raw: RawConfig = crate::json::from_slice(bytes).map_err(|e| ConfigError {
            field: e.path.unwrap_or_else(|| "(config)".into()),
            reason: e.reason,
        })?;
        validate(raw)
    }

    /// The version of a bucket under the listed weights.
    pub fn version_of_bucket(&self, bucket: u32) -> usize {
        self.version_of_bucket_in(&self.thresholds, bucket)
    }

    /// The slice thresholds live at `now_ms` (Unix ms): the latest schedule
    /// step that has begun, else the listed weights.
    pub fn thresholds_at(&self, now_ms: i64) -> &[u64] {
        self.schedule
            .as_ref()
            .and_then(|s| s.steps.iter().rev().find(|step| now_ms >= step.at_ms))
            .map_or(&self.thresholds, |step| &step.thresholds)
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
            "routing header {}; versions {}; rules [{}]; user ids [{}]; salt {}{}; anonymous users {}; response header {}",
            self.routing_header,
            versions.join(" "),
            rules.join(", "),
            ids.join(", "),
            Quoted(&self.salt),
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
// Validation.
// ---------------------------------------------------------------------------

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
                format!("{} is a pseudo-header; use a regular header", Quoted(name)),
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
                "{} is not a valid {kind} name (letters, digits and !#$%&'*+-.^_`|~ only)",
                Quoted(name)
            ),
        );
    }
    Ok(())
}

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
            format!(
                "{} is reserved and cannot be written by the filter",
                Quoted(&name)
            ),
        );
    }
    Ok(name)
}

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
}

fn string_match(field: &str, raw: &RawStringMatch) -> Result<StringMatch, ConfigError> {
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
            if pattern.len() > MAX_REGEX_LEN {
                return err(field, format!("regex is longer than {MAX_REGEX_LEN} bytes"));
            }
            // Always a whole-value match, as Istio's (RE2) regex match.
            let regex = crate::regex::Regex::new(pattern).map_err(|e| ConfigError {
                field,
                reason: format!("invalid regex: {e}"),
            })?;
            StringMatch::Regex(regex)
        }
        (None, None, None) => return err(field, "needs one of exact, prefix or regex"),
        _ => return err(field, "takes exactly one of exact, prefix or regex"),
    };
    Ok(m)
}

fn check_match_value(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.len() > MAX_MATCH_VALUE_LEN {
        return err(field, format!("is longer than {MAX_MATCH_VALUE_LEN} bytes"));
    }
    Ok(())
}

fn validate(raw: RawConfig) -> Result<Rollout, ConfigError> {
    let routing_header = written_header(
        "routingHeader",
        raw.routing_header
            .as_deref()
            .unwrap_or(DEFAULT_ROUTING_HEADER),
    )?;
    let response_header = match raw.response_header {
        Some(h) => Some(written_header("responseHeader", &h)?),
        None => None,
    };
    let response_reason_header = match raw.response_reason_header {
        Some(h) => Some(written_header("responseReasonHeader", &h)?),
        None => None,
    };
    if response_reason_header.is_some() && response_reason_header == response_header {
        return err(
            "responseReasonHeader",
            "is the same header as responseHeader",
        );
    }

    // Versions and their weights.
    let Some(raw_versions) = raw.versions else {
        return err("versions", "is required: list at least one version");
    };
    if raw_versions.is_empty() {
        return err("versions", "must list at least one version");
    }
    if raw_versions.len() > MAX_VERSIONS {
        return err(
            "versions",
            format!("lists more than {MAX_VERSIONS} versions"),
        );
    }
    let mut versions: Vec<Version> = Vec::with_capacity(raw_versions.len());
    for (i, v) in raw_versions.into_iter().enumerate() {
        let field = format!("versions[{i}]");
        if v.name.is_empty() {
            return err(format!("{field}.name"), "is empty");
        }
        if v.name.len() > MAX_VERSION_NAME_LEN {
            return err(
                format!("{field}.name"),
                format!("is longer than {MAX_VERSION_NAME_LEN} bytes"),
            );
        }
        // Visible ASCII only: a valid header value that cannot smuggle CR/LF,
        // spaces or control bytes into the routing header.
        if !v.name.bytes().all(|b| b.is_ascii_graphic()) {
            return err(
                format!("{field}.name"),
                format!(
                    "{} is not a valid header value (visible ASCII, no spaces)",
                    Quoted(&v.name)
                ),
            );
        }
        if versions.iter().any(|seen| seen.name == v.name) {
            return err(
                format!("{field}.name"),
                format!("{} is listed twice", Quoted(&v.name)),
            );
        }
        // Prometheus turns every character but letters and digits into `_`:
        // `model-v2` and `model.v2` would share one series.
        let metric_name = |name: &str| -> String {
            name.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect()
        };
        if let Some(seen) = versions
            .iter()
            .find(|seen| metric_name(&seen.name) == metric_name(&v.name))
        {
            return err(
                format!("{field}.name"),
                format!(
                    "{} and {} would share one Prometheus metric name",
                    Quoted(&seen.name),
                    Quoted(&v.name)
                ),
            );
        }
        if !v.weight.is_finite() || !(0.0..=100.0).contains(&v.weight) {
            return err(
                format!("{field}.weight"),
                format!("{} is not between 0 and 100", decimal(v.weight)),
            );
        }
        versions.push(Version {
            name: v.name,
            weight: v.weight,
        });
    }
    let sum: f64 = versions.iter().map(|v| v.weight).sum();
    if (sum - 100.0).abs() > WEIGHT_SUM_TOLERANCE {
        return err(
            "versions",
            format!("weights sum to {}, not 100", decimal(sum)),
        );
    }
    let weights: Vec<f64> = versions.iter().map(|v| v.weight).collect();
    let thresholds = thresholds(&weights);

    let version_index = |field: &str, name: &str| -> Result<usize, ConfigError> {
        versions.iter().position(|v| v.name == name).map_or_else(
            || {
                let known: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
                err(
                    field,
                    format!(
                        "{} is not a listed version ({})",
                        Quoted(name),
                        known.join(", ")
                    ),
                )
            },
            Ok,
        )
    };

    let mut slots = HeaderSlots(Vec::new());

    // Stickiness.
    let st = raw.stickiness;
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
            return err(field, format!("{} is listed twice", Quoted(h)));
        }
        user_ids.push(source);
    }
    let cookie_source = |field: &str, name: &str, slots: &mut HeaderSlots| {
        Ok::<_, ConfigError>(Source::Cookie {
            name: cookie_name(field, name)?,
            slot: slots.slot(field, "cookie".into())?,
        })
    };
    for (i, c) in st.user_id_cookies.iter().enumerate() {
        let field = format!("stickiness.userIdCookies[{i}]");
        let source = cookie_source(&field, c, &mut slots)?;
        if user_ids.contains(&source) {
            return err(field, format!("{} is listed twice", Quoted(c)));
        }
        user_ids.push(source);
    }
    let anonymous_cookie = match st.anonymous_cookie {
        Some(c) => {
            let source = cookie_source("stickiness.anonymousCookie.name", &c.name, &mut slots)?;
            // The generated id is read back like any other user id cookie.
            if !user_ids.contains(&source) {
                user_ids.push(source);
            }
            let max_age_seconds = c
                .max_age_seconds
                .unwrap_or(DEFAULT_ANONYMOUS_COOKIE_MAX_AGE);
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

    // Rules.
    if raw.rules.len() > MAX_RULES {
        return err("rules", format!("lists more than {MAX_RULES} rules"));
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
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
                format!("{} is used by an earlier rule", Quoted(&r.name)),
            );
        }
        let version = version_index(&format!("{field}.version"), &r.version)?;
        let match_ = r.match_;
        let n = match_.headers.len() + match_.cookies.len();
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
        for (h, m) in match_.headers {
            let cfield = format!("{field}.match.headers.{h}");
            let name = header_name(&cfield, &h, true)?;
            if name == routing_header {
                return err(
                    cfield,
                    "is the routing header; the filter replaces it, so a client could pick its version",
                );
            }
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
                matcher: string_match(&cfield, &m)?,
            });
        }
        for (i, (c, m)) in match_.cookies.iter().enumerate() {
            let cfield = format!("{field}.match.cookies.{c}");
            if match_.cookies.iter().take(i).any(|(seen, _)| seen == c) {
                return err(cfield, "is listed twice");
            }
            conditions.push(Condition {
                source: cookie_source(&cfield, c, &mut slots)?,
                matcher: string_match(&cfield, m)?,
            });
        }
        rules.push(Rule {
            name: r.name,
            conditions,
            version,
        });
    }
    // Each regex keeps matching state in proportion to its size: bound the
    // whole config's, whatever its number of regexes.
    let regex_size: usize = rules
        .iter()
        .flat_map(|r| &r.conditions)
        .map(|c| match &c.matcher {
            StringMatch::Regex(re) => re.size(),
            _ => 0,
        })
        .sum();
    if regex_size > MAX_REGEX_TOTAL {
        return err(
            "rules",
            format!(
                "the regexes compile to {regex_size} instructions in all; at most {MAX_REGEX_TOTAL}"
            ),
        );
    }

    let guard = match raw.guard {
        Some(g) => Some(validate_guard(g, versions.len())?),
        None => None,
    };
    let schedule = match raw.schedule {
        Some(s) => Some(validate_schedule(s, &versions, &thresholds)?),
        None => None,
    };

    Ok(Rollout {
        routing_header,
        response_header,
        response_reason_header,
        guard,
        schedule,
        versions,
        thresholds,
        rules,
        user_ids,
        salt,
        salt_is_default,
        salted,
        anonymous_cookie,
        headers: slots.0,
    })
}

pub const MAX_GUARD_WINDOW_SECONDS: u32 = 3600;
pub const MAX_SCHEDULE_STEPS: usize = 32;

fn rate(field: &str, v: Option<f64>) -> Result<Option<f64>, ConfigError> {
    match v {
        Some(r) if !(0.0..=1.0).contains(&r) => err(
            field,
            format!("{} is not a share between 0 and 1", decimal(r)),
        ),
        other => Ok(other),
    }
}

fn validate_guard(g: RawGuard, n_versions: usize) -> Result<Guard, ConfigError> {
    if n_versions < 2 {
        return err(
            "guard",
            "needs at least two versions: it guards canaries against the first (stable) one",
        );
    }
    let window = g.window_seconds.unwrap_or(60);
    if !(1..=MAX_GUARD_WINDOW_SECONDS).contains(&window) {
        return err(
            "guard.windowSeconds",
            format!("must be 1 to {MAX_GUARD_WINDOW_SECONDS}"),
        );
    }
    let min_requests = g.min_requests.unwrap_or(20);
    if min_requests == 0 {
        return err("guard.minRequests", "must be at least 1");
    }
    let max_error_rate = rate("guard.maxErrorRate", g.max_error_rate)?;
    let max_error_rate_above_stable = rate(
        "guard.maxErrorRateAboveStable",
        g.max_error_rate_above_stable,
    )?;
    let slow = match (
        g.slow_response_ms,
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
    Ok(Guard {
        window_ms: u64::from(window) * 1000,
        min_requests,
        max_error_rate,
        max_error_rate_above_stable,
        slow,
    })
}

fn validate_schedule(
    s: RawSchedule,
    versions: &[Version],
    listed: &[u64],
) -> Result<Schedule, ConfigError> {
    let Some(start_ms) = crate::time::parse_rfc3339_ms(&s.start) else {
        return err(
            "schedule.start",
            format!(
                "{} is not an RFC 3339 time such as 2026-12-01T09:00:00Z",
                Quoted(&s.start)
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
    for (i, raw) in s.steps.into_iter().enumerate() {
        let field = format!("schedule.steps[{i}]");
        let after = u64::from(raw.after_seconds.unwrap_or(0));
        let at_ms = start_ms.saturating_add(i64::try_from(after * 1000).unwrap_or(i64::MAX));
        if steps.last().is_some_and(|prev| at_ms <= prev.at_ms) {
            return err(
                format!("{field}.afterSeconds"),
                "must be later than the previous step's",
            );
        }
        let mut weights = vec![0.0; versions.len()];
        for (name, w) in &raw.weights {
            let wfield = format!("{field}.weights.{name}");
            let Some(index) = versions.iter().position(|v| v.name == *name) else {
                return err(wfield, "is not a listed version");
            };
            if !w.is_finite() || !(0.0..=100.0).contains(w) {
                return err(wfield, format!("{} is not between 0 and 100", decimal(*w)));
            }
            if raw.weights.iter().filter(|(n, _)| n == name).count() > 1 {
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
