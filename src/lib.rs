//! canary-selector: a proxy-wasm HTTP filter that assigns each request a model
//! version (rules first, then a stable hash of the user's id) and writes the
//! routing header a VirtualService matches.
//!
//! Pure modules (no host calls, tested natively):
//! - [`body`]: an OpenAI-style JSON request body read in bounded slices for
//!   its top-level `model` and user-id fields, and the `model` rewrite plan;
//! - [`config`]: the plugin config, parsed (serde_json) and validated into a
//!   [`config::Config`]: its rollouts and the host index that picks one;
//! - [`hash`]: MurmurHash3 x86_32, the documented bucketing hash;
//! - [`matcher`]: Istio-style string matches and cookie lookup;
//! - [`decision`]: the per-request decision;
//! - [`filter`]: what the filter does to a stream, against a narrow host trait;
//! - [`grpc`]: gRPC's status codes and content type (a leaf, for the
//!   config and the guard);
//! - [`plan`]: what a config that may read bodies does with a request at
//!   its headers, and a body's model;
//! - [`guard`]: the sliding window and judgement behind automatic rollback;
//! - [`mesh`]: the mesh verdict read from Prometheus (the poll's turn, the
//!   answer, the versions it names);
//! - [`shared`]: what the VMs of one proxy share (push generations, what
//!   each rollout holds back, gauge records, the VMs' windows), against a
//!   narrow shared-data trait;
//! - [`vm`]: what one VM keeps of the config it serves (each rollout's
//!   push, guard and held-back versions), installed on a push and ticked.
//!
//! `glue` (wasm32 only) is the thin layer on the proxy-wasm SDK: none of the
//! modules above imports `proxy_wasm`.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod body;
pub mod config;
pub mod decision;
pub mod filter;
pub mod grpc;
pub mod guard;
pub mod hash;
pub mod matcher;
pub mod mesh;
pub mod plan;
pub mod shared;
pub mod vm;

#[cfg(target_arch = "wasm32")]
mod glue;

/// User ids are hashed over at most this many bytes; longer ids are
/// truncated (deterministically) before hashing. Real ids (UUIDs, emails,
/// subject claims) are far shorter; the bound keeps hostile 8 KB ids cheap.
pub const MAX_USER_ID_LEN: usize = 256;

#[cfg(test)]
mod tests;
