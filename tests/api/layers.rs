//! The shape of the code, checked: no module imports one that imports it (at the level of
//! files), imports go down the layers of ARCHITECTURE.md, and nothing under `src/http/` names
//! an actor.
//!
//! Imports are read from the source text: `use` trees, `crate::`/`super::` paths, and paths
//! into a module's own children from its `mod.rs`. Each resolves to the file that defines the
//! module it names. Test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, highest layer first; a module may import from its own layer (the
/// circle test keeps those acyclic) and from later ones, never from earlier ones.
const LAYERS: &[&[&str]] = &[
    &["app"],
    &["http"],
    &["notify"],
    &["node"],
    &["actors"],
    &[
        "upload",
        "resumable",
        "media",
        "auth",
        "signed_url",
        "rate_limit",
        "faults",
    ],
    &["load", "health", "panics", "upload_file"],
    &["engine"],
    &["config", "domain", "system", "sandbox", "events"],
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The file that defines module `path` (`["http", "videos"]`), if there is one.
fn module_file(path: &[String]) -> Option<PathBuf> {
    let base = match path.first().map(String::as_str) {
        None => return Some(root().join("src/lib.rs")),
        Some("actors") => path[1..]
            .iter()
            .fold(root().join("actors"), |p, s| p.join(s)),
        Some(_) => path.iter().fold(root().join("src"), |p, s| p.join(s)),
    };
    let candidates = [base.with_extension("rs"), base.join("mod.rs")];
    candidates.into_iter().find(|c| c.is_file())
}

/// The module path of a file.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(root()).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts[0] == "src" {
        parts.remove(0);
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.ends_with("bin") {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &mut out);
    walk(&root().join("actors"), &mut out);
    out.sort();
    out
}

/// `a::{b, c::{d, e}}` as the paths `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (head, body) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in body.chars() {
        match c {
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            '{' => {
                depth += 1;
                current.push(c)
            }
            '}' => {
                depth -= 1;
                current.push(c)
            }
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand_use(&format!("{head}{p}")))
        .collect()
}

/// Every path of the form `a::b::c` in `text` that starts with a lowercase segment.
fn paths_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ident(bytes[i]) && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len()
            && (ident(bytes[j]) || (bytes[j] == b':' && bytes.get(j + 1) == Some(&b':')))
        {
            j += if bytes[j] == b':' { 2 } else { 1 };
        }
        let path = &text[i..j];
        if path.contains("::") {
            out.push(path.trim_end_matches(':').to_string());
        }
        i = j.max(i + 1);
    }
    out
}

/// The files a source file imports.
fn imports_of(file: &Path) -> BTreeSet<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let me = module_of(file);
    let is_module_root = file.ends_with("mod.rs") || file.ends_with("lib.rs");
    let mut paths = paths_in(&code);
    for statement in code.split("use ").skip(1) {
        if let Some(tree) = statement.split(';').next() {
            if tree.contains("::") {
                paths.extend(expand_use(tree));
            }
        }
    }
    let mut found = BTreeSet::new();
    for path in paths {
        let segments: Vec<String> = path.split("::").map(str::to_string).collect();
        let (mut module, rest) = match segments[0].as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "super" => (me[..me.len().saturating_sub(1)].to_vec(), &segments[1..]),
            "self" => (me.clone(), &segments[1..]),
            _ if is_module_root => (me.clone(), &segments[..]),
            _ => continue,
        };
        let mut target = if segments[0] == "crate" || segments[0] == "super" {
            module_file(&module)
        } else {
            None
        };
        for segment in rest {
            module.push(segment.clone());
            match module_file(&module) {
                Some(file) => target = Some(file),
                None => break,
            }
        }
        if let Some(target) = target.filter(|t| t != file) {
            found.insert(target);
        }
    }
    found
}

fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    sources()
        .into_iter()
        .map(|f| (f.clone(), imports_of(&f)))
        .collect()
}

fn name(file: &Path) -> String {
    file.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn no_file_imports_a_file_that_imports_it() {
    let graph = graph();
    // Depth-first search; a back edge closes a circle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        file: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        marks: &mut BTreeMap<PathBuf, Mark>,
        stack: &mut Vec<PathBuf>,
        circles: &mut Vec<String>,
    ) {
        marks.insert(file.clone(), Mark::Open);
        stack.push(file.clone());
        for next in graph.get(file).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|f| f == next).unwrap();
                    let circle: Vec<String> = stack[from..].iter().map(|f| name(f)).collect();
                    circles.push(format!("{} -> {}", circle.join(" -> "), name(next)));
                }
                Some(Mark::Done) => {}
                None => visit(next, graph, marks, stack, circles),
            }
        }
        stack.pop();
        marks.insert(file.clone(), Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut circles = Vec::new();
    for file in graph.keys() {
        if !marks.contains_key(file) {
            visit(file, &graph, &mut marks, &mut Vec::new(), &mut circles);
        }
    }
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    println!("{} files, {edges} imports between them", graph.len());
    assert!(
        edges > 100,
        "the import reader found almost nothing: {edges}"
    );
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn imports_go_down_the_layers_and_http_names_no_actor() {
    let layer = |module: &str| LAYERS.iter().position(|l| l.contains(&module));
    let mut wrong = Vec::new();
    for (file, imports) in graph() {
        let Some(from) = module_of(&file).first().cloned() else {
            continue;
        };
        let from_layer = layer(&from).unwrap_or_else(|| panic!("{from} is in no layer"));
        for target in imports {
            let Some(to) = module_of(&target).first().cloned() else {
                continue;
            };
            if to == from {
                continue;
            }
            let to_layer = layer(&to).unwrap_or_else(|| panic!("{to} is in no layer"));
            if to_layer < from_layer {
                wrong.push(format!("{} -> {}", name(&file), name(&target)));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that go up:\n{}",
        wrong.join("\n")
    );
    for file in sources()
        .iter()
        .filter(|f| module_of(f).first().is_some_and(|m| m == "http"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains("crate::actors") && !text.contains("ActorRef"),
            "{} names an actor",
            name(file)
        );
    }
}

#[test]
fn the_import_reader_sees_what_it_should() {
    assert_eq!(
        expand_use("crate::a::{b, c::{d, E}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c::E"]
    );
    let videos = root().join("src/http/videos.rs");
    let imports = imports_of(&videos);
    assert!(
        imports.contains(&root().join("src/node/mod.rs")),
        "{imports:?}"
    );
    assert!(
        imports.contains(&root().join("src/http/form.rs")),
        "{imports:?}"
    );
    let dispatch = imports_of(&root().join("src/http/mod.rs"));
    assert!(dispatch.contains(&videos), "{dispatch:?}");
}
