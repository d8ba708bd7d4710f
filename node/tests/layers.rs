//! The layers of `node/src` (drawn in `node/README.md`): every import between the library's
//! modules points down, and no two sibling modules inside a module import each other in a
//! circle. The check reads the source: each `crate::<module>` path (outside comments) is an
//! edge from the file's top-level module to `<module>`, each `super::<sibling>` path an edge
//! between siblings. The binary (`main.rs`, `cmd/`) sits on top and is not checked.

// Tests fail by panicking: unwrap and expect are the assertions here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directed edges between module names.
type Edges = BTreeSet<(String, String)>;

/// Top-level modules by layer, lowest first; a module may import only from lower layers.
const LAYERS: &[&[&str]] = &[
    &[
        "config",
        "links",
        "membership",
        "capability",
        "power",
        "store",
        "invite",
    ],
    &["coordinator", "view"],
    &["swarm"],
    &["probe", "layers"],
    &["node", "pipeline"],
    &["api", "launch"],
    &["start"],
];

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's text without comments (line comments, doc comments).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module names that follow `prefix` in `code` (e.g. `crate::` or `super::`).
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = code[i + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Module path of a file relative to `src`: `node/coord.rs` -> `["node", "coord"]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
    }
    parts
}

/// The import edges of the library: top-level ones and sibling ones (keyed by parent).
fn edges(src: &Path) -> (Edges, BTreeMap<String, Edges>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut top = BTreeSet::new();
    let mut siblings: BTreeMap<String, Edges> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src").to_path_buf();
        let module = module_of(&rel);
        if matches!(module[0].as_str(), "lib" | "main" | "cmd") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("read source"));
        for target in paths_after(&code, "crate::") {
            if target != module[0] {
                top.insert((module[0].clone(), target));
            }
        }
        if module.len() >= 2 {
            let parent = module[..module.len() - 1].join("/");
            let dir = src.join(&parent);
            for target in paths_after(&code, "super::") {
                let is_sibling = dir.join(format!("{target}.rs")).exists();
                if is_sibling && target != module[module.len() - 1] {
                    siblings
                        .entry(parent.clone())
                        .or_default()
                        .insert((module[module.len() - 1].clone(), target));
                }
            }
        }
    }
    (top, siblings)
}

/// A cycle in `edges`, if there is one (as the list of its nodes).
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| *s == n) {
            return Some(stack[i..].iter().map(|s| s.to_string()).collect());
        }
        if !done.insert(n) {
            return None;
        }
        stack.push(n);
        for m in next.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in next.keys() {
        if let Some(c) = visit(n, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_import_between_top_level_modules_points_down() {
    let rank: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
        .collect();
    let (top, _) = edges(&src());
    let mut wrong = Vec::new();
    for (a, b) in &top {
        let (Some(ra), Some(rb)) = (rank.get(a.as_str()), rank.get(b.as_str())) else {
            wrong.push(format!("{a} -> {b}: a module missing from LAYERS"));
            continue;
        };
        if ra <= rb {
            wrong.push(format!("{a} (layer {ra}) -> {b} (layer {rb})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point down:\n{}",
        wrong.join("\n")
    );
    assert!(
        top.len() > 10,
        "the scan found too few imports ({}): is it reading src?",
        top.len()
    );
}

#[test]
fn sibling_modules_import_each_other_in_one_direction() {
    let (_, siblings) = edges(&src());
    for (parent, edges) in &siblings {
        assert!(
            find_cycle(edges).is_none(),
            "a cycle among the submodules of {parent}: {:?}",
            find_cycle(edges)
        );
    }
    assert!(
        siblings.contains_key("node"),
        "no sibling imports found under node/"
    );
}

#[test]
fn the_checks_see_a_cycle_and_a_back_edge() {
    let e = |a: &str, b: &str| (a.to_string(), b.to_string());
    let cyclic = BTreeSet::from([e("a", "b"), e("b", "c"), e("c", "a")]);
    assert_eq!(find_cycle(&cyclic).map(|c| c.len()), Some(3));
    assert!(find_cycle(&BTreeSet::from([e("a", "b"), e("b", "c")])).is_none());
    let code = code_of("use crate::node::View; // crate::api\nlet x = super::state::X;");
    assert_eq!(
        paths_after(&code, "crate::"),
        BTreeSet::from(["node".to_string()])
    );
    assert_eq!(
        paths_after(&code, "super::"),
        BTreeSet::from(["state".to_string()])
    );
    assert!(paths_after("my_crate::x", "crate::").is_empty());
}
