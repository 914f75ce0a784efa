//! Target `decide`: the filter's request and response callbacks against
//! arbitrary valid rollouts, checked against an oracle written from the docs.

use super::*;

// ---------------------------------------------------------------------------
// Target: decide.
// ---------------------------------------------------------------------------

/// A request as Envoy hands it to the filter: (lowercase name, value) pairs,
/// repeats allowed; the host returns the first value of a name.
#[derive(Clone, Default)]
struct FakeHost {
    headers: Vec<(String, Vec<u8>)>,
    set: Vec<(String, Vec<u8>)>,
    counted: Vec<(usize, Reason)>,
}

impl Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let mut s = String::from_utf8_lossy(&v[..v.len().min(200)]).into_owned();
                if v.len() > 200 {
                    s = format!("{s}... ({} bytes)", v.len());
                }
                (k.as_str(), s)
            })
            .collect();
        f.debug_list().entries(shown).finish()
    }
}

impl FakeHost {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Request for FakeHost {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.first(name)
    }
}

impl Host for FakeHost {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_vec()));
        self.set.push((name.to_string(), value.to_vec()));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| k != name);
    }
    fn count(&mut self, version: usize, reason: Reason) {
        self.counted.push((version, reason));
    }
}

/// The response as the filter sees it: its status, the clock, and the
/// headers it writes.
#[derive(Default)]
struct FakeResponse {
    status: Option<u16>,
    content_type: Option<&'static str>,
    grpc_status: Option<Vec<u8>>,
    now_ms: i64,
    headers: Vec<(String, Vec<u8>)>,
}

impl ResponseHost for FakeResponse {
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_vec()));
    }
    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.push((name.to_string(), value.to_vec()));
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        match name {
            ":status" => self.status.map(|s| s.to_string().into_bytes()),
            "content-type" => self.content_type.map(|t| t.as_bytes().to_vec()),
            "grpc-status" => self.grpc_status.clone(),
            _ => None,
        }
    }
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

/// A cookie header built from pairs in all the shapes browsers and attackers
/// send, sometimes pushed past the scan bound.
fn cookie_header(rng: &mut Rng, spec: &Spec) -> Vec<u8> {
    let mut names: Vec<String> = spec.id_cookies.clone();
    names.extend(spec.anonymous_cookie.iter().map(|c| c.0.clone()));
    names.extend(
        spec.rules
            .iter()
            .flat_map(|r| r.cookies.iter().map(|c| c.0.clone())),
    );
    names.extend(COOKIE_POOL.iter().map(|c| c.to_string()));
    let mut out = Vec::new();
    if rng.one_in(6) {
        // Filler that ends near the 16 KiB bound, so later pairs straddle it.
        let n = MAX_COOKIE_HEADER_SCAN - rng.range(0, 40);
        out.extend(std::iter::repeat_n(b'z', n));
    }
    for _ in 0..rng.range(0, 5) {
        if !out.is_empty() {
            let separator: &[u8] = rng.pick(&[&b"; "[..], b";", b" ; ", b";;"]);
            out.extend_from_slice(separator);
        }
        let name = rng.pick_ref(&names).clone();
        let rule_value = spec
            .rules
            .iter()
            .flat_map(|r| r.cookies.iter())
            .find(|(c, _)| *c == name)
            .map(|(_, m)| m.candidate(rng));
        let value = match rule_value {
            Some(v) if rng.one_in(2) => v,
            _ => value_bytes(rng),
        };
        match rng.below(6) {
            0 => out.extend_from_slice(name.as_bytes()), // a bare name, no '='
            1 => out.extend(
                format!(" {name} = \"")
                    .into_bytes()
                    .into_iter()
                    .chain(value)
                    .chain(*b"\""),
            ),
            _ => out.extend(format!("{name}=").into_bytes().into_iter().chain(value)),
        }
    }
    out
}

fn gen_request(rng: &mut Rng, spec: &Spec) -> FakeHost {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |rng: &mut Rng, name: &str, value: Vec<u8>| {
        let at = rng.below(headers.len() + 1);
        headers.insert(at, (name.to_string(), value));
    };
    for h in &spec.id_headers {
        if !rng.one_in(3) {
            let v = value_bytes(rng);
            add(rng, h, v);
        }
    }
    for rule in &spec.rules {
        for (_, h, m) in &rule.headers {
            if !rng.one_in(3) {
                let v = if rng.one_in(4) {
                    value_bytes(rng)
                } else {
                    m.candidate(rng)
                };
                add(rng, h, v);
            }
        }
    }
    if !rng.one_in(3) {
        let v = cookie_header(rng, spec);
        add(rng, "cookie", v);
    }
    // The client's own try at picking a version, and noise.
    if rng.one_in(2) {
        let v = rng.pick_ref(&spec.versions).0.clone().into_bytes();
        add(rng, &spec.routing(), v);
    }
    for _ in 0..rng.range(0, 3) {
        let name = if rng.one_in(2) {
            rng.pick(HEADER_POOL).to_string()
        } else {
            token(rng, 1, 12)
        };
        let v = value_bytes(rng);
        add(rng, &name, v);
    }
    FakeHost {
        headers,
        ..Default::default()
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The README's cookie rule: `name=value` pairs split on `;` within the first
/// 16 KiB of the header, first occurrence wins, spaces/tabs and one pair of
/// double quotes around the value removed, pairs without `=` skipped.
fn oracle_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // Cut at the bound, dropping the pair the cut goes through.
    let scanned = if header.len() > MAX_COOKIE_HEADER_SCAN && header[MAX_COOKIE_HEADER_SCAN] != b';'
    {
        let head = &header[..MAX_COOKIE_HEADER_SCAN];
        &head[..head.iter().rposition(|&b| b == b';').unwrap_or(0)]
    } else {
        &header[..header.len().min(MAX_COOKIE_HEADER_SCAN)]
    };
    scanned.split(|&b| b == b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| {
            let v = trim(&pair[eq + 1..]);
            match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            }
        })
    })
}

/// The README's bucket formula, computed from scratch.
fn oracle_version(spec: &Spec, weights: &[f64], id: &[u8]) -> usize {
    let salt = spec
        .salt
        .clone()
        .unwrap_or_else(|| spec.versions[0].0.clone());
    let mut key = format!("{salt}:").into_bytes();
    key.extend_from_slice(&id[..id.len().min(MAX_USER_ID_LEN)]);
    oracle_version_of_bucket(weights, murmur3_32(&key, 0))
}

/// The first version whose running slice holds the bucket, or the last
/// version with a positive weight, whichever comes first.
fn oracle_version_of_bucket(weights: &[f64], bucket: u32) -> usize {
    let last = weights.iter().rposition(|&w| w > 0.0).unwrap();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if f64::from(bucket) < (acc * 4_294_967_296.0 / 100.0).floor() || i == last {
            return i;
        }
    }
    unreachable!()
}

/// The buckets around every slice boundary, where rounding matters.
fn boundary_buckets(weights: &[f64]) -> Vec<u32> {
    let mut acc = 0.0;
    let mut out = vec![0, 1, u32::MAX - 1, u32::MAX];
    for w in weights {
        acc += w;
        let edge = (acc * 4_294_967_296.0 / 100.0).floor() as i64;
        out.extend((edge - 1..=edge + 1).filter_map(|b| u32::try_from(b).ok()));
    }
    out
}

/// What the README says the decision is, given the random part: the
/// version (`None` for a random pick: anonymous, no cookie) and the reason,
/// before the guard.
fn oracle_choice(spec: &Spec, req: &FakeHost, now_ms: i64) -> (Option<usize>, Reason) {
    let cookies = req.first("cookie");
    let cookie = |name: &str| cookies.and_then(|h| oracle_cookie(h, name));
    for rule in &spec.rules {
        let headers_hold = rule
            .headers
            .iter()
            .all(|(_, h, m)| req.first(h).is_some_and(|v| m.holds(v)));
        let cookies_hold = rule
            .cookies
            .iter()
            .all(|(c, m)| cookie(c).is_some_and(|v| m.holds(v)));
        if headers_hold && cookies_hold {
            return (Some(rule.version), Reason::Rule);
        }
    }
    let ids = spec
        .id_headers
        .iter()
        .map(|h| req.first(h))
        .chain(spec.id_cookies.iter().map(|c| cookie(c)))
        .chain(spec.anonymous_cookie.iter().map(|c| cookie(&c.0)));
    for id in ids.flatten().map(trim) {
        if !id.is_empty() {
            return (
                Some(oracle_version(spec, &spec.weights_at(now_ms), id)),
                Reason::Sticky,
            );
        }
    }
    (None, Reason::Anonymous)
}

#[derive(Debug, Clone)]
struct Moment {
    live: Live,
    seed: u64,
    status: Option<u16>,
    content_type: Option<&'static str>,
    grpc_status: Option<Vec<u8>>,
    /// The trailers' `grpc-status`; `None`: the stream ended without trailers.
    trailer_status: Option<Option<Vec<u8>>>,
    response_ms: i64,
}

fn grpc_status_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => rng
            .pick(&[&b"99"[..], b"17", b"", b"+5", b" 13", b"013", b"\xff"])
            .to_vec(),
        _ => rng.below(17).to_string().into_bytes(),
    }
}

fn gen_moment(rng: &mut Rng, spec: &Spec) -> Moment {
    let now_ms = match &spec.schedule {
        // Around a step's start, where the weights switch.
        Some((_, start, steps)) if !rng.one_in(4) => {
            let (after, _) = rng.pick_ref(steps);
            start + i64::from(*after) * 1000 + rng.range(0, 2) as i64 - 1
        }
        _ => 1_700_000_000_000 + (rng.u64() % (1 << 40)) as i64,
    };
    Moment {
        live: Live {
            now_ms,
            // The guard holds back every canary (a local trip), the ones
            // a mesh verdict named, or none.
            held_back: match rng.below(4) {
                0 => canary_selector::decision::ALL_CANARIES,
                1 => rng.u64() as u32,
                _ => 0,
            },
        },
        seed: rng.u64(),
        status: rng
            .one_in(5)
            .then(|| rng.pick(&[200, 204, 404, 499, 500, 503, 599, 600])),
        content_type: rng.one_in(2).then(|| {
            rng.pick(&[
                "application/grpc",
                "application/grpc+proto",
                "application/grpc;x=1",
                "application/grpc-web",
                "application/grpcx",
                "application/json",
            ])
        }),
        grpc_status: rng.one_in(2).then(|| grpc_status_value(rng)),
        trailer_status: (!rng.one_in(4)).then(|| rng.one_in(4).then(|| grpc_status_value(rng))),
        response_ms: now_ms + rng.range(0, 10_000) as i64 - 100,
    }
}

fn check_request(spec: &Spec, rollout: &Rollout, request: &FakeHost, m: &Moment) -> Decision {
    let mut host = request.clone();
    let (d, pending) = filter::on_request_headers(rollout, &mut host, &mut WyRand(m.seed), m.live);
    let n = spec.versions.len();
    assert!(d.version < n, "version index {} of {n}", d.version);

    let (choice, reason) = oracle_choice(spec, request, m.live.now_ms);
    let weights = spec.weights_at(m.live.now_ms);
    let anonymous_id = reason == Reason::Anonymous && spec.anonymous_cookie.is_some();
    assert_eq!(
        d.new_id.is_some(),
        anonymous_id,
        "a new id for anonymous users, when configured"
    );
    let chosen = match (choice, d.new_id) {
        (Some(v), _) => Some(v),
        // The generated id is bucketed like any user id.
        (None, Some(id)) => Some(oracle_version(spec, &weights, &id.0)),
        (None, None) => None,
    };
    // A version the guard holds back gets only what a rule pins to it;
    // the rest goes to stable. Stable itself is never held back.
    let held = |v: usize| v != 0 && reason != Reason::Rule && (m.live.held_back >> v) & 1 == 1;
    match chosen {
        Some(v) if held(v) => assert_eq!((d.version, d.reason), (0, Reason::Guard)),
        Some(v) => assert_eq!((d.version, d.reason), (v, reason)),
        None => match d.reason {
            Reason::Guard => assert_eq!(d.version, 0),
            Reason::Anonymous => assert!(!held(d.version)),
            other => panic!("a random pick with reason {other:?}"),
        },
    }
    if let Some(id) = d.new_id {
        assert!(id.0.iter().all(|b| b.is_ascii_hexdigit()));
    }

    // What Envoy sees: the routing header replaced by a listed name, once.
    let name = spec.versions[d.version].0.as_bytes();
    assert_eq!(host.set, vec![(spec.routing(), name.to_vec())]);
    assert_eq!(host.first(&spec.routing()), Some(name));
    assert_eq!(
        host.headers
            .iter()
            .filter(|(k, _)| *k == spec.routing())
            .count(),
        1
    );
    assert_eq!(host.counted, vec![(d.version, d.reason)]);

    // The response: reason and version headers, the anonymous cookie, and
    // what the guard counts.
    let respond = spec.response_header.is_some()
        || spec.response_reason_header.is_some()
        || spec.guard.is_some()
        || d.new_id.is_some();
    assert_eq!(pending.is_some(), respond, "pending response work");
    let Some(p) = pending else {
        return d;
    };
    assert_eq!(
        (p.version, p.reason, p.new_id),
        (d.version, d.reason, d.new_id)
    );
    let slow_bound = spec.guard.as_ref().and_then(|g| g.1);
    assert_eq!(p.started_ms, slow_bound.map(|_| m.live.now_ms));
    let mut resp = FakeResponse {
        status: m.status,
        content_type: m.content_type,
        grpc_status: m.grpc_status.clone(),
        now_ms: m.response_ms,
        ..Default::default()
    };
    let outcome = filter::on_response_headers(rollout, &p, &mut resp);
    let mut want_resp = Vec::new();
    if let Some(h) = &spec.response_reason_header {
        want_resp.push((h.clone(), d.reason.as_str().as_bytes().to_vec()));
    }
    if let Some(h) = &spec.response_header {
        want_resp.retain(|(k, _)| *k != h.to_ascii_lowercase());
        want_resp.push((h.to_ascii_lowercase(), name.to_vec()));
    }
    if let (Some(id), Some((cookie, max_age, secure))) = (d.new_id, &spec.anonymous_cookie) {
        let max_age = max_age.unwrap_or(config::DEFAULT_ANONYMOUS_COOKIE_MAX_AGE);
        let id = String::from_utf8(id.0.to_vec()).unwrap();
        let secure = if *secure { "; Secure" } else { "" };
        let value =
            format!("{cookie}={id}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}");
        want_resp.push(("set-cookie".into(), value.into_bytes()));
    }
    assert_eq!(resp.headers, want_resp);
    // The guard counts what it protects: not the traffic a rule pins. A
    // gRPC response (application/grpc, with or without +suffix or
    // parameters) is judged by grpc-status, in its headers or else in its
    // trailers; a stream without one failed. Anything else by its 5xx status.
    let counted = spec.guard.as_ref().filter(|_| d.reason != Reason::Rule);
    let (version, reason) = (d.version, d.reason);
    let slow = slow_bound.is_some_and(|b| m.response_ms - m.live.now_ms > i64::from(b));
    let grpc = m.content_type.is_some_and(|t| {
        t == "application/grpc"
            || t.starts_with("application/grpc+")
            || t.starts_with("application/grpc;")
    });
    let code_of = |v: &[u8]| -> usize {
        let digits = !v.is_empty() && v.iter().all(u8::is_ascii_digit);
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|_| digits)
            .and_then(|t| t.parse::<usize>().ok());
        n.filter(|&c| c < GRPC_NAMES.len()).unwrap_or(2)
    };
    let want_outcome = counted.map(|&(_, _, codes)| {
        let failed = |code: usize| (codes & 1 << code != 0).then_some(Failure::Grpc(code as u8));
        match (grpc, &m.grpc_status) {
            (true, Some(v)) => Judging::Now(Outcome {
                version,
                reason,
                failure: failed(code_of(v)),
                slow,
            }),
            (true, None) => Judging::AtTrailers(AwaitingTrailers {
                version,
                reason,
                slow,
            }),
            (false, _) => Judging::Now(Outcome {
                version,
                reason,
                failure: m
                    .status
                    .is_some_and(|s| (500..600).contains(&s))
                    .then_some(Failure::Http5xx),
                slow,
            }),
        }
    });
    assert_eq!(outcome, want_outcome);
    if let (Some(Judging::AtTrailers(awaiting)), Some(&(_, _, codes))) = (outcome, counted) {
        let (got, failure) = match &m.trailer_status {
            Some(status) => (
                filter::on_response_trailers(rollout, &awaiting, status.as_deref()),
                status.as_deref().map_or(Some(Failure::NoGrpcStatus), |v| {
                    let code = code_of(v);
                    (codes & 1 << code != 0).then_some(Failure::Grpc(code as u8))
                }),
            ),
            None => (
                filter::on_stream_lost(&awaiting),
                Some(Failure::NoGrpcStatus),
            ),
        };
        assert_eq!(
            got,
            Outcome {
                version,
                reason,
                failure,
                slow
            }
        );
    }
    d
}

#[derive(Debug)]
struct DecideCase {
    config: String,
    spec: Spec,
    requests: Vec<(FakeHost, Moment)>,
}

#[test]
fn decide_requests() {
    run(
        "decide",
        |rng| {
            let spec = gen_spec(rng);
            let requests = (0..32)
                .map(|_| (gen_request(rng, &spec), gen_moment(rng, &spec)))
                .collect();
            DecideCase {
                config: spec.json().to_string(),
                spec,
                requests,
            }
        },
        |case| {
            let rollout = Rollout::from_json(case.config.as_bytes())
                .unwrap_or_else(|e| panic!("a valid config was rejected: {e}"));
            for (_, moment) in case.requests.iter().take(4) {
                let weights = case.spec.weights_at(moment.live.now_ms);
                let live = rollout.thresholds_at(moment.live.now_ms);
                for bucket in boundary_buckets(&weights) {
                    let got = rollout.version_of_bucket_in(live, bucket);
                    assert_eq!(
                        got,
                        oracle_version_of_bucket(&weights, bucket),
                        "bucket {bucket}"
                    );
                }
            }
            for (request, moment) in &case.requests {
                let d = check_request(&case.spec, &rollout, request, moment);
                // Deterministic: the same request and entropy decide the same.
                let again = decide(
                    &rollout,
                    &mut request.clone(),
                    &mut WyRand(moment.seed),
                    moment.live,
                );
                assert_eq!(again, d, "same input, different decision");
                // Rules and user ids never use entropy at all.
                if d.new_id.is_none()
                    && oracle_choice(&case.spec, request, moment.live.now_ms)
                        .0
                        .is_some()
                {
                    decide(&rollout, &mut request.clone(), &mut NoEntropy, moment.live);
                }
            }
            case.requests.len() as u64
        },
    );
}

/// Entropy that must not be used.
struct NoEntropy;

impl Entropy for NoEntropy {
    fn next_u64(&mut self) -> u64 {
        panic!("entropy used for a request that has a rule or a user id");
    }
}
