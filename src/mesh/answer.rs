//! The answer of Prometheus' instant query API, read strictly.

use serde::Deserialize;

use super::PollFailure;
use crate::config::{Object, OrderedMap};

/// The largest answer read; a longer one is a failure, never copied into the
/// VM.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A series of the answer: its labels and its value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    /// As Prometheus wrote it: finite, NaN or an infinity.
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

// Objects read as objects only (`Object`): serde's derive would also take
// a list of the fields' values in their order, which no Prometheus writes.
#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Object<Data>>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Object<RawSample>>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: OrderedMap<String>,
    /// `[<unix time>, "<value>"]`.
    value: (f64, String),
}

/// Reads the answer of an instant query (`status` is the `:status` header,
/// `body` the body, `body_size` what Envoy says it holds): every series with
/// its value. `{"status":"success","data":{"resultType":"vector",
/// "result":[{"metric":{...},"value":[<time>,"<value>"]}]}}`.
pub fn read_answer(
    status: Option<&[u8]>,
    body_size: usize,
    body: impl FnOnce() -> Option<Vec<u8>>,
) -> Result<Vec<Sample>, PollFailure> {
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
    let Object(answer): Object<Answer> =
        serde_json::from_str(text).map_err(|_| PollFailure::BadAnswer)?;
    let data = match answer.data {
        Some(Object(data)) if answer.status == "success" && data.result_type == "vector" => data,
        _ => return Err(PollFailure::BadAnswer),
    };
    data.result
        .into_iter()
        .map(|Object(sample)| {
            // Prometheus writes values as Go formats floats: "1", "0.25",
            // "NaN", "+Inf", "-Inf".
            let value = match sample.value.1.as_str() {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                // JSON's number syntax is Prometheus' for finite values,
                // with nothing around it (serde_json would skip spaces).
                finite if finite.trim() != finite => return Err(PollFailure::BadAnswer),
                finite => {
                    serde_json::from_str::<f64>(finite).map_err(|_| PollFailure::BadAnswer)?
                }
            };
            Ok(Sample {
                labels: sample.metric.0,
                value,
            })
        })
        .collect()
}
