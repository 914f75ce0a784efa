//! `check` on a chat model's routes (docs/kserve-llm.md): HTTPRoute rules
//! that match the config's `modelHeader` beside the routing header belong to
//! the rollout that takes that model, the value must be one of its `models`
//! (the form KServe's rule expects, `publishers/<namespace>/models/<name>`),
//! a one-version rollout of any other model is left to KServe's routes, and
//! an EnvoyFilter delivering the filter over ECDS is read for its config.

use super::*;

const MODEL: &str = "publishers/kserve-llm/models/chat";

/// The shipped EnvoyFilter with its config text replaced.
fn envoyfilter(config: &str) -> String {
    let text = shipped("istio/kserve/llm/envoyfilter.yaml");
    let head = &text[..text.find("              value: |").unwrap()];
    format!("{head}              value: '{config}'\n")
}

/// The chat rollout of the shipped config with these `models`, and (if
/// `other`) the rollout of every other model.
fn chat_config(models: &str, other: bool) -> String {
    let prefixes = r#"["/v1/chat/completions","/v1/completions","/v1/responses","/v1/messages"]"#;
    let mut rollouts = format!(
        r#"{{"name":"chat","hosts":["*"],"pathPrefixes":{prefixes},"models":{models},"routingHeader":"x-canary-llm-version","versions":[{{"name":"chat-v1","weight":90}},{{"name":"chat-v2","weight":10}}],"stickiness":{{"userIdHeaders":["x-user-id"],"userIdBodyFields":["user"]}}}}"#
    );
    if other {
        rollouts.push_str(&format!(
            r#",{{"name":"other-models","hosts":["*"],"pathPrefixes":{prefixes},"routingHeader":"x-canary-llm-version","versions":[{{"name":"kserve","weight":100}}]}}"#
        ));
    }
    format!(r#"{{"modelHeader":"x-gateway-model-name","rollouts":[{rollouts}]}}"#)
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
            format!("istio/kserve/llm/envoyfilter.yaml: EnvoyFilter kserve/canary-selector rollout other-models with {route}: \
                     wiring ok: no rule for its models: its rules on x-canary-llm-version match x-gateway-model-name: {MODEL}, \
                     models other rollouts take; its one version's requests take the other routes of their hosts"),
        ],
        "{}",
        r.stdout
    );
    // The EnvoyFilter's config is the JSON text Envoy hands the filter.
    assert!(r.stdout.contains(
        "istio/kserve/llm/envoyfilter.yaml: EnvoyFilter kserve/canary-selector: accepted: 2 rollouts (chat, other-models)"
    ));
    let report = json(&run(&["check", "istio/kserve/llm/", "-o", "json"]));
    let chat = &report["wiring"][1];
    assert_eq!(chat["rollout"], "chat");
    assert_eq!(chat["modelHeader"], "x-gateway-model-name");
    assert_eq!(chat["models"], serde_json::json!([MODEL]));
    assert!(report["wiring"][2]["leftToOtherRoutes"].is_string());
}

#[test]
fn check_finds_a_model_name_kserve_s_rule_never_matches() {
    // The bare model name: KServe's rule (and ours) match the fully
    // qualified one, so the filter's header would match no rule.
    let path = file(
        "bare-model.yaml",
        envoyfilter(&chat_config(r#"["chat"]"#, true)),
    );
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
    // The rollout of any model no longer leaves the rules to the chat
    // rollout (none lists the model), so they are its, and it has no
    // chat-v1 or chat-v2.
    assert!(r.stdout.contains("rollout other-models with istio/kserve/llm/httproute.yaml: HTTPRoute kserve-llm/chat-canary-selector: wiring: version kserve has no rule matching x-canary-llm-version: kserve"), "{}", r.stdout);
}

#[test]
fn check_gives_a_two_version_rollout_of_another_model_no_pass() {
    // Only the rollout of any model, with two versions: the rules for the
    // chat model are its (no rollout lists the model); a rollout listing
    // another model is wired to none of them, and with two versions that
    // is a finding.
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
        chat_config(r#"["publishers/kserve-llm/models/chat"]"#, true)
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
