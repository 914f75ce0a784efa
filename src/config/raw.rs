//! The JSON shape of the plugin config, as users write it (and as Istio
//! delivers `pluginConfig`): camelCase, unknown fields rejected, every
//! object an object. Read once per push by [`parse`]; the validators turn it
//! into the compiled form.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{decimal, ConfigError};
use crate::grpc;

/// One rollout, and the top level of the config: a config without
/// `rollouts` is one rollout for every host; a config with `rollouts` holds
/// only that list, whose entries are rollouts scoped by `name`, `hosts` and
/// `pathPrefixes`. One shape for both, so an entry takes exactly the fields
/// a single-rollout config takes; the validators say which fields belong
/// where.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRollout {
    pub rollouts: Option<Vec<Object<RawRollout>>>,
    pub pass_unclaimed_routing_headers: Option<bool>,
    pub model_header: Option<String>,
    pub max_body_bytes: Option<WholeNumber>,
    pub name: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub path_prefixes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub routing_header: Option<String>,
    pub versions: Option<Vec<Object<RawVersion>>>,
    pub stickiness: Option<Object<RawStickiness>>,
    pub rules: Option<Vec<Object<RawRule>>>,
    pub response_header: Option<String>,
    pub response_reason_header: Option<String>,
    pub guard: Option<Object<RawGuard>>,
    pub schedule: Option<Object<RawSchedule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawGuard {
    pub window_seconds: Option<WholeNumber>,
    pub min_requests: Option<WholeNumber>,
    pub max_error_rate: Option<Number>,
    pub max_error_rate_above_stable: Option<Number>,
    pub slow_response_ms: Option<WholeNumber>,
    pub max_slow_rate: Option<Number>,
    pub grpc_error_codes: Option<Vec<GrpcCode>>,
    pub mesh: Option<Object<RawMesh>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMesh {
    pub cluster: String,
    pub authority: String,
    pub query: String,
    pub version_label: Option<String>,
    pub poll_seconds: Option<WholeNumber>,
    pub timeout_ms: Option<WholeNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawSchedule {
    pub start: String,
    pub steps: Vec<Object<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawStep {
    pub after_seconds: WholeNumber,
    pub weights: OrderedMap<Number>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawVersion {
    pub name: String,
    pub weight: Number,
    pub model: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawStickiness {
    #[serde(default)]
    pub user_id_headers: Vec<String>,
    #[serde(default)]
    pub user_id_cookies: Vec<String>,
    #[serde(default)]
    pub user_id_body_fields: Vec<String>,
    pub salt: Option<String>,
    pub anonymous_cookie: Option<Object<RawAnonymousCookie>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAnonymousCookie {
    pub name: String,
    pub max_age_seconds: Option<WholeNumber>,
    #[serde(default)]
    pub secure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawRule {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: Option<Object<RawMatch>>,
    pub version: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMatch {
    #[serde(default)]
    pub headers: OrderedMap<Object<RawStringMatch>>,
    #[serde(default)]
    pub cookies: OrderedMap<Object<RawStringMatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// A JSON object read into `T`. serde's derive would also take a positional
/// array (`["model-v1", 90]`) for a struct; the contract names every field.
pub(crate) struct Object<T>(pub T);

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
/// (Also the labels of a series in Prometheus' answer, `crate::mesh`.)
pub(crate) struct OrderedMap<T>(pub Vec<(String, T)>);

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
pub(super) struct Number(pub f64);

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
pub(super) struct WholeNumber(pub u32);

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
pub(super) struct GrpcCode(pub u8);

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
                match grpc::CODES.iter().position(|&c| c == name) {
                    Some(code) => Ok(code as u8),
                    None => Err(E::custom(format!(
                        "{name:?} is not a gRPC status code ({})",
                        grpc::CODES.join(", ")
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
                u8::try_from(v)
                    .ok()
                    .filter(|&c| usize::from(c) < grpc::CODES.len())
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

/// Reads one JSON object, and nothing after it, into the raw config; an
/// error names the field (a JSON path such as `versions[1].weight`).
pub(super) fn parse(text: &str) -> Result<RawRollout, ConfigError> {
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
