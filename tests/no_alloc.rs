//! The decision core allocates nothing for a sticky decision (nor a rule
//! hit): `decide()` and `filter::on_request_headers`, run natively under a
//! global allocator that counts the allocations of the current thread; nor
//! does finding a request's rollout among 500. (In
//! the module, the SDK allocates what the host returns: `make bench` counts
//! the module's allocations per request, see BENCHMARKS.md.)
#![allow(clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use canary_selector::config::{authority_host, Config, Rollout, MAX_AUTHORITY_HOST_LEN};
use canary_selector::decision::{decide, Live, Reason, Request, WyRand};
use canary_selector::filter::{self, Host};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const CONFIG: &str = r#"{
  "versions": [{ "name": "model-v1", "weight": 90 }, { "name": "model-v2", "weight": 10 }],
  "stickiness": { "userIdHeaders": ["x-user-id"], "userIdCookies": ["user_id"] },
  "rules": [{ "name": "testers",
              "match": { "headers": { "x-canary-tester": { "exact": "true" } } },
              "version": "model-v2" }]
}"#;

/// A request and a host that records without allocating.
struct Fake {
    headers: [(&'static str, &'static [u8]); 2],
    routed: bool,
    counted: Option<Reason>,
}

impl Request for Fake {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

impl Host for Fake {
    fn set_request_header(&mut self, _name: &str, _value: &[u8]) {
        self.routed = true;
    }
    fn remove_request_header(&mut self, _name: &str) {}
    fn count(&mut self, _version: usize, reason: Reason) {
        self.counted = Some(reason);
    }
}

fn request(headers: [(&'static str, &'static [u8]); 2]) -> Fake {
    Fake {
        headers,
        routed: false,
        counted: None,
    }
}

#[test]
fn sticky_and_rule_decisions_allocate_nothing() {
    // The counter sees this thread's allocations.
    assert_eq!(allocations_in(|| drop(std::hint::black_box(vec![1u8]))), 1);

    let rollout = Rollout::from_json(CONFIG.as_bytes()).expect("valid config");
    let mut rng = WyRand(1);
    let live = Live::default();

    let mut sticky = request([("x-user-id", b"user-27"), ("cookie", b"a=b")]);
    let mut rule = request([("x-user-id", b"alice"), ("x-canary-tester", b"true")]);
    let mut cookie = request([("cookie", b"theme=dark; user_id=bob"), ("x-other", b"1")]);
    // Warm up: anything lazily initialised on first use is not per request.
    decide(&rollout, &mut sticky, &mut rng, live);

    for (name, req, reason) in [
        ("sticky (header)", &mut sticky, Reason::Sticky),
        ("sticky (cookie)", &mut cookie, Reason::Sticky),
        ("rule", &mut rule, Reason::Rule),
    ] {
        let mut got = None;
        let n = allocations_in(|| got = Some(decide(&rollout, req, &mut rng, live).reason));
        assert_eq!(got, Some(reason), "{name}");
        assert_eq!(n, 0, "decide() allocated {n} times for a {name} decision");

        let n = allocations_in(|| {
            filter::on_request_headers(&rollout, req, &mut rng, live);
        });
        assert!(req.routed && req.counted == Some(reason), "{name}");
        assert_eq!(
            n, 0,
            "on_request_headers allocated {n} times for a {name} decision"
        );
    }
}

#[test]
fn finding_the_rollout_of_a_request_allocates_nothing() {
    let entries: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"name":"m{i}","hosts":["m{i}.models.example.com","m{i}.kserve.svc.cluster.local"],
                    "pathPrefixes":["/v1/models/m{i}","/v2/models/m{i}"],
                    "versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}]}}"#
            )
        })
        .chain([r#"{"name":"rest","hosts":["*.example.com"],"versions":[{"name":"v1","weight":100}]}"#.to_string()])
        .collect();
    let config = Config::from_json(format!(r#"{{"rollouts":[{}]}}"#, entries.join(",")).as_bytes())
        .expect("valid config");
    for (authority, path, want) in [
        (
            &b"M250.models.example.com:8080"[..],
            &b"/v2/models/m250/infer"[..],
            Some(250),
        ),
        (
            b"m7.kserve.svc.cluster.local",
            b"/v1/models/m7:predict",
            Some(7),
        ),
        (b"other.example.com", b"/", Some(500)),
        (b"nowhere.org", b"/", None),
    ] {
        let mut got = None;
        let n = allocations_in(|| {
            let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
            let host = authority_host(authority, &mut buf);
            got = config.rollout_for(host, || Some(path));
        });
        assert_eq!(got, want, "{}", String::from_utf8_lossy(authority));
        assert_eq!(n, 0, "the lookup allocated {n} times");
    }
}
