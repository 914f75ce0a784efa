//! `canary-selector`: check, explain and diff a rollout before it reaches a
//! sidecar, with the filter's own code: configs go through
//! `Config::from_json` as Istio delivers them, requests through the filter's
//! host index (`HostIndex::claim`) and `decision::decide`, weight changes
//! through each rollout's slice thresholds. Nothing here re-implements the
//! filter: what only the CLI asks (which rollouts a more specific host
//! pattern shadows, which rollouts a route's hosts reach) is answered by
//! asking the index about hosts.
//!
//! Exit status: 0 when everything is fine, 1 for a finding (a config the
//! filter rejects, broken wiring, a user moving backwards), 2 for input that
//! cannot be read (one line on stderr, never a panic).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod check;
mod diff;
mod explain;
#[cfg(test)]
mod fuzz;
mod hosts;
mod input;

#[derive(Parser)]
#[command(
    name = "canary-selector",
    version,
    about = "Check, explain and diff canary-selector rollouts with the filter's own code",
    after_help = "Files may be plugin-config JSON or Kubernetes YAML (WasmPlugin, TrafficExtension); `-` reads stdin.\n\
                  Exit status: 0 fine, 1 a finding (rejected config, broken wiring, a backward move), 2 unreadable input."
)]
struct Cli {
    /// How to print the result
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check every plugin config as the filter's on_configure would, warn about rollouts a
    /// more specific host pattern keeps from some hosts, and check the routes of each rollout
    /// in any VirtualService (with its DestinationRules' subsets) or HTTPRoute given
    Check {
        /// Plugin-config JSON, Kubernetes YAML, directories (read recursively), or `-`
        #[arg(required = true)]
        files: Vec<String>,
        /// The cluster's DNS domain, which a Service's short names in VirtualServices and
        /// DestinationRules resolve in (`model` in namespace `models` is
        /// `model.models.svc.<DOMAIN>`)
        #[arg(long, value_name = "DOMAIN", default_value = "cluster.local", value_parser = check::cluster_domain)]
        cluster_domain: String,
    },
    /// The rollout (for a config with `rollouts`) and version a request gets, and why
    Explain {
        /// Plugin-config JSON or a YAML file with one WasmPlugin or TrafficExtension, or `-`
        file: String,
        /// A request header, `name: value` (repeatable)
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// A cookie, `name=value` (repeatable)
        #[arg(long = "cookie", value_name = "NAME=VALUE")]
        cookies: Vec<String>,
        /// The request's host (its :authority, a port allowed): picks the rollout of a config
        /// with `rollouts`. A config without `rollouts` takes every host: there it picks
        /// nothing (only a rule on :authority would see it)
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// The request's path (its :path): picks among the rollouts of the host by path
        /// prefix. A config without `rollouts` takes every path: there it picks nothing
        /// (only a rule on :path would see it)
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
        /// The request's JSON body (`{"model": "...", "user": "..."}`), read as the filter
        /// reads it: its `model` picks among rollouts scoped by `models`, and its
        /// `userIdBodyFields` give user ids (a request with a body is `application/json`)
        #[arg(long, value_name = "JSON")]
        body: Option<String>,
        /// Evaluate a schedule at this RFC 3339 time instead of now
        #[arg(long, value_name = "RFC3339", value_parser = At::parse)]
        at: Option<At>,
    },
    /// Who moves between versions when NEW replaces OLD; with `rollouts`, per rollout,
    /// and which rollouts are added, removed or unchanged
    Diff {
        /// The config in force (JSON or YAML, or `-`)
        old: String,
        /// The config to apply (JSON or YAML, or `-`)
        new: String,
        /// Evaluate schedules at this RFC 3339 time instead of now
        #[arg(long, value_name = "RFC3339", value_parser = At::parse)]
        at: Option<At>,
        /// Exit 0 even if users move back to an earlier-listed version (a rollback)
        #[arg(long)]
        allow_backward: bool,
    },
}

/// Input that cannot be used: one line for stderr, exit status 2.
#[derive(Debug)]
pub struct Fatal(pub String);

/// A command's result.
pub trait Report: serde::Serialize {
    /// What a person reads.
    fn text(&self) -> String;
    /// Whether the command found a problem (exit status 1).
    fn failed(&self) -> bool;
}

/// The moment a schedule is evaluated at.
#[derive(Debug, Clone)]
pub struct At {
    /// As given; `None` for now.
    pub text: Option<String>,
    /// Unix ms, read the way the filter reads `schedule.start`.
    pub ms: i64,
}

impl At {
    fn parse(text: &str) -> Result<At, String> {
        match canary_selector::config::rfc3339_ms(text) {
            Some(ms) => Ok(At {
                text: Some(text.into()),
                ms,
            }),
            None => Err("not an RFC 3339 time such as 2026-12-01T09:00:00Z".into()),
        }
    }

    fn now() -> At {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        At { text: None, ms }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    let result = match cli.command {
        Command::Check {
            files,
            cluster_domain,
        } => check::run(&files, &cluster_domain).map(|r| emit(&r, output)),
        Command::Explain {
            file,
            headers,
            cookies,
            host,
            path,
            body,
            at,
        } => {
            let request = explain::RequestArgs {
                headers: &headers,
                cookies: &cookies,
                host: host.as_deref(),
                path: path.as_deref(),
                body: body.as_deref(),
            };
            explain::run(&file, &request, at.unwrap_or_else(At::now)).map(|r| emit(&r, output))
        }
        Command::Diff {
            old,
            new,
            at,
            allow_backward,
        } => diff::run(&old, &new, at.unwrap_or_else(At::now), allow_backward)
            .map(|r| emit(&r, output)),
    };
    match result {
        Ok(code) => code,
        Err(Fatal(message)) => {
            let _ = writeln!(std::io::stderr(), "canary-selector: {message}");
            ExitCode::from(2)
        }
    }
}

fn emit(report: &impl Report, output: Output) -> ExitCode {
    let text = match output {
        Output::Text => report.text(),
        Output::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A share of the 2^32 buckets as a percentage, as the README writes them.
pub fn percent(buckets: u64) -> String {
    share_percent(buckets as f64 / BUCKETS)
}

/// A share (0 to 1) as a percentage with up to six decimals; a share too
/// small to show is not written as 0.
pub fn share_percent(share: f64) -> String {
    let text = canary_selector::config::decimal(share * 100.0);
    if text == "0" && share > 0.0 {
        "<0.000001%".into()
    } else {
        text + "%"
    }
}

pub const BUCKETS: f64 = 4_294_967_296.0;

/// Version `i`'s slice of the buckets under `thresholds`: `[from, to)`.
pub fn slice(thresholds: &[u64], i: usize) -> (u64, u64) {
    let from = i
        .checked_sub(1)
        .and_then(|p| thresholds.get(p))
        .copied()
        .unwrap_or(0);
    let to = thresholds.get(i).copied().unwrap_or(1 << 32);
    (from, to.max(from))
}
