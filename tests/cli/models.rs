//! `check` on a chat model's routes (docs/kserve-llm.md): HTTPRoute rules
//! that match the config's `modelHeader` beside the routing header belong to
//! the rollout that takes that model, the value must be one of its `models`
//! (the form KServe's rule expects, `publishers/<namespace>/models/<name>`),
//! and an EnvoyFilter delivering the filter over ECDS is read for its config.

use super::*;

const MODEL: &str = "publishers/kserve-llm/models/chat";

/// The shipped EnvoyFilter with its config text replaced.
fn envoyfilter(config: &str) -> String {
    let text = shipped("istio/kserve/llm/envoyfilter.yaml");
    let head = &text[..text.find("              value: |").unwrap()];
    format!("{head}              value: '{config}'\n")
}

const PREFIXES: &str =
    r#"["/v1/chat/completions","/v1/completions","/v1/responses","/v1/messages"]"#;

/// The chat rollout of the shipped config with these `models`.
fn chat_rollout(models: &str) -> String {
    format!(
        r#"{{"name":"chat","hosts":["*"],"pathPrefixes":{PREFIXES},"models":{models},"routingHeader":"x-canary-llm-version","versions":[{{"name":"chat-v1","weight":90}},{{"name":"chat-v2","weight":10}}],"stickiness":{{"userIdHeaders":["x-user-id"],"userIdBodyFields":["user"]}}}}"#
    )
}

/// The shipped config, its chat rollout with these `models`.
fn chat_config(models: &str) -> String {
    format!(
        r#"{{"modelHeader":"x-gateway-model-name","rollouts":[{}]}}"#,
        chat_rollout(models)
    )
}

#[test]
fn check_wires_the_chat_model_by_its_model_header() {
    let r = run(&["check", "istio/kserve/llm/"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let wired: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" with ")).collect();
    let route = "istio/kserve/llm/httproute.yaml: HTTPRoute kserve-llm/chat-canary-selector";
    assert_eq!(
        wired,
        [
            format!("istio/kserve/llm/bbr/wasmplugin.yaml: WasmPlugin kserve/canary-selector rollout chat with {route}: \
                     wiring ok: chat-v1 -> chat-v1-inference-pool, chat-v2 -> chat-v2-inference-pool; \
                     model header x-gateway-model-name: {MODEL}; \
                     no rule without matches: a request without the routing header is left to other routes"),
            format!("istio/kserve/llm/envoyfilter.yaml: EnvoyFilter kserve/canary-selector rollout chat with {route}: \
                     wiring ok: chat-v1 -> chat-v1-inference-pool, chat-v2 -> chat-v2-inference-pool; \
                     model header x-gateway-model-name: {MODEL}; \
                     no rule without matches: a request without the routing header is left to other routes"),
        ],
        "{}",
        r.stdout
    );
    // The EnvoyFilter's config is the JSON text Envoy hands the filter.
    assert!(r.stdout.contains(
        "istio/kserve/llm/envoyfilter.yaml: EnvoyFilter kserve/canary-selector: accepted: 1 rollout (chat)"
    ));
    let report = json(&run(&["check", "istio/kserve/llm/", "-o", "json"]));
    let chat = &report["wiring"][1];
    assert_eq!(chat["rollout"], "chat");
    assert_eq!(chat["modelHeader"], "x-gateway-model-name");
    assert_eq!(chat["models"], serde_json::json!([MODEL]));
    assert_eq!(report["wiring"].as_array().map(Vec::len), Some(2));
}

#[test]
fn check_finds_a_model_name_kserve_s_rule_never_matches() {
    // The bare model name: KServe's rule (and ours) match the fully
    // qualified one, so the filter's header would match no rule.
    let path = file("bare-model.yaml", envoyfilter(&chat_config(r#"["chat"]"#)));
    let r = run(&["check", &path, "istio/kserve/llm/httproute.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "{path}: EnvoyFilter kserve/canary-selector rollout chat: wiring: no HTTPRoute among the files routes the rollout's hosts (*) \
             on its routing header x-canary-llm-version for its models (chat): istio/kserve/llm/httproute.yaml: HTTPRoute \
             kserve-llm/chat-canary-selector rule chat-v1 matches x-gateway-model-name: {MODEL}, which the rollout does not take \
             (the filter writes x-gateway-model-name as the request names its model)"
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn check_finds_a_rollout_of_other_models_that_no_rule_routes() {
    // A one-version rollout of every other model beside the chat rollout
    // (the configs of docs/kserve-llm.md carried one while the filter wrote
    // the model header only on requests a rollout took): the rules on its
    // routing header are the chat model's, so none routes it, and that is
    // a finding, whatever its number of versions. The chat rollout is
    // wired as before.
    let other = format!(
        r#"{{"name":"other-models","hosts":["*"],"pathPrefixes":{PREFIXES},"routingHeader":"x-canary-llm-version","versions":[{{"name":"kserve","weight":100}}]}}"#
    );
    let config = format!(
        r#"{{"modelHeader":"x-gateway-model-name","rollouts":[{},{other}]}}"#,
        chat_rollout(&format!(r#"["{MODEL}"]"#))
    );
    let path = file("other-models.yaml", envoyfilter(&config));
    let r = run(&["check", &path, "istio/kserve/llm/httproute.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "{path}: EnvoyFilter kserve/canary-selector rollout other-models: wiring: no HTTPRoute among the files routes \
             the rollout's hosts (*) on its routing header x-canary-llm-version for its models (any model no other rollout \
             lists): istio/kserve/llm/httproute.yaml: HTTPRoute kserve-llm/chat-canary-selector rule chat-v1 matches \
             x-gateway-model-name: {MODEL}, which the rollout does not take (the filter writes x-gateway-model-name as the \
             request names its model)\n"
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!(
            "rollout chat with istio/kserve/llm/httproute.yaml: HTTPRoute kserve-llm/chat-canary-selector: wiring ok: \
             chat-v1 -> chat-v1-inference-pool, chat-v2 -> chat-v2-inference-pool; model header x-gateway-model-name: {MODEL};"
        )),
        "{}",
        r.stdout
    );
}

#[test]
fn check_gives_a_rollout_of_another_model_no_pass() {
    // A rollout listing another model is wired to none of the chat model's
    // rules: a finding.
    let other = r#"{"modelHeader":"x-gateway-model-name","rollouts":[{"name":"chat","hosts":["*"],"models":["publishers/kserve-llm/models/other"],"routingHeader":"x-canary-llm-version","versions":[{"name":"chat-v1","weight":90},{"name":"chat-v2","weight":10}]}]}"#;
    let path = file("other-model.yaml", envoyfilter(other));
    let r = run(&["check", &path, "istio/kserve/llm/httproute.yaml"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("for its models (publishers/kserve-llm/models/other)"),
        "{}",
        r.stdout
    );
    // Without `modelHeader` the model condition is not read: the rules are
    // the rollout's, whatever model they match.
    let plain = other
        .replace(r#""modelHeader":"x-gateway-model-name","#, "")
        .replace(r#""models":["publishers/kserve-llm/models/other"],"#, "");
    let path = file("no-model-header.yaml", envoyfilter(&plain));
    let r = run(&["check", &path, "istio/kserve/llm/httproute.yaml"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("wiring ok: chat-v1 -> chat-v1-inference-pool, chat-v2 -> chat-v2-inference-pool; no rule"), "{}", r.stdout);
}

#[test]
fn check_reads_an_envoyfilter_s_config_as_envoy_hands_it_over() {
    // A google.protobuf.Struct reaches the filter as protobuf bytes: the
    // filter cannot read it, whatever it holds.
    let text = shipped("istio/kserve/llm/envoyfilter.yaml");
    let head = &text[..text.find("            configuration:").unwrap()];
    let structured = format!(
        "{head}            configuration:\n              \"@type\": type.googleapis.com/google.protobuf.Struct\n              value: {}\n",
        chat_config(r#"["publishers/kserve-llm/models/chat"]"#)
    );
    let path = file("struct.yaml", structured);
    let r = run(&["check", &path]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "{path}: EnvoyFilter kserve/canary-selector: rejected: configuration is type.googleapis.com/google.protobuf.Struct: \
             Envoy hands a Wasm filter the text of a google.protobuf.StringValue as it is, and a google.protobuf.Struct as \
             protobuf bytes, not JSON; write the config as a StringValue's JSON text\n"
        )
    );
    let r = run(&["explain", &path]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("configuration is type.googleapis.com/google.protobuf.Struct"),
        "{}",
        r.stderr
    );
    // Another root id: another Wasm filter's EnvoyFilter, not a config of ours.
    let path = file(
        "other-root.yaml",
        text.replace("root_id: canary-selector", "root_id: other"),
    );
    let r = run(&["check", &path]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("no pluginConfig found"), "{}", r.stderr);
}
