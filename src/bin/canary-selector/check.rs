//! `check`: every plugin config through the filter's own parser and
//! validator, then, when VirtualServices and DestinationRules are among the
//! files, the rollout's wiring: each version has exactly one route on the
//! routing header, to a subset a DestinationRule defines, no two versions
//! share a subset, and the default route goes to the stable version's.

use serde::Serialize;
use serde_json::Value;

use canary_selector::config::Rollout;

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
    /// The filter's summary of an accepted config (its info log line).
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wiring {
    /// The plugin config whose versions are routed.
    plugin: String,
    /// The VirtualService that routes on its header, if any.
    virtual_service: Option<String>,
    /// version -> subset, for the versions that have one route.
    routes: Vec<(String, String)>,
    default_subset: Option<String>,
    problems: Vec<String>,
}

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
        }
        for w in &self.wiring {
            let place = match &w.virtual_service {
                Some(vs) => format!("{} with {vs}", w.plugin),
                None => w.plugin.clone(),
            };
            if w.problems.is_empty() {
                let routes: Vec<String> = w
                    .routes
                    .iter()
                    .map(|(v, s)| format!("{v} -> {s}"))
                    .collect();
                out.push_str(&format!(
                    "{place}: wiring ok: {}; default route -> {}\n",
                    routes.join(", "),
                    w.default_subset.as_deref().unwrap_or_default()
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

pub fn run(files: &[String]) -> Result<CheckReport, Fatal> {
    let inputs = input::load(files)?;
    if inputs.plugins.is_empty() {
        return Err(input::no_plugin_config(&files.join(", ")));
    }
    let of_kind = |kind: &str| -> Vec<&Manifest> {
        inputs
            .manifests
            .iter()
            .filter(|m| {
                m.resource.kind == kind
                    && m.doc
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.starts_with("networking.istio.io/"))
            })
            .collect()
    };
    let (services, rules) = (of_kind("VirtualService"), of_kind("DestinationRule"));
    let mut configs = Vec::new();
    let mut wiring = Vec::new();
    for plugin in &inputs.plugins {
        match Rollout::from_json(plugin.json.as_bytes()) {
            Ok(rollout) => {
                if !services.is_empty() && !rules.is_empty() {
                    wiring.extend(wire(plugin, &rollout, &services, &rules));
                }
                configs.push(ConfigVerdict {
                    file: plugin.file.clone(),
                    resource: plugin.resource.as_ref().map(ToString::to_string),
                    accepted: true,
                    error: None,
                    summary: Some(rollout.summary()),
                });
            }
            Err(e) => configs.push(ConfigVerdict {
                file: plugin.file.clone(),
                resource: plugin.resource.as_ref().map(ToString::to_string),
                accepted: false,
                error: Some(e.to_string()),
                summary: None,
            }),
        }
    }
    let ok = configs.iter().all(|c| c.accepted) && wiring.iter().all(|w| w.problems.is_empty());
    Ok(CheckReport {
        configs,
        wiring,
        ok,
    })
}

/// A Service host as a fully qualified name, as Istio resolves short names
/// against the namespace of the resource that uses them.
fn fqdn(host: &str, namespace: &str) -> String {
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.svc.cluster.local"),
        1 => format!("{host}.svc.cluster.local"),
        _ => host.to_string(),
    }
}

fn namespace_of<'a>(m: &'a Manifest, fallback: &'a str) -> &'a str {
    m.resource.namespace.as_deref().unwrap_or(fallback)
}

/// One HTTP route of a VirtualService, as far as the wiring goes.
struct Route {
    name: String,
    /// Exact values of the routing header this route matches.
    header_values: Vec<String>,
    /// Whether it matches on the routing header at all.
    on_header: bool,
    has_match: bool,
    /// (host, subset) of each destination.
    destinations: Vec<(String, Option<String>)>,
}

fn routes(vs: &Manifest, header: &str) -> Vec<Route> {
    let http = vs
        .doc
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    http.iter()
        .enumerate()
        .map(|(i, r)| {
            let matches = r
                .get("match")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let conditions: Vec<&Value> = matches
                .iter()
                .filter_map(|m| m.get("headers").and_then(Value::as_object))
                .flat_map(|h| h.iter())
                .filter(|(name, _)| name.eq_ignore_ascii_case(header))
                .map(|(_, cond)| cond)
                .collect();
            let destinations = r
                .get("route")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|d| {
                    let text = |p: &str| d.pointer(p).and_then(Value::as_str).map(str::to_string);
                    (
                        text("/destination/host").unwrap_or_default(),
                        text("/destination/subset"),
                    )
                })
                .collect();
            Route {
                name: r
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("http[{i}]"), str::to_string),
                header_values: conditions
                    .iter()
                    .filter_map(|c| c.get("exact").and_then(Value::as_str).map(str::to_string))
                    .collect(),
                on_header: !conditions.is_empty(),
                has_match: !matches.is_empty(),
                destinations,
            }
        })
        .collect()
}

fn wire(
    plugin: &PluginConfig,
    rollout: &Rollout,
    services: &[&Manifest],
    rules: &[&Manifest],
) -> Vec<Wiring> {
    let header = rollout.routing_header.as_str();
    let plugin_ns = plugin
        .resource
        .as_ref()
        .and_then(|r| r.namespace.as_deref())
        .unwrap_or("default");
    let defined = subsets_defined(rules, plugin_ns);
    // A WasmPlugin acts in its own namespace (in Istio's root namespace, in
    // every one): a VirtualService of another namespace is another
    // rollout's, and one of ours with none to check has nothing to wire.
    let mesh_wide = plugin.resource.is_none() || plugin_ns == "istio-system";
    let ours: Vec<&Manifest> = services
        .iter()
        .copied()
        .filter(|vs| mesh_wide || namespace_of(vs, "default") == plugin_ns)
        .collect();
    if ours.is_empty() {
        return Vec::new();
    }
    let wirings: Vec<Wiring> = ours
        .iter()
        .map(|vs| (*vs, routes(vs, header)))
        .filter(|(_, routes)| routes.iter().any(|r| r.on_header))
        .map(|(vs, routes)| {
            let mut wiring = wire_service(rollout, &routes, namespace_of(vs, plugin_ns), &defined);
            wiring.virtual_service = Some(format!("{}: {}", vs.file, vs.resource));
            wiring.plugin = plugin.origin();
            wiring
        })
        .collect();
    if wirings.is_empty() {
        return vec![Wiring {
            plugin: plugin.origin(),
            virtual_service: None,
            routes: Vec::new(),
            default_subset: None,
            problems: vec![format!(
                "no VirtualService among the files routes on the routing header {header}"
            )],
        }];
    }
    wirings
}

/// (fully qualified host, subset name) for every subset of the
/// DestinationRules.
fn subsets_defined(rules: &[&Manifest], fallback_ns: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dr in rules {
        let host = dr.doc.pointer("/spec/host").and_then(Value::as_str);
        let host = fqdn(host.unwrap_or_default(), namespace_of(dr, fallback_ns));
        let subsets = dr.doc.pointer("/spec/subsets").and_then(Value::as_array);
        for subset in subsets.map_or(&[][..], Vec::as_slice) {
            if let Some(name) = subset.get("name").and_then(Value::as_str) {
                out.push((host.clone(), name.to_string()));
            }
        }
    }
    out
}

/// The one subset `route` sends to; what is wrong with it goes to `problems`.
fn route_subset(
    what: &str,
    route: &Route,
    namespace: &str,
    defined: &[(String, String)],
    problems: &mut Vec<String>,
) -> Option<String> {
    let [(host, subset)] = route.destinations.as_slice() else {
        problems.push(format!(
            "{what} (route {}) has {} destinations; it needs exactly one",
            route.name,
            route.destinations.len()
        ));
        return None;
    };
    let Some(subset) = subset else {
        problems.push(format!("{what} (route {}) names no subset", route.name));
        return None;
    };
    let host = fqdn(host, namespace);
    if !defined.iter().any(|(h, s)| *h == host && s == subset) {
        problems.push(format!(
            "{what} (route {}) goes to subset {subset}, which no DestinationRule for {host} defines",
            route.name
        ));
    }
    Some(subset.clone())
}

/// The wiring of one VirtualService that routes on the plugin's header (the
/// caller names the two).
fn wire_service(
    rollout: &Rollout,
    routes: &[Route],
    namespace: &str,
    defined: &[(String, String)],
) -> Wiring {
    let header = rollout.routing_header.as_str();
    let mut problems = Vec::new();
    let mut routed: Vec<(String, String)> = Vec::new();
    for version in &rollout.versions {
        let name = version.name.as_str();
        let found: Vec<&Route> = routes
            .iter()
            .filter(|r| r.header_values.iter().any(|v| v == name))
            .collect();
        match found.as_slice() {
            [] => problems.push(format!(
                "version {name} has no route matching {header}: {name}"
            )),
            [route] => {
                let what = format!("version {name}");
                if let Some(subset) = route_subset(&what, route, namespace, defined, &mut problems)
                {
                    routed.push((name.to_string(), subset));
                }
            }
            more => {
                let names: Vec<&str> = more.iter().map(|r| r.name.as_str()).collect();
                problems.push(format!(
                    "version {name} has {} routes matching {header}: {name} ({})",
                    more.len(),
                    names.join(", ")
                ));
            }
        }
    }
    for (i, (version, subset)) in routed.iter().enumerate() {
        if let Some((other, _)) = routed.iter().take(i).find(|(_, s)| s == subset) {
            problems.push(format!(
                "versions {other} and {version} both route to subset {subset}"
            ));
        }
    }
    // The first route without a match catches everything after the others.
    let default_subset = match routes.iter().find(|r| !r.has_match) {
        Some(route) => route_subset(
            "the default route",
            route,
            namespace,
            defined,
            &mut problems,
        ),
        None => {
            problems.push(
                "no default route (one without a match): a request the filter never touched matches no route"
                    .into(),
            );
            None
        }
    };
    let stable = rollout
        .versions
        .first()
        .map(|v| v.name.as_str())
        .unwrap_or_default();
    let stable_subset = routed.iter().find(|(v, _)| v == stable).map(|(_, s)| s);
    if let (Some(d), Some(s)) = (&default_subset, stable_subset) {
        if d != s {
            problems.push(format!(
                "the default route goes to subset {d}, not to the stable version {stable}'s subset {s}"
            ));
        }
    }
    Wiring {
        plugin: String::new(),
        virtual_service: None,
        routes: routed,
        default_subset,
        problems,
    }
}
