//! `check`: every plugin config through the filter's own parser and
//! validator (`Config::from_json`); for a config with `rollouts`, a warning
//! for each rollout that more specific host patterns of other rollouts keep
//! from some of its hosts; then, when VirtualServices (with their
//! DestinationRules) or HTTPRoutes are among the files, the wiring of each
//! rollout with the routes of its hosts (a route's host taken to the
//! rollout's pattern by the filter's own index, read as the filter reads a
//! request's; a Service's short names resolved in `--cluster-domain`) that
//! match on its routing header:
//! each version has exactly one route matching its name (or HTTPRoute rules
//! to one Service, as a REST and a gRPC rule are; the stable version
//! may instead take the default route), to a subset a DestinationRule
//! defines (VirtualService) or one backend (HTTPRoute), no two versions
//! share one, and the default route goes to the stable version's.

use serde::Serialize;
use serde_json::Value;

use canary_selector::config::{authority_host, Config, Rollout, Scope, MAX_AUTHORITY_HOST_LEN};

use crate::hosts::{self, Patterns, Shadowed, Unclaimed};
use crate::input::{self, Manifest, PluginConfig};
use crate::{Fatal, Report};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    configs: Vec<ConfigVerdict>,
    wiring: Vec<Wiring>,
    ok: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigVerdict {
    file: String,
    resource: Option<String>,
    accepted: bool,
    /// The filter's own one-line error, as its log line has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The filter's summary of an accepted config (its info log line); for
    /// a config with `rollouts`, their number and names.
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    /// Each rollout of a config with `rollouts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rollouts: Vec<RolloutVerdict>,
    /// Rollouts that more specific host patterns of others keep from some
    /// of their hosts (a warning: the config is accepted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shadowed: Vec<Shadowed>,
    /// For a config with `rollouts`: what the filter does to a request
    /// none takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    unclaimed: Option<Unclaimed>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RolloutVerdict {
    index: usize,
    name: String,
    hosts: Vec<String>,
    /// Empty for every path.
    path_prefixes: Vec<String>,
    /// Empty for any model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    models: Vec<String>,
    /// The filter's summary of the rollout (its info log line).
    summary: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wiring {
    /// The plugin config whose versions are routed.
    plugin: String,
    /// The rollout, for a config with `rollouts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<String>,
    /// The VirtualService that routes on its header, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    virtual_service: Option<String>,
    /// The HTTPRoute that routes on its header, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    http_route: Option<String>,
    /// Each version that reaches one subset (VirtualService) or backend
    /// (HTTPRoute).
    routes: Vec<Routed>,
    /// Where the default route (one without a match) goes.
    default_to: Option<String>,
    /// The config's `modelHeader`, when the wired rules match it.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_header: Option<String>,
    /// The values of the config's `modelHeader` that the wired rules match
    /// beside the routing header (empty: rules for any model).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    models: Vec<String>,
    problems: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Routed {
    version: String,
    /// The subset (VirtualService) or backend (HTTPRoute).
    to: String,
    /// No route matches the version: its requests take the default route.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    by_default_route: bool,
}

/// The most covered host patterns a warning lists in text; `-o json` has
/// them all.
const LISTED_PATTERNS: usize = 10;

impl Report for CheckReport {
    fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.configs {
            let origin = match &c.resource {
                Some(r) => format!("{}: {r}", c.file),
                None => c.file.clone(),
            };
            match (&c.error, &c.summary) {
                (Some(error), _) => out.push_str(&format!("{origin}: rejected: {error}\n")),
                (None, summary) => out.push_str(&format!(
                    "{origin}: accepted: {}\n",
                    summary.as_deref().unwrap_or_default()
                )),
            }
            for r in &c.rollouts {
                let models = if r.models.is_empty() {
                    String::new()
                } else {
                    format!("; models {}", r.models.join(", "))
                };
                out.push_str(&format!(
                    "{origin}: rollout {} (hosts {}; {}{models}): {}\n",
                    r.name,
                    r.hosts.join(", "),
                    hosts::paths_text(&r.path_prefixes),
                    r.summary
                ));
            }
            let unclaimed = c.unclaimed.as_ref().map(Unclaimed::short);
            for s in &c.shadowed {
                out.push_str(&shadowed_text(
                    &origin,
                    s,
                    unclaimed.as_deref().unwrap_or_default(),
                ));
            }
        }
        for w in &self.wiring {
            let mut place = w.plugin.clone();
            if let Some(rollout) = &w.rollout {
                place.push_str(&format!(" rollout {rollout}"));
            }
            if let Some(routes) = w.virtual_service.as_ref().or(w.http_route.as_ref()) {
                place.push_str(&format!(" with {routes}"));
            }
            if w.problems.is_empty() {
                let routes: Vec<String> = w
                    .routes
                    .iter()
                    .map(|r| {
                        let how = if r.by_default_route {
                            " (default route)"
                        } else {
                            ""
                        };
                        format!("{} -> {}{how}", r.version, r.to)
                    })
                    .collect();
                let default = match (&w.default_to, &w.http_route) {
                    (Some(to), _) => format!("default route -> {to}"),
                    (None, Some(_)) => "no rule without matches: a request without the routing header is left to other routes".into(),
                    (None, None) => String::new(),
                };
                let models = match (&w.models[..], &w.model_header) {
                    ([], _) | (_, None) => String::new(),
                    (models, Some(header)) => {
                        format!("; model header {header}: {}", models.join(", "))
                    }
                };
                out.push_str(&format!(
                    "{place}: wiring ok: {}{models}; {default}\n",
                    routes.join(", "),
                ));
            }
            for p in &w.problems {
                out.push_str(&format!("{place}: wiring: {p}\n"));
            }
        }
        out
    }

    fn failed(&self) -> bool {
        !self.ok
    }
}

/// A shadowed rollout: what happens on the hosts it loses, and why;
/// `unclaimed` is what the filter does to a request no rollout takes.
fn shadowed_text(origin: &str, s: &Shadowed, unclaimed: &str) -> String {
    let mut out = format!(
        "{origin}: warning: rollout {} (rollouts[{}]; hosts {}; {}) never takes requests to the hosts below, though its hosts match them: \
         a request goes to the rollouts of its host's most specific pattern (an exact name, then the longest *.suffix, then *) by the longest path prefix \
         that takes its path, or to no rollout; it never falls through to a less specific pattern\n",
        s.name,
        s.rollout,
        s.hosts.join(", "),
        hosts::paths_text(&s.path_prefixes),
    );
    for c in s.covered.iter().take(LISTED_PATTERNS) {
        let within = if s.hosts.len() > 1 {
            format!(" (within {})", c.within)
        } else {
            String::new()
        };
        let mut taken: Vec<String> = c
            .taken_by
            .iter()
            .map(|t| format!("{} -> {}", hosts::paths_text(&t.path_prefixes), t.name))
            .collect();
        if c.other_paths_unclaimed {
            taken.push(format!("any other path -> no rollout ({unclaimed})"));
        }
        out.push_str(&format!(
            "{origin}:   {}{within}: {}\n",
            c.pattern,
            taken.join("; ")
        ));
    }
    if let Some(more) = s
        .covered
        .len()
        .checked_sub(LISTED_PATTERNS)
        .filter(|&n| n > 0)
    {
        out.push_str(&format!(
            "{origin}:   and {more} more host patterns (-o json lists them all)\n"
        ));
    }
    out
}

/// Kubernetes' cluster domain, as `--cluster-domain` gives it: lowercase,
/// without a trailing dot.
pub fn cluster_domain(text: &str) -> Result<String, String> {
    let domain = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let labels_ok = domain.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if labels_ok {
        Ok(domain)
    } else {
        Err("not a DNS domain such as cluster.local".into())
    }
}

pub fn run(files: &[String], cluster_domain: &str) -> Result<CheckReport, Fatal> {
    let inputs = input::load(files)?;
    if inputs.plugins.is_empty() {
        return Err(input::no_plugin_config(&files.join(", ")));
    }
    let of_kind = |kind: &str, api: &str| -> Vec<&Manifest> {
        inputs
            .manifests
            .iter()
            .filter(|m| {
                m.resource.kind == kind
                    && m.doc
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.starts_with(api))
            })
            .collect()
    };
    let rules = of_kind("DestinationRule", "networking.istio.io/");
    // A VirtualService routes to subsets, which need their DestinationRules.
    let services = if rules.is_empty() {
        Vec::new()
    } else {
        of_kind("VirtualService", "networking.istio.io/")
    };
    let http_routes = of_kind("HTTPRoute", "gateway.networking.k8s.io/");
    let mut configs = Vec::new();
    let mut wiring = Vec::new();
    for plugin in &inputs.plugins {
        let mut verdict = ConfigVerdict {
            file: plugin.file.clone(),
            resource: plugin.resource.as_ref().map(ToString::to_string),
            accepted: false,
            error: None,
            summary: None,
            rollouts: Vec::new(),
            shadowed: Vec::new(),
            unclaimed: None,
        };
        if let Some(why) = &plugin.undeliverable {
            verdict.error = Some(why.clone());
            configs.push(verdict);
            continue;
        }
        match Config::from_json(plugin.json.as_bytes()) {
            Ok(config) => {
                let tables = tables(plugin, &services, &http_routes, cluster_domain);
                if !tables.is_empty() {
                    let defined = subsets_defined(&rules, plugin_namespace(plugin), cluster_domain);
                    let patterns = Patterns::of(&config);
                    for (index, rollout) in config.rollouts.iter().enumerate() {
                        let models = ModelScope::of(&config, index);
                        wiring.extend(wire(
                            plugin,
                            rollout,
                            &models,
                            patterns.as_ref(),
                            &tables,
                            &defined,
                        ));
                    }
                }
                verdict.accepted = true;
                verdict.summary = Some(config.summary());
                verdict.rollouts = config
                    .rollouts
                    .iter()
                    .enumerate()
                    .filter_map(|(index, r)| {
                        let scope = r.scope.as_ref()?;
                        Some(RolloutVerdict {
                            index,
                            name: scope.name.clone(),
                            hosts: scope.hosts.clone(),
                            path_prefixes: scope.path_prefixes.clone(),
                            models: scope.models.clone(),
                            summary: r.summary(),
                        })
                    })
                    .collect();
                verdict.shadowed = hosts::shadowed(&config);
                verdict.unclaimed = config.index.as_ref().map(|_| Unclaimed::of(&config));
            }
            Err(e) => verdict.error = Some(e.to_string()),
        }
        configs.push(verdict);
    }
    let ok = configs.iter().all(|c| c.accepted) && wiring.iter().all(|w| w.problems.is_empty());
    Ok(CheckReport {
        configs,
        wiring,
        ok,
    })
}

/// A Service host as a fully qualified name in the cluster domain `domain`,
/// as Istio resolves short names against the namespace of the resource
/// that uses them.
fn fqdn(host: &str, namespace: &str, domain: &str) -> String {
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.{domain}"),
        1 => format!("{host}.svc.{domain}"),
        _ => host.to_string(),
    }
}

fn namespace_of<'a>(m: &'a Manifest, fallback: &'a str) -> &'a str {
    m.resource.namespace.as_deref().unwrap_or(fallback)
}

fn plugin_namespace(plugin: &PluginConfig) -> &str {
    plugin
        .resource
        .as_ref()
        .and_then(|r| r.namespace.as_deref())
        .unwrap_or("default")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    VirtualService,
    HttpRoute,
}

/// How a kind's routes are spoken of in messages.
struct Words {
    route: &'static str,
    target: &'static str,
    default: &'static str,
}

impl Kind {
    fn words(self) -> Words {
        match self {
            Kind::VirtualService => Words {
                route: "route",
                target: "subset",
                default: "the default route",
            },
            Kind::HttpRoute => Words {
                route: "rule",
                target: "backend",
                default: "the default rule",
            },
        }
    }
}

/// A VirtualService or HTTPRoute within a plugin's reach.
struct Table<'a> {
    manifest: &'a Manifest,
    kind: Kind,
    /// Where its short names resolve.
    namespace: &'a str,
    /// The cluster domain its Service names resolve in.
    domain: &'a str,
    /// The hosts a client may send its requests to: an HTTPRoute's
    /// `spec.hostnames` (none: every host, `*`); for each of a
    /// VirtualService's `spec.hosts`, the names a client calls the Service
    /// by (`model`, `model.models`, ..., resolved in its namespace as Istio
    /// does). Lowercased; the filter's reading of an `:authority` (port,
    /// trailing dot) is `Patterns::takes_some`'s.
    hosts: Vec<String>,
}

impl Table<'_> {
    /// Whether the rollout of `scope` takes requests to some host of these
    /// routes: the filter's index takes some of them to one of its patterns.
    fn serves(&self, patterns: &Patterns, scope: &Scope) -> bool {
        scope.hosts.iter().any(|pattern| {
            self.hosts
                .iter()
                .any(|host| patterns.takes_some(pattern, host))
        })
    }
}

/// The names a client may call a VirtualService host by: a Kubernetes
/// Service's short and longer names, or the host itself. The host is read
/// as the filter reads a request's (without a port or a trailing dot).
fn service_names(written: &str, namespace: &str, domain: &str) -> Vec<String> {
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let Some(host) = authority_host(written.as_bytes(), &mut buf)
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| !h.contains('*') && !h.starts_with('['))
    else {
        return vec![written.to_string()];
    };
    let full = fqdn(host, namespace, domain);
    let Some((name, ns)) = full
        .strip_suffix(&format!(".svc.{domain}"))
        .and_then(|base| base.split_once('.'))
        .filter(|(_, ns)| !ns.contains('.'))
    else {
        return vec![host.to_string()];
    };
    vec![
        full.clone(),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}"),
        name.to_string(),
    ]
}

/// The VirtualServices and HTTPRoutes that apply where the plugin runs. A
/// WasmPlugin acts in its own namespace (in Istio's root namespace, in
/// every one): a VirtualService of another namespace is another rollout's.
/// A plugin attached to Gateways by `targetRefs` sees the HTTPRoutes whose
/// `parentRefs` name one of them, from any namespace; one selecting
/// workloads by label, the HTTPRoutes of its namespace or attached to a
/// Gateway there.
fn tables<'a>(
    plugin: &'a PluginConfig,
    services: &[&'a Manifest],
    http_routes: &[&'a Manifest],
    domain: &'a str,
) -> Vec<Table<'a>> {
    let plugin_ns = plugin_namespace(plugin);
    let mesh_wide = plugin.resource.is_none() || plugin_ns == "istio-system";
    let lowercase = |m: &Manifest, pointer: &str| -> Vec<String> {
        m.doc
            .pointer(pointer)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let mut out: Vec<Table> = services
        .iter()
        .filter(|vs| mesh_wide || namespace_of(vs, "default") == plugin_ns)
        .map(|vs| {
            let namespace = namespace_of(vs, plugin_ns);
            Table {
                manifest: vs,
                kind: Kind::VirtualService,
                namespace,
                domain,
                hosts: lowercase(vs, "/spec/hosts")
                    .iter()
                    .flat_map(|host| service_names(host, namespace, domain))
                    .collect(),
            }
        })
        .collect();
    for route in http_routes {
        let route_ns = namespace_of(route, "default");
        let parents: Vec<(&str, &str)> = route
            .doc
            .pointer("/spec/parentRefs")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|p| p.get("kind").and_then(Value::as_str).unwrap_or("Gateway") == "Gateway")
            .filter_map(|p| {
                let text = |k: &str| p.get(k).and_then(Value::as_str);
                Some((text("namespace").unwrap_or(route_ns), text("name")?))
            })
            .collect();
        let attached = if plugin.target_gateways.is_empty() {
            mesh_wide || route_ns == plugin_ns || parents.iter().any(|(ns, _)| *ns == plugin_ns)
        } else {
            parents.iter().any(|(ns, name)| {
                *ns == plugin_ns && plugin.target_gateways.iter().any(|g| g == name)
            })
        };
        if attached {
            let mut hosts = lowercase(route, "/spec/hostnames");
            if hosts.is_empty() {
                // No hostnames: every host of the Gateway's listeners.
                hosts.push("*".into());
            }
            out.push(Table {
                manifest: route,
                kind: Kind::HttpRoute,
                namespace: route_ns,
                domain,
                hosts,
            });
        }
    }
    out
}

/// Where a route sends requests: a VirtualService destination's host and
/// subset, or an HTTPRoute backend's name.
struct Destination {
    host: String,
    subset: Option<String>,
}

/// One HTTP route of a VirtualService or rule of an HTTPRoute, as far as
/// the wiring goes.
struct Route {
    name: String,
    /// Exact values of the routing header this route matches.
    header_values: Vec<String>,
    /// Whether it matches on the routing header at all.
    on_header: bool,
    has_match: bool,
    destinations: Vec<Destination>,
    /// Exact values of the config's `modelHeader` this route matches: a
    /// rule for those models' requests only (empty: for any model's).
    models: Vec<String>,
}

fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[][..], Vec::as_slice)
}

/// Sorted, each once.
fn unique(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values.dedup();
    values
}

fn routes(table: &Table, header: &str, model_header: Option<&str>) -> Vec<Route> {
    let doc = &table.manifest.doc;
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    let is_model_header = |name: &str| model_header.is_some_and(|m| name.eq_ignore_ascii_case(m));
    match table.kind {
        Kind::VirtualService => array(doc.pointer("/spec/http"))
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let matches = array(r.get("match"));
                let conditions: Vec<&Value> = matches
                    .iter()
                    .filter_map(|m| m.get("headers").and_then(Value::as_object))
                    .flat_map(|h| h.iter())
                    .filter(|(name, _)| name.eq_ignore_ascii_case(header))
                    .map(|(_, cond)| cond)
                    .collect();
                let models = unique(
                    matches
                        .iter()
                        .filter_map(|m| m.get("headers").and_then(Value::as_object))
                        .flat_map(|h| h.iter())
                        .filter(|(name, _)| is_model_header(name))
                        .filter_map(|(_, cond)| text(cond, "/exact"))
                        .collect(),
                );
                Route {
                    name: text(r, "/name").unwrap_or_else(|| format!("http[{i}]")),
                    models,
                    header_values: conditions
                        .iter()
                        .filter_map(|c| text(c, "/exact"))
                        .collect(),
                    on_header: !conditions.is_empty(),
                    has_match: !matches.is_empty(),
                    destinations: array(r.get("route"))
                        .iter()
                        .map(|d| Destination {
                            host: text(d, "/destination/host").unwrap_or_default(),
                            subset: text(d, "/destination/subset"),
                        })
                        .collect(),
                }
            })
            .collect(),
        // Gateway API v1: rules[].matches[].headers[] {type (Exact by
        // default), name, value}; rules[].backendRefs[].
        Kind::HttpRoute => array(doc.pointer("/spec/rules"))
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let matches = array(r.get("matches"));
                let conditions: Vec<&Value> = matches
                    .iter()
                    .flat_map(|m| array(m.get("headers")))
                    .filter(|h| text(h, "/name").is_some_and(|n| n.eq_ignore_ascii_case(header)))
                    .collect();
                let models = unique(
                    matches
                        .iter()
                        .flat_map(|m| array(m.get("headers")))
                        .filter(|h| text(h, "/name").is_some_and(|n| is_model_header(&n)))
                        .filter(|c| text(c, "/type").is_none_or(|t| t == "Exact"))
                        .filter_map(|c| text(c, "/value"))
                        .collect(),
                );
                Route {
                    name: text(r, "/name").unwrap_or_else(|| format!("rules[{i}]")),
                    models,
                    header_values: conditions
                        .iter()
                        .filter(|c| text(c, "/type").is_none_or(|t| t == "Exact"))
                        .filter_map(|c| text(c, "/value"))
                        .collect(),
                    on_header: !conditions.is_empty(),
                    has_match: !matches.is_empty(),
                    destinations: array(r.get("backendRefs"))
                        .iter()
                        .map(|b| {
                            let name = text(b, "/name").unwrap_or_default();
                            let host = match text(b, "/namespace") {
                                Some(ns) if ns != table.namespace => format!("{ns}/{name}"),
                                _ => name,
                            };
                            Destination { host, subset: None }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// The models a rollout takes, for routes that match the config's
/// `modelHeader` beside the routing header: a rule for a model the rollout
/// does not take is another rollout's.
pub struct ModelScope {
    /// The config's `modelHeader`.
    header: Option<String>,
    /// The rollout's `models` (empty: a rollout of any model).
    listed: Vec<String>,
    /// The models the config's other rollouts list, which a rollout of any
    /// model does not get.
    elsewhere: Vec<String>,
}

impl ModelScope {
    pub fn of(config: &Config, index: usize) -> ModelScope {
        let models = |r: &Rollout| r.scope.as_ref().map_or(Vec::new(), |s| s.models.clone());
        ModelScope {
            header: config.body.model_header.clone(),
            listed: config.rollouts.get(index).map(models).unwrap_or_default(),
            elsewhere: config
                .rollouts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != index)
                .flat_map(|(_, r)| models(r))
                .collect(),
        }
    }

    fn takes(&self, model: &str) -> bool {
        if self.listed.is_empty() {
            !self.elsewhere.iter().any(|m| m == model)
        } else {
            self.listed.iter().any(|m| m == model)
        }
    }

    /// Whether a route is for requests the rollout takes: it matches no
    /// model, or one the rollout takes.
    fn covers(&self, route: &Route) -> bool {
        route.models.is_empty() || route.models.iter().any(|m| self.takes(m))
    }

    fn describe(&self) -> String {
        if self.listed.is_empty() {
            "any model no other rollout lists".into()
        } else {
            self.listed.join(", ")
        }
    }
}

/// The wiring of one rollout with each VirtualService and HTTPRoute that
/// routes its hosts on its routing header, or the problem that none does.
/// Rules that also match the config's `modelHeader` on a model the rollout
/// does not take are left out: they are another rollout's.
fn wire(
    plugin: &PluginConfig,
    rollout: &Rollout,
    models: &ModelScope,
    patterns: Option<&Patterns>,
    tables: &[Table],
    defined: &[(String, String)],
) -> Vec<Wiring> {
    let header = rollout.routing_header.as_str();
    // (the routes' name, a rule on the header for other models, its models)
    let mut foreign: Vec<(String, String, Vec<String>)> = Vec::new();
    let wirings: Vec<Wiring> = tables
        .iter()
        .filter(|t| match (&rollout.scope, patterns) {
            (Some(scope), Some(patterns)) => t.serves(patterns, scope),
            // No `rollouts`: the one rollout takes every host.
            _ => true,
        })
        .map(|t| {
            let name = format!("{}: {}", t.manifest.file, t.manifest.resource);
            let (ours, theirs): (Vec<Route>, Vec<Route>) =
                routes(t, header, models.header.as_deref())
                    .into_iter()
                    .partition(|r| models.covers(r));
            for r in theirs.into_iter().filter(|r| r.on_header) {
                foreign.push((name.clone(), r.name, r.models));
            }
            (t, name, ours)
        })
        .filter(|(_, _, routes)| routes.iter().any(|r| r.on_header))
        .map(|(t, name, routes)| {
            let mut wiring = wire_routes(rollout, t, &routes, defined);
            let matched = unique(
                routes
                    .iter()
                    .filter(|r| r.on_header)
                    .flat_map(|r| r.models.iter().cloned())
                    .collect(),
            );
            if !matched.is_empty() {
                wiring.model_header.clone_from(&models.header);
            }
            wiring.models = matched;
            match t.kind {
                Kind::VirtualService => wiring.virtual_service = Some(name),
                Kind::HttpRoute => wiring.http_route = Some(name),
            }
            wiring.plugin = plugin.origin();
            wiring
        })
        .collect();
    if !wirings.is_empty() {
        return wirings;
    }
    let model_header = models.header.as_deref().unwrap_or_default();
    let has = |kind| tables.iter().any(|t| t.kind == kind);
    let kinds = match (has(Kind::VirtualService), has(Kind::HttpRoute)) {
        (true, true) => "VirtualService or HTTPRoute",
        (true, false) => "VirtualService",
        _ => "HTTPRoute",
    };
    let mut problem = match &rollout.scope {
        None => format!("no {kinds} among the files routes on the routing header {header}"),
        Some(scope) => format!(
            "no {kinds} among the files routes the rollout's hosts ({}) on its routing header {header}",
            scope.hosts.join(", ")
        ),
    };
    if let Some((table, rule, values)) = foreign.first() {
        problem.push_str(&format!(
            " for its models ({}): {table} rule {rule} matches {model_header}: {}, which the rollout does not take \
             (the filter writes {model_header} as the request names its model)",
            models.describe(),
            values.join(", ")
        ));
    }
    vec![Wiring {
        plugin: plugin.origin(),
        rollout: rollout.name().map(str::to_string),
        virtual_service: None,
        http_route: None,
        routes: Vec::new(),
        default_to: None,
        model_header: None,
        models: Vec::new(),
        problems: vec![problem],
    }]
}

/// (fully qualified host, subset name) for every subset of the
/// DestinationRules.
fn subsets_defined(rules: &[&Manifest], fallback_ns: &str, domain: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dr in rules {
        let host = dr.doc.pointer("/spec/host").and_then(Value::as_str);
        let host = fqdn(
            host.unwrap_or_default(),
            namespace_of(dr, fallback_ns),
            domain,
        );
        for subset in array(dr.doc.pointer("/spec/subsets")) {
            if let Some(name) = subset.get("name").and_then(Value::as_str) {
                out.push((host.clone(), name.to_string()));
            }
        }
    }
    out
}

/// Whether every route has one backend and all are the same Service (its
/// ports may differ).
fn one_service(routes: &[&Route]) -> bool {
    let mut hosts = routes.iter().map(|r| match r.destinations.as_slice() {
        [d] => Some(d.host.as_str()),
        _ => None,
    });
    let first = hosts.next().flatten();
    first.is_some() && hosts.all(|h| h == first)
}

/// Where `route` sends: its one subset (VirtualService) or backend
/// (HTTPRoute); what is wrong with it goes to `problems`.
fn route_target(
    what: &str,
    route: &Route,
    table: &Table,
    defined: &[(String, String)],
    problems: &mut Vec<String>,
) -> Option<String> {
    let noun = table.kind.words().route;
    let [destination] = route.destinations.as_slice() else {
        let (many, field) = match table.kind {
            Kind::VirtualService => ("destinations", "destination"),
            Kind::HttpRoute => ("backendRefs", "backendRef"),
        };
        let count = route.destinations.len();
        problems.push(format!(
            "{what} ({noun} {}) has {count} {}; it needs exactly one {field}",
            route.name,
            if count == 1 { field } else { many },
        ));
        return None;
    };
    if table.kind == Kind::HttpRoute {
        return Some(destination.host.clone());
    }
    let Some(subset) = &destination.subset else {
        problems.push(format!("{what} (route {}) names no subset", route.name));
        return None;
    };
    let host = fqdn(&destination.host, table.namespace, table.domain);
    if !defined.iter().any(|(h, s)| *h == host && s == subset) {
        problems.push(format!(
            "{what} (route {}) goes to subset {subset}, which no DestinationRule for {host} defines",
            route.name
        ));
    }
    Some(subset.clone())
}

/// The wiring of one VirtualService or HTTPRoute that routes on the
/// rollout's header (the caller names the plugin and the routes).
fn wire_routes(
    rollout: &Rollout,
    table: &Table,
    routes: &[Route],
    defined: &[(String, String)],
) -> Wiring {
    let header = rollout.routing_header.as_str();
    let words = table.kind.words();
    let mut problems = Vec::new();
    // The first route without a match catches what no route before it
    // does: a request without the routing header (no rollout took it, or
    // the filter did not run), and a version no route matches.
    let default_to = match routes.iter().find(|r| !r.has_match) {
        Some(route) => route_target(words.default, route, table, defined, &mut problems),
        None => {
            // An HTTPRoute's rules are merged with the other routes of its
            // hosts (KServe's own catch requests without the header).
            if table.kind == Kind::VirtualService {
                problems.push(
                    "no default route (one without a match): a request without the routing header matches no route"
                        .into(),
                );
            }
            None
        }
    };
    let mut routed: Vec<Routed> = Vec::new();
    for (i, version) in rollout.versions.iter().enumerate() {
        let name = version.name.as_str();
        let found: Vec<&Route> = routes
            .iter()
            .filter(|r| r.header_values.iter().any(|v| v == name))
            .collect();
        match (found.as_slice(), &default_to) {
            // The stable version's requests take the default route, as
            // those without the routing header do: wired.
            ([], Some(to)) if i == 0 => routed.push(Routed {
                version: name.to_string(),
                to: to.clone(),
                by_default_route: true,
            }),
            ([], Some(to)) => problems.push(format!(
                "version {name} has no {} matching {header}: {name}; its requests take {} to {} {to}",
                words.route, words.default, words.target
            )),
            ([], None) => problems.push(format!(
                "version {name} has no {} matching {header}: {name}",
                words.route
            )),
            ([route], _) => {
                let what = format!("version {name}");
                if let Some(to) = route_target(&what, route, table, defined, &mut problems) {
                    routed.push(Routed {
                        version: name.to_string(),
                        to,
                        by_default_route: false,
                    });
                }
            }
            // Several HTTPRoute rules of one version to the one Service
            // are wired: KServe's predictors that serve REST and gRPC
            // take a gRPC rule (to the Service's gRPC port) beside the
            // REST rule (docs/kserve-many-models.md, gRPC).
            (more @ [first, ..], _) if table.kind == Kind::HttpRoute && one_service(more) => {
                let what = format!("version {name}");
                if let Some(to) = route_target(&what, first, table, defined, &mut problems) {
                    routed.push(Routed {
                        version: name.to_string(),
                        to,
                        by_default_route: false,
                    });
                }
            }
            (more, _) => {
                let names: Vec<&str> = more.iter().map(|r| r.name.as_str()).collect();
                problems.push(format!(
                    "version {name} has {} {}s matching {header}: {name} ({})",
                    more.len(),
                    words.route,
                    names.join(", ")
                ));
            }
        }
    }
    for (i, r) in routed.iter().enumerate() {
        if let Some(other) = routed.iter().take(i).find(|o| o.to == r.to) {
            problems.push(format!(
                "versions {} and {} both route to {} {}",
                other.version, r.version, words.target, r.to
            ));
        }
    }
    let stable = rollout
        .versions
        .first()
        .map(|v| v.name.as_str())
        .unwrap_or_default();
    let stable_to = routed.iter().find(|r| r.version == stable).map(|r| &r.to);
    if let (Some(d), Some(s)) = (&default_to, stable_to) {
        if d != s {
            problems.push(format!(
                "{} goes to {target} {d}, not to the stable version {stable}'s {target} {s}",
                words.default,
                target = words.target
            ));
        }
    }
    Wiring {
        plugin: String::new(),
        rollout: rollout.name().map(str::to_string),
        virtual_service: None,
        http_route: None,
        routes: routed,
        default_to,
        model_header: None,
        models: Vec::new(),
        problems,
    }
}
