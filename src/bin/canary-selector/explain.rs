//! `explain`: the version one request gets and why, from the filter's own
//! `decision::decide` (the guard taken as untripped), with the request given
//! as `-H` headers and `--cookie`s, and, for a config with `rollouts`, the
//! host pattern and rollout that the filter's own index claims the request
//! for by `--host` and `--path` (`HostIndex::claim`), or what the filter does
//! to a request none takes.

use serde::Serialize;

use canary_selector::body::{self, Scanned};
use canary_selector::config::{
    authority_host, Config, HostIndex, HostRollouts, Rollout, Source, MAX_AUTHORITY_HOST_LEN,
};
use canary_selector::decision::{decide, Basis, Live, Reason, Request, WyRand};
use canary_selector::plan::{self, Unknown};

use crate::hosts::{self, Taker, Unclaimed};
use crate::input::{self, PluginConfig};
use crate::{percent, slice, At, Fatal, Report};

/// The request: lowercase header names and their values, the first of a
/// repeated header winning, as the filter's host returns them.
struct Given {
    headers: Vec<(String, Vec<u8>)>,
    /// The body as given (`--body`), and once the config is known, what the
    /// filter's scan finds in it (by `config.body.fields`).
    body: Option<Vec<u8>>,
    scanned: Option<(Vec<String>, Result<Scanned, Unknown>)>,
}

impl Given {
    /// Reads the body as the filter does for `config`: the fields it wants,
    /// or why it cannot. A body over `maxBodyBytes` is not read.
    fn scan(&mut self, config: &Config) {
        let Some(body) = &self.body else { return };
        let fields: Vec<&str> = config.body.fields.iter().map(String::as_str).collect();
        let scanned = if body.len() > config.body.max_bytes {
            Err(Unknown::TooLarge)
        } else {
            body::scan(
                &mut InMemory(body),
                body.len(),
                &fields,
                body::DEFAULT_MAX_VALUE,
            )
            .map_err(Unknown::Unreadable)
        };
        self.scanned = Some((config.body.fields.clone(), scanned));
    }
}

/// A body given whole, as a `BodySource`.
struct InMemory<'b>(&'b [u8]);

impl body::BodySource for InMemory<'_> {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        let end = start.saturating_add(max).min(self.0.len());
        self.0.get(start..end).map(<[u8]>::to_vec)
    }
}

impl Request for Given {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn body_field(&mut self, name: &str) -> Option<&[u8]> {
        let (fields, scanned) = self.scanned.as_ref()?;
        let index = fields.iter().position(|f| f == name)?;
        scanned.as_ref().ok()?.value(index).map(str::as_bytes)
    }
}

/// What the request is made of: `-H` headers, `--cookie`s, and `--host` and
/// `--path`, which are its `:authority` and `:path`.
pub struct RequestArgs<'a> {
    pub headers: &'a [String],
    pub cookies: &'a [String],
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    /// The JSON body (`--body`).
    pub body: Option<&'a str>,
}

fn request(args: &RequestArgs) -> Result<Given, Fatal> {
    let mut out = Vec::new();
    for (name, flag, value) in [
        (":authority", "--host", args.host),
        (":path", "--path", args.path),
    ] {
        if let Some(value) = value {
            out.push((name.to_string(), value.as_bytes().to_vec()));
            if args
                .headers
                .iter()
                .any(|h| header_name(h).as_deref() == Some(name))
            {
                return Err(Fatal(format!(
                    "{flag} and -H '{name}: ...' both give the request's {name}; give it once"
                )));
            }
        }
    }
    let (headers, cookies) = (args.headers, args.cookies);
    let mut cookie_parts = Vec::new();
    for h in headers {
        // A pseudo-header (`:path: /v1/...`) starts with a colon of its own.
        let skip = usize::from(h.starts_with(':'));
        let split = h.get(skip..).and_then(|rest| rest.split_once(':'));
        let Some((name, value)) = split
            .filter(|(name, _)| !name.trim().is_empty())
            .and_then(|(name, value)| Some((h.get(..skip + name.len())?, value)))
        else {
            return Err(Fatal(format!("-H {h:?}: expected `name: value`")));
        };
        let name = header_name_of(name);
        let value = value.trim_matches([' ', '\t']);
        if name == "cookie" {
            cookie_parts.push(value.to_string());
        } else {
            out.push((name, value.as_bytes().to_vec()));
        }
    }
    for c in cookies {
        if !c.contains('=') {
            return Err(Fatal(format!("--cookie {c:?}: expected `name=value`")));
        }
        cookie_parts.push(c.trim().to_string());
    }
    if !cookie_parts.is_empty() {
        out.push(("cookie".into(), cookie_parts.join("; ").into_bytes()));
    }
    if args.body.is_some() && !out.iter().any(|(n, _)| n == "content-type") {
        out.push(("content-type".into(), b"application/json".to_vec()));
    }
    Ok(Given {
        headers: out,
        body: args.body.map(|b| b.as_bytes().to_vec()),
        scanned: None,
    })
}

/// A header name as the filter sees it: lowercase, and `Host` as Envoy
/// hands it over, `:authority`.
fn header_name_of(written: &str) -> String {
    match written.trim().to_ascii_lowercase() {
        host if host == "host" => ":authority".into(),
        name => name,
    }
}

/// The name of a `-H name: value` argument, if it has one.
fn header_name(h: &str) -> Option<String> {
    let skip = usize::from(h.starts_with(':'));
    let (name, _) = h.get(skip..)?.split_once(':')?;
    Some(header_name_of(h.get(..skip + name.len())?))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    file: String,
    resource: Option<String>,
    /// The rollout that takes the request, for a config with `rollouts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<Pick>,
    /// The chosen version; `None` when the choice is random (anonymous) or
    /// no rollout takes the request.
    version: Option<String>,
    /// `rule`, `sticky`, `anonymous`; `unclaimed` when no rollout takes the
    /// request; `rejected` for a config the filter rejects.
    reason: &'static str,
    /// What the filter does to a request no rollout takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    unclaimed: Option<Unclaimed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<RuleHit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous: Option<Anonymous>,
    /// The weights live at `at`, as the slices give them.
    weights: Vec<Share>,
    /// The RFC 3339 time asked for (`None`: now).
    at: Option<String>,
    /// The schedule step live at `at`, if a step has begun.
    schedule_step: Option<usize>,
    /// A tripped guard would send this request to the stable version instead.
    guard_would_divert: bool,
    /// The filter's one-line error when it rejects the config.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The model the version asks for: the filter rewrites the body's
    /// `model` (and `modelHeader`) to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrites_model: Option<String>,
}

/// How a config with `rollouts` takes the request, as the filter's index
/// claims it: its host's most specific pattern, then that pattern's rollout
/// with the longest path prefix that takes the path.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pick {
    /// The `:authority` as given.
    authority: Option<String>,
    /// The host as the filter looks it up (no port, lowercase); `None`
    /// without a usable `:authority` (none, empty, or longer than the
    /// filter reads).
    host: Option<String>,
    path: Option<String>,
    /// The most specific host pattern matching the host; `None` if none does.
    pattern: Option<String>,
    /// The rollout that takes the request (its index in `rollouts`); `None`:
    /// no rollout does.
    index: Option<usize>,
    name: Option<String>,
    /// The prefix that took it (as the filter compares it: no trailing
    /// `/`); `None` when the rollout takes every path.
    path_prefix: Option<String>,
    /// The rollouts `pattern` holds.
    pattern_rollouts: Vec<Taker>,
    /// Less specific patterns that match the host too: never tried.
    passed_over: Vec<String>,
    /// Where the prefix's rollouts are scoped by model: the request's model
    /// and where it came from (`header` or `body`), or why it is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<Model>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Model {
    name: Option<String>,
    from: Option<&'static str>,
    unknown: Option<&'static str>,
}

impl Model {
    fn text(&self) -> String {
        match (&self.name, self.from, self.unknown) {
            (Some(name), Some(from), _) => format!(", model {name} (from the {from})"),
            (_, _, Some(why)) => format!(", model unknown ({why})"),
            _ => String::new(),
        }
    }
}

/// The request's model, as the filter learns it where a prefix's rollouts
/// are scoped by model: the `modelHeader` value, else the body's `model`
/// (read only if the body is JSON, present and within `maxBodyBytes`).
fn model_of(config: &Config, req: &mut Given) -> Model {
    if let Some(value) = config
        .body
        .model_header
        .as_deref()
        .and_then(|h| req.header(0, h))
        .filter(|v| !v.is_empty())
    {
        return Model {
            name: Some(String::from_utf8_lossy(value).into_owned()),
            from: Some("header"),
            unknown: None,
        };
    }
    let facts = plan::BodyFacts {
        json: req.header(0, "content-type").is_some_and(plan::is_json),
        content_length: req.body.as_ref().map(|b| b.len() as u64),
        end_of_stream: req.body.is_none(),
    };
    let found = match facts.unreadable(config.body.max_bytes) {
        Some(why) => Err(why),
        None => match &req.scanned {
            Some((_, scanned)) => plan::model_of(scanned).map(|(m, _)| m.to_string()),
            None => Err(Unknown::NoBody),
        },
    };
    match found {
        Ok(name) => Model {
            name: Some(name),
            from: Some("body"),
            unknown: None,
        },
        Err(why) => Model {
            name: None,
            from: None,
            unknown: Some(why.as_str()),
        },
    }
}

#[derive(Serialize)]
struct RuleHit {
    index: usize,
    name: String,
}

#[derive(Serialize)]
struct UserId {
    /// `header x-user-id`, `cookie user_id`.
    source: String,
    /// The id as hashed (lossy UTF-8 for display).
    value: String,
    bucket: u32,
    /// The version's slice, `[from, to)` on the 2^32 scale.
    slice: (u64, u64),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Anonymous {
    /// The sources tried, none holding an id.
    tried: Vec<String>,
    /// The cookie the filter would set with a new id.
    cookie: Option<String>,
}

#[derive(Serialize)]
struct Share {
    version: String,
    percent: String,
}

pub fn source_name(rollout: &Rollout, source: &Source) -> String {
    match source {
        Source::Header { slot } => format!(
            "header {}",
            rollout.headers.get(*slot).map_or("?", String::as_str)
        ),
        Source::Cookie { name, .. } => format!("cookie {}", String::from_utf8_lossy(name)),
        Source::BodyField { name } => format!("body field {name}"),
    }
}

/// The weights the slices give at a moment, as percentages.
fn shares(rollout: &Rollout, thresholds: &[u64]) -> Vec<(String, u64)> {
    rollout
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (from, to) = slice(thresholds, i);
            (v.name.clone(), to - from)
        })
        .collect()
}

fn live_step(rollout: &Rollout, at: &At) -> Option<usize> {
    rollout
        .schedule
        .as_ref()?
        .steps
        .iter()
        .rposition(|s| at.ms >= s.at_ms)
}

pub fn run(file: &str, args: &RequestArgs, at: At) -> Result<Explanation, Fatal> {
    explain_request(&input::load_one(file)?, args, at)
}

/// The request of `args` under `plugin`'s config.
pub fn explain_request(
    plugin: &PluginConfig,
    args: &RequestArgs,
    at: At,
) -> Result<Explanation, Fatal> {
    let mut req = request(args)?;
    Ok(explain(plugin, &mut req, at))
}

/// The pattern and rollout that the filter's index claims the request for,
/// and what to tell about it.
fn pick(config: &Config, index: &HostIndex, req: &mut Given) -> Pick {
    let authority = req.header(0, ":authority").map(<[u8]>::to_vec);
    let path = req.header(0, ":path").map(<[u8]>::to_vec);
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let host = authority
        .as_deref()
        .and_then(|a| authority_host(a, &mut buf));
    let claim = index.claim(host, || path.as_deref());
    let entry = index
        .lookup(host)
        .and_then(|held| held.prefix_for(|| path.as_deref()));
    // Where the prefix's rollouts are scoped by model, the request's model
    // picks among them, as the filter picks.
    let (taker, model) = match entry.filter(|e| e.by_model()) {
        Some(entry) => {
            let model = model_of(config, req);
            let rollout = entry.rollout_for(model.name.as_deref().map(str::as_bytes));
            (rollout.map(|r| (r, entry.prefix())), Some(model))
        }
        None => (claim.and_then(|c| c.taker), None),
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Pick {
        authority: authority.as_deref().map(text),
        host: host.map(text),
        path: path.as_deref().map(text),
        pattern: claim.map(|c| c.pattern.to_string()),
        index: taker.map(|(rollout, _)| rollout),
        name: taker
            .and_then(|(rollout, _)| config.rollouts.get(rollout)?.name())
            .map(str::to_string),
        path_prefix: taker
            .map(|(_, prefix)| prefix.to_string())
            .filter(|prefix| !prefix.is_empty()),
        pattern_rollouts: claim.map_or_else(Vec::new, |c| hosts::held_by(config, c.pattern)),
        passed_over: index
            .matching(host)
            .skip(1)
            .map(HostRollouts::pattern)
            .map(str::to_string)
            .collect(),
        model,
    }
}

fn explain(plugin: &PluginConfig, req: &mut Given, at: At) -> Explanation {
    let mut out = Explanation {
        file: plugin.file.clone(),
        resource: plugin.resource.as_ref().map(ToString::to_string),
        rollout: None,
        version: None,
        reason: "rejected",
        unclaimed: None,
        rule: None,
        user_id: None,
        anonymous: None,
        weights: Vec::new(),
        at: at.text.clone(),
        schedule_step: None,
        guard_would_divert: false,
        error: None,
        rewrites_model: None,
    };
    let config = match Config::from_json(plugin.json.as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    req.scan(&config);
    let chosen = match &config.index {
        // No `rollouts`: its one rollout takes every request.
        None => config.rollouts.first(),
        Some(index) => {
            let picked = pick(&config, index, req);
            let chosen = picked.index.and_then(|i| config.rollouts.get(i));
            out.rollout = Some(picked);
            chosen
        }
    };
    let Some(rollout) = chosen else {
        out.reason = "unclaimed";
        let mut unclaimed = Unclaimed::of(&config);
        // The filter writes the model header for a model it read from the
        // body whether or not a rollout takes it.
        let body_model = out
            .rollout
            .as_ref()
            .and_then(|p| p.model.as_ref())
            .filter(|m| m.from == Some("body"))
            .and_then(|m| m.name.as_deref());
        unclaimed.model_header = config
            .body
            .model_header
            .as_deref()
            .zip(plan::model_header_value(None, body_model, false))
            .map(|(header, model)| format!("{header}: {model}"));
        out.unclaimed = Some(unclaimed);
        return out;
    };
    let live = Live {
        now_ms: at.ms,
        held_back: 0,
    };
    let seed = {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    };
    let d = decide(rollout, req, &mut WyRand(seed), live);
    let thresholds = rollout.thresholds_at(at.ms);
    out.version = rollout.versions.get(d.version).map(|v| v.name.clone());
    out.rewrites_model = plan::rewrites(rollout, &d).map(str::to_string);
    out.reason = d.reason.as_str();
    out.weights = shares(rollout, thresholds)
        .into_iter()
        .map(|(version, buckets)| Share {
            version,
            percent: percent(buckets),
        })
        .collect();
    out.schedule_step = live_step(rollout, &at);
    out.guard_would_divert = rollout.guard.is_some() && d.reason != Reason::Rule && d.version != 0;
    match d.basis {
        Basis::Rule { index } => {
            out.rule = rollout.rules.get(index).map(|r| RuleHit {
                index,
                name: r.name.clone(),
            });
        }
        Basis::UserId { source, bucket } => {
            let from = rollout.user_ids.get(source);
            let value = from
                .and_then(|s| id_value(rollout, req, s))
                .unwrap_or_default();
            out.user_id = Some(UserId {
                source: from.map(|s| source_name(rollout, s)).unwrap_or_default(),
                value,
                bucket,
                slice: slice(thresholds, d.version),
            });
        }
        Basis::Anonymous { .. } => {
            // Random: another request with no id may get another version.
            out.version = None;
            out.anonymous = Some(Anonymous {
                tried: rollout
                    .user_ids
                    .iter()
                    .map(|s| source_name(rollout, s))
                    .collect(),
                cookie: rollout.anonymous_cookie.as_ref().map(|c| c.name.clone()),
            });
        }
    }
    out
}

/// The id as the decision hashed it (trimmed, at most 256 bytes), for display.
fn id_value(rollout: &Rollout, req: &mut Given, source: &Source) -> Option<String> {
    let raw = match source {
        Source::Header { slot } => req.header(*slot, rollout.headers.get(*slot)?)?,
        Source::Cookie { slot, name } => canary_selector::matcher::cookie_value(
            req.header(*slot, rollout.headers.get(*slot)?)?,
            name,
        )?,
        Source::BodyField { name } => req.body_field(name)?,
    };
    let id = canary_selector::matcher::trim(raw);
    let id = id.get(..canary_selector::MAX_USER_ID_LEN).unwrap_or(id);
    Some(String::from_utf8_lossy(id).into_owned())
}

impl Pick {
    /// One line: the rollout and why, or why none and, as `unclaimed` says,
    /// what the filter does then.
    fn text(&self, unclaimed: &str) -> String {
        let host = match (&self.host, &self.authority) {
            (Some(host), _) => format!("host {host}"),
            (None, Some(authority)) => format!(
                "the unusable :authority {authority:?} (empty, or longer than the {MAX_AUTHORITY_HOST_LEN} bytes the filter reads)"
            ),
            (None, None) => "no :authority (--host)".to_string(),
        };
        let path = self.path.as_deref().unwrap_or_default();
        let Some(pattern) = &self.pattern else {
            return match &self.host {
                Some(_) => format!("no rollout: {host} matches no rollout's hosts: {unclaimed}\n"),
                None => format!("no rollout: {host} given, which only a rollout of hosts * takes, and none lists *: {unclaimed}\n"),
            };
        };
        let matched = match &self.host {
            Some(_) => format!("{host} matches {pattern}"),
            None => format!("{host} given, which only * takes"),
        };
        match (self.index, &self.name) {
            (Some(index), Some(name)) => {
                let paths = match &self.path_prefix {
                    Some(prefix) => format!("prefix {prefix} takes path {path}"),
                    None => "every path".into(),
                };
                let model = self.model.as_ref().map(Model::text).unwrap_or_default();
                format!("rollout {name} (rollouts[{index}]): {matched}, {paths}{model}\n")
            }
            _ if self.model.is_some() => {
                let model = self.model.as_ref();
                let listed = if model.is_some_and(|m| m.name.is_some()) {
                    "no rollout there lists that model, and none takes any model"
                } else {
                    "no rollout there takes any model"
                };
                let model = model.map(Model::text).unwrap_or_default();
                format!("no rollout: {matched}, path {path}{model}: {listed}: {unclaimed}\n")
            }
            _ => {
                let held: Vec<String> = self
                    .pattern_rollouts
                    .iter()
                    .map(|t| format!("{} ({})", hosts::paths_text(&t.path_prefixes), t.name))
                    .collect();
                let path = match &self.path {
                    Some(path) => format!("not path {path}"),
                    None => "and no :path given (--path)".into(),
                };
                let passed_over = match self.passed_over.as_slice() {
                    [] => String::new(),
                    [one] => format!("; the less specific {one} is not tried"),
                    more => format!("; the less specific {} are not tried", more.join(", ")),
                };
                format!(
                    "no rollout: {matched}, whose rollouts take {}, {path}: {unclaimed}{passed_over}\n",
                    held.join(" and ")
                )
            }
        }
    }
}

impl Report for Explanation {
    fn text(&self) -> String {
        let unclaimed = self.unclaimed.as_ref().map(Unclaimed::text);
        let picked = self
            .rollout
            .as_ref()
            .map(|p| p.text(unclaimed.as_deref().unwrap_or_default()))
            .unwrap_or_default();
        if self.unclaimed.is_some() {
            return picked;
        }
        let weights = self
            .weights
            .iter()
            .map(|s| format!("{} {}", s.version, s.percent))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = picked;
        out += &match (&self.error, &self.rule, &self.user_id, &self.anonymous) {
            (Some(e), ..) => format!("rejected: {e}\n"),
            (None, Some(rule), ..) => format!(
                "{}: rule {} (rules[{}]) matched\n",
                self.version.as_deref().unwrap_or_default(),
                rule.name,
                rule.index
            ),
            (None, None, Some(id), _) => format!(
                "{}: sticky: {} is {:?}, bucket {} of 2^32 ({}), in {}'s slice [{}, {})\n",
                self.version.as_deref().unwrap_or_default(),
                id.source,
                id.value,
                id.bucket,
                percent(u64::from(id.bucket)),
                self.version.as_deref().unwrap_or_default(),
                percent(id.slice.0),
                percent(id.slice.1),
            ),
            (None, None, None, Some(anon)) => {
                let tried = if anon.tried.is_empty() {
                    "no user id sources configured".to_string()
                } else {
                    format!("no user id in {}", anon.tried.join(", "))
                };
                match &anon.cookie {
                    Some(cookie) => format!(
                        "random: anonymous ({tried}): the filter sets cookie {cookie} to a new random id and buckets it, so the user sticks from the next request on: {weights}\n"
                    ),
                    None => format!(
                        "random: anonymous ({tried}): each such request is a random pick at {weights}\n"
                    ),
                }
            }
            (None, None, None, None) => String::new(),
        };
        if let Some(model) = &self.rewrites_model {
            out.push_str(&format!(
                "{} asks for model {model}: the filter rewrites the body's \"model\" to it\n",
                self.version.as_deref().unwrap_or_default()
            ));
        }
        if self.error.is_none() {
            let when = self.at.as_deref().unwrap_or("now");
            if let Some(step) = self.schedule_step {
                out.push_str(&format!(
                    "weights at {when}: schedule step {step}: {weights}\n"
                ));
            } else if self.at.is_some() {
                out.push_str(&format!("weights at {when}: {weights}\n"));
            }
        }
        if self.guard_would_divert {
            out.push_str("guard assumed untripped: a tripped guard would send this request to the stable version\n");
        }
        out
    }

    fn failed(&self) -> bool {
        self.error.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(headers: &'a [String], cookies: &'a [String]) -> RequestArgs<'a> {
        RequestArgs {
            headers,
            cookies,
            host: None,
            path: None,
            body: None,
        }
    }

    #[test]
    fn headers_are_read_as_curl_sends_them() {
        let mut req = request(&args(
            &[
                "X-User-Id:  alice ".into(),
                ":path: /v1/x".into(),
                "Cookie: a=1".into(),
                "Host: Models.Example.com:8080".into(),
            ],
            &["user_id=42".into()],
        ))
        .unwrap();
        assert_eq!(req.header(0, "x-user-id"), Some(&b"alice"[..]));
        assert_eq!(req.header(0, ":path"), Some(&b"/v1/x"[..]));
        assert_eq!(req.header(0, "cookie"), Some(&b"a=1; user_id=42"[..]));
        // Envoy hands `Host` over as `:authority`.
        assert_eq!(
            req.header(0, ":authority"),
            Some(&b"Models.Example.com:8080"[..])
        );
        for bad in ["no-colon", ":path", ": x"] {
            assert!(request(&args(&[bad.into()], &[])).is_err(), "{bad}");
        }
        assert!(request(&args(&[], &["novalue".into()])).is_err());
    }

    #[test]
    fn host_and_path_are_the_pseudo_headers_given_once() {
        let mut req = request(&RequestArgs {
            host: Some("api.example.com"),
            path: Some("/v2/x"),
            ..args(&[], &[])
        })
        .unwrap();
        assert_eq!(req.header(0, ":authority"), Some(&b"api.example.com"[..]));
        assert_eq!(req.header(0, ":path"), Some(&b"/v2/x"[..]));
        let twice = ["host: b.example.com".to_string()];
        let Err(Fatal(msg)) = request(&RequestArgs {
            host: Some("a.example.com"),
            ..args(&twice, &[])
        }) else {
            panic!("both accepted")
        };
        assert_eq!(
            msg,
            "--host and -H ':authority: ...' both give the request's :authority; give it once"
        );
    }

    fn explained(config: &str, host: Option<&str>, path: Option<&str>) -> Explanation {
        let plugin = PluginConfig {
            file: "c.json".into(),
            resource: None,
            json: config.into(),
            target_gateways: Vec::new(),
            undeliverable: None,
        };
        let headers = ["x-user-id: u1".to_string()];
        let mut req = request(&RequestArgs {
            host,
            path,
            ..args(&headers, &[])
        })
        .unwrap();
        explain(&plugin, &mut req, At { text: None, ms: 0 })
    }

    const ROLLOUTS: &str = r#"{"rollouts":[
        {"name":"iris","hosts":["iris.example.com"],"versions":[{"name":"iris-v1","weight":100}],"stickiness":{"userIdHeaders":["x-user-id"]}},
        {"name":"flowers","hosts":["*.flowers.example.com"],"versions":[{"name":"flowers-v1","weight":100}],"stickiness":{"userIdHeaders":["x-user-id"]}},
        {"name":"api-v2","hosts":["api.example.com"],"pathPrefixes":["/v2/"],"versions":[{"name":"api-v2","weight":100}],"stickiness":{"userIdHeaders":["x-user-id"]}},
        {"name":"api","hosts":["api.example.com"],"pathPrefixes":["/v1/","/v2/models/legacy"],"versions":[{"name":"api-v1","weight":100}],"stickiness":{"userIdHeaders":["x-user-id"]}}]}"#;

    #[test]
    fn the_rollout_is_named_with_the_pattern_and_prefix_that_took_the_request() {
        let e = explained(ROLLOUTS, Some("IRIS.example.com:443"), None);
        assert_eq!(
            e.text(),
            format!(
                "rollout iris (rollouts[0]): host iris.example.com matches iris.example.com, every path\n\
                 iris-v1: sticky: header x-user-id is \"u1\", bucket {b} of 2^32 ({}), in iris-v1's slice [0%, 100%)\n",
                percent(u64::from(canary_selector::hash::murmur3_32(b"iris-v1:u1", 0))),
                b = canary_selector::hash::murmur3_32(b"iris-v1:u1", 0),
            )
        );
        let e = explained(ROLLOUTS, Some("a.b.flowers.example.com"), Some("/x"));
        assert!(
            e.text().starts_with("rollout flowers (rollouts[1]): host a.b.flowers.example.com matches *.flowers.example.com, every path\nflowers-v1: sticky"),
            "{}",
            e.text()
        );
        let e = explained(
            ROLLOUTS,
            Some("api.example.com"),
            Some("/v2/models/legacy/infer"),
        );
        assert_eq!(e.version.as_deref(), Some("api-v1"));
        assert!(e.text().starts_with("rollout api (rollouts[3]): host api.example.com matches api.example.com, prefix /v2/models/legacy takes path /v2/models/legacy/infer\n"), "{}", e.text());
        // Prefixes take whole segments (and KServe's `:verb`), as the
        // filter's do, and are shown as it compares them.
        for (path, name, prefix) in [
            ("/v2/models/legacy2/infer", "api-v2", "/v2"),
            ("/v2/models/legacy:predict", "api", "/v2/models/legacy"),
            ("/v2?x=/v1/", "api-v2", "/v2"),
        ] {
            let e = explained(ROLLOUTS, Some("api.example.com"), Some(path));
            let pick = e.rollout.as_ref().unwrap();
            assert_eq!(
                (pick.name.as_deref(), pick.path_prefix.as_deref()),
                (Some(name), Some(prefix)),
                "{path}"
            );
        }
    }

    /// What the filter does to the request, by default.
    const REMOVED: &str = "the filter removes the routing header x-canary-version from the request, so that the client cannot pick a version, and changes nothing else (no cookie, no response header)";

    #[test]
    fn a_request_no_rollout_takes_is_said_to_lose_its_routing_headers() {
        let cases = [
            (Some("models.other.org"), Some("/v1/"), format!("no rollout: host models.other.org matches no rollout's hosts: {REMOVED}\n")),
            (Some("api.example.com"), Some("/health"), format!("no rollout: host api.example.com matches api.example.com, whose rollouts take /v2 (api-v2) and /v1, /v2/models/legacy (api), not path /health: {REMOVED}\n")),
            (Some("api.example.com"), Some("/v1x"), format!("no rollout: host api.example.com matches api.example.com, whose rollouts take /v2 (api-v2) and /v1, /v2/models/legacy (api), not path /v1x: {REMOVED}\n")),
            (Some("api.example.com"), None, format!("no rollout: host api.example.com matches api.example.com, whose rollouts take /v2 (api-v2) and /v1, /v2/models/legacy (api), and no :path given (--path): {REMOVED}\n")),
            (None, None, format!("no rollout: no :authority (--host) given, which only a rollout of hosts * takes, and none lists *: {REMOVED}\n")),
        ];
        for (host, path, text) in cases {
            let e = explained(ROLLOUTS, host, path);
            assert_eq!(e.text(), text);
            assert_eq!((e.reason, e.version.as_deref()), ("unclaimed", None));
            let unclaimed = e.unclaimed.as_ref().unwrap();
            assert_eq!(unclaimed.removed, ["x-canary-version"]);
            assert!(unclaimed.passed_as_sent.is_empty());
            assert!(!e.failed());
        }
        // `*` takes a request without a host.
        let any = ROLLOUTS.replace(r#"["iris.example.com"]"#, r#"["iris.example.com","*"]"#);
        let e = explained(&any, None, None);
        assert!(e.text().starts_with("rollout iris (rollouts[0]): no :authority (--host) given, which only * takes, every path\n"), "{}", e.text());
        // Nor does `*` take the api host's other paths: there is no fall-through.
        let e = explained(&any, Some("api.example.com"), Some("/health"));
        assert!(
            e.text().ends_with(&format!(
                "not path /health: {REMOVED}; the less specific * is not tried\n"
            )),
            "{}",
            e.text()
        );
        assert_eq!(e.rollout.as_ref().unwrap().passed_over, ["*"]);
        // A host the filter cannot read: longer than its cap.
        let long = "a".repeat(MAX_AUTHORITY_HOST_LEN + 1);
        let e = explained(ROLLOUTS, Some(&long), None);
        assert!(e.text().starts_with(&format!("no rollout: the unusable :authority \"{long}\" (empty, or longer than the 255 bytes the filter reads) given, which only")), "{}", e.text());
        // The longest it reads is a host.
        let longest = format!(
            "{}.flowers.example.com",
            "a".repeat(MAX_AUTHORITY_HOST_LEN - 20)
        );
        assert_eq!(longest.len(), MAX_AUTHORITY_HOST_LEN);
        let e = explained(ROLLOUTS, Some(&longest), None);
        assert_eq!(e.rollout.as_ref().unwrap().name.as_deref(), Some("flowers"));
        // The config may let the routing headers through instead.
        let passing = ROLLOUTS.replacen(
            r#"{"rollouts":["#,
            r#"{"passUnclaimedRoutingHeaders":true,"rollouts":["#,
            1,
        );
        let e = explained(&passing, Some("models.other.org"), None);
        assert_eq!(e.text(), "no rollout: host models.other.org matches no rollout's hosts: the request passes untouched: passUnclaimedRoutingHeaders lets the routing header x-canary-version through as the client sent it; no cookie, no response header\n");
        let unclaimed = e.unclaimed.as_ref().unwrap();
        assert!(unclaimed.removed.is_empty());
        assert_eq!(unclaimed.passed_as_sent, ["x-canary-version"]);
    }

    #[test]
    fn without_rollouts_host_and_path_pick_nothing() {
        let one = r#"{"versions":[{"name":"v1","weight":100}],"stickiness":{"userIdHeaders":["x-user-id"]}}"#;
        let with = explained(one, Some("anything.example.org"), Some("/x"));
        let without = explained(one, None, None);
        assert!(with.rollout.is_none());
        assert_eq!(with.text(), without.text());
        assert!(with.text().starts_with("v1: sticky"), "{}", with.text());
    }

    #[test]
    fn a_body_picks_the_rollout_by_its_model_and_gives_the_user_id_as_the_filter_does() {
        const CHAT: &str = r#"{"modelHeader": "x-gateway-model-name", "rollouts": [
          {"name": "llama", "hosts": ["*"], "pathPrefixes": ["/v1/chat/completions"], "models": ["llama"],
           "versions": [{"name": "llama-v1", "weight": 50}, {"name": "llama-v2", "weight": 50, "model": "llama-ft"}],
           "stickiness": {"userIdHeaders": ["x-user-id"], "userIdBodyFields": ["user"]}}]}"#;
        let explain = |headers: &[String], body: Option<&str>| {
            let args = RequestArgs {
                headers,
                cookies: &[],
                host: Some("gateway.example.com"),
                path: Some("/v1/chat/completions"),
                body,
            };
            let plugin = PluginConfig {
                file: "chat.json".into(),
                resource: None,
                json: CHAT.into(),
                target_gateways: Default::default(),
                undeliverable: None,
            };
            explain_request(&plugin, &args, At::now()).unwrap().text()
        };
        let text = explain(
            &[],
            Some(r#"{"messages": [], "model": "llama", "user": "bob"}"#),
        );
        assert!(text.starts_with("rollout llama (rollouts[0]): host gateway.example.com matches *, prefix /v1/chat/completions takes path /v1/chat/completions, model llama (from the body)\nllama-v2: sticky: body field user is \"bob\""), "{text}");
        assert!(
            text.contains(
                "llama-v2 asks for model llama-ft: the filter rewrites the body's \"model\" to it"
            ),
            "{text}"
        );
        // The header names the model first.
        let text = explain(&["x-gateway-model-name: llama".into()], None);
        assert!(text.contains("model llama (from the header)"), "{text}");
        // A model no rollout lists, and a body the filter cannot read.
        let text = explain(&[], Some(r#"{"model": "gpt-4o"}"#));
        assert!(text.starts_with("no rollout: host gateway.example.com matches *, path /v1/chat/completions, model gpt-4o (from the body): no rollout there lists that model"), "{text}");
        // The filter writes the model header for it all the same (for
        // KServe's model-routing rules), as it does not for a model the
        // client named in the header.
        assert!(text.contains("cannot pick a version, writes x-gateway-model-name: gpt-4o (the model read from the body), and changes nothing else"), "{text}");
        let text = explain(&["x-gateway-model-name: gpt-4o".into()], None);
        assert!(
            text.contains("model gpt-4o (from the header)") && !text.contains("writes"),
            "{text}"
        );
        let text = explain(&[], Some(r#"{"model": "llama", "model": "llama"}"#));
        assert!(
            text.contains("model unknown (duplicate): no rollout there takes any model"),
            "{text}"
        );
    }
}
