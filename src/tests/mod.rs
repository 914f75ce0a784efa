//! Native tests of the pure core, one file per part: `config` (the contract
//! and its errors), `hashing` (the bucket formula), `decision`, `stream` (the
//! filter on a stream, through a fake host), `guard_schedule`, `grpc`, `rollouts` (a
//! config that lists them). This file holds what they share: the fake host
//! and the configs they start from.

use crate::config::{ConfigError, Rollout};
use crate::decision::{decide, Entropy, Live, Reason, Request, WyRand};
use crate::filter::{self, Host, ResponseHost};

/// Request headers as (lowercase name, value) pairs.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// A request as a list of (lowercase name, value) headers.
#[derive(Default)]
struct FakeRequest {
    headers: Vec<(String, Vec<u8>)>,
    set: Vec<(String, Vec<u8>)>,
    removed: Vec<String>,
    counted: Vec<(usize, Reason)>,
    /// How many times each header was read from the host.
    reads: Vec<String>,
}

impl FakeRequest {
    fn with(headers: &[(&str, &[u8])]) -> Self {
        FakeRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            ..Default::default()
        }
    }
}

impl Request for FakeRequest {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.reads.push(name.to_string());
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Host for FakeRequest {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_vec()));
        self.set.push((name.to_string(), value.to_vec()));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| k != name);
        self.removed.push(name.to_string());
    }
    fn count(&mut self, version: usize, reason: Reason) {
        self.counted.push((version, reason));
    }
}

#[derive(Default)]
struct FakeResponse {
    headers: Vec<(String, String)>,
    status: Option<u16>,
    content_type: Option<&'static str>,
    grpc_status: Option<&'static str>,
    now_ms: i64,
}

impl ResponseHost for FakeResponse {
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.add_response_header(name, value);
    }
    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.push((
            name.to_string(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        match name {
            ":status" => self.status.map(|s| s.to_string().into_bytes()),
            "content-type" => self.content_type.map(|t| t.as_bytes().to_vec()),
            "grpc-status" => self.grpc_status.map(|t| t.as_bytes().to_vec()),
            _ => None,
        }
    }
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

/// A config (with `rollouts` or not), which must be accepted.
fn config(json: &str) -> crate::config::Config {
    crate::config::Config::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("config rejected: {e}\n{json}"))
}

/// The error of a config (with `rollouts` or not) that must be rejected.
fn rejected_config(json: &str) -> ConfigError {
    match crate::config::Config::from_json(json.as_bytes()) {
        Ok(_) => panic!("config accepted but should not be: {json}"),
        Err(e) => e,
    }
}

fn rollout(json: &str) -> Rollout {
    Rollout::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("config rejected: {e}\n{json}"))
}

fn rejected(json: &str) -> ConfigError {
    match Rollout::from_json(json.as_bytes()) {
        Ok(_) => panic!("config accepted but should not be: {json}"),
        Err(e) => e,
    }
}

fn split(v1: f64, v2: f64) -> Rollout {
    rollout(&format!(
        r#"{{"versions":[{{"name":"model-v1","weight":{v1}}},{{"name":"model-v2","weight":{v2}}}],
            "stickiness":{{"userIdHeaders":["x-user-id"]}}}}"#
    ))
}

fn version_for(r: &Rollout, user: &str) -> String {
    let mut req = FakeRequest::with(&[("x-user-id", user.as_bytes())]);
    let d = decide(r, &mut req, &mut WyRand(1), Live::default());
    assert_eq!(d.reason, Reason::Sticky);
    r.versions[d.version].name.clone()
}

const DEMO: &str = r#"{
  "routingHeader": "x-canary-version",
  "versions": [{"name": "model-v1", "weight": 90}, {"name": "model-v2", "weight": 10.0}],
  "stickiness": {"userIdHeaders": ["x-user-id"], "userIdCookies": ["user_id"]},
  "rules": [
    {"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"},
    {"name": "stable-pin", "match": {"cookies": {"pin": {"exact": "stable"}}}, "version": "model-v1"}
  ],
  "responseHeader": "x-canary-version"
}"#;

/// A 50/50 rollout with a testers rule and a guard on errors and slow
/// responses (the guard and gRPC tests).
const GUARDED: &str = r#"{
  "versions": [{"name": "model-v1", "weight": 50}, {"name": "model-v2", "weight": 50}],
  "stickiness": {"userIdHeaders": ["x-user-id"]},
  "rules": [{"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"}],
  "responseReasonHeader": "x-canary-reason",
  "guard": {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.1, "slowResponseMs": 500, "maxSlowRate": 0.5}
}"#;

mod config;
mod decision;
mod grpc;
mod guard_schedule;
mod hashing;
mod interleavings;
mod models;
mod rollouts;
mod stream;
