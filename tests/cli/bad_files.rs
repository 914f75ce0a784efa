//! Files that cannot be read: one line on stderr and exit 2, hostile YAML
//! refused before it expands.

use super::*;

// --- bad files -----------------------------------------------------------------

#[test]
fn unreadable_files_get_one_line_and_exit_2() {
    assert_refused(
        &run(&["check", "no/such.yaml"]),
        "no/such.yaml",
        "No such file or directory",
    );
    let path = file("latin1.json", b"{\"versions\": \"caf\xe9\"}");
    assert_refused(
        &run(&["check", &path]),
        &path,
        "not UTF-8 (byte 17 is not valid)",
    );
    let path = file("broken.json", "{\"versions\": [");
    assert_refused(
        &run(&["check", &path]),
        &path,
        "not JSON: EOF while parsing a list",
    );
    let path = file("broken.yaml", "kind: WasmPlugin\n  spec: [\n");
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    assert_refused(
        &run(&["check", "istio/namespace.yaml", "istio/model.yaml"]),
        "istio/namespace.yaml, istio/model.yaml",
        "no pluginConfig found",
    );
    assert_refused(
        &run(&["explain", "istio/", "-H", "x-user-id: a"]),
        "istio/",
        "holds more than one plugin config",
    );
    assert_refused(
        &run(&["diff", "-", "-"]),
        "-",
        "stdin can be read only once",
    );
    let r = run(&["check"]);
    assert_eq!(r.code, 2, "clap's usage error");
}

#[test]
fn hostile_yaml_is_refused_without_expanding_it() {
    // A billion laughs: ten levels of ten aliases each, 10^10 nodes expanded.
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\ndata:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=10 {
        let p = format!("*a{}", i - 1);
        bomb.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
    }
    let path = file("bomb.yaml", &bomb);
    let started = std::time::Instant::now();
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    assert!(started.elapsed().as_secs() < 10);
    // Deep nesting.
    let path = file(
        "deep.yaml",
        format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    // Very large documents, on disk and on stdin.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  x: \"{}\"\n",
        "x".repeat(5 << 20)
    );
    let path = file("big.yaml", &big);
    assert_refused(&run(&["check", &path]), &path, "larger than 4 MiB");
    assert_refused(
        &run_with(&["check", "-"], big.as_bytes()),
        "-",
        "larger than 4 MiB",
    );
    // Many small nodes under the size bound.
    let wide = format!("a: [{}]\n", vec!["1"; 1_000_000].join(","));
    let path = file("wide.yaml", wide);
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    // Wrong types where the filter expects objects, lists and strings.
    for (config, error) in [
        (
            "versions: {name: model-v1}",
            "versions: invalid type: map, expected a sequence",
        ),
        (
            "versions: [model-v1]",
            "versions[0]: invalid type: string \"model-v1\", expected an object",
        ),
        (
            "versions: [{name: [1], weight: 100}]",
            "versions[0].name: invalid type: sequence, expected a string",
        ),
        (
            "versions: [{name: model-v1, weight: 100}]\nrules: yes",
            "rules: invalid type: boolean `true`, expected a sequence",
        ),
    ] {
        let r = run(&["check", &file("types.yaml", wasmplugin(config))]);
        assert_eq!(r.code, 1, "{config}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.ends_with(&format!("rejected: {error}\n")),
            "{config}: {}",
            r.stdout
        );
    }
}
