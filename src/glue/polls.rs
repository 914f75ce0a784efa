//! The mesh verdict's polls as this VM sends them: when each is next worth
//! asking about, and the token of the call in flight. Whose turn it is, and
//! what an answer says, are `crate::mesh`'s.

use std::cell::Cell;

use super::HostShared;
use crate::mesh::{self, Poll};
use crate::shared::Keys;

/// A poll of Prometheus as this VM sees it.
pub struct PollState {
    pub poll: Poll,
    turn_key: String,
    /// When this VM last asked whose turn it was, and when the turn it lost
    /// comes due: until then its ticks do not ask again (unless the clock
    /// stepped back).
    asked_ms: Cell<i64>,
    due_ms: Cell<i64>,
    /// The token of this VM's call in flight, and when it was sent.
    pending: Cell<Option<(u32, i64)>>,
}

/// The polls of one config in this VM.
pub struct Polls(Vec<PollState>);

impl Polls {
    /// The polls of a config, their turn records created if absent (by
    /// the root context, before any stream: see `crate::shared::ensure`).
    pub fn new(polls: Vec<Poll>, plugin: &Keys) -> Polls {
        Polls(
            polls
                .into_iter()
                .map(|poll| {
                    let turn_key = plugin.poll_turn(poll.index);
                    mesh::ensure_turn(&HostShared, &turn_key, poll.identity);
                    (turn_key, poll)
                })
                .map(|(turn_key, poll)| PollState {
                    turn_key,
                    poll,
                    asked_ms: Cell::new(i64::MIN),
                    due_ms: Cell::new(i64::MIN),
                    pending: Cell::new(None),
                })
                .collect(),
        )
    }

    /// Sends each poll that is due and whose turn this VM takes with
    /// `dispatch` (Envoy's HTTP call: its token, or `None` when Envoy
    /// refused it), and returns the polls Envoy refused.
    pub fn tick(&self, now_ms: i64, mut dispatch: impl FnMut(&Poll) -> Option<u32>) -> Vec<&Poll> {
        let store = HostShared;
        let mut refused = Vec::new();
        for p in &self.0 {
            let interval = i64::try_from(p.poll.interval_ms).unwrap_or(i64::MAX);
            // Stepped back more than an interval: the record decides.
            let stepped_back = now_ms < p.asked_ms.get().saturating_sub(interval);
            if now_ms < p.due_ms.get() && !stepped_back {
                continue;
            }
            p.asked_ms.set(now_ms);
            let turn = mesh::take_turn(
                &store,
                &p.turn_key,
                p.poll.identity,
                now_ms,
                p.poll.interval_ms,
            );
            match turn {
                Err(due) => p.due_ms.set(due),
                Ok(()) => {
                    p.due_ms.set(now_ms.saturating_add(interval));
                    match dispatch(&p.poll) {
                        Some(token) => p.pending.set(Some((token, now_ms))),
                        None => refused.push(&p.poll),
                    }
                }
            }
        }
        refused
    }

    /// The poll whose call has this token, if it is one of this config's;
    /// its call is no longer in flight.
    pub fn answered(&self, token: u32) -> Option<&Poll> {
        let p = self
            .0
            .iter()
            .find(|p| p.pending.get().is_some_and(|(t, _)| t == token))?;
        p.pending.set(None);
        Some(&p.poll)
    }

    /// The calls in flight of a config a push replaced: their answers will
    /// not be applied, so each is given up (and its turn given back, for
    /// the new config to send it at its next tick). Returns how many.
    pub fn supersede(&self) -> u64 {
        let store = HostShared;
        let mut n = 0;
        for p in &self.0 {
            if let Some((_, sent)) = p.pending.take() {
                mesh::release_turn(&store, &p.turn_key, p.poll.identity, sent);
                n += 1;
            }
        }
        n
    }
}
