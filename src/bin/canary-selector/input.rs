//! Reading what the operator points the CLI at: plugin-config JSON files and
//! Kubernetes manifests (YAML or JSON, one or many documents, `List`s
//! included), from files, directories or stdin (`-`). A WasmPlugin's or
//! TrafficExtension's `pluginConfig` is turned into the JSON text Istio hands
//! the filter, so that `Rollout::from_json` judges exactly what a sidecar
//! would receive; an EnvoyFilter that delivers the filter itself over ECDS
//! (an `EXTENSION_CONFIG` patch whose Wasm config has root id
//! `canary-selector`, as docs/kserve-llm.md's does) is read for the text of
//! its `configuration`, which Envoy hands the filter as it is.

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::Fatal;

/// Bigger files are refused before parsing. Kubernetes stores an object in at
/// most 1.5 MiB (etcd's request limit), so no real manifest comes close.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Bounds for the YAML reader, well above any manifest and far below what
/// would make it slow or big: an alias bomb or a deeply nested document is
/// refused with the budget it broke, before anything is built from it.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 100_000;
    budget.max_depth = 64;
    budget.max_aliases = 1_000;
    budget.max_documents = 1_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 100_000;
    // One line per error: no source snippet.
    options.with_snippet = false;
    options
}

/// A Kubernetes object named the way kubectl names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Resource {
    fn of(doc: &Value) -> Resource {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let meta = doc.get("metadata");
        Resource {
            kind: text(doc.get("kind")).unwrap_or_default(),
            namespace: text(meta.and_then(|m| m.get("namespace"))),
            name: text(meta.and_then(|m| m.get("name"))).unwrap_or_else(|| "(unnamed)".into()),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One plugin config, as the filter would receive it.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// The file it came from, as given (`-` for stdin).
    pub file: String,
    /// The WasmPlugin, TrafficExtension or EnvoyFilter holding it; `None`
    /// for a plugin-config JSON file.
    pub resource: Option<Resource>,
    /// The text `Config::from_json` gets.
    pub json: String,
    /// The Gateways (of its own namespace) the resource attaches the plugin
    /// to with `targetRefs`; empty for one that selects workloads by label.
    pub target_gateways: Vec<String>,
    /// Why the filter could not read the config at all, as delivered (an
    /// EnvoyFilter's `configuration` that is no StringValue); `json` is
    /// then empty.
    pub undeliverable: Option<String>,
}

impl PluginConfig {
    /// `file` or `file: Kind ns/name`, for messages.
    pub fn origin(&self) -> String {
        match &self.resource {
            Some(r) => format!("{}: {r}", self.file),
            None => self.file.clone(),
        }
    }
}

/// Any other Kubernetes object (VirtualService, DestinationRule, ...).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: String,
    pub resource: Resource,
    pub doc: Value,
}

#[derive(Debug, Default)]
pub struct Inputs {
    pub plugins: Vec<PluginConfig>,
    pub manifests: Vec<Manifest>,
}

/// Reads every path (files, directories recursively, `-` for stdin). A
/// directory is read for its Kubernetes manifests only: a JSON file in it
/// that is not a Kubernetes object (a Grafana dashboard, say) is not taken
/// for a plugin config; name a plugin-config file to check it.
pub fn load(paths: &[String]) -> Result<Inputs, Fatal> {
    let mut inputs = Inputs::default();
    let mut stdin_read = false;
    for path in paths {
        if path == "-" {
            if stdin_read {
                return Err(Fatal("-: stdin can be read only once".into()));
            }
            stdin_read = true;
            let text = read_text("-", std::io::stdin().lock())?;
            parse("-", &text, true, &mut inputs)?;
        } else if Path::new(path).is_dir() {
            for file in manifest_files(Path::new(path))? {
                let name = file.display().to_string();
                let text = read_file(&name)?;
                parse(&name, &text, false, &mut inputs)?;
            }
        } else {
            let text = read_file(path)?;
            parse(path, &text, true, &mut inputs)?;
        }
    }
    Ok(inputs)
}

/// The one plugin config a path holds (explain, diff).
pub fn load_one(path: &str) -> Result<PluginConfig, Fatal> {
    let inputs = load(std::slice::from_ref(&path.to_string()))?;
    let mut plugins = inputs.plugins.into_iter();
    match (plugins.next(), plugins.next()) {
        (Some(one), None) => match &one.undeliverable {
            Some(why) => Err(Fatal(format!("{}: {why}", one.origin()))),
            None => Ok(one),
        },
        (None, _) => Err(no_plugin_config(path)),
        (Some(first), Some(second)) => Err(Fatal(format!(
            "{path}: holds more than one plugin config ({} and {}); pass a file with one",
            first.origin(),
            second.origin()
        ))),
    }
}

pub fn no_plugin_config(path: &str) -> Fatal {
    Fatal(format!(
        "{path}: no pluginConfig found (no WasmPlugin or TrafficExtension, no EnvoyFilter delivering canary-selector, and not a plugin-config JSON object)"
    ))
}

/// The YAML and JSON files under a directory, subdirectories included, in
/// name order.
fn manifest_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, Fatal> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Fatal(format!("{}: {}", dir.display(), io_reason(&e))))?;
        for entry in entries {
            let path = entry
                .map_err(|e| Fatal(format!("{}: {}", dir.display(), io_reason(&e))))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_file(path: &str) -> Result<String, Fatal> {
    let file =
        std::fs::File::open(path).map_err(|e| Fatal(format!("{path}: {}", io_reason(&e))))?;
    read_text(path, file)
}

/// At most [`MAX_FILE_BYTES`] of UTF-8 text.
fn read_text(name: &str, source: impl Read) -> Result<String, Fatal> {
    let mut bytes = Vec::new();
    source
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Fatal(format!("{name}: {}", io_reason(&e))))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Fatal(format!(
            "{name}: larger than {} MiB; a Kubernetes object is at most 1.5 MiB",
            MAX_FILE_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Fatal(format!(
            "{name}: not UTF-8 (byte {} is not valid)",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The OS's reason without Rust's ` (os error 2)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text.get(..cut).unwrap_or(&text).to_string(),
        None => text,
    }
}

/// `plugin_json`: a JSON object that is not a Kubernetes object is a plugin
/// config (a file named on the command line, or stdin).
fn parse(file: &str, text: &str, plugin_json: bool, inputs: &mut Inputs) -> Result<(), Fatal> {
    let mut json_error = None;
    if text.trim_start().starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(doc) if is_object(&doc) => return collect(file, doc, inputs),
            Ok(_) if !plugin_json => return Ok(()),
            // A plugin config goes to the filter as written, byte for byte.
            Ok(_) => {
                inputs.plugins.push(PluginConfig {
                    file: file.into(),
                    resource: None,
                    json: text.into(),
                    target_gateways: Vec::new(),
                    undeliverable: None,
                });
                return Ok(());
            }
            // Not JSON; it may still be YAML in flow style.
            Err(e) => json_error = Some(e),
        }
    }
    let docs =
        serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options()).map_err(|e| {
            Fatal(match &json_error {
                Some(json_error) => format!("{file}: not JSON: {json_error}"),
                None => format!(
                    "{file}: cannot be read as YAML: {}",
                    one_line(&e.to_string())
                ),
            })
        })?;
    for doc in docs {
        collect(file, doc, inputs)?;
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    let mut words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| words.is_char_boundary(i))
            .unwrap_or(0);
        words.truncate(cut);
        words.push_str(" ...");
    }
    words
}

/// A Kubernetes object: a mapping with `apiVersion` and `kind`.
fn is_object(doc: &Value) -> bool {
    doc.get("apiVersion").is_some_and(Value::is_string)
        && doc.get("kind").is_some_and(Value::is_string)
}

fn collect(file: &str, doc: Value, inputs: &mut Inputs) -> Result<(), Fatal> {
    if !is_object(&doc) {
        // Not a Kubernetes object (a values file, say): nothing to check.
        return Ok(());
    }
    let istio_extension = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("extensions.istio.io/"));
    let resource = Resource::of(&doc);
    let wasm = match resource.kind.as_str() {
        "List" => {
            if let Some(Value::Array(items)) = doc.get("items") {
                for item in items.clone() {
                    collect(file, item, inputs)?;
                }
            }
            return Ok(());
        }
        "WasmPlugin" if istio_extension => doc.get("spec"),
        // A TrafficExtension runs Wasm or Lua; only a Wasm one is ours.
        "TrafficExtension" if istio_extension => doc.get("spec").and_then(|s| s.get("wasm")),
        "EnvoyFilter" if istio_networking(&doc) => {
            let delivered = envoy_filter_configs(&doc);
            if delivered.is_empty() {
                inputs.manifests.push(Manifest {
                    file: file.into(),
                    resource,
                    doc,
                });
                return Ok(());
            }
            for (json, undeliverable) in delivered {
                inputs.plugins.push(PluginConfig {
                    file: file.into(),
                    resource: Some(resource.clone()),
                    json,
                    target_gateways: target_gateways(&doc),
                    undeliverable,
                });
            }
            return Ok(());
        }
        _ => {
            inputs.manifests.push(Manifest {
                file: file.into(),
                resource,
                doc,
            });
            return Ok(());
        }
    };
    let Some(wasm) = wasm else {
        return Ok(());
    };
    let json = match wasm.get("pluginConfig") {
        Some(config) => istio_json(config),
        // No pluginConfig: the filter is configured with nothing.
        None => String::new(),
    };
    inputs.plugins.push(PluginConfig {
        file: file.into(),
        resource: Some(resource),
        json,
        target_gateways: target_gateways(&doc),
        undeliverable: None,
    });
    Ok(())
}

fn istio_networking(doc: &Value) -> bool {
    doc.get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with("networking.istio.io/"))
}

/// The root id canary-selector's Wasm config is recognised by in an
/// EnvoyFilter (a WasmPlugin's `pluginName`, as the shipped ones set it).
const ROOT_ID: &str = "canary-selector";
const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// The configs of canary-selector an EnvoyFilter adds as ECDS extension
/// configs (`applyTo: EXTENSION_CONFIG`, a Wasm filter with root id
/// `canary-selector`): the text Envoy hands the filter, or why it hands it
/// none it could read.
fn envoy_filter_configs(doc: &Value) -> Vec<(String, Option<String>)> {
    let patches = doc
        .pointer("/spec/configPatches")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    patches
        .iter()
        .filter(|p| p.get("applyTo").and_then(Value::as_str) == Some("EXTENSION_CONFIG"))
        .filter_map(|p| p.pointer("/patch/value/typed_config"))
        .filter(|tc| tc.get("@type").and_then(Value::as_str) == Some(WASM_FILTER))
        .filter_map(|tc| tc.get("config"))
        .filter(|c| c.get("root_id").and_then(Value::as_str) == Some(ROOT_ID))
        .map(|c| {
            let configuration = c.get("configuration");
            let kind = configuration
                .and_then(|v| v.get("@type"))
                .and_then(Value::as_str);
            let text = configuration
                .and_then(|v| v.get("value"))
                .and_then(Value::as_str);
            match (kind, text) {
                (Some(STRING_VALUE), Some(text)) => (text.to_string(), None),
                // No configuration: the filter is configured with nothing.
                (None, _) => (String::new(), None),
                (kind, _) => (
                    String::new(),
                    Some(format!(
                        "configuration is {}: Envoy hands a Wasm filter the text of a \
                         google.protobuf.StringValue as it is, and a google.protobuf.Struct as \
                         protobuf bytes, not JSON; write the config as a StringValue's JSON text",
                        kind.unwrap_or("no typed value")
                    )),
                ),
            }
        })
        .collect()
}

/// The names of the Gateways a WasmPlugin's or TrafficExtension's
/// `targetRefs` (or WasmPlugin's older `targetRef`) name.
fn target_gateways(doc: &Value) -> Vec<String> {
    let spec = doc.get("spec");
    let refs = spec
        .and_then(|s| s.get("targetRefs"))
        .and_then(Value::as_array)
        .map(|refs| refs.iter().collect::<Vec<_>>())
        .or_else(|| spec.and_then(|s| s.get("targetRef")).map(|r| vec![r]))
        .unwrap_or_default();
    refs.into_iter()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("Gateway"))
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// `pluginConfig` as Istio delivers it: a protobuf Struct, so every number is
/// a double, marshalled by golang/protobuf's jsonpb (keys sorted, whole
/// doubles written without a fraction). `tests/istio/mesh.py`'s
/// `plugin_config_json` is the same transformation, checked there against
/// the sidecar.
pub fn istio_json(config: &Value) -> String {
    fn as_struct(v: &Value) -> Value {
        match v {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                // Go writes a whole double below 1e21 as an integer.
                if x.fract() == 0.0 && x.abs() < 9.0e18 {
                    Value::from(x as i64)
                } else {
                    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
            }
            Value::Array(items) => Value::Array(items.iter().map(as_struct).collect()),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), as_struct(v))).collect())
            }
            other => other.clone(),
        }
    }
    // serde_json's map is ordered by key (no `preserve_order`), as jsonpb's.
    as_struct(config).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Inputs {
        let mut inputs = Inputs::default();
        parse("t.yaml", text, true, &mut inputs).unwrap();
        inputs
    }

    #[test]
    fn numbers_become_doubles_written_as_go_writes_them() {
        let doc = parsed(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p, namespace: ns}\n\
             spec:\n  pluginConfig:\n    versions: [{name: b, weight: 10.0}, {name: a, weight: 0.5}]\n    z: 9007199254740993\n",
        );
        let [plugin] = doc.plugins.as_slice() else {
            panic!()
        };
        assert_eq!(
            plugin.json,
            r#"{"versions":[{"name":"b","weight":10},{"name":"a","weight":0.5}],"z":9007199254740992}"#
        );
        assert_eq!(plugin.origin(), "t.yaml: WasmPlugin ns/p");
    }

    #[test]
    fn yaml_1_1_booleans_are_read_as_kubernetes_reads_them() {
        let doc = parsed(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p}\nspec:\n  pluginConfig: {secure: yes, name: \"yes\"}\n",
        );
        assert_eq!(doc.plugins[0].json, r#"{"name":"yes","secure":true}"#);
    }

    #[test]
    fn a_plugin_config_json_file_reaches_the_filter_as_written() {
        let text = "{ \"versions\": [ {\"name\": \"v1\", \"weight\": 100.0} ] }\n";
        let doc = parsed(text);
        assert_eq!(doc.plugins[0].json, text);
        assert!(doc.plugins[0].resource.is_none());
    }

    #[test]
    fn lists_and_trafficextensions_and_other_kinds() {
        let doc = parsed(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: extensions.istio.io/v1alpha1\n  kind: TrafficExtension\n  metadata: {name: t}\n  spec: {wasm: {pluginConfig: {a: 1}}}\n\
             - apiVersion: extensions.istio.io/v1alpha1\n  kind: TrafficExtension\n  metadata: {name: lua}\n  spec: {lua: {}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs}\n---\nplain: values\n",
        );
        assert_eq!(doc.plugins.len(), 1);
        assert_eq!(doc.plugins[0].json, r#"{"a":1}"#);
        assert_eq!(doc.manifests.len(), 1);
        assert_eq!(doc.manifests[0].resource.to_string(), "VirtualService vs");
    }

    #[test]
    fn hostile_yaml_is_refused_in_one_line() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for text in [bomb, deep, "a: [".into(), "a: b: c".into()] {
            let mut inputs = Inputs::default();
            let Err(Fatal(msg)) = parse("h.yaml", &text, true, &mut inputs) else {
                panic!("accepted: {text:.80}")
            };
            assert!(msg.starts_with("h.yaml: cannot be read as YAML: "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}
