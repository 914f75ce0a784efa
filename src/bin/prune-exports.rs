//! `prune-exports IN OUT NAME...`: writes the Wasm module IN to OUT with only
//! the exports NAME..., and without the code and data only the removed
//! exports reached (walrus' garbage collection).
//!
//! Why: the proxy-wasm SDK exports every callback of the ABI, and Envoy calls
//! each exported callback on every request whether or not the filter
//! implements it. `make build` runs this on the module with the callbacks
//! `src/glue.rs` implements (the Makefile's `WASM_EXPORTS`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, keep @ ..] = args.as_slice() else {
        eprintln!("usage: prune-exports IN.wasm OUT.wasm EXPORT...");
        return ExitCode::from(2);
    };
    match prune(input, output, keep) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prune-exports: {e}");
            ExitCode::FAILURE
        }
    }
}

fn prune(input: &str, output: &str, keep: &[String]) -> Result<(), String> {
    let mut module = walrus::Module::from_file(input).map_err(|e| format!("{input}: {e}"))?;
    let missing: Vec<&String> = keep
        .iter()
        .filter(|name| !module.exports.iter().any(|e| e.name == **name))
        .collect();
    if !missing.is_empty() {
        return Err(format!("{input} does not export {missing:?}"));
    }
    let dropped: Vec<walrus::ExportId> = module
        .exports
        .iter()
        .filter(|e| !keep.contains(&e.name))
        .map(|e| e.id())
        .collect();
    for id in dropped {
        module.exports.delete(id);
    }
    walrus::passes::gc::run(&mut module);
    module
        .emit_wasm_file(output)
        .map_err(|e| format!("{output}: {e}"))
}
