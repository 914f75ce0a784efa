//! The local verdict: every VM counts the responses of a guarded rollout in
//! its own [`Window`], writes it on its tick to shared data under its own
//! key ([`Keys::window`]), and judges the windows of every VM of the proxy
//! added up, so one trip covers every worker of the pod.
//!
//! Each window has one writer, its VM: no interleaving of the workers can
//! lose a count, and none needs to initialise anything for the others. A
//! window belongs to one push generation of its rollout ([`Push`]): a push
//! that keeps what the rollout decides keeps the generation, and each VM
//! goes on counting into the same window; readers add up only the windows
//! of their own generation. A trip is recorded in the rollout's
//! [`held`](crate::shared::held) record, where every VM learns it.
//!
//! [`Push`]: crate::shared::Push

use crate::config::Guard;
use crate::grpc;
use crate::shared::held::{record_held, Held};
use crate::shared::{bump, Keys, SharedData, VmId};

mod window;

pub use window::{Counts, Window, SLOTS};

/// Why a response counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An HTTP response with a 5xx status.
    Http5xx,
    /// A gRPC status the guard counts as an error (`guard.grpcErrorCodes`).
    Grpc(u8),
    /// A gRPC stream that ended without a `grpc-status` (reset or cut short).
    NoGrpcStatus,
}

impl Failure {
    /// Every failure, in the order [`Failure::index`] numbers them.
    pub fn all() -> impl Iterator<Item = Failure> {
        (0..grpc::CODES.len() as u8)
            .map(Failure::Grpc)
            .chain([Failure::NoGrpcStatus, Failure::Http5xx])
    }

    /// 0 to 16 for gRPC codes, then 17 and 18: the bit in
    /// [`Counts::failures`], and an index for per-failure counters.
    pub fn index(self) -> usize {
        match self {
            Failure::Grpc(code) => usize::from(code),
            Failure::NoGrpcStatus => grpc::CODES.len(),
            Failure::Http5xx => grpc::CODES.len() + 1,
        }
    }

    /// As logs and metric names say it: `INTERNAL`, `no_grpc_status`, `http_5xx`.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Grpc(code) => grpc::name(code),
            Failure::NoGrpcStatus => "no_grpc_status",
            Failure::Http5xx => "http_5xx",
        }
    }
}

/// The failures a set of [`Counts::failures`] bits names, for a log line.
pub fn describe_failures(bits: u32) -> String {
    let names: Vec<&str> = Failure::all()
        .filter(|f| bits & (1 << f.index()) != 0)
        .map(Failure::name)
        .collect();
    names.join(", ")
}

/// Why a canary version tripped the guard, with the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub version: usize,
    pub counts: Counts,
    pub stable: Counts,
    pub cause: &'static str,
}

/// The guard of one rollout in one VM.
#[derive(Debug)]
pub struct Guarded {
    /// This VM's counts of the rollout's push `generation`.
    counted: Window,
    /// Something was counted since the window was last written.
    unwritten: bool,
    generation: u32,
}

/// What a tick's judgement of the proxy's windows found.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The totals per version over the window, every VM's added up.
    pub totals: Vec<Counts>,
    pub trip: Option<Tripped>,
}

/// A breach the judgement found.
#[derive(Debug, Clone, PartialEq)]
pub enum Tripped {
    /// This VM recorded the trip: it counts and logs it, once for the proxy.
    Now(Trip),
    /// The rollout's record already held a local trip of this push.
    Already,
}

impl Guarded {
    /// The guard of a rollout of `versions` versions in its push
    /// `generation`, with nothing counted yet.
    pub fn start(config: &Guard, versions: usize, generation: u32) -> Guarded {
        Guarded {
            counted: Window::new(versions, config.window_ms),
            unwritten: false,
            generation,
        }
    }

    /// Whether this guard goes on under a config whose guard is `config`,
    /// of `versions` versions, in push `generation`: the push kept the
    /// rollout's generation, and the window's shape.
    pub fn continues(&self, config: &Guard, versions: usize, generation: u32) -> bool {
        self.generation == generation
            && self
                .counted
                .same_shape(&Window::new(versions, config.window_ms))
    }

    /// Counts one response (no host call: the request path).
    pub fn record(&mut self, now_ms: u64, version: usize, failure: Option<Failure>, slow: bool) {
        self.counted.record(now_ms, version, failure, slow);
        self.unwritten = true;
    }

    /// Whether this VM counted something since its last tick.
    pub fn has_news(&self) -> bool {
        self.unwritten
    }

    /// Writes this VM's window, adds up the windows of every VM in `vms`
    /// (this one, `me`, among them) of the same generation, and judges the
    /// sum. A breach is recorded in the rollout's held record (and the
    /// plugin's trip board moved) by the VM that adds it.
    pub fn tick(
        &mut self,
        store: &impl SharedData,
        keys: &Keys,
        me: VmId,
        vms: &[VmId],
        config: &Guard,
        now_ms: u64,
    ) -> Judged {
        store.set(
            &keys.window(me),
            &self.counted.encode(self.generation),
            None,
        );
        self.unwritten = false;
        let mut sum = self.counted.clone();
        for &vm in vms.iter().filter(|&&vm| vm != me) {
            let theirs = store
                .get(&keys.window(vm))
                .0
                .and_then(|b| Window::decode(&b, sum.versions(), config.window_ms));
            if let Some((window, generation)) = theirs {
                if generation == self.generation {
                    sum.merge(&window);
                }
            }
        }
        let totals = sum.totals(now_ms);
        let trip = judge(config, &totals).map(|trip| {
            let local = Held {
                local: Some(trip.version),
                mesh: 0,
            };
            if record_held(store, &keys.held(), self.generation, local)
                .local
                .is_some()
            {
                bump(store, &keys.trips());
                Tripped::Now(trip)
            } else {
                Tripped::Already
            }
        });
        Judged { totals, trip }
    }
}

/// Judges the window totals: the first canary version (index >= 1) with
/// at least `min_requests` responses that breaches a threshold.
pub fn judge(guard: &Guard, totals: &[Counts]) -> Option<Trip> {
    let stable = totals.first().copied().unwrap_or_default();
    totals.iter().enumerate().skip(1).find_map(|(version, &c)| {
        if c.requests < guard.min_requests {
            return None;
        }
        let cause = if guard.max_error_rate.is_some_and(|max| c.error_rate() > max) {
            "error rate above maxErrorRate"
        } else if guard
            .max_error_rate_above_stable
            .is_some_and(|max| c.error_rate() - stable.error_rate() > max)
        {
            "error rate above the stable version's by more than maxErrorRateAboveStable"
        } else if guard.max_slow_rate.is_some_and(|max| c.slow_rate() > max) {
            "share of slow responses above maxSlowRate"
        } else {
            return None;
        };
        Some(Trip {
            version,
            counts: c,
            stable,
            cause,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn guard(min: u32, max: Option<f64>, above: Option<f64>, slow: Option<(u32, f64)>) -> Guard {
        Guard {
            window_ms: 10_000,
            min_requests: min,
            max_error_rate: max,
            max_error_rate_above_stable: above,
            slow_response_ms: slow.map(|(ms, _)| ms),
            max_slow_rate: slow.map(|(_, max)| max),
            grpc_error_codes: crate::config::DEFAULT_GRPC_ERROR_CODES,
            mesh: None,
        }
    }

    #[test]
    fn judge_thresholds() {
        let c = |requests, errors, slow| Counts {
            requests,
            errors,
            slow,
            failures: 0,
        };
        // Not enough requests to judge.
        assert!(judge(
            &guard(50, Some(0.1), None, None),
            &[c(100, 0, 0), c(49, 49, 0)]
        )
        .is_none());
        // Absolute.
        let trip = judge(
            &guard(50, Some(0.1), None, None),
            &[c(100, 0, 0), c(50, 6, 0)],
        )
        .unwrap();
        assert_eq!((trip.version, trip.counts.errors), (1, 6));
        assert!(judge(
            &guard(50, Some(0.1), None, None),
            &[c(100, 0, 0), c(50, 5, 0)]
        )
        .is_none());
        // Relative to stable: both failing alike does not trip.
        let rel = guard(50, None, Some(0.05), None);
        assert!(judge(&rel, &[c(1000, 200, 0), c(100, 22, 0)]).is_none());
        assert!(judge(&rel, &[c(1000, 200, 0), c(100, 26, 0)]).is_some());
        // Slow responses.
        let slow = guard(10, None, None, Some((500, 0.2)));
        assert!(judge(&slow, &[c(0, 0, 0), c(10, 0, 2)]).is_none());
        assert_eq!(
            judge(&slow, &[c(0, 0, 0), c(10, 0, 3)]).unwrap().cause,
            "share of slow responses above maxSlowRate"
        );
        // The stable version itself never trips; the first breaching canary is named.
        assert!(judge(&guard(1, Some(0.0), None, None), &[c(10, 10, 0)]).is_none());
        let three = judge(
            &guard(1, Some(0.1), None, None),
            &[c(10, 0, 0), c(10, 0, 0), c(10, 5, 0)],
        )
        .unwrap();
        assert_eq!(three.version, 2);
    }

    #[test]
    fn every_vm_s_window_is_judged_and_one_vm_records_the_trip() {
        let store = MemoryStore::default();
        let keys = Keys::new("p", Some("iris"));
        let g = guard(10, Some(0.1), None, None);
        let vms = [1, 2];
        let mut a = Guarded::start(&g, 2, 1);
        let mut b = Guarded::start(&g, 2, 1);
        for t in 0..6 {
            a.record(1_000 + t, 1, Some(Failure::Http5xx), false);
            b.record(1_000 + t, 1, Some(Failure::Http5xx), false);
        }
        let judged = a.tick(&store, &keys, 1, &vms, &g, 2_000);
        assert_eq!((judged.totals[1].requests, judged.trip), (6, None));
        assert!(!a.has_news());
        let judged = b.tick(&store, &keys, 2, &vms, &g, 2_000);
        assert_eq!(judged.totals[1].requests, 12);
        assert!(matches!(
            judged.trip,
            Some(Tripped::Now(Trip { version: 1, .. }))
        ));
        assert_eq!(crate::shared::count(&store, &keys.trips()), 1);
        let judged = a.tick(&store, &keys, 1, &vms, &g, 2_000);
        assert_eq!(judged.trip, Some(Tripped::Already));
        assert_eq!(
            crate::shared::held::read(&store, &keys.held(), 1).local,
            Some(1)
        );

        // A push that keeps the generation keeps this VM's guard; a new
        // generation starts afresh and adds up no window of the old one.
        assert!(a.continues(&g, 2, 1));
        assert!(!a.continues(&g, 2, 2), "another push");
        assert!(!a.continues(&g, 3, 1), "another shape");
        let mut fresh = Guarded::start(&g, 2, 2);
        fresh.record(2_000, 1, None, false);
        let judged = fresh.tick(&store, &keys, 2, &vms, &g, 2_000);
        assert_eq!((judged.totals[1].requests, judged.trip), (1, None));
    }
}
