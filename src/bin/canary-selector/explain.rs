//! `explain`: the version one request gets and why, from the filter's own
//! `decision::decide` (the guard taken as untripped), with the request given
//! as `-H` headers and `--cookie`s.

use serde::Serialize;

use canary_selector::config::{Rollout, Source};
use canary_selector::decision::{decide, Basis, Live, Reason, Request, WyRand};

use crate::input::{self, PluginConfig};
use crate::{percent, slice, At, Fatal, Report};

/// The request: lowercase header names and their values, the first of a
/// repeated header winning, as the filter's host returns them.
struct Given(Vec<(String, Vec<u8>)>);

impl Request for Given {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn request(headers: &[String], cookies: &[String]) -> Result<Given, Fatal> {
    let mut out = Vec::new();
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
        let name = name.trim().to_ascii_lowercase();
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
    Ok(Given(out))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    file: String,
    resource: Option<String>,
    /// The chosen version; `None` when the choice is random (anonymous).
    version: Option<String>,
    reason: &'static str,
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

pub fn run(
    file: &str,
    headers: &[String],
    cookies: &[String],
    at: At,
) -> Result<Explanation, Fatal> {
    let plugin = input::load_one(file)?;
    let mut req = request(headers, cookies)?;
    Ok(explain(&plugin, &mut req, at))
}

fn explain(plugin: &PluginConfig, req: &mut Given, at: At) -> Explanation {
    let mut out = Explanation {
        file: plugin.file.clone(),
        resource: plugin.resource.as_ref().map(ToString::to_string),
        version: None,
        reason: "rejected",
        rule: None,
        user_id: None,
        anonymous: None,
        weights: Vec::new(),
        at: at.text.clone(),
        schedule_step: None,
        guard_would_divert: false,
        error: None,
    };
    let rollout = match Rollout::from_json(plugin.json.as_bytes()) {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let live = Live {
        now_ms: at.ms,
        tripped: 0,
    };
    let seed = {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    };
    let d = decide(&rollout, req, &mut WyRand(seed), live);
    let thresholds = rollout.thresholds_at(at.ms);
    out.version = rollout.versions.get(d.version).map(|v| v.name.clone());
    out.reason = d.reason.as_str();
    out.weights = shares(&rollout, thresholds)
        .into_iter()
        .map(|(version, buckets)| Share {
            version,
            percent: percent(buckets),
        })
        .collect();
    out.schedule_step = live_step(&rollout, &at);
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
                .and_then(|s| id_value(&rollout, req, s))
                .unwrap_or_default();
            out.user_id = Some(UserId {
                source: from.map(|s| source_name(&rollout, s)).unwrap_or_default(),
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
                    .map(|s| source_name(&rollout, s))
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
    };
    let id = canary_selector::matcher::trim(raw);
    let id = id.get(..canary_selector::MAX_USER_ID_LEN).unwrap_or(id);
    Some(String::from_utf8_lossy(id).into_owned())
}

impl Report for Explanation {
    fn text(&self) -> String {
        let weights = self
            .weights
            .iter()
            .map(|s| format!("{} {}", s.version, s.percent))
            .collect::<Vec<_>>()
            .join(", ");
        let mut out = match (&self.error, &self.rule, &self.user_id, &self.anonymous) {
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

    #[test]
    fn headers_are_read_as_curl_sends_them() {
        let mut req = request(
            &[
                "X-User-Id:  alice ".into(),
                ":path: /v1/x".into(),
                "Cookie: a=1".into(),
            ],
            &["user_id=42".into()],
        )
        .unwrap();
        assert_eq!(req.header(0, "x-user-id"), Some(&b"alice"[..]));
        assert_eq!(req.header(0, ":path"), Some(&b"/v1/x"[..]));
        assert_eq!(req.header(0, "cookie"), Some(&b"a=1; user_id=42"[..]));
        for bad in ["no-colon", ":path", ": x"] {
            assert!(request(&[bad.into()], &[]).is_err(), "{bad}");
        }
        assert!(request(&[], &["novalue".into()]).is_err());
    }
}
