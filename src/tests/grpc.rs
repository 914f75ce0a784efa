//! gRPC: the guard reads grpc-status, not the HTTP status.

use super::*;

// ---------------------------------------------------------------------------
// gRPC: the guard reads grpc-status, not the HTTP status.
// ---------------------------------------------------------------------------

#[test]
fn grpc_error_codes_by_name_or_number_with_a_default() {
    let codes = |list: &str| {
        let r = rollout(&format!(
            r#"{{"versions":[{{"name":"a","weight":90}},{{"name":"b","weight":10}}],
                "guard":{{"maxErrorRate":0.1{list}}}}}"#
        ));
        r.guard.unwrap().grpc_error_codes
    };
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    assert_eq!(
        codes(""),
        1 << 2 | 1 << 4 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15
    );
    assert_eq!(
        codes(r#","grpcErrorCodes":["INTERNAL",14,8.0]"#),
        1 << 13 | 1 << 14 | 1 << 8
    );
    assert_eq!(codes(r#","grpcErrorCodes":[]"#), 0);
    let v = r#""versions":[{"name":"a","weight":90},{"name":"b","weight":10}]"#;
    for (list, field, reason) in [
        (
            r#"["INTERNAL","internal"]"#,
            "guard.grpcErrorCodes[1]",
            "\"internal\" is not a gRPC status code (OK, CANCELLED",
        ),
        (
            "[17]",
            "guard.grpcErrorCodes[0]",
            "17 is not a gRPC status code (0 to 16)",
        ),
        (
            "[-1]",
            "guard.grpcErrorCodes[0]",
            "-1 is not a gRPC status code",
        ),
        (
            "[13.5]",
            "guard.grpcErrorCodes[0]",
            "13.5 is not a gRPC status code",
        ),
        (
            "[true]",
            "guard.grpcErrorCodes[0]",
            "expected a gRPC status code",
        ),
        (r#"["OK"]"#, "guard.grpcErrorCodes[0]", "OK is a success"),
        ("[0]", "guard.grpcErrorCodes[0]", "OK is a success"),
        (
            r#"[13,"INTERNAL"]"#,
            "guard.grpcErrorCodes[1]",
            "INTERNAL is listed twice",
        ),
        (
            r#""INTERNAL""#,
            "guard.grpcErrorCodes",
            "expected a sequence",
        ),
    ] {
        let e = rejected(&format!(
            r#"{{{v},"guard":{{"maxErrorRate":0.1,"grpcErrorCodes":{list}}}}}"#
        ));
        assert_eq!(e.field, field, "{list}: {e}");
        assert!(e.reason.contains(reason), "{list}: {e}");
    }
}

fn canary_pending(r: &Rollout) -> filter::Pending {
    let user = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| version_for(r, u) == "model-v2")
        .unwrap();
    let mut host = FakeRequest::with(&[("x-user-id", user.as_bytes())]);
    let live = Live {
        now_ms: 1_000,
        held_back: 0,
    };
    filter::on_request_headers(r, &mut host, &mut WyRand(1), live)
        .1
        .unwrap()
}

#[test]
fn grpc_responses_are_judged_by_grpc_status_in_headers_or_trailers() {
    use crate::guard::Failure;
    use filter::{AwaitingTrailers, Judging};
    let r = rollout(GUARDED);
    let pending = canary_pending(&r);
    let judge = |content_type, grpc_status, status| {
        let mut resp = FakeResponse {
            status: Some(status),
            content_type: Some(content_type),
            grpc_status,
            now_ms: 1_100,
            ..Default::default()
        };
        filter::on_response_headers(&r, &pending, &mut resp).unwrap()
    };
    let now = |failure| {
        Judging::Now(filter::Outcome {
            version: 1,
            reason: Reason::Sticky,
            failure,
            slow: false,
        })
    };
    // Trailers-only replies (Envoy's own, when the upstream is down).
    for ct in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc;charset=utf-8",
    ] {
        assert_eq!(
            judge(ct, Some("14"), 200),
            now(Some(Failure::Grpc(14))),
            "{ct}"
        );
        assert_eq!(judge(ct, Some("0"), 200), now(None), "{ct}");
    }
    // A client error is the client's: not counted against the canary.
    assert_eq!(judge("application/grpc", Some("5"), 200), now(None));
    // An unknown code is UNKNOWN, which counts.
    assert_eq!(
        judge("application/grpc", Some("99"), 200),
        now(Some(Failure::Grpc(2)))
    );
    // gRPC answers 200 even when the call fails: the HTTP status does not decide.
    assert_eq!(judge("application/grpc", Some("0"), 503), now(None));
    // No grpc-status in the headers: the status comes in the trailers.
    let awaiting = AwaitingTrailers {
        version: 1,
        reason: Reason::Sticky,
        slow: false,
    };
    assert_eq!(
        judge("application/grpc", None, 200),
        Judging::AtTrailers(awaiting)
    );
    let at_trailers =
        |status: Option<&[u8]>| filter::on_response_trailers(&r, &awaiting, status).failure;
    assert_eq!(at_trailers(Some(b"0")), None);
    assert_eq!(at_trailers(Some(b"13")), Some(Failure::Grpc(13)));
    assert_eq!(at_trailers(Some(b"12")), Some(Failure::Grpc(12)));
    assert_eq!(at_trailers(Some(b"4")), Some(Failure::Grpc(4)));
    assert_eq!(at_trailers(Some(b"5")), None);
    assert_eq!(at_trailers(None), Some(Failure::NoGrpcStatus));
    assert_eq!(
        filter::on_stream_lost(&awaiting).failure,
        Some(Failure::NoGrpcStatus)
    );
    // gRPC-Web and other types are judged as HTTP.
    for ct in [
        "application/grpc-web",
        "application/grpcx",
        "application/json",
    ] {
        assert_eq!(judge(ct, Some("13"), 200), now(None), "{ct}");
        assert_eq!(
            judge(ct, Some("0"), 502),
            now(Some(Failure::Http5xx)),
            "{ct}"
        );
    }
}

#[test]
fn grpc_error_codes_decide_what_counts() {
    use crate::guard::Failure;
    let r = rollout(&GUARDED.replace(
        r#""maxSlowRate": 0.5}"#,
        r#""maxSlowRate": 0.5, "grpcErrorCodes": ["NOT_FOUND", "RESOURCE_EXHAUSTED"]}"#,
    ));
    let awaiting = filter::AwaitingTrailers {
        version: 1,
        reason: Reason::Sticky,
        slow: true,
    };
    let failure = |status: &[u8]| filter::on_response_trailers(&r, &awaiting, Some(status)).failure;
    assert_eq!(failure(b"5"), Some(Failure::Grpc(5)));
    assert_eq!(failure(b"8"), Some(Failure::Grpc(8)));
    assert_eq!(
        failure(b"13"),
        None,
        "INTERNAL is not in this config's list"
    );
    assert!(filter::on_response_trailers(&r, &awaiting, Some(b"0")).slow);
    // What a rule pins stays out of the guard, gRPC or not.
    let pinned = filter::Pending {
        reason: Reason::Rule,
        ..canary_pending(&r)
    };
    let mut resp = FakeResponse {
        status: Some(200),
        content_type: Some("application/grpc"),
        grpc_status: Some("5"),
        ..Default::default()
    };
    assert!(filter::on_response_headers(&r, &pinned, &mut resp).is_none());
}
