//! The `canary-selector` binary, run as an operator runs it: on the shipped
//! manifests, on broken and hostile files, and on requests and weight
//! changes whose answer follows from the documented bucket formula. One file
//! per command (`check`, `explain`, `diff`), the unreadable files, and the
//! configs with `rollouts`; this one holds the runner and helpers they share.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use canary_selector::hash::murmur3_32;
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_with(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canary-selector"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The binary may exit before reading all of stdin (a refused file).
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run(args: &[&str]) -> Run {
    run_with(args, b"")
}

/// A file under cargo's scratch directory for integration tests.
fn file(name: &str, contents: impl AsRef<[u8]>) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn shipped(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The shipped WasmPlugin with its pluginConfig replaced.
fn wasmplugin(plugin_config_yaml: &str) -> String {
    let text = shipped("istio/wasmplugin.yaml");
    let head = &text[..text.find("  pluginConfig:").unwrap()];
    let body: String = plugin_config_yaml
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!("{head}  pluginConfig:\n{body}")
}

/// `floor(cumulative_percent * 2^32 / 100)`, the README's slice bound.
fn bound(cumulative_percent: f64) -> u64 {
    (cumulative_percent * 4_294_967_296.0 / 100.0).floor() as u64
}

/// An unreadable file: exit 2, one line on stderr naming it, no panic.
fn assert_refused(r: &Run, file: &str, reason: &str) {
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!("canary-selector: {file}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(reason), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked") && !r.stderr.contains("backtrace"));
    assert_eq!(r.stdout, "");
}

fn bucket(salt: &str, id: &str) -> u32 {
    murmur3_32(format!("{salt}:{id}").as_bytes(), 0)
}

fn weights(v1: f64, v2: f64) -> String {
    format!(
        r#"{{"versions":[{{"name":"model-v1","weight":{v1}}},{{"name":"model-v2","weight":{v2}}}],"stickiness":{{"userIdHeaders":["x-user-id"]}}}}"#
    )
}

mod bad_files;
mod check;
mod diff;
mod explain;
mod models;
mod rollouts;
