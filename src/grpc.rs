//! gRPC's status codes and content type, as the config names the codes and
//! the filter reads a response: a leaf module, so that the config and the
//! guard both use it without importing each other.

/// gRPC status codes, by number (grpc's `doc/statuscodes.md`).
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code a client reads from a `grpc-status` value (digits): a code it
/// does not know, or a value that is not one, is UNKNOWN (2).
pub fn code(value: &[u8]) -> u8 {
    Some(value)
        .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u8>().ok())
        .filter(|&c| usize::from(c) < CODES.len())
        .unwrap_or(2)
}

/// A code's name (`INTERNAL`); `UNKNOWN` for a number past the list.
pub fn name(code: u8) -> &'static str {
    CODES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

/// gRPC's content type, `application/grpc` with or without a `+suffix`
/// (`+proto`, `+json`) or parameters. Not gRPC-Web, whose status travels in
/// the body.
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_read_as_clients_read_them() {
        for (value, want) in [
            (&b"0"[..], 0),
            (b"13", 13),
            (b"16", 16),
            (b"17", 2),
            (b"99999", 2),
            (b"", 2),
            (b"-1", 2),
            (b" 13", 2),
            (b"+5", 2),
            (b"013", 13),
            (b"\xff", 2),
        ] {
            assert_eq!(code(value), want, "{value:?}");
        }
        assert_eq!(name(13), "INTERNAL");
        assert_eq!(name(200), "UNKNOWN");
    }

    #[test]
    fn grpc_content_types() {
        for (t, want) in [
            (&b"application/grpc"[..], true),
            (b"application/grpc+proto", true),
            (b"application/grpc;charset=utf-8", true),
            (b"application/grpc-web", false),
            (b"application/grpcx", false),
            (b"application/json", false),
        ] {
            assert_eq!(is_grpc(t), want, "{t:?}");
        }
    }
}
