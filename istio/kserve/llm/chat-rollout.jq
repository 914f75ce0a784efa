# Changes the chat rollout in the config text of envoyfilter.yaml's
# EnvoyFilter, and nothing else (docs/kserve-llm.md, one line per step):
#
#   kubectl -n kserve get envoyfilter canary-selector -o json | jq --argjson set '{"versions":[{"name":"chat-v1","weight":90},{"name":"chat-v2","weight":10}]}' -f istio/kserve/llm/chat-rollout.jq | kubectl replace -f -
#
# Each field of $set (a JSON object) replaces the chat rollout's field of
# that name whole, as a merge patch of the rollout would: "versions" lists
# every version, "rules" every rule. The rest of the config and of the
# EnvoyFilter stays as it is (the config is written back as one line of
# JSON). The EnvoyFilter must hold exactly one canary-selector config (an
# EXTENSION_CONFIG patch with root_id canary-selector) whose rollouts have
# exactly one named chat; else jq stops with an error and prints nothing,
# and `kubectl replace` has nothing to replace. The object keeps the
# resourceVersion `kubectl get` printed, so the replace fails with a
# conflict if the EnvoyFilter changed in between, rather than undoing that
# change.

def exactly_one(f; $what):
  ([f] | length) as $n
  | if $n == 1 then . else error("expected one \($what), found \($n)") end;

def ours: select(.applyTo == "EXTENSION_CONFIG" and .patch.value.typed_config.config.root_id == "canary-selector");

if ($set | type) != "object" then error("--argjson set: a JSON object of the chat rollout's fields, not \($set | type)") else . end
| exactly_one(.spec.configPatches[]? | ours; "EXTENSION_CONFIG patch with root_id canary-selector")
| (.spec.configPatches[] | ours | .patch.value.typed_config.config.configuration.value) |= (
    fromjson
    | exactly_one(.rollouts[]? | select(.name == "chat"); "rollout named chat in the config")
    | (.rollouts[] | select(.name == "chat")) |= . + $set
    | tojson
  )
