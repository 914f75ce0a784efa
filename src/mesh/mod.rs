//! The mesh verdict: Prometheus, which sees every proxy's responses, names
//! the canaries failing across the mesh, and every proxy follows it within a
//! poll. Pure: the glue sends the HTTP call and turns what [`apply`] returns
//! into counters, gauges and logs.
//!
//! - [`Poll`] ([`poll`]): one query, as the config's rollouts ask for it;
//!   rollouts whose `guard.mesh` names the same cluster, authority and query
//!   share it. [`take_turn`]: one poll per proxy and interval, whatever the
//!   number of workers.
//! - [`read_answer`] ([`answer`]): the answer of `/api/v1/query`, read
//!   strictly; anything else is a [`PollFailure`], and the last verdict
//!   holds.
//! - [`apply`]: what an answer says of each rollout that polls it, recorded
//!   in the rollouts' held records (latched like a local trip, so a VM that
//!   starts later, or one that missed a poll, holds the same versions back),
//!   and what to count and log.

pub mod answer;
pub mod apply;
pub mod poll;

pub use answer::{read_answer, Sample, MAX_ANSWER_BYTES};
pub use apply::{apply, Applied, Ignored, RolloutVerdict};
pub use poll::{ensure_turn, polls, release_turn, take_turn, Poll};

/// Why a poll gave no verdict (the `result` label of the poll counter).
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
    /// The answer came after a push replaced the config that asked: it
    /// answers a question no rollout asks any more.
    Superseded,
}

impl PollFailure {
    /// As the poll counter's `result` label says it: `unreachable`,
    /// `no_answer`, `http_503`, `too_large`, `bad_answer`, `superseded`.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self {
            PollFailure::Unreachable => "unreachable".into(),
            PollFailure::NoAnswer => "no_answer".into(),
            PollFailure::HttpStatus(code) => format!("http_{code}").into(),
            PollFailure::TooLarge => "too_large".into(),
            PollFailure::BadAnswer => "bad_answer".into(),
            PollFailure::Superseded => "superseded".into(),
        }
    }
}

#[cfg(test)]
mod tests;
