//! The mesh verdict: Prometheus, which sees every proxy's responses, names
//! the canaries failing across the mesh, and every proxy follows it within a
//! poll. Pure: the glue issues the HTTP call and hands the answer here.
//!
//! - [`Poll`]: one query, as the config's rollouts ask for it; rollouts
//!   whose `guard.mesh` names the same cluster, authority and query share it.
//! - [`take_turn`]: one poll per proxy and interval, whatever the number of
//!   workers: the VMs agree in shared data on whose turn it is.
//! - [`read_answer`]: the answer of `/api/v1/query`, read strictly; anything
//!   else is a [`PollFailure`], and the last verdict holds.
//! - [`verdict`]: the versions of one rollout the answer names.
//! - [`record_trips`] / [`recorded_trips`]: the versions the mesh tripped, per
//!   rollout push, in shared data: latched like a local trip, so a VM that
//!   starts later, or one that missed a poll, holds them back too.

use serde::Deserialize;

use crate::config::{Config, Mesh, OrderedMap, Rollout};
use crate::hash::murmur3_32;
use crate::shared::{Keys, SharedData};

/// The largest answer read; a longer one is a failure, never copied into the
/// VM.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One Prometheus query the proxy polls, and the rollouts that read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    pub cluster: String,
    pub authority: String,
    /// `/api/v1/query?query=...`.
    pub path: String,
    /// The shortest `pollSeconds` of its rollouts.
    pub interval_ms: u64,
    /// The shortest `timeoutMs` of its rollouts (each below its interval).
    pub timeout_ms: u64,
    /// Indices into the config's rollouts.
    pub rollouts: Vec<usize>,
    /// Shared-data key of the poll's turn.
    pub turn_key: String,
    /// Shared-data key of the last time a failure of the poll was logged.
    pub logged_key: String,
}

/// The polls of a config: one per distinct (cluster, authority, query).
pub fn polls(config: &Config, plugin: &str) -> Vec<Poll> {
    let mut out: Vec<Poll> = Vec::new();
    for (i, rollout) in config.rollouts.iter().enumerate() {
        let Some(mesh) = rollout.guard.as_ref().and_then(|g| g.mesh.as_ref()) else {
            continue;
        };
        let same = |p: &&mut Poll| {
            p.cluster == mesh.cluster && p.authority == mesh.authority && p.path == mesh.path
        };
        match out.iter_mut().find(same) {
            Some(poll) => {
                poll.interval_ms = poll.interval_ms.min(mesh.poll_ms);
                poll.timeout_ms = poll.timeout_ms.min(mesh.timeout_ms);
                poll.rollouts.push(i);
            }
            None => {
                let mut id = mesh.cluster.as_bytes().to_vec();
                for part in [&mesh.authority, &mesh.path] {
                    id.push(0);
                    id.extend_from_slice(part.as_bytes());
                }
                let key = format!(
                    "canary-selector.{plugin}.mesh.{:08x}",
                    murmur3_32(&id, 0x5eed)
                );
                out.push(Poll {
                    cluster: mesh.cluster.clone(),
                    authority: mesh.authority.clone(),
                    path: mesh.path.clone(),
                    interval_ms: mesh.poll_ms,
                    timeout_ms: mesh.timeout_ms,
                    rollouts: vec![i],
                    turn_key: format!("{key}.turn"),
                    logged_key: format!("{key}.logged"),
                });
            }
        }
    }
    out
}

/// Whether this VM polls now: the poll is due (the shared record holds when
/// it is next due) and this VM is the one that moves it on (compare and
/// swap). `Err` holds when it is next due, so a VM asks again only then.
pub fn take_turn(
    store: &impl SharedData,
    key: &str,
    now_ms: i64,
    interval_ms: u64,
) -> Result<(), i64> {
    let next = now_ms.saturating_add(i64::try_from(interval_ms).unwrap_or(i64::MAX));
    for _ in 0..4 {
        let (record, cas) = store.get(key);
        let due = read_i64(record.as_deref());
        if due.is_some_and(|due| now_ms < due) {
            return Err(due.unwrap_or(next));
        }
        if store.set(key, &next.to_le_bytes(), cas) {
            return Ok(());
        }
        // Another VM took this turn.
    }
    Err(next)
}

/// Whether a failure of the poll should be logged now: at most once a
/// minute per proxy (the VMs share the record).
pub fn log_due(store: &impl SharedData, key: &str, now_ms: i64) -> bool {
    let (record, cas) = store.get(key);
    let quiet = read_i64(record.as_deref()).is_some_and(|at| now_ms - at < 60_000);
    !quiet && store.set(key, &now_ms.to_le_bytes(), cas)
}

fn read_i64(value: Option<&[u8]>) -> Option<i64> {
    value
        .and_then(|v| v.try_into().ok())
        .map(i64::from_le_bytes)
}

/// Why a poll gave no verdict (the label of the poll counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollFailure {
    /// Envoy refused the call: no such cluster, or a bad header.
    Unreachable,
    /// No answer at all: the call was reset.
    NoAnswer,
    /// An answer whose HTTP status is not 200: Prometheus' own (503 while
    /// it is not ready), or Envoy's for the call (503 when it cannot
    /// connect, 504 at the timeout).
    HttpStatus(u16),
    /// A body larger than [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// A body that is not the API's JSON, or a failed or non-vector query.
    BadAnswer,
}

impl PollFailure {
    /// As the poll counter's `result` label says it: `unreachable`,
    /// `no_answer`, `http_503`, `too_large`, `bad_answer`.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            PollFailure::Unreachable => "unreachable".into(),
            PollFailure::NoAnswer => "no_answer".into(),
            PollFailure::HttpStatus(code) => format!("http_{code}").into(),
            PollFailure::TooLarge => "too_large".into(),
            PollFailure::BadAnswer => "bad_answer".into(),
        }
    }
}

/// A series of the answer with a non-zero value: the labels a verdict reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Series {
    pub labels: Vec<(String, String)>,
}

impl Series {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: OrderedMap<String>,
    /// `[<unix time>, "<value>"]`.
    value: (f64, String),
}

/// Reads the answer of an instant query (`status` is the `:status` header,
/// `body` the body, `body_size` what Envoy says it holds): the series with a
/// non-zero value. `{"status":"success","data":{"resultType":"vector",
/// "result":[{"metric":{...},"value":[<time>,"<value>"]}]}}`.
pub fn read_answer(
    status: Option<&[u8]>,
    body_size: usize,
    body: impl FnOnce() -> Option<Vec<u8>>,
) -> Result<Vec<Series>, PollFailure> {
    match status {
        None => return Err(PollFailure::NoAnswer),
        Some(b"200") => {}
        Some(other) => {
            // Three digits (Envoy checks), else no code a counter can name.
            let code = std::str::from_utf8(other)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|c| (100..600).contains(c))
                .unwrap_or(0);
            return Err(PollFailure::HttpStatus(code));
        }
    }
    if body_size > MAX_ANSWER_BYTES {
        return Err(PollFailure::TooLarge);
    }
    let body = body().unwrap_or_default();
    // Read as text, with the reader the config's JSON goes through: one
    // copy of serde_json's parser in the module, not two.
    let text = std::str::from_utf8(&body).map_err(|_| PollFailure::BadAnswer)?;
    let answer: Answer = serde_json::from_str(text).map_err(|_| PollFailure::BadAnswer)?;
    let data = match answer.data {
        Some(data) if answer.status == "success" && data.result_type == "vector" => data,
        _ => return Err(PollFailure::BadAnswer),
    };
    let mut failing = Vec::new();
    for sample in data.result {
        // Prometheus writes values as Go formats floats: "1", "0.25",
        // "NaN", "+Inf". NaN is no verdict.
        let value = match sample.value.1.as_str() {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            // JSON's number syntax is Prometheus' for finite values.
            finite => serde_json::from_str::<f64>(finite).map_err(|_| PollFailure::BadAnswer)?,
        };
        if value != 0.0 && !value.is_nan() {
            failing.push(Series {
                labels: sample.metric.0,
            });
        }
    }
    Ok(failing)
}

/// What an answer says of one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The canary versions named failing, bit `i` for version `i` (never
    /// the stable version's bit 0).
    pub tripped: u32,
    /// Series that apply to the rollout but name no version of it.
    pub unknown: usize,
}

/// The versions of `rollout` that `failing` names. A series applies to the
/// rollout named in its `rollout` label; one without that label, or any
/// series in a config without `rollouts` (`scoped` false), applies to every
/// rollout that polls the query.
pub fn verdict(failing: &[Series], rollout: &Rollout, mesh: &Mesh, scoped: bool) -> Verdict {
    let mut v = Verdict::default();
    for series in failing {
        if scoped
            && series
                .label("rollout")
                .is_some_and(|r| Some(r) != rollout.name())
        {
            continue;
        }
        let named = series
            .label(&mesh.version_label)
            .and_then(|name| rollout.versions.iter().position(|v| v.name == name));
        match named {
            // The stable version is never tripped: it is where users go.
            Some(0) => {}
            Some(i) => {
                v.tripped |= u32::try_from(i)
                    .ok()
                    .and_then(|i| 1u32.checked_shl(i))
                    .unwrap_or(0)
            }
            None => v.unknown += 1,
        }
    }
    v
}

/// The versions the mesh tripped for the rollout's push `generation`, as
/// recorded in shared data (0 while none, or for another push).
pub fn recorded_trips(store: &impl SharedData, keys: &Keys, generation: u32) -> u32 {
    match read_trips(store.get(&keys.mesh_trips()).0.as_deref()) {
        Some((g, bits)) if g == generation => bits,
        _ => 0,
    }
}

/// Starts the record of a new push (the first VM to accept it): no version
/// tripped by the mesh yet.
pub fn start_trips(store: &impl SharedData, keys: &Keys, generation: u32) {
    store.set(&keys.mesh_trips(), &trips_record(generation, 0), None);
}

/// Adds `bits` to the versions the mesh tripped for push `generation`
/// (compare and swap), and returns those this call added: the VM that adds a
/// trip counts and logs it. A record of a later push is left alone (this
/// VM's config is on its way out).
pub fn record_trips(store: &impl SharedData, keys: &Keys, generation: u32, bits: u32) -> u32 {
    let key = keys.mesh_trips();
    for _ in 0..8 {
        let (record, cas) = store.get(&key);
        let known = match read_trips(record.as_deref()) {
            Some((g, known)) if g == generation => known,
            Some((g, _)) if g.wrapping_sub(generation) as i32 > 0 => return 0,
            _ => 0,
        };
        let added = bits & !known;
        if added == 0 {
            return 0;
        }
        if store.set(&key, &trips_record(generation, known | added), cas) {
            return added;
        }
    }
    0
}

fn trips_record(generation: u32, bits: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    let (g, b) = out.split_at_mut(4);
    g.copy_from_slice(&generation.to_le_bytes());
    b.copy_from_slice(&bits.to_le_bytes());
    out
}

fn read_trips(record: Option<&[u8]>) -> Option<(u32, u32)> {
    let record: [u8; 8] = record?.try_into().ok()?;
    let (g, b) = record.split_at(4);
    Some((
        u32::from_le_bytes(g.try_into().ok()?),
        u32::from_le_bytes(b.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests;
