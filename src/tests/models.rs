//! Generative models: rollouts scoped by the request's model, the body
//! options and their errors, the user id read from the body, and which
//! requests wait for their body (`crate::plan`).

use super::FakeRequest;
use crate::body::{Field, Scanned, Unreadable};
use crate::config::Config;
use crate::decision::{decide, Live, Reason, Request, WyRand};
use crate::plan::{self, AtHeaders, BodyFacts, Unknown};

use super::{config, rejected_config as rejected};

/// A chat gateway: two rollouts by model on the chat path, one for every
/// other model there, and KServe V1 elsewhere.
const CHAT: &str = r#"{
  "modelHeader": "X-Gateway-Model-Name",
  "maxBodyBytes": 65536,
  "rollouts": [
    {"name": "llama", "hosts": ["*"], "pathPrefixes": ["/v1/chat/completions"], "models": ["llama-3-8b", "llama"],
     "versions": [{"name": "llama-v1", "weight": 90}, {"name": "llama-v2", "weight": 10, "model": "llama-3-8b-ft"}],
     "stickiness": {"userIdHeaders": ["x-user-id"], "userIdBodyFields": ["user", "prompt_cache_key"], "userIdCookies": ["uid"]}},
    {"name": "mistral", "hosts": ["*"], "pathPrefixes": ["/v1/chat/completions"], "models": ["mistral-7b"],
     "versions": [{"name": "mistral-v1", "weight": 50}, {"name": "mistral-v2", "weight": 50}]},
    {"name": "chat", "hosts": ["*"], "pathPrefixes": ["/v1/chat/completions"],
     "versions": [{"name": "chat-v1", "weight": 100}]},
    {"name": "iris", "hosts": ["*"], "versions": [{"name": "iris-v1", "weight": 100}]}
  ]
}"#;

/// The prefix entry a request to `path` (on any host) takes.
fn entry<'c>(c: &'c Config, path: &'static str) -> Option<&'c crate::config::PrefixRollouts> {
    c.index
        .as_ref()?
        .lookup(Some(b"gateway.example.com"))?
        .prefix_for(|| Some(path.as_bytes()))
}

#[test]
fn a_rollout_listing_the_model_comes_before_the_one_of_any_model() {
    let c = config(CHAT);
    let chat = entry(&c, "/v1/chat/completions").unwrap();
    assert!(chat.by_model());
    let name = |i: Option<usize>| i.and_then(|i| c.rollouts[i].name());
    assert_eq!(name(chat.rollout_for(Some(b"llama-3-8b"))), Some("llama"));
    assert_eq!(name(chat.rollout_for(Some(b"llama"))), Some("llama"));
    assert_eq!(name(chat.rollout_for(Some(b"mistral-7b"))), Some("mistral"));
    // Unlisted or unknown: the rollout of any model.
    assert_eq!(name(chat.rollout_for(Some(b"gpt-4o"))), Some("chat"));
    assert_eq!(name(chat.rollout_for(None)), Some("chat"));
    // Model names are exact.
    assert_eq!(name(chat.rollout_for(Some(b"Llama"))), Some("chat"));
    // Elsewhere the model plays no part.
    let iris = entry(&c, "/v1/models/iris:predict").unwrap();
    assert!(!iris.by_model());
    assert_eq!(name(iris.rollout_for(Some(b"llama"))), Some("iris"));
    // Without a rollout of any model, an unlisted model is unclaimed.
    let only = config(&CHAT.replace(
        r#"{"name": "chat", "hosts": ["*"], "pathPrefixes": ["/v1/chat/completions"],
     "versions": [{"name": "chat-v1", "weight": 100}]},"#,
        "",
    ));
    let chat = entry(&only, "/v1/chat/completions").unwrap();
    assert_eq!(chat.rollout_for(Some(b"gpt-4o")), None);
    assert_eq!(chat.rollout_for(None), None);
}

#[test]
fn what_a_config_reads_from_bodies_is_known_at_the_push() {
    let c = config(CHAT);
    assert!(c.body.reads);
    assert_eq!(c.body.fields, ["model", "user", "prompt_cache_key"]);
    assert_eq!(c.body.model_header.as_deref(), Some("x-gateway-model-name"));
    assert_eq!(c.body.max_bytes, 65536);
    // Which rollouts may need a body once they take a request.
    let reads: Vec<bool> = c.rollouts.iter().map(plan::reads_body).collect();
    assert_eq!(reads, [true, false, false, false]);
    // A config with none of the fields never reads a body.
    let plain = config(r#"{"versions": [{"name": "v1", "weight": 100}]}"#);
    assert!(!plain.body.reads);
    assert_eq!(plain.body.max_bytes, 1 << 20);
    // A version's model alone makes it read, in a config without rollouts.
    let rewriting = config(
        r#"{"versions": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50, "model": "m-ft"}]}"#,
    );
    assert!(rewriting.body.reads);
}

#[test]
fn model_and_body_field_errors_name_the_field() {
    let scoped = |entry: &str| format!(r#"{{"rollouts": [{entry}]}}"#);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            scoped(r#"{"name": "a", "hosts": ["*"], "models": [], "versions": [{"name": "v1", "weight": 100}]}"#),
            "rollouts[0].models",
            "at least one model",
        ),
        (
            scoped(r#"{"name": "a", "hosts": ["*"], "models": ["m", "m"], "versions": [{"name": "v1", "weight": 100}]}"#),
            "rollouts[0].models[1]",
            "listed twice",
        ),
        (
            scoped(r#"{"name": "a", "hosts": ["*"], "models": ["m\n"], "versions": [{"name": "v1", "weight": 100}]}"#),
            "rollouts[0].models[0]",
            "control character",
        ),
        (
            format!(
                r#"{{"rollouts": [{}, {}]}}"#,
                r#"{"name": "a", "hosts": ["*.example.com"], "models": ["m"], "versions": [{"name": "v1", "weight": 100}]}"#,
                r#"{"name": "b", "hosts": ["*.Example.com"], "models": ["n", "m"], "versions": [{"name": "v1", "weight": 100}]}"#
            ),
            "rollouts[1].models[1]",
            "already claimed by rollouts[0]",
        ),
        (
            scoped(r#"{"name": "a", "hosts": ["*"], "modelHeader": "x-m", "versions": [{"name": "v1", "weight": 100}]}"#),
            "rollouts[0].modelHeader",
            "belongs at the top level",
        ),
        (
            r#"{"models": ["m"], "versions": [{"name": "v1", "weight": 100}]}"#.into(),
            "models",
            "scopes an entry of `rollouts`",
        ),
        (
            r#"{"models": ["m"], "rollouts": [{"name": "a", "hosts": ["*"], "versions": [{"name": "v1", "weight": 100}]}]}"#.into(),
            "models",
            "belongs in each entry",
        ),
        (
            r#"{"modelHeader": "x canary", "versions": [{"name": "v1", "weight": 100}]}"#.into(),
            "modelHeader",
            "not a valid header name",
        ),
        (
            r#"{"modelHeader": "content-length", "versions": [{"name": "v1", "weight": 100}]}"#.into(),
            "modelHeader",
            "reserved",
        ),
        (
            r#"{"modelHeader": "X-Canary-Version", "versions": [{"name": "v1", "weight": 100}]}"#.into(),
            "modelHeader",
            "routing header",
        ),
        (
            r#"{"maxBodyBytes": 0, "versions": [{"name": "v1", "weight": 100}]}"#.into(),
            "maxBodyBytes",
            "not from 1 to",
        ),
        (
            r#"{"maxBodyBytes": 67108865, "versions": [{"name": "v1", "weight": 100}]}"#.into(),
            "maxBodyBytes",
            "not from 1 to",
        ),
        (
            r#"{"versions": [{"name": "v1", "weight": 100, "model": ""}]}"#.into(),
            "versions[0].model",
            "1 to 256 bytes",
        ),
        (
            r#"{"versions": [{"name": "v1", "weight": 100}], "stickiness": {"userIdBodyFields": ["user", "user"]}}"#.into(),
            "stickiness.userIdBodyFields[1]",
            "listed twice",
        ),
        (
            r#"{"versions": [{"name": "v1", "weight": 100}], "stickiness": {"userIdBodyFields": [""]}}"#.into(),
            "stickiness.userIdBodyFields[0]",
            "1 to 128 bytes",
        ),
        (
            r#"{"versions": [{"name": "v1", "weight": 100}], "stickiness": {"userIdHeaders": ["a", "b", "c", "d"], "userIdBodyFields": ["e", "f", "g"], "userIdCookies": ["h", "i"]}}"#.into(),
            "stickiness",
            "more than 8 sources",
        ),
    ];
    for (json, field, reason) in cases {
        let e = rejected(&json);
        assert_eq!(e.field, field, "{e}\n{json}");
        assert!(e.reason.contains(reason), "{e}\n{json}");
    }
    // The same model on another prefix, or another host pattern, is fine.
    config(
        r#"{"rollouts": [
      {"name": "a", "hosts": ["*"], "pathPrefixes": ["/v1/chat/completions"], "models": ["m"], "versions": [{"name": "v1", "weight": 100}]},
      {"name": "b", "hosts": ["*"], "pathPrefixes": ["/v1/completions"], "models": ["m"], "versions": [{"name": "v1", "weight": 100}]},
      {"name": "c", "hosts": ["x.example.com"], "pathPrefixes": ["/v1/chat/completions"], "models": ["m"], "versions": [{"name": "v1", "weight": 100}]}]}"#,
    );
}

/// A request with `headers`, whose body (once read) has `fields` (as
/// `config.body.fields` lists them).
fn request(c: &Config, headers: &[(&str, &[u8])], fields: &[(&str, &str)]) -> WithBody {
    let scanned = Scanned {
        fields: c
            .body
            .fields
            .iter()
            .map(|f| match fields.iter().find(|(k, _)| k == f) {
                Some((_, v)) => Field::Present {
                    value: v.to_string(),
                    span: 0..0,
                },
                None => Field::Absent,
            })
            .collect(),
    };
    WithBody {
        req: FakeRequest::with(headers),
        names: c.body.fields.clone(),
        body: Some(scanned),
    }
}

struct WithBody {
    req: FakeRequest,
    names: Vec<String>,
    body: Option<Scanned>,
}

impl Request for WithBody {
    fn header(&mut self, slot: usize, name: &str) -> Option<&[u8]> {
        self.req.header(slot, name)
    }
    fn body_field(&mut self, name: &str) -> Option<&[u8]> {
        let i = self.names.iter().position(|n| n == name)?;
        self.body.as_ref()?.value(i).map(str::as_bytes)
    }
}

#[test]
fn a_user_id_from_the_body_comes_after_the_headers_and_before_the_cookies() {
    let c = config(CHAT);
    let llama = &c.rollouts[0];
    let decided = |w: &mut WithBody| {
        let d = decide(llama, w, &mut WyRand(1), Live::default());
        assert_eq!(d.reason, Reason::Sticky);
        match d.basis {
            crate::decision::Basis::UserId { source, bucket } => (source, bucket),
            other => panic!("{other:?}"),
        }
    };
    // The header first.
    let (source, header_bucket) = decided(&mut request(
        &c,
        &[("x-user-id", b"alice"), ("cookie", b"uid=carol")],
        &[("user", "bob")],
    ));
    assert_eq!(source, 0);
    assert_eq!(header_bucket, llama.bucket_of(b"alice"));
    // Then `user`, then `prompt_cache_key`, then the cookie.
    let (source, bucket) = decided(&mut request(
        &c,
        &[("cookie", b"uid=carol")],
        &[("user", "bob"), ("prompt_cache_key", "conv-1")],
    ));
    assert_eq!((source, bucket), (1, llama.bucket_of(b"bob")));
    let (source, bucket) = decided(&mut request(
        &c,
        &[("cookie", b"uid=carol")],
        &[("prompt_cache_key", "conv-1")],
    ));
    assert_eq!((source, bucket), (2, llama.bucket_of(b"conv-1")));
    let (source, bucket) = decided(&mut request(&c, &[("cookie", b"uid=carol")], &[]));
    assert_eq!((source, bucket), (3, llama.bucket_of(b"carol")));
    // The same user in a header or in the body: one version.
    assert_eq!(header_bucket, llama.bucket_of(b"alice"));
    let (_, in_body) = decided(&mut request(&c, &[], &[("user", "alice")]));
    assert_eq!(in_body, header_bucket);
}

#[test]
fn the_body_is_read_only_where_the_decision_needs_it() {
    let c = config(CHAT);
    let chat = entry(&c, "/v1/chat/completions");
    let iris = entry(&c, "/v1/models/iris:predict");
    // A model-scoped prefix without the model header: the body names it.
    assert_eq!(
        plan::at_headers(&c, chat, None, true),
        AtHeaders::WaitForModel
    );
    // The header names it: no body for the model.
    assert_eq!(
        plan::at_headers(&c, chat, Some(b"mistral-7b"), true),
        AtHeaders::Rollout(1)
    );
    // An unreadable body (too large, not JSON, none): the rollout of any
    // model, at once.
    assert_eq!(
        plan::at_headers(&c, chat, None, false),
        AtHeaders::Rollout(2)
    );
    assert_eq!(
        plan::at_headers(&c, iris, None, true),
        AtHeaders::Rollout(3)
    );
    assert_eq!(plan::at_headers(&c, None, None, true), AtHeaders::Unclaimed);

    // The decision reaches a body field only if no rule holds and no
    // header gave an id.
    let llama = &c.rollouts[0];
    assert!(plan::reaches_body(llama, &mut FakeRequest::with(&[])));
    assert!(!plan::reaches_body(
        llama,
        &mut FakeRequest::with(&[("x-user-id", b"alice")])
    ));
    assert!(plan::reaches_body(
        llama,
        &mut FakeRequest::with(&[("x-user-id", b"  ")])
    ));
    let with_rule = config(&CHAT.replace(
        r#""stickiness": {"userIdHeaders""#,
        r#""rules": [{"name": "t", "match": {"headers": {"x-tester": {"exact": "1"}}}, "version": "llama-v2"}], "stickiness": {"userIdHeaders""#,
    ));
    assert!(!plan::reaches_body(
        &with_rule.rollouts[0],
        &mut FakeRequest::with(&[("x-tester", b"1")])
    ));
    // A rollout with no body field never does.
    assert!(!plan::reaches_body(
        &c.rollouts[1],
        &mut FakeRequest::with(&[])
    ));
}

#[test]
fn what_the_headers_say_of_a_body() {
    let json = |t: &str| plan::is_json(t.as_bytes());
    assert!(json("application/json"));
    assert!(json("Application/JSON; charset=utf-8"));
    assert!(json(" application/json ;x=y"));
    assert!(!json("application/json-seq"));
    assert!(!json("text/plain"));
    assert!(!json(""));
    let facts = |json, content_length, end_of_stream| BodyFacts {
        json,
        content_length,
        end_of_stream,
    };
    assert_eq!(facts(true, Some(100), false).unreadable(1000), None);
    assert_eq!(facts(true, None, false).unreadable(1000), None, "chunked");
    assert_eq!(
        facts(true, Some(1001), false).unreadable(1000),
        Some(Unknown::TooLarge)
    );
    assert_eq!(facts(true, Some(1000), false).unreadable(1000), None);
    assert_eq!(
        facts(false, Some(10), false).unreadable(1000),
        Some(Unknown::NotJsonContentType)
    );
    assert_eq!(
        facts(true, None, true).unreadable(1000),
        Some(Unknown::NoBody)
    );
    assert_eq!(
        facts(true, Some(0), false).unreadable(1000),
        Some(Unknown::NoBody)
    );
}

#[test]
fn a_model_is_known_only_from_one_string_copy_of_it() {
    let scanned = |model: Field| -> Result<Scanned, Unknown> {
        Ok(Scanned {
            fields: vec![model],
        })
    };
    let present = Field::Present {
        value: "llama".into(),
        span: 9..16,
    };
    assert_eq!(plan::model_of(&scanned(present)), Ok(("llama", 9..16)));
    for (field, why) in [
        (Field::Absent, Unknown::Absent),
        (Field::Duplicate, Unknown::Duplicate),
        (Field::NotString, Unknown::NotString),
        (Field::TooLong, Unknown::TooLong),
    ] {
        assert_eq!(plan::model_of(&scanned(field)), Err(why));
    }
    let unreadable = Err(Unknown::Unreadable(Unreadable::NotJson));
    assert_eq!(
        plan::model_of(&unreadable),
        Err(Unknown::Unreadable(Unreadable::NotJson))
    );
    // Every reason has a label of its own.
    let labels: Vec<&str> = Unknown::all().map(Unknown::as_str).collect();
    let mut unique = labels.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), labels.len(), "{labels:?}");
}

#[test]
fn the_model_header_names_only_a_model_the_body_or_the_version_names_and_a_header_can_carry() {
    use plan::model_header_value as value;
    // The version's model once the body was rewritten to it, even over the
    // client's header.
    assert_eq!(value(Some("ft"), Some("base"), true), Some("ft"));
    assert_eq!(value(Some("ft"), Some("base"), false), Some("ft"));
    // The body's model where the client named none.
    assert_eq!(value(None, Some("base"), false), Some("base"));
    assert_eq!(
        value(None, Some("publishers/ns/models/é"), false),
        Some("publishers/ns/models/é")
    );
    // The client's header stays as sent.
    assert_eq!(value(None, Some("base"), true), None);
    assert_eq!(value(None, None, false), None);
    // Nothing a header cannot carry as it is.
    for bad in [
        "",
        "a\r\nx-injected: 1",
        "a\n",
        "\u{0}",
        "a\tb\t",
        " a",
        "a ",
        "\u{7f}",
        "\u{85}",
    ] {
        assert_eq!(value(None, Some(bad), false), None, "{bad:?}");
    }
}
