//! The plugin configuration: the public contract (JSON, camelCase, unknown
//! fields rejected), parsed once per config push into an immutable,
//! validated [`Config`]: one [`Rollout`] for every request, or a list of
//! rollouts scoped by host and path with the [`HostIndex`] that picks one.
//! Every error names the field it is about and the reason.
//!
//! - `raw`: the JSON shapes, read with serde;
//! - `rollout`: the compiled rollout and the validation of one;
//! - `names`, `versions`, `stickiness`, `rules`, `guard`, `schedule`: one
//!   validator per section of a rollout;
//! - `scope`: a rollout's `name`, `hosts` and `pathPrefixes`, and the host
//!   index built from them.

use std::collections::HashMap;
use std::fmt;

mod guard;
mod names;
mod raw;
mod rollout;
mod rules;
mod schedule;
mod scope;
mod stickiness;
mod versions;

pub use guard::{
    Guard, Mesh, DEFAULT_GRPC_ERROR_CODES, DEFAULT_MESH_POLL_SECONDS, DEFAULT_MESH_TIMEOUT_MS,
    MAX_GUARD_WINDOW_SECONDS,
};
pub use names::writable_model;
pub use rollout::{AnonymousCookie, Condition, Rollout, Rule, Source, Version};
pub use rules::whole_value_regex;
pub use schedule::{rfc3339_ms, Schedule, Step, MAX_SCHEDULE_STEPS};
pub use scope::{
    authority_host, prefix_takes, Claim, HostIndex, HostRollouts, PrefixRollouts, Scope,
    MAX_AUTHORITY_HOST_LEN,
};

use raw::{parse, RawRollout, WholeNumber};
pub(crate) use raw::{Object, OrderedMap};

pub const DEFAULT_ROUTING_HEADER: &str = "x-canary-version";
pub const DEFAULT_ANONYMOUS_COOKIE_MAX_AGE: u32 = 30 * 24 * 3600;

/// Bounds on what one rollout may hold. They keep per-request work and
/// memory bounded whatever a config push contains.
pub const MAX_VERSIONS: usize = 16;
pub const MAX_RULES: usize = 32;
pub const MAX_CONDITIONS_PER_RULE: usize = 8;
pub const MAX_USER_ID_SOURCES: usize = 8;
/// Distinct request headers a rollout may read (rules, user ids, `cookie`).
pub const MAX_HEADERS_READ: usize = 32;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_VERSION_NAME_LEN: usize = 64;
pub const MAX_MATCH_VALUE_LEN: usize = 1024;
pub const MAX_REGEX_LEN: usize = 512;
/// regex-lite's size limit for one compiled rule regex (its own estimate of
/// the compiled program's heap, in bytes). Matching time grows with it.
pub const MAX_REGEX_SIZE: usize = 64 * 1024;
/// Regex conditions in one rollout: with [`MAX_REGEX_SIZE`] this bounds the
/// regex work one request can cause, whatever the rules (a request is
/// decided by one rollout's rules only).
pub const MAX_REGEXES: usize = 16;
/// Regex conditions in one config, all rollouts together: a bound on the
/// memory compiled regexes hold in each VM (BENCHMARKS.md, "Many rollouts").
pub const MAX_REGEXES_TOTAL: usize = 1024;
/// Groups nested deeper than this are refused (regex-lite's nest limit).
pub const MAX_REGEX_NESTING: u32 = 32;
pub const MAX_SALT_LEN: usize = 256;

/// Bounds on a config's `rollouts`: a cluster's shared gateway serves one
/// rollout per model it is ramping, each under a few host names.
pub const MAX_ROLLOUTS: usize = 1000;
/// Host patterns in one rollout (a Service is called by up to four names).
pub const MAX_HOSTS_PER_ROLLOUT: usize = 64;
/// Host patterns in one config, all rollouts together.
pub const MAX_HOSTS: usize = 4000;
pub const MAX_PATH_PREFIXES: usize = 16;
pub const MAX_PATH_PREFIX_LEN: usize = 1024;

/// Bounds on reading bodies: a rollout's `models`, a model name, the
/// largest `maxBodyBytes` (a body is held in Envoy's buffer while it is
/// read, so the bound is Envoy's buffer limit's business too), and the
/// default.
pub const MAX_MODELS_PER_ROLLOUT: usize = 64;
pub const MAX_MODEL_NAME_LEN: usize = 256;
pub const MAX_BODY_BYTES: u32 = 64 << 20;
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1 << 20;
/// The body's field that names the model (OpenAI's `model`).
pub const MODEL_FIELD: &str = "model";

/// Characters a version or rollout name may not hold: they frame the stat
/// tags in the metrics' names (`version=.=model-v2;.;`, Istio's encoding).
pub const STAT_TAG_FRAMING: &str = ";=";
/// How far the weights may sum away from 100 (float rounding in configs
/// written as `33.3333`).
const WEIGHT_SUM_TOLERANCE: f64 = 1e-6;

/// A config that cannot be used: the field (a JSON path such as
/// `rollouts[3].versions[1].weight`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    /// The same error, about a field of the `rollouts` entry at `entry`.
    fn within(self, entry: &str) -> ConfigError {
        let field = match self.field.as_str() {
            "(config)" => entry.to_string(),
            field => format!("{entry}.{field}"),
        };
        ConfigError { field, ..self }
    }
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

/// A validated plugin config: what the filter holds between pushes.
#[derive(Debug)]
pub struct Config {
    /// The rollouts, in the order the config lists them. A config without
    /// `rollouts` has exactly one, unnamed, for every request.
    pub rollouts: Vec<Rollout>,
    /// Which rollout a request takes, by host and path; `None` when the
    /// config has no `rollouts` list (its one rollout takes every request,
    /// and the filter reads neither `:authority` nor `:path`).
    pub index: Option<HostIndex>,
    /// The routing headers removed from a request no rollout takes: every
    /// rollout's `routingHeader`, each once, so that no host or path
    /// spelling lets a client pick a version; empty with
    /// `passUnclaimedRoutingHeaders` (and without `rollouts`, where every
    /// request is taken).
    pub unclaimed_removes: Vec<String>,
    /// The rollouts by name (a config with `rollouts`).
    by_name: HashMap<String, usize>,
    /// What the filter may read from a request's body, and how it learns
    /// a request's model.
    pub body: BodyRead,
}

/// What the filter may read from a JSON request body: a request's model (for
/// rollouts scoped by `models`, or to rewrite it), and user ids
/// (`userIdBodyFields`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRead {
    /// `modelHeader`: the request header that names the model, read before
    /// the body, and written when the model was learnt from the body or
    /// rewritten.
    pub model_header: Option<String>,
    /// `maxBodyBytes`: a longer body is not read (its model is unknown).
    pub max_bytes: usize,
    /// The top-level fields a scan looks for: `model` first, then every
    /// rollout's `userIdBodyFields`, each once.
    pub fields: Vec<String>,
    /// Whether any rollout is scoped by `models`, reads a user id from the
    /// body, or rewrites the model: if not, no request's body is ever read.
    pub reads: bool,
}

impl BodyRead {
    fn of(
        rollouts: &[Rollout],
        model_header: Option<String>,
        max_bytes: u32,
    ) -> Result<BodyRead, ConfigError> {
        let mut fields = vec![MODEL_FIELD.to_string()];
        let mut reads = false;
        for r in rollouts {
            reads |= r.scope.as_ref().is_some_and(|s| !s.models.is_empty())
                || r.versions.iter().any(|v| v.model.is_some());
            for source in &r.user_ids {
                if let Source::BodyField { name } = source {
                    reads = true;
                    if !fields.iter().any(|f| **f == **name) {
                        fields.push(name.to_string());
                    }
                }
            }
        }
        if let Some(header) = &model_header {
            if let Some(r) = rollouts.iter().find(|r| r.routing_header == *header) {
                return err(
                    "modelHeader",
                    format!(
                        "{header:?} is a routing header ({})",
                        r.name().unwrap_or("the config's")
                    ),
                );
            }
        }
        Ok(BodyRead {
            model_header,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            fields,
            reads,
        })
    }

    /// The index of body field `name` in [`BodyRead::fields`].
    pub fn field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f == name)
    }
}

/// The top-level options about bodies: `modelHeader` and `maxBodyBytes`.
fn body_options(raw: &mut RawRollout) -> Result<(Option<String>, u32), ConfigError> {
    let model_header = match raw.model_header.take() {
        Some(h) => Some(names::other_written_header("modelHeader", &h)?),
        None => None,
    };
    let max = match raw.max_body_bytes.take() {
        Some(WholeNumber(n)) if (1..=MAX_BODY_BYTES).contains(&n) => n,
        Some(WholeNumber(n)) => {
            return err(
                "maxBodyBytes",
                format!("{n} is not from 1 to {MAX_BODY_BYTES}"),
            )
        }
        None => DEFAULT_MAX_BODY_BYTES,
    };
    Ok((model_header, max))
}

impl Config {
    /// Parses and validates a plugin config (the JSON text Istio or Envoy
    /// delivers).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
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
            return err(
                "(config)",
                "is empty; at least `versions` (or `rollouts`) is required",
            );
        }
        if !text.starts_with('{') {
            return err("(config)", "must be a JSON object");
        }
        validate(parse(text)?)
    }

    /// What the accepted-config log line says: the rollout's summary, or for
    /// a config with `rollouts` their number and names (the CLI's `check`
    /// prints the same).
    pub fn summary(&self) -> String {
        match (&self.index, self.rollouts.as_slice()) {
            (None, [one]) => one.summary(),
            _ => {
                let names: Vec<&str> = self.rollouts.iter().filter_map(Rollout::name).collect();
                let noun = if names.len() == 1 {
                    "rollout"
                } else {
                    "rollouts"
                };
                format!("{} {noun} ({})", names.len(), names.join(", "))
            }
        }
    }

    /// `summary`, cut to at most `max` bytes (on a character boundary: a
    /// salt or a body field may be any UTF-8) and marked `...` where cut.
    pub fn summary_within(&self, max: usize) -> String {
        let mut summary = self.summary();
        if summary.len() > max {
            let mut end = max.saturating_sub(3);
            while !summary.is_char_boundary(end) {
                end -= 1;
            }
            summary.truncate(end);
            summary.push_str("...");
        }
        summary
    }

    /// The rollout named `name`, in a config with `rollouts`.
    pub fn rollout_named(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The rollout of a request to `host` (the `:authority` without its port,
    /// lowercased: [`authority_host`]; `None` without one) whose `:path`
    /// `path` gives, read only when the host's rollouts differ by path.
    /// `None`: no rollout takes the request (`filter::on_unclaimed_request`).
    pub fn rollout_for<'p>(
        &self,
        host: Option<&[u8]>,
        path: impl FnOnce() -> Option<&'p [u8]>,
    ) -> Option<usize> {
        match &self.index {
            None => Some(0),
            Some(index) => index.lookup(host)?.rollout_for(path),
        }
    }
}

/// The top level: one rollout, or the `rollouts` list and nothing else.
fn validate(mut raw: RawRollout) -> Result<Config, ConfigError> {
    let pass_unclaimed = raw.pass_unclaimed_routing_headers.take();
    let (model_header, max_body_bytes) = body_options(&mut raw)?;
    let Some(entries) = raw.rollouts.take() else {
        if pass_unclaimed.is_some() {
            return err(
                "passUnclaimedRoutingHeaders",
                "applies to a config with `rollouts`; without them every request is taken",
            );
        }
        for (field, present) in [
            ("name", raw.name.is_some()),
            ("hosts", raw.hosts.is_some()),
            ("pathPrefixes", raw.path_prefixes.is_some()),
            ("models", raw.models.is_some()),
        ] {
            if present {
                return err(
                    field,
                    "scopes an entry of `rollouts`; a config without `rollouts` is one rollout for every request",
                );
            }
        }
        let rollouts = vec![rollout::validate(raw)?];
        let body = BodyRead::of(&rollouts, model_header, max_body_bytes)?;
        return Ok(Config {
            rollouts,
            index: None,
            unclaimed_removes: Vec::new(),
            by_name: HashMap::new(),
            body,
        });
    };
    let scope_fields = [
        ("name", raw.name.is_some()),
        ("hosts", raw.hosts.is_some()),
        ("pathPrefixes", raw.path_prefixes.is_some()),
        ("models", raw.models.is_some()),
    ];
    let scope_field = scope_fields.iter().find(|(_, present)| *present);
    if let Some(field) = scope_field
        .map(|(f, _)| *f)
        .or(rollout::fields_present(&raw).first().copied())
    {
        return err(
            field,
            "belongs in each entry of `rollouts`; the top level of a config with `rollouts` holds only the options about them",
        );
    }
    if entries.is_empty() {
        return err("rollouts", "must list at least one rollout");
    }
    if entries.len() > MAX_ROLLOUTS {
        return err(
            "rollouts",
            format!("lists more than {MAX_ROLLOUTS} rollouts"),
        );
    }
    let mut rollouts = Vec::with_capacity(entries.len());
    let mut index = scope::IndexBuilder::default();
    let mut regexes = 0;
    for (i, Object(mut entry)) in entries.into_iter().enumerate() {
        let at = format!("rollouts[{i}]");
        if entry.rollouts.is_some() {
            return err(format!("{at}.rollouts"), "rollouts do not nest");
        }
        for (field, present) in [
            (
                "passUnclaimedRoutingHeaders",
                entry.pass_unclaimed_routing_headers.is_some(),
            ),
            ("modelHeader", entry.model_header.is_some()),
            ("maxBodyBytes", entry.max_body_bytes.is_some()),
        ] {
            if present {
                return err(
                    format!("{at}.{field}"),
                    "belongs at the top level: it applies to every request of the config",
                );
            }
        }
        let scoped = scope::validate(&mut entry, &rollouts).map_err(|e| e.within(&at))?;
        let mut rollout = rollout::validate(entry).map_err(|e| e.within(&at))?;
        regexes += rollout.regexes();
        if regexes > MAX_REGEXES_TOTAL {
            return err(
                format!("{at}.rules"),
                format!("takes the config past {MAX_REGEXES_TOTAL} regexes, all rollouts together"),
            );
        }
        index.add(&at, i, &scoped, &rollouts)?;
        rollout.scope = Some(scoped);
        rollouts.push(rollout);
    }
    let mut unclaimed_removes: Vec<String> = Vec::new();
    if pass_unclaimed != Some(true) {
        for header in rollouts.iter().map(|r| &r.routing_header) {
            if !unclaimed_removes.contains(header) {
                unclaimed_removes.push(header.clone());
            }
        }
    }
    for rollout in &mut rollouts {
        rollout.foreign_routing_headers = unclaimed_removes
            .iter()
            .filter(|h| **h != rollout.routing_header)
            .cloned()
            .collect();
    }
    let by_name = rollouts
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((r.name()?.to_string(), i)))
        .collect();
    let body = BodyRead::of(&rollouts, model_header, max_body_bytes)?;
    Ok(Config {
        rollouts,
        index: Some(index.build()),
        unclaimed_removes,
        by_name,
        body,
    })
}
