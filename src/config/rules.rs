//! A rollout's `rules`: header and cookie conditions that pin a request to a
//! version, checked in order before any user id.

use regex_lite::Regex;

use super::names::{self, HeaderSlots};
use super::raw::{Object, RawRule, RawStringMatch};
use super::rollout::{Condition, Rule, Source, Version};
use super::{
    err, versions, ConfigError, MAX_CONDITIONS_PER_RULE, MAX_MATCH_VALUE_LEN, MAX_NAME_LEN,
    MAX_REGEXES, MAX_REGEX_LEN, MAX_REGEX_NESTING, MAX_REGEX_SIZE, MAX_RULES,
};
use crate::matcher::StringMatch;

#[inline(never)]
pub(super) fn validate(
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
        let version = versions::version_index(versions, &format!("{field}.version"), &r.version)?;
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
            let name = names::header_name(&cfield, h, true)?;
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
                    format!("is one regex too many: a rollout may hold {MAX_REGEXES}"),
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
pub fn whole_value_regex(pattern: &str) -> Result<Regex, regex_lite::Error> {
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
