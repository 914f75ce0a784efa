//! The bucket formula, reproducible outside the filter: MurmurHash3 test
//! vectors and the cumulative slice bounds.

use super::*;

// ---------------------------------------------------------------------------
// Hash and buckets: reproducible outside the filter.
// ---------------------------------------------------------------------------

/// Vectors computed independently with Python's `mmh3` and the README's
/// formula: bucket = mmh3.hash(salt + ":" + user_id, 0, signed=False).
#[test]
fn bucket_test_vectors_match_the_documented_formula() {
    let r = split(90.0, 10.0); // salt defaults to "model-v1"
    let vectors = [
        ("alice", 0x849b_c28b_u32),
        ("bob", 0x933b_c310),
        ("carol", 0xdee8_5a33),
        ("dave", 0x53eb_3fd8),
        ("user-42", 0x5b1b_2195),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", 0x55d4_f6ad),
        ("user-27", 0xf6e9_7511),
        ("user-31", 0xeac7_0d80),
    ];
    for (id, bucket) in vectors {
        assert_eq!(r.bucket_of(id.as_bytes()), bucket, "{id}");
    }
    for id in ["alice", "bob", "carol", "dave", "user-42"] {
        assert_eq!(version_for(&r, id), "model-v1", "{id} at 90/10");
    }
    for id in ["user-27", "user-31", "user-47"] {
        assert_eq!(version_for(&r, id), "model-v2", "{id} at 90/10");
    }
    let half = split(50.0, 50.0);
    for (id, want) in [
        ("alice", "model-v2"),
        ("bob", "model-v2"),
        ("carol", "model-v2"),
        ("dave", "model-v1"),
        ("user-42", "model-v1"),
    ] {
        assert_eq!(version_for(&half, id), want, "{id} at 50/50");
    }
}

#[test]
fn long_user_ids_are_hashed_over_their_first_256_bytes() {
    let r = rollout(r#"{"versions":[{"name":"v1","weight":100}],"stickiness":{"salt":"s"}}"#);
    let long = "x".repeat(300);
    assert_eq!(r.bucket_of(long.as_bytes()), 0x9f87_a57d);
    assert_eq!(r.bucket_of(&long.as_bytes()[..256]), 0x9f87_a57d);
    assert_eq!(r.bucket_of(b"x"), crate::hash::murmur3_32(b"s:x", 0));
}

#[test]
fn thresholds_follow_the_cumulative_floor_formula() {
    let r = split(90.0, 10.0);
    assert_eq!(
        r.thresholds,
        vec![(0.9f64 * 4294967296.0).floor() as u64, 1 << 32]
    );
    let edge = r.thresholds[0];
    assert_eq!(r.version_of_bucket((edge - 1) as u32), 0);
    assert_eq!(r.version_of_bucket(edge as u32), 1);
    assert_eq!(r.version_of_bucket(u32::MAX), 1);
    assert_eq!(r.version_of_bucket(0), 0);
    // Zero weights never receive anyone, wherever they are listed.
    let r = rollout(
        r#"{"versions":[{"name":"a","weight":0},{"name":"b","weight":100},{"name":"c","weight":0}]}"#,
    );
    for b in [0u32, 1, 1 << 31, u32::MAX] {
        assert_eq!(r.version_of_bucket(b), 1);
    }
}
