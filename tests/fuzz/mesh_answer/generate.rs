//! The cases: a config, series as the model holds them, and answers made of
//! series: valid, broken as a tree (`mutate.rs`) or as bytes, with statuses
//! and body sizes.

use canary_selector::mesh::MAX_ANSWER_BYTES;

use super::config::{gen_config, MeshConfig, ROLLOUT_NAMES, VERSION_LABELS, VERSION_NAMES};
use super::json::{object, s, write_json, Style, J};
use super::mutate::mutate_tree;
use super::shuffle;
use crate::runner::{mutate_json_bytes, Rng};
use crate::{evil_string, token};

// ---------------------------------------------------------------------------
// The series, as the model holds them.
// ---------------------------------------------------------------------------

/// Values as Prometheus writes them (Go's `strconv.FormatFloat`, 'e' below
/// 1e-6 and from 1e21), and a few it could: each is a float of the oracle.
const VALUES: &[&str] = &[
    "1",
    "1",
    "1",
    "1",
    "2",
    "0.5",
    "0",
    "0",
    "-0",
    "NaN",
    "+Inf",
    "-Inf",
    "1e-300",
    "-2",
    "-0.25",
    "2.5e+3",
    "1E5",
    "1e-07",
    "1e+21",
    "123456789",
    "0.0",
    "-0.0",
    "0e5",
    "-0E-3",
    "1e-400",
    "4.9e-324",
    "1e308",
    "1.7976931348623157e+308",
    "-1e-300",
];
/// Times as the API writes them (a number of Unix seconds), and odd ones.
const TIMES: &[&str] = &[
    "1796232086.079",
    "1796232086.079",
    "1796232086",
    "0",
    "-0",
    "1.796232086079e9",
    "1E-5",
    "-12.5",
    "18446744073709551616",
    "1e308",
];
const NOISE_NAMES: &[&str] = &[
    "__name__",
    "job",
    "instance",
    "namespace",
    "pod",
    "le",
    "a",
    "Rollout",
    "VERSION",
    "é",
    "日本",
    "",
    " ",
    "with space",
    "\0",
    "\"",
    "\\",
    "😀",
    "\u{2028}",
    "\u{7f}",
    "rollout ",
];

#[derive(Debug, Clone)]
pub(super) struct Series {
    pub(super) labels: Vec<(String, String)>,
    pub(super) value: String,
    pub(super) time: String,
}

pub(super) fn odd_text(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => String::new(),
        1 => rng.pick(NOISE_NAMES).to_string(),
        _ => evil_string(rng),
    }
}

fn gen_series(rng: &mut Rng, cfg: &MeshConfig, few_labels: bool) -> Series {
    let mut labels: Vec<(String, String)> = Vec::new();
    if rng.one_in(2) {
        labels.push(("__name__".into(), "canary_selector:canary_failing".into()));
    }
    let any_rollout = |rng: &mut Rng| rng.pick_ref(&cfg.rollouts);
    let with_rollout = if cfg.scoped {
        !rng.one_in(4)
    } else {
        rng.one_in(3)
    };
    if with_rollout {
        let name = match rng.below(8) {
            0..=4 => any_rollout(rng).name.clone(),
            5 => rng.pick(ROLLOUT_NAMES).to_string(),
            6 => rng
                .pick(&["tulips", "IRIS", "iris ", "", "é", "iris\0", "r999"])
                .to_string(),
            _ => odd_text(rng),
        };
        labels.push(("rollout".into(), name));
    }
    let labels_read = cfg.labels();
    let k = match rng.below(10) {
        0 => 0,
        1 | 2 => 2,
        _ => 1,
    };
    for _ in 0..k {
        let label = if rng.one_in(5) || labels_read.is_empty() {
            rng.pick(VERSION_LABELS).to_string()
        } else {
            rng.pick(&labels_read).to_string()
        };
        let value = match rng.below(8) {
            0..=4 => {
                let r = any_rollout(rng);
                // The stable version now and then, a canary mostly.
                if rng.one_in(4) {
                    r.versions[0].clone()
                } else {
                    rng.pick_ref(&r.versions).clone()
                }
            }
            5 => rng.pick(VERSION_NAMES).to_string(),
            6 => rng.pick(&["", "V2", "v2 ", "v99", "v1\0"]).to_string(),
            _ => odd_text(rng),
        };
        labels.push((label, value));
    }
    let noise = if !few_labels && rng.one_in(30) {
        rng.range(300, 3000)
    } else {
        rng.range(0, 3)
    };
    for j in 0..noise {
        let name = if noise > 10 || rng.one_in(3) {
            format!("l{j}")
        } else {
            rng.pick(NOISE_NAMES).to_string()
        };
        let value = if rng.one_in(3) {
            odd_text(rng)
        } else {
            token(rng, 0, 12)
        };
        labels.push((name, value));
    }
    if rng.one_in(15) && !labels.is_empty() {
        // A label written twice, with another value, before or after.
        let (name, _) = rng.pick_ref(&labels).clone();
        let value = if rng.one_in(2) {
            rng.pick_ref(&cfg.rollouts).name.clone()
        } else {
            rng.pick(VERSION_NAMES).to_string()
        };
        let at = rng.below(labels.len() + 1);
        labels.insert(at, (name, value));
    }
    if rng.one_in(3) {
        shuffle(rng, &mut labels);
    }
    Series {
        labels,
        value: rng.pick(VALUES).to_string(),
        time: rng.pick(TIMES).to_string(),
    }
}

fn gen_series_list(rng: &mut Rng, cfg: &MeshConfig) -> Vec<Series> {
    let n = match rng.below(20) {
        0 => 0,
        1 => rng.range(200, 2000),
        _ => rng.range(1, 12),
    };
    (0..n).map(|_| gen_series(rng, cfg, n > 100)).collect()
}

fn answer_tree(rng: &mut Rng, series: &[Series]) -> J {
    let result = series
        .iter()
        .map(|se| {
            let metric = J::Obj(se.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect());
            let value = J::Arr(vec![J::Num(se.time.clone()), s(&se.value)]);
            object(rng, vec![("metric", metric), ("value", value)])
        })
        .collect();
    let data = object(
        rng,
        vec![("resultType", s("vector")), ("result", J::Arr(result))],
    );
    object(rng, vec![("status", s("success")), ("data", data)])
}

// ---------------------------------------------------------------------------
// A case.
// ---------------------------------------------------------------------------

pub(super) struct Body(pub(super) Vec<u8>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let cut: String = text.chars().take(3000).collect();
        write!(f, "{} bytes: {cut:?}", self.0.len())
    }
}

#[derive(Debug)]
pub(super) struct AnswerCase {
    pub(super) status: Option<Vec<u8>>,
    /// What Envoy says the body holds (`None`: the body's length).
    pub(super) size: Option<usize>,
    /// `None`: the host gives no body.
    pub(super) body: Option<Body>,
    /// Also every prefix of the body.
    pub(super) every_prefix: bool,
    /// The model's series, if the body is the model's answer unbroken: the
    /// oracle must read exactly them (a check of the oracle).
    pub(super) pristine: Option<Vec<Series>>,
    pub(super) made: Vec<&'static str>,
}

#[derive(Debug)]
pub(super) struct MeshCase {
    pub(super) config: MeshConfig,
    pub(super) config_json: String,
    /// The push generation of every rollout in this VM.
    pub(super) generation: u32,
    /// What each rollout's held record holds already.
    pub(super) held_before: Vec<u32>,
    /// The rollouts whose record this VM does not have.
    pub(super) no_record: Vec<bool>,
    /// Series applied as they are, without JSON.
    pub(super) series: Vec<Series>,
    pub(super) answers: Vec<AnswerCase>,
}

const STATUSES: &[&[u8]] = &[
    b"503",
    b"500",
    b"504",
    b"404",
    b"204",
    b"301",
    b"100",
    b"599",
    b"600",
    b"000",
    b"099",
    b"20x",
    b"2 0",
    b"",
    b"0200",
    b"+503",
    b"200 ",
    b" 200",
    b"20",
    b"2000",
    b"\xff\xfe",
    b"-20",
    b"+20",
    b"\xd9\xa3\xd9\xa3\xd9\xa3",
];

fn gen_answer(rng: &mut Rng, cfg: &MeshConfig) -> AnswerCase {
    let mut made = Vec::new();
    let status = match rng.below(30) {
        0 => None,
        1..=3 => Some(rng.pick(STATUSES).to_vec()),
        _ => Some(b"200".to_vec()),
    };
    let series = gen_series_list(rng, cfg);
    let mut tree = answer_tree(rng, &series);
    let mut pristine = Some(series);
    if rng.one_in(2) {
        pristine = None;
        for _ in 0..rng.range(1, 3) {
            made.push(mutate_tree(rng, &mut tree));
        }
    } else {
        made.push("valid");
    }
    let style = Style {
        pretty: rng.one_in(4),
        escape: rng.one_in(3),
    };
    let mut text = String::new();
    write_json(rng, &tree, &style, 0, &mut text);
    // Whitespace around the answer, a byte order mark, something after it.
    let (before, after): (&[u8], &[u8]) = match rng.below(30) {
        0 => (b" \r\n\t", b""),
        1 => {
            pristine = None;
            (b"\xef\xbb\xbf", b"")
        }
        2 => (b"", b"\n \t"),
        3 => {
            pristine = None;
            (b"", rng.pick(&[&b"x"[..], b",", b"{}", b"\0"]))
        }
        _ => (b"", b""),
    };
    let mut body = [before, &text.into_bytes(), after].concat();
    if rng.one_in(4) {
        mutate_json_bytes(rng, &mut body);
        made.push("bytes mutated");
        pristine = None;
    }
    let mut size = None;
    match rng.below(40) {
        0 | 1 => {
            size = Some(
                MAX_ANSWER_BYTES
                    + rng.pick(&[1, 2, 1000, MAX_ANSWER_BYTES, usize::MAX - MAX_ANSWER_BYTES]),
            );
            made.push("over the bound");
        }
        2 => {
            // Exactly the bound: read. One byte more: refused.
            let over = rng.one_in(2);
            let len = MAX_ANSWER_BYTES + usize::from(over);
            if body.len() < len {
                body.resize(len, b' ');
            }
            made.push(if over { "bound + 1" } else { "at the bound" });
        }
        _ => {}
    }
    let every_prefix = body.len() <= 1500 && rng.one_in(6);
    let body = if rng.one_in(40) {
        made.push("no body from the host");
        None
    } else {
        Some(Body(body))
    };
    AnswerCase {
        status,
        size,
        body,
        every_prefix,
        pristine,
        made,
    }
}

pub(super) fn gen_case(rng: &mut Rng) -> MeshCase {
    let config = gen_config(rng);
    let n = config.rollouts.len();
    let answers = (0..rng.range(2, 6))
        .map(|_| gen_answer(rng, &config))
        .collect();
    MeshCase {
        config_json: config.json(),
        generation: rng.range(1, 1000) as u32,
        held_before: (0..n)
            .map(|_| {
                if rng.one_in(4) {
                    rng.u64() as u32 & 0xfffe
                } else {
                    0
                }
            })
            .collect(),
        no_record: (0..n).map(|_| rng.one_in(10)).collect(),
        series: gen_series_list(rng, &config),
        answers,
        config,
    }
}
