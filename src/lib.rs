//! Rackwatch: monitoring and capacity planning for GPU fleets.
//!
//! The data path runs one way: `collect` (agent) → `ingest` → `store` (Postgres) →
//! `analytics` → `alert` / `report` → `web`. Imports run the other way, down a fixed
//! order of layers, and never up or across (see [`LAYERS`]; a test enforces it):
//! `web` calls `ingest`, `ingest` calls `store`, `alert` reads what `analytics` stored.
//! `docs/ARCHITECTURE.md` draws the picture and lists the recipes for common changes.

pub mod alert;
pub mod alloc;
pub mod analytics;
pub mod app;
pub mod collect;
pub mod config;
pub mod ingest;
pub mod jobs;
pub mod model;
pub mod report;
pub mod store;
pub mod web;

/// The stage folders (and wiring files) from the bottom up. A module may import from
/// the layers below its own, never from its own layer's other stages or from above.
pub const LAYERS: &[&[&str]] = &[
    &["model", "alloc"],
    &["config"],
    &["collect", "store"],
    &["ingest", "analytics"],
    &["alert"],
    &["report"],
    &["web"],
    &["jobs"],
    &["app", "main"],
];

#[cfg(test)]
mod architecture {
    use std::collections::BTreeSet;
    use std::path::Path;

    fn layer_of(stage: &str) -> Option<usize> {
        super::LAYERS.iter().position(|l| l.contains(&stage))
    }

    /// `crate::x` paths of a source file, as stage names, with the line they are on.
    fn imports(text: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((name, n + 1));
                }
            }
        }
        out
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn stages_import_only_from_the_layers_below() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut stages = BTreeSet::new();
        let mut wrong = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let stage = first.trim_end_matches(".rs").to_string();
            if stage == "lib" {
                continue;
            }
            let Some(mine) = layer_of(&stage) else {
                wrong.push(format!(
                    "{}: stage {stage:?} is not in LAYERS",
                    rel.display()
                ));
                continue;
            };
            stages.insert(stage.clone());
            for (to, line) in imports(&std::fs::read_to_string(f).unwrap()) {
                if to == stage {
                    continue;
                }
                match layer_of(&to) {
                    Some(l) if l < mine => {}
                    Some(_) => wrong.push(format!(
                        "{}:{line}: {stage} imports crate::{to}, which is not below it",
                        rel.display()
                    )),
                    None => wrong.push(format!(
                        "{}:{line}: crate::{to} is not a stage in LAYERS",
                        rel.display()
                    )),
                }
            }
        }
        assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
        // The check saw the real tree, not an empty one.
        for s in ["model", "store", "ingest", "analytics", "alert", "web"] {
            assert!(stages.contains(s), "{s} not found under src/");
        }
    }

    #[test]
    fn the_check_catches_an_upward_import() {
        let found = imports("use crate::web::AppState;\nfn f() { crate::store::x(); }");
        assert_eq!(
            found,
            vec![("web".to_string(), 1), ("store".to_string(), 2)]
        );
        assert!(layer_of("web") > layer_of("ingest"));
    }
}
