//! The mesh verdict in the VM: each poll of Prometheus this VM may send, and
//! what each rollout's guard has learnt from the answers. The decisions are
//! `crate::mesh`'s (whose turn it is, what an answer says, the latched
//! record); here they meet the host: Envoy's HTTP call, counters, logs.

use std::cell::Cell;

use log::warn;

use super::installed::{version_name, Installed};
use super::metrics::{add_to_counter, set_gauge};
use super::HostShared;
use crate::mesh::{self, Poll, PollFailure, Series};
use crate::shared::{self, Keys, Push};

/// A poll of Prometheus as this VM sees it.
pub struct PollState {
    pub poll: Poll,
    /// When it is next due, as this VM last read it: until then its ticks
    /// do not ask.
    due_ms: Cell<i64>,
    /// The token of this VM's call in flight.
    pending: Cell<Option<u32>>,
}

impl PollState {
    pub fn new(poll: Poll, now_ms: i64) -> PollState {
        PollState {
            poll,
            due_ms: Cell::new(now_ms),
            pending: Cell::new(None),
        }
    }
}

/// The mesh verdict's state of one rollout in the VM.
pub struct MeshState {
    keys: Keys,
    generation: u32,
    /// The versions the mesh tripped, latched until the rollout's next push.
    pub tripped: Cell<u32>,
}

impl MeshState {
    /// The first VM to accept the rollout's push starts its record afresh;
    /// the others read what the mesh has tripped for it so far.
    pub fn start(store: &HostShared, keys: Keys, push: Push) -> MeshState {
        let tripped = if push.first {
            mesh::start_trips(store, &keys, push.generation);
            0
        } else {
            mesh::recorded_trips(store, &keys, push.generation)
        };
        MeshState {
            keys,
            generation: push.generation,
            tripped: Cell::new(tripped),
        }
    }
}

impl MeshState {
    /// Reads what another VM recorded since (the trip board moved): true if
    /// it holds back a version this VM did not.
    pub fn learn(&self, store: &HostShared) -> bool {
        let recorded = mesh::recorded_trips(store, &self.keys, self.generation);
        let new = recorded & !self.tripped.get() != 0;
        self.tripped.set(self.tripped.get() | recorded);
        new
    }
}

impl Installed {
    /// The mesh verdict's tick: each poll that is due and whose turn this
    /// VM takes is sent with `dispatch` (Envoy's HTTP call: the token, or
    /// why Envoy refused it).
    pub fn tick_polls(&self, mut dispatch: impl FnMut(&Poll) -> Option<u32>) {
        let store = HostShared;
        let now = self.now_ms.get();
        for p in &self.polls {
            if now < p.due_ms.get() {
                continue;
            }
            match mesh::take_turn(&store, &p.poll.turn_key, now, p.poll.interval_ms) {
                Err(due) => p.due_ms.set(due),
                Ok(()) => {
                    p.due_ms.set(
                        now.saturating_add(i64::try_from(p.poll.interval_ms).unwrap_or(i64::MAX)),
                    );
                    match dispatch(&p.poll) {
                        Some(token) => p.pending.set(Some(token)),
                        None => self.poll_result(p, Err(PollFailure::Unreachable)),
                    }
                }
            }
        }
    }

    /// The poll whose call has this token, if it is this config's; its
    /// call is no longer in flight.
    pub fn poll_of(&self, token: u32) -> Option<&PollState> {
        let p = self.polls.iter().find(|p| p.pending.get() == Some(token))?;
        p.pending.set(None);
        Some(p)
    }

    /// A poll's answer, read: counted, and applied to each rollout that
    /// reads it. A failure changes nothing: the last verdict holds.
    pub fn poll_result(&self, p: &PollState, answer: Result<Vec<Series>, PollFailure>) {
        let store = HostShared;
        let result = answer.as_ref().map_or_else(|f| f.name(), |_| "ok".into());
        add_to_counter(&self.plugin_names.mesh_polls(&result), 1);
        let failing = match answer {
            Ok(failing) => failing,
            Err(failure) => {
                if mesh::log_due(&store, &p.poll.logged_key, self.now_ms.get()) {
                    warn!(
                        "mesh verdict: the poll of {} (cluster {}) failed ({}); the last verdict holds",
                        p.poll.authority,
                        p.poll.cluster,
                        failure.name()
                    );
                }
                return;
            }
        };
        let scoped = self.config.scope.is_some();
        let mut unknown = 0;
        let mut tripped_any = false;
        for &i in &p.poll.rollouts {
            let (Some(rollout), Some(state)) = (self.config.rollouts.get(i), self.rollouts.get(i))
            else {
                continue;
            };
            let (Some(m), Some(config)) = (
                &state.mesh,
                rollout.guard.as_ref().and_then(|g| g.mesh.as_ref()),
            ) else {
                continue;
            };
            let v = mesh::verdict(&failing, rollout, config, scoped);
            unknown += v.unknown;
            if v.tripped & !m.tripped.get() == 0 {
                continue;
            }
            let added = mesh::record_trips(&store, &m.keys, m.generation, v.tripped);
            m.tripped.set(m.tripped.get() | v.tripped);
            set_gauge(&state.names.guard_tripped(), 1);
            if added == 0 {
                continue;
            }
            // This VM recorded the trip: it counts it and says so, once for
            // the proxy.
            tripped_any = true;
            let names: Vec<&str> = (1..rollout.versions.len())
                .filter(|&v| added >> v & 1 == 1)
                .map(|v| version_name(rollout, v))
                .collect();
            for name in &names {
                add_to_counter(&state.names.mesh_trips(name), 1);
            }
            let of = rollout
                .name()
                .map(|n| format!(" of rollout {n}"))
                .unwrap_or_default();
            warn!(
                "guard tripped{of} by the mesh verdict: Prometheus names {} failing ({}). Every request no rule \
                 pins to {} now goes to {} until a new config is pushed",
                names.join(", "),
                config.query,
                names.join(", "),
                version_name(rollout, 0),
            );
        }
        if tripped_any {
            // The other VMs read the records when the board moves.
            shared::bump(&store, &self.plugin_keys.trips());
        }
        if unknown > 0 {
            add_to_counter(
                &self.plugin_names.mesh_ignored_series(),
                u64::try_from(unknown).unwrap_or(u64::MAX),
            );
            if mesh::log_due(&store, &p.poll.logged_key, self.now_ms.get()) {
                warn!(
                    "mesh verdict: {unknown} series of the answer of {} name no version of the rollout they apply to; ignored",
                    p.poll.authority
                );
            }
        }
    }
}
