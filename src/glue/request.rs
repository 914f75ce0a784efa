//! The request's host calls, shared by `stream` (at the request's headers)
//! and `bodies` (once its body came, on the effective context): its
//! headers read as bytes, its rollout found, and [`Calls`], the core's
//! `Request` and `Host` on SDK calls.

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Bytes, MapType};

use super::installed::Installed;
use crate::config::{authority_host, Config, PrefixRollouts, MAX_AUTHORITY_HOST_LEN};
use crate::decision::{Entropy, Reason, Request, WyRand};
use crate::filter::{self, Host};

/// A config reading this many distinct request headers or more gets them
/// with one call for the whole header map instead of one call per header:
/// measured, one call per header was cheaper up to 8 headers and dearer at
/// 32 (BENCHMARKS.md, "Reading headers").
const READ_ALL_HEADERS_FROM: usize = 16;

/// A request header's value, as bytes (the `String` getters panic on a value
/// that is not UTF-8: a latin-1 byte, say). Of the stream whose callback
/// runs, or of the one `hostcalls::set_effective_context` named.
pub fn header(name: &str) -> Option<Bytes> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// The request's host, as the host index looks it up ([`authority_host`]);
/// read only for a config with `rollouts`.
pub fn host_of(config: &Config) -> Option<Vec<u8>> {
    config.index.as_ref()?;
    let authority = header(":authority")?;
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    authority_host(&authority, &mut buf).map(<[u8]>::to_vec)
}

/// The rollouts of the longest prefix that takes the request, in a config
/// with `rollouts`.
pub fn prefix_entry<'c>(config: &'c Config, host: Option<&[u8]>) -> Option<&'c PrefixRollouts> {
    let held = config.index.as_ref()?.lookup(host)?;
    let mut path = None;
    let slot = &mut path;
    held.prefix_for(move || {
        *slot = header(":path");
        let read: &Option<Bytes> = slot;
        read.as_deref()
    })
}

/// A request no rollout takes: counted, and its routing headers removed.
pub fn unclaimed(installed: &Installed) {
    installed.count_unclaimed();
    filter::on_unclaimed_request(&installed.config, &mut Calls::bare(installed));
}

/// The request phase's host operations on the stream whose callback runs
/// (or the effective context), with each header the rollout reads fetched
/// at most once, and the body's fields once a scan found them.
pub struct Calls<'i> {
    installed: &'i Installed,
    rollout: usize,
    /// The request headers the rollout reads, by slot: `None` until
    /// fetched.
    fetched: Vec<Option<Option<Bytes>>>,
    /// The body's fields, as a scan found them (`config.body.fields`).
    body: Option<&'i crate::body::Scanned>,
}

impl<'i> Calls<'i> {
    pub fn new(
        installed: &'i Installed,
        rollout: usize,
        body: Option<&'i crate::body::Scanned>,
    ) -> Calls<'i> {
        let names = installed
            .config
            .rollouts
            .get(rollout)
            .map_or(&[][..], |r| &r.headers[..]);
        let mut calls = Calls {
            installed,
            rollout,
            fetched: vec![None; names.len()],
            body,
        };
        if names.len() >= READ_ALL_HEADERS_FROM {
            calls.fetch_all(names);
        }
        calls
    }

    /// Host calls for no rollout: headers written or removed, none read
    /// ahead.
    pub fn bare(installed: &'i Installed) -> Calls<'i> {
        Calls {
            installed,
            rollout: usize::MAX,
            fetched: Vec::new(),
            body: None,
        }
    }

    /// Fetches every header the rollout reads with one call for the whole
    /// map.
    fn fetch_all(&mut self, names: &[String]) {
        let all = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        for (name, value) in all {
            let slot = names.iter().position(|n| *n == name);
            if let Some(entry @ None) = slot.and_then(|i| self.fetched.get_mut(i)) {
                *entry = Some(Some(value));
            }
        }
        for entry in &mut self.fetched {
            entry.get_or_insert(None);
        }
    }
}

impl Request for Calls<'_> {
    fn header(&mut self, slot: usize, name: &str) -> Option<&[u8]> {
        if matches!(self.fetched.get(slot), Some(None)) {
            let value = header(name);
            if let Some(entry) = self.fetched.get_mut(slot) {
                *entry = Some(value);
            }
        }
        self.fetched.get(slot)?.as_ref()?.as_deref()
    }

    fn body_field(&mut self, name: &str) -> Option<&[u8]> {
        let index = self.installed.config.body.field(name)?;
        self.body?.value(index).map(str::as_bytes)
    }
}

impl Host for Calls<'_> {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn remove_request_header(&mut self, name: &str) {
        // Looked up first: a removal clears Envoy's route cache, which a
        // request without the header (nearly every one) need not pay for.
        if header(name).is_some() {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
        }
    }

    fn count(&mut self, version: usize, reason: Reason) {
        // Counted in the VM, flushed to Envoy's counters on the tick.
        self.installed.count_request(self.rollout, version, reason);
    }
}

/// The VM's wyrand, its state in a cell; seeded from the host (WASI
/// `random_get`) on first use.
pub struct CellRng<'a>(pub &'a Cell<Option<u64>>);

impl Entropy for CellRng<'_> {
    fn next_u64(&mut self) -> u64 {
        let state = self.0.get().unwrap_or_else(|| {
            let mut seed = [0u8; 8];
            // On failure the seed stays zero: anonymous picks are still
            // spread by the generator, just not unpredictable.
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed)
        });
        let mut rng = WyRand(state);
        let value = rng.next_u64();
        self.0.set(Some(rng.0));
        value
    }
}
