//! The modules of keyward-http depend on each other in one direction only: no file
//! names a module that names it back, directly or through others. A circle is two rooms
//! sharing one job; this test keeps one from coming back unnoticed.
//!
//! It reads `src/**/*.rs` and, for each file's module, every path that points into the
//! crate: `crate::…`, `self::…`, `super::…`, and `child::…` for a module the file
//! declares, including `use` groups (`crate::{a, b::{C, D}}`) and paths written in
//! strings (serde's `serialize_with = "crate::dto::…"`). Comments do not count. A path
//! counts for the deepest module it names (`crate::cache::key::KeyCache` is
//! `cache::key`); inline modules (`mod tests { … }`) belong to their file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A file's module path inside the crate: `""` for `lib.rs`, `"cache::key"` for
/// `cache/key.rs`, `"cache"` for `cache/mod.rs`.
type Module = String;

/// Every file module of the crate at `src` and its source.
fn read_crate(src: &Path) -> BTreeMap<Module, String> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut segments: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            let source = std::fs::read_to_string(&path).expect("read source");
            files.insert(segments.join("::"), source);
        }
    }
    files
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Str(String),
    Other,
}

/// Rust source as the tokens this check needs; comments dropped, string literals kept
/// whole (so braces in them do not count), char literals and lifetimes told apart.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    text.push(chars[i]);
                    i += 1;
                }
                text.push(at(i));
                i += 1;
            }
            i += 1;
            out.push(Token::Str(text));
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escaped char literal: up to its closing quote.
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label.
                i += 1;
            }
            out.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            i += 1;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if (word == "r" || word == "br") && (at(i) == '"' || at(i) == '#') {
                let mut hashes = 0;
                while at(i + hashes) == '#' {
                    hashes += 1;
                }
                if at(i + hashes) == '"' {
                    // A raw string: up to a quote followed by as many hashes.
                    i += hashes + 1;
                    let start = i;
                    while i < chars.len()
                        && !(chars[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#'))
                    {
                        i += 1;
                    }
                    out.push(Token::Str(chars[start..i].iter().collect()));
                    i += hashes + 1;
                    continue;
                }
                // A raw identifier, `r#name`.
                i += 1;
                let start = i;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
                out.push(Token::Ident(chars[start..i].iter().collect()));
                continue;
            }
            out.push(Token::Ident(word.trim_start_matches('$').to_owned()));
        } else if c.is_ascii_digit() {
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            out.push(Token::Other);
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token::PathSep);
            i += 2;
        } else {
            out.push(match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                _ => Token::Other,
            });
            i += 1;
        }
    }
    out
}

/// The paths of a use tree starting at `tokens[*pos]`, each as its segments, with
/// `prefix` in front. Leaves `*pos` after the tree.
fn use_tree(tokens: &[Token], pos: &mut usize, prefix: &[String]) -> Vec<Vec<String>> {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(*pos) {
            Some(Token::Ident(segment)) => {
                path.push(segment.clone());
                *pos += 1;
            }
            Some(Token::Open) => {
                *pos += 1;
                let mut paths = Vec::new();
                while !matches!(tokens.get(*pos), Some(Token::Close) | None) {
                    paths.extend(use_tree(tokens, pos, &path));
                    if tokens.get(*pos) == Some(&Token::Comma) {
                        *pos += 1;
                    }
                }
                *pos += 1;
                return paths;
            }
            // `*` of a glob import, or anything else: the path ends here.
            _ => return vec![path],
        }
        if tokens.get(*pos) == Some(&Token::PathSep) {
            *pos += 1;
        } else {
            return vec![path];
        }
    }
}

/// The module a path written in `scope` points into, if it points into the crate at
/// all: the deepest module of `modules` that the path names.
fn resolve(path: &[String], scope: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let (mut absolute, rest): (Vec<String>, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (scope.to_vec(), &path[1..]),
        "super" => (scope[..scope.len().saturating_sub(1)].to_vec(), &path[1..]),
        child => {
            let mut below = scope.to_vec();
            below.push(child.to_owned());
            if !modules.contains(&below.join("::")) {
                // An extern crate, a std module or a name imported by a `use` (which
                // counted where it was imported).
                return None;
            }
            (scope.to_vec(), path)
        }
    };
    for segment in rest {
        match segment.as_str() {
            "self" => {}
            "super" => {
                absolute.pop();
            }
            name => absolute.push(name.to_owned()),
        }
    }
    (0..=absolute.len())
        .rev()
        .map(|n| absolute[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

/// Which modules each file's module names.
fn graph(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (module, source) in files {
        let file_scope: Vec<String> = module
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let tokens = tokens(source);
        let mut named = BTreeSet::new();
        let mut add = |path: &[String], scope: &[String]| {
            if let Some(target) = resolve(path, scope, &modules)
                && target != *module
            {
                named.insert(target);
            }
        };
        // Inline modules open a scope of their own: `super` inside `mod tests` is the
        // file's module.
        let mut scopes: Vec<(Vec<String>, usize)> = vec![(file_scope.clone(), 0)];
        let mut pending_scope: Option<String> = None;
        let mut depth = 0;
        let mut pos = 0;
        while pos < tokens.len() {
            let scope = scopes.last().map(|(s, _)| s.clone()).unwrap_or_default();
            let starts_path = pos == 0 || tokens[pos - 1] != Token::PathSep;
            match &tokens[pos] {
                Token::Ident(word) if word == "mod" => {
                    if let (Some(Token::Ident(name)), Some(Token::Open)) =
                        (tokens.get(pos + 1), tokens.get(pos + 2))
                    {
                        pending_scope = Some(name.clone());
                    }
                    pos += 1;
                }
                Token::Ident(_) if starts_path && tokens.get(pos + 1) == Some(&Token::PathSep) => {
                    for path in use_tree(&tokens, &mut pos, &[]) {
                        add(&path, &scope);
                    }
                }
                Token::Str(text) => {
                    let inner = self::tokens(text);
                    if let Some(Token::Ident(_)) = inner.first()
                        && inner.get(1) == Some(&Token::PathSep)
                    {
                        let mut inner_pos = 0;
                        for path in use_tree(&inner, &mut inner_pos, &[]) {
                            add(&path, &scope);
                        }
                    }
                    pos += 1;
                }
                Token::Open => {
                    depth += 1;
                    if let Some(name) = pending_scope.take() {
                        let mut inner = scope.clone();
                        inner.push(name);
                        scopes.push((inner, depth));
                    }
                    pos += 1;
                }
                Token::Close => {
                    if scopes.len() > 1 && scopes.last().is_some_and(|(_, d)| *d == depth) {
                        scopes.pop();
                    }
                    depth = depth.saturating_sub(1);
                    pos += 1;
                }
                _ => pos += 1,
            }
        }
        edges.insert(module.clone(), named);
    }
    edges
}

/// A circle of the graph, as its modules in order with the first repeated at the end.
fn find_circle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        path: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(node.clone(), Mark::OnPath);
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|m| m == next).unwrap_or(0);
                    let mut circle = path[start..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                Mark::New => {
                    if let Some(circle) = visit(next, graph, marks, path) {
                        return Some(circle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(circle) = visit(node, graph, &mut marks, &mut Vec::new())
        {
            return Some(circle);
        }
    }
    None
}

fn shown(module: &str) -> &str {
    if module.is_empty() { "crate" } else { module }
}

#[test]
fn no_module_of_keyward_http_names_a_module_that_names_it_back() {
    let files = read_crate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(files.len() > 10, "read only {:?}", files.keys());
    let graph = graph(&files);
    if let Some(circle) = find_circle(&graph) {
        let circle: Vec<&str> = circle.iter().map(|m| shown(m)).collect();
        panic!(
            "keyward-http's modules form a circle: {}",
            circle.join(" → ")
        );
    }
    // The edges the layout rests on, so that a reader that found nothing cannot pass.
    for (from, to) in [
        ("state", "cache::key"),
        ("state", "cache::listing"),
        ("auth", "state"),
        ("context", "cache::key"),
        ("middleware", "context"),
        ("handlers::keys", "cache::listing"),
        ("openapi", "handlers::ops"),
    ] {
        assert!(
            graph[from].contains(to),
            "{from} should name {to}; it names {:?}",
            graph[from]
        );
    }
}

fn sources(files: &[(&str, &str)]) -> BTreeMap<Module, String> {
    files
        .iter()
        .map(|(m, s)| ((*m).to_owned(), (*s).to_owned()))
        .collect()
}

#[test]
fn a_circle_through_several_files_is_found_and_named() {
    let files = sources(&[
        ("", "mod a; mod b; mod c;"),
        ("a", "use crate::b::Thing;"),
        ("b", "pub fn f() { crate::c::g() }"),
        ("c", "use crate::{x::Y, a::{self, Z}};"),
        ("x", ""),
    ]);
    let circle = find_circle(&graph(&files)).expect("a circle");
    assert_eq!(circle.len(), 4, "{circle:?}");
    assert_eq!(circle.first(), circle.last());
    let members: BTreeSet<&String> = circle.iter().collect();
    assert_eq!(members.len(), 3, "{circle:?}");
}

#[test]
fn every_way_of_naming_a_module_counts_and_comments_do_not() {
    let files = sources(&[
        ("", "pub mod p; pub mod q; use p::Child;"),
        ("p", "pub mod child;"),
        ("p::child", "use super::sibling_item; fn f() -> u8 { b'x' }"),
        (
            "q",
            r#"
            // crate::p::never — a comment is no dependency
            /* crate::p too */
            #[serde(serialize_with = "crate::p::child::serialize")]
            struct S<'a>(&'a str);
            fn brace() -> char { '{' }
            mod tests {
                use super::*;
                use crate::p::child::helper;
            }
            "#,
        ),
    ]);
    let graph = graph(&files);
    assert_eq!(graph[""], BTreeSet::from(["p".to_owned()]));
    assert_eq!(graph["p::child"], BTreeSet::from(["p".to_owned()]));
    assert_eq!(graph["q"], BTreeSet::from(["p::child".to_owned()]));
    assert!(graph["p"].is_empty(), "{:?}", graph["p"]);
}
