//! Names in a rollout: header and cookie names (HTTP tokens), the headers
//! the filter writes, the slots of the headers it reads, and the names that
//! become metric labels (versions, rollouts).

use super::rollout::Source;
use super::DEFAULT_ROUTING_HEADER;
use super::{
    err, ConfigError, MAX_HEADERS_READ, MAX_MODEL_NAME_LEN, MAX_NAME_LEN, STAT_TAG_FRAMING,
};

/// RFC 9110 `tchar`: what a header or cookie name may hold.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validates a header name and returns it lowercased. `allow_pseudo` admits
/// Envoy's pseudo-headers (`:path`, `:authority`, ...) for matching.
pub(super) fn header_name(
    field: &str,
    name: &str,
    allow_pseudo: bool,
) -> Result<String, ConfigError> {
    let body = match name.strip_prefix(':') {
        Some(rest) if allow_pseudo => rest,
        Some(_) => {
            return err(
                field,
                format!("{name:?} is a pseudo-header; use a regular header"),
            )
        }
        None => name,
    };
    token(field, "header", name, body)?;
    Ok(name.to_ascii_lowercase())
}

pub(super) fn cookie_name(field: &str, name: &str) -> Result<Box<[u8]>, ConfigError> {
    token(field, "cookie", name, name)?;
    Ok(name.as_bytes().into())
}

/// Checks a header or cookie name (`kind`): `body` (the name without a
/// pseudo-header's colon) is a non-empty HTTP token and `name` is not too long.
fn token(field: &str, kind: &str, name: &str, body: &str) -> Result<(), ConfigError> {
    if body.is_empty() {
        return err(field, format!("{kind} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return err(
            field,
            format!("{kind} name is longer than {MAX_NAME_LEN} bytes"),
        );
    }
    if !body.bytes().all(is_tchar) {
        return err(
            field,
            format!(
                "{name:?} is not a valid {kind} name (letters, digits and !#$%&'*+-.^_`|~ only)"
            ),
        );
    }
    Ok(())
}

/// Distinct request headers a rollout reads, each with a slot: the host
/// fetches each at most once per request.
#[derive(Default)]
pub(super) struct HeaderSlots(Vec<String>);

impl HeaderSlots {
    pub fn into_names(self) -> Vec<String> {
        self.0
    }

    pub fn slot(&mut self, field: &str, name: String) -> Result<usize, ConfigError> {
        if let Some(i) = self.0.iter().position(|h| *h == name) {
            return Ok(i);
        }
        if self.0.len() >= MAX_HEADERS_READ {
            return err(
                field,
                format!("the rollout reads more than {MAX_HEADERS_READ} distinct headers"),
            );
        }
        self.0.push(name);
        Ok(self.0.len() - 1)
    }

    pub fn cookie(&mut self, field: &str, name: &str) -> Result<Source, ConfigError> {
        Ok(Source::Cookie {
            name: cookie_name(field, name)?,
            slot: self.slot(field, "cookie".into())?,
        })
    }
}

/// Headers the filter must never write: framing, hop-by-hop and the ones
/// Envoy treats specially.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

fn written_header(field: &str, name: &str) -> Result<String, ConfigError> {
    let name = header_name(field, name, false)?;
    if RESERVED_HEADERS.contains(&name.as_str()) || name.starts_with("x-envoy-") {
        return err(
            field,
            format!("{name:?} is reserved and cannot be written by the filter"),
        );
    }
    Ok(name)
}

/// A model name (`rollouts[].models`, `versions[].model`): what the filter
/// compares with a request's model and may write into the body's `model`
/// string and into `modelHeader`, so 1 to 256 bytes with no control
/// character and no space at either end.
pub(super) fn model_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_MODEL_NAME_LEN {
        return err(
            field,
            format!("a model name is 1 to {MAX_MODEL_NAME_LEN} bytes"),
        );
    }
    if !writable_model(name) {
        return err(
            field,
            format!("{name:?} holds a control character or starts or ends with a space"),
        );
    }
    Ok(())
}

/// Whether a model name can be written into a header as it is: no control
/// character (a CR or LF would end the header in an HTTP/1 request) and no
/// space at either end (a header value has none).
pub fn writable_model(name: &str) -> bool {
    !name.chars().any(char::is_control) && name.trim() == name
}

/// A header the filter writes besides the routing header (`modelHeader`).
pub(super) fn other_written_header(field: &str, name: &str) -> Result<String, ConfigError> {
    written_header(field, name)
}

/// The headers the filter writes, lowercased.
pub(super) struct WrittenHeaders {
    pub routing: String,
    pub response: Option<String>,
    pub reason: Option<String>,
}

#[inline(never)]
pub(super) fn validate_written_headers(
    routing: Option<&str>,
    response: Option<String>,
    reason: Option<String>,
) -> Result<WrittenHeaders, ConfigError> {
    let routing = written_header("routingHeader", routing.unwrap_or(DEFAULT_ROUTING_HEADER))?;
    let response = match response {
        Some(h) => Some(written_header("responseHeader", &h)?),
        None => None,
    };
    let reason = match reason {
        Some(h) => Some(written_header("responseReasonHeader", &h)?),
        None => None,
    };
    if reason.is_some() && reason == response {
        return err(
            "responseReasonHeader",
            "is the same header as responseHeader",
        );
    }
    Ok(WrittenHeaders {
        routing,
        response,
        reason,
    })
}

/// Where Envoy does not extract the stat tags (an Istio sidecar without the
/// extraStatTags line), a label value is part of the Prometheus metric name,
/// with every character but letters and digits turned into `_`: `model-v2`
/// and `model.v2` would share one series.
fn metric_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Checks a name that becomes a metric label and a header value (a version's
/// or a rollout's) against the rules both impose, and against the names
/// `earlier` already taken: `field` is where it was written.
pub(super) fn label<'a>(
    field: &str,
    name: &str,
    max_len: usize,
    earlier: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), ConfigError> {
    if name.is_empty() {
        return err(field, "is empty");
    }
    if name.len() > max_len {
        return err(field, format!("is longer than {max_len} bytes"));
    }
    // Visible ASCII only: a valid header value that cannot smuggle CR/LF,
    // spaces or control bytes into the routing header.
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return err(
            field,
            format!("{name:?} is not a valid header value (visible ASCII, no spaces)"),
        );
    }
    // The name is a stat tag value, framed as `version=.=<name>;.;`
    // (Istio's encoding, see `filter::MetricNames`): `;` or `=` in it could
    // end the value early or start another tag.
    if let Some(c) = name.chars().find(|c| STAT_TAG_FRAMING.contains(*c)) {
        return err(
            field,
            format!("{name:?} holds {c:?}, which frames the metrics' stat tags"),
        );
    }
    if earlier.clone().any(|seen| seen == name) {
        return err(field, format!("{name:?} is listed twice"));
    }
    if let Some(seen) = earlier
        .into_iter()
        .find(|seen| metric_name(seen) == metric_name(name))
    {
        return err(
            field,
            format!(
                "{seen:?} and {name:?} would share one Prometheus metric name where the stat tags are not extracted"
            ),
        );
    }
    Ok(())
}
