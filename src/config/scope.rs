//! A rollout's scope, in a config that lists `rollouts`: its `name`, the
//! `hosts` it serves and the `pathPrefixes` it takes there; and the
//! [`HostIndex`] built from every rollout's scope once per push, which takes
//! a request to its rollout with a few hash lookups, however many rollouts
//! the config lists.
//!
//! Precedence: the most specific host pattern that matches the request's
//! host (an exact name, then the longest `*.` wildcard suffix, then `*`),
//! then, among the rollouts that pattern holds, the longest path prefix that
//! takes the `:path` ([`prefix_takes`]: whole segments, as Gateway API's
//! `PathPrefix`, plus KServe's `:verb`). A pattern's rollouts are all there
//! is for the hosts it is the most specific match of: a request whose path
//! none of them takes is unclaimed, whatever a less specific pattern holds.
//!
//! The filter ([`crate::config::Config::rollout_for`]) and the CLI ask the
//! same index ([`HostIndex::claim`]), so the two cannot disagree.

use std::collections::HashMap;

use super::names;
use super::raw::RawRollout;
use super::rollout::Rollout;
use super::{
    err, ConfigError, MAX_HOSTS, MAX_HOSTS_PER_ROLLOUT, MAX_MODELS_PER_ROLLOUT, MAX_PATH_PREFIXES,
    MAX_PATH_PREFIX_LEN, MAX_VERSION_NAME_LEN,
};

/// A rollout's place in a config that lists `rollouts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub name: String,
    /// Host patterns, lowercased: `models.example.com`, `*.example.com`, `*`.
    pub hosts: Vec<String>,
    /// Path prefixes; empty for every path.
    pub path_prefixes: Vec<String>,
    /// The models it takes (the request's model: `modelHeader`, or the
    /// JSON body's `model`); empty for requests of any model.
    pub models: Vec<String>,
}

/// The longest host, in bytes, that the index looks up; a DNS name has at
/// most 253. A longer `:authority` matches only `*`.
pub const MAX_AUTHORITY_HOST_LEN: usize = 255;

/// The host of an `:authority` as the index looks it up: without the port
/// (`name:8080`, `[::1]:8080`) and a trailing dot, lowercased into `buf`, so
/// no request allocates for it. `None` for an empty or overlong host.
pub fn authority_host<'b>(
    authority: &[u8],
    buf: &'b mut [u8; MAX_AUTHORITY_HOST_LEN],
) -> Option<&'b [u8]> {
    let end = if authority.first() == Some(&b'[') {
        // An IPv6 literal: the port comes after the bracket.
        authority
            .iter()
            .position(|&b| b == b']')
            .map_or(authority.len(), |i| i + 1)
    } else {
        authority
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(authority.len())
    };
    let host = authority.get(..end)?;
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let out = buf.get_mut(..host.len())?;
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// Takes `name`, `hosts` and `pathPrefixes` out of a `rollouts` entry and
/// validates them; `earlier` are the entries before it.
pub(super) fn validate(raw: &mut RawRollout, earlier: &[Rollout]) -> Result<Scope, ConfigError> {
    let Some(name) = raw.name.take() else {
        return err(
            "name",
            "is required: it names the rollout in metrics and logs",
        );
    };
    names::label(
        "name",
        &name,
        MAX_VERSION_NAME_LEN,
        earlier.iter().filter_map(Rollout::name),
    )?;
    let Some(written) = raw.hosts.take() else {
        return err(
            "hosts",
            "is required: the hosts whose requests the rollout takes (`*` for every host)",
        );
    };
    if written.is_empty() {
        return err("hosts", "must list at least one host (`*` for every host)");
    }
    if written.len() > MAX_HOSTS_PER_ROLLOUT {
        return err(
            "hosts",
            format!("lists more than {MAX_HOSTS_PER_ROLLOUT} hosts"),
        );
    }
    let mut hosts: Vec<String> = Vec::with_capacity(written.len());
    for (i, text) in written.iter().enumerate() {
        let field = format!("hosts[{i}]");
        let pattern = host_pattern(&field, text)?;
        if hosts.contains(&pattern) {
            return err(
                field,
                format!("{pattern:?} is listed twice (hosts are matched case-insensitively)"),
            );
        }
        hosts.push(pattern);
    }
    let path_prefixes = match raw.path_prefixes.take() {
        None => Vec::new(),
        Some(prefixes) => path_prefixes(prefixes)?,
    };
    let models = match raw.models.take() {
        None => Vec::new(),
        Some(models) => models_of(models)?,
    };
    Ok(Scope {
        name,
        hosts,
        path_prefixes,
        models,
    })
}

/// A host pattern, lowercased: `*`, `*.` and a domain, or a host name (an
/// IPv6 literal in brackets too).
fn host_pattern(field: &str, text: &str) -> Result<String, ConfigError> {
    let pattern = text.to_ascii_lowercase();
    if pattern == "*" {
        return Ok(pattern);
    }
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    if name.contains('*') {
        return err(
            field,
            format!("{text:?}: a wildcard is `*` alone, or `*.` before a domain (`*.example.com`)"),
        );
    }
    if let Some(inner) = name.strip_prefix('[') {
        let literal = inner.strip_suffix(']').filter(|a| {
            !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(&b))
        });
        if literal.is_none() || name != pattern {
            return err(
                field,
                format!("{text:?} is not an IPv6 address in brackets (`[2001:db8::1]`)"),
            );
        }
        return Ok(pattern);
    }
    if name.contains(':') {
        return err(
            field,
            format!("{text:?} holds a port: hosts are matched without the port a client sends"),
        );
    }
    if name.ends_with('.') {
        return err(
            field,
            format!("{text:?}: write the host without its trailing dot"),
        );
    }
    if name.len() > 253 {
        return err(field, "is longer than a DNS name (253 bytes)");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return err(
                field,
                format!("{text:?} is not a host name: each dot-separated label is 1 to 63 bytes"),
            );
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return err(
                field,
                format!("{text:?} is not a host name (letters, digits, `-`, `_` and dots)"),
            );
        }
    }
    Ok(pattern)
}

fn models_of(written: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if written.is_empty() {
        return err(
            "models",
            "must list at least one model; leave it out for requests of any model",
        );
    }
    if written.len() > MAX_MODELS_PER_ROLLOUT {
        return err(
            "models",
            format!("lists more than {MAX_MODELS_PER_ROLLOUT} models"),
        );
    }
    for (i, model) in written.iter().enumerate() {
        let field = format!("models[{i}]");
        names::model_name(&field, model)?;
        if written.iter().take(i).any(|seen| seen == model) {
            return err(field, format!("{model:?} is listed twice"));
        }
    }
    Ok(written)
}

/// The prefixes as written, each as the index compares it: a trailing `/`
/// dropped (`/v2/models/` is `/v2/models`, as Gateway API ignores it), `/`
/// itself kept.
fn path_prefixes(written: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if written.is_empty() {
        return err(
            "pathPrefixes",
            "must list at least one prefix; leave it out for every path",
        );
    }
    if written.len() > MAX_PATH_PREFIXES {
        return err(
            "pathPrefixes",
            format!("lists more than {MAX_PATH_PREFIXES} prefixes"),
        );
    }
    let mut prefixes: Vec<String> = Vec::with_capacity(written.len());
    for (i, prefix) in written.iter().enumerate() {
        let field = format!("pathPrefixes[{i}]");
        if !prefix.starts_with('/') {
            return err(field, format!("{prefix:?} does not start with `/`"));
        }
        if prefix.len() > MAX_PATH_PREFIX_LEN {
            return err(field, format!("is longer than {MAX_PATH_PREFIX_LEN} bytes"));
        }
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return err(
                field,
                format!("{prefix:?} is not a path (visible ASCII, no spaces)"),
            );
        }
        if prefix.contains(['?', '#']) {
            return err(
                field,
                format!("{prefix:?} holds a query or fragment: prefixes match the path without its query"),
            );
        }
        let normal = match prefix.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        if let Some(seen) = prefixes.iter().position(|p| p == normal) {
            let why = match written.get(seen) {
                Some(first) if first == prefix => String::new(),
                _ => format!(" (as pathPrefixes[{seen}]: a trailing `/` is ignored)"),
            };
            return err(field, format!("{prefix:?} is listed twice{why}"));
        }
        prefixes.push(normal.to_string());
    }
    Ok(prefixes)
}

/// Whether the path prefix `prefix` (as [`path_prefixes`] keeps it) takes a
/// request whose `:path` is `path`: the path without its query equals the
/// prefix, or continues right after it with `/` or `:` (KServe V1's
/// `/v1/models/iris:predict`). `/v1/models/iris` takes `/v1/models/iris`,
/// `/v1/models/iris/...`, `/v1/models/iris:predict` and
/// `/v1/models/iris?x=1`, never `/v1/models/iris2:predict` or
/// `/v1/models/irisx`; `/` takes every path. Gateway API's `PathPrefix`
/// takes the same paths, but for the `:` continuation. The empty prefix (a
/// rollout without `pathPrefixes`) takes every request.
pub fn prefix_takes(prefix: &[u8], path: &[u8]) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let path = path
        .iter()
        .position(|&b| b == b'?')
        .and_then(|q| path.get(..q))
        .unwrap_or(path);
    if prefix == b"/" {
        return path.starts_with(b"/");
    }
    match path.strip_prefix(prefix) {
        Some([]) | Some([b'/' | b':', ..]) => true,
        Some(_) | None => false,
    }
}

/// The rollouts one host pattern holds under one path prefix: the one that
/// takes requests of any model, and those that take given models.
#[derive(Debug, Default)]
pub struct PrefixRollouts {
    /// Empty for every path.
    prefix: Box<[u8]>,
    /// The rollout without `models`.
    any_model: Option<usize>,
    /// Each listed model's rollout.
    by_model: HashMap<Box<[u8]>, usize>,
}

impl PrefixRollouts {
    /// The prefix, as the index compares it (empty: every path).
    pub fn prefix(&self) -> &str {
        // Prefixes are validated visible ASCII.
        std::str::from_utf8(&self.prefix).unwrap_or_default()
    }

    /// Whether a rollout here takes requests by their model: the request's
    /// model must be learnt before its rollout is known.
    pub fn by_model(&self) -> bool {
        !self.by_model.is_empty()
    }

    /// The rollout of a request whose model is `model` (`None`: not known):
    /// the rollout listing it, else the one of any model, if there is one.
    pub fn rollout_for(&self, model: Option<&[u8]>) -> Option<usize> {
        model
            .and_then(|m| self.by_model.get(m).copied())
            .or(self.any_model)
    }

    /// The rollout that takes requests of any model.
    pub fn any_model(&self) -> Option<usize> {
        self.any_model
    }
}

/// The rollouts one host pattern holds, by path prefix.
#[derive(Debug, Default)]
pub struct HostRollouts {
    /// The pattern as the config writes it (lowercased): `name.example.com`,
    /// `*.example.com` or `*`.
    pattern: Box<str>,
    /// The longest prefix first; an empty prefix (every path) comes last.
    by_prefix: Vec<PrefixRollouts>,
}

/// What takes a request in a config that lists `rollouts`: the host pattern
/// that is the most specific match of its host, and the rollout of that
/// pattern whose path prefix takes its path, if one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'c> {
    /// The host pattern, as the config writes it (lowercased).
    pub pattern: &'c str,
    /// The rollout (an index into the config's rollouts) and the path
    /// prefix it takes the request by (empty: every path), for a request
    /// whose model is not known; `None` when the pattern's rollouts all
    /// have prefixes and none takes the path, or the prefix's rollouts all
    /// take given models.
    pub taker: Option<(usize, &'c str)>,
}

impl HostRollouts {
    /// The host pattern these rollouts are held under.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The rollouts of the longest prefix that takes `path` (read only if
    /// a prefix needs it).
    pub fn prefix_for<'p>(
        &self,
        path: impl FnOnce() -> Option<&'p [u8]>,
    ) -> Option<&PrefixRollouts> {
        match self.by_prefix.as_slice() {
            [every] if every.prefix.is_empty() => Some(every),
            entries => {
                let path = path().unwrap_or_default();
                entries.iter().find(|e| prefix_takes(&e.prefix, path))
            }
        }
    }

    /// The rollout of a request whose model is not known (the one of any
    /// model under the longest prefix that takes `path`), and that prefix.
    pub fn taker<'p>(&self, path: impl FnOnce() -> Option<&'p [u8]>) -> Option<(usize, &str)> {
        let entry = self.prefix_for(path)?;
        Some((entry.any_model?, entry.prefix()))
    }

    /// The rollout of a request whose model is not known.
    pub fn rollout_for<'p>(&self, path: impl FnOnce() -> Option<&'p [u8]>) -> Option<usize> {
        self.taker(path).map(|(rollout, _)| rollout)
    }
}

/// Host patterns to the rollouts they hold: one hash lookup for the exact
/// name, one per dot of the host for the wildcards (longest suffix first),
/// then `*`.
#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<Box<[u8]>, HostRollouts>,
    /// Keyed by the suffix after the `*`, dot included (`.example.com`).
    suffixes: HashMap<Box<[u8]>, HostRollouts>,
    any: Option<HostRollouts>,
}

impl HostIndex {
    /// The rollouts of the most specific pattern matching `host` (as
    /// [`authority_host`] gives it; `None` for a request without a usable
    /// one, which only `*` takes): the first of [`HostIndex::matching`],
    /// written out for the request path, which pays no iterator for it.
    pub fn lookup(&self, host: Option<&[u8]>) -> Option<&HostRollouts> {
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host) {
                return Some(found);
            }
            if !self.suffixes.is_empty() {
                // Each suffix starting at a dot, longest first; the dot at
                // the very start (an empty first label) is no match.
                let dots = host.iter().enumerate().skip(1).filter(|&(_, &b)| b == b'.');
                for (i, _) in dots {
                    if let Some(found) = host.get(i..).and_then(|s| self.suffixes.get(s)) {
                        return Some(found);
                    }
                }
            }
        }
        self.any.as_ref()
    }

    /// The rollouts of every pattern matching `host`, the most specific
    /// first: the exact name, each `*.` wildcard from the longest suffix,
    /// then `*`. The first is the request's ([`HostIndex::lookup`]); the CLI
    /// tells the others, which are never tried.
    pub fn matching<'i, 'h>(
        &'i self,
        host: Option<&'h [u8]>,
    ) -> impl Iterator<Item = &'i HostRollouts> + use<'i, 'h> {
        let exact = host.and_then(|host| self.exact.get(host));
        // Each suffix starting at a dot, longest first; the dot at the very
        // start (an empty first label) is no match. Without wildcards the
        // host is not scanned for dots.
        let wildcards = host
            .filter(|_| !self.suffixes.is_empty())
            .into_iter()
            .flat_map(move |host| {
                host.iter()
                    .enumerate()
                    .skip(1)
                    .filter(|&(_, &b)| b == b'.')
                    .filter_map(move |(i, _)| self.suffixes.get(host.get(i..)?))
            });
        exact.into_iter().chain(wildcards).chain(self.any.as_ref())
    }

    /// What takes a request to `host` (as [`authority_host`] gives it) whose
    /// `:path` `path` gives: the filter's own precedence, for the CLI.
    /// `None` when no pattern matches the host.
    pub fn claim<'p>(
        &self,
        host: Option<&[u8]>,
        path: impl FnOnce() -> Option<&'p [u8]>,
    ) -> Option<Claim<'_>> {
        let held = self.lookup(host)?;
        Some(Claim {
            pattern: held.pattern(),
            taker: held.taker(path),
        })
    }
}

/// The index as the rollouts are validated: duplicates are found here.
#[derive(Default)]
pub(super) struct IndexBuilder {
    index: HostIndex,
    hosts: usize,
}

impl IndexBuilder {
    /// Adds the rollout `rollouts[rollout]` (`at`) with its scope; `earlier`
    /// are the rollouts before it, named in a duplicate's error.
    pub fn add(
        &mut self,
        at: &str,
        rollout: usize,
        scope: &Scope,
        earlier: &[Rollout],
    ) -> Result<(), ConfigError> {
        self.hosts += scope.hosts.len();
        if self.hosts > MAX_HOSTS {
            return err(
                format!("{at}.hosts"),
                format!("takes the config past {MAX_HOSTS} host patterns, all rollouts together"),
            );
        }
        let every_path = [String::new()];
        let prefixes = match scope.path_prefixes.as_slice() {
            [] => &every_path[..],
            written => written,
        };
        for (h, pattern) in scope.hosts.iter().enumerate() {
            let held = if pattern == "*" {
                self.index.any.get_or_insert_with(HostRollouts::default)
            } else if let Some(suffix) = pattern.strip_prefix('*') {
                self.index
                    .suffixes
                    .entry(suffix.as_bytes().into())
                    .or_default()
            } else {
                self.index
                    .exact
                    .entry(pattern.as_bytes().into())
                    .or_default()
            };
            if held.pattern.is_empty() {
                held.pattern = pattern.as_str().into();
            }
            for (p, prefix) in prefixes.iter().enumerate() {
                let place = || {
                    if scope.path_prefixes.is_empty() {
                        (
                            format!("{at}.hosts[{h}]"),
                            format!("{pattern:?} (every path)"),
                        )
                    } else {
                        (
                            format!("{at}.pathPrefixes[{p}]"),
                            format!("{prefix:?} on {pattern:?}"),
                        )
                    }
                };
                let claimed_by = |other: usize| {
                    let name = earlier.get(other).and_then(Rollout::name).unwrap_or("?");
                    format!("rollouts[{other}] ({name:?})")
                };
                let entry = match held
                    .by_prefix
                    .iter_mut()
                    .position(|e| *e.prefix == *prefix.as_bytes())
                {
                    Some(i) => held.by_prefix.get_mut(i),
                    None => {
                        held.by_prefix.push(PrefixRollouts {
                            prefix: prefix.as_bytes().into(),
                            ..Default::default()
                        });
                        held.by_prefix.last_mut()
                    }
                };
                let Some(entry) = entry else { continue };
                if scope.models.is_empty() {
                    if let Some(other) = entry.any_model {
                        let (field, what) = place();
                        return err(
                            field,
                            format!("{what} is already claimed by {}: a host and path prefix take one rollout of any model", claimed_by(other)),
                        );
                    }
                    entry.any_model = Some(rollout);
                }
                for (m, model) in scope.models.iter().enumerate() {
                    if let Some(&other) = entry.by_model.get(model.as_bytes()) {
                        let (_, what) = place();
                        return err(
                            format!("{at}.models[{m}]"),
                            format!("{model:?} on {what} is already claimed by {}: a host, path prefix and model take one rollout", claimed_by(other)),
                        );
                    }
                    entry.by_model.insert(model.as_bytes().into(), rollout);
                }
            }
        }
        Ok(())
    }

    pub fn build(mut self) -> HostIndex {
        let all = self
            .index
            .exact
            .values_mut()
            .chain(self.index.suffixes.values_mut())
            .chain(self.index.any.as_mut());
        for held in all {
            held.by_prefix
                .sort_by_key(|e| std::cmp::Reverse(e.prefix.len()));
            held.by_prefix.shrink_to_fit();
        }
        self.index
    }
}
