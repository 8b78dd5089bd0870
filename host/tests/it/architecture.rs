//! ARCHITECTURE.md's invariants that the source itself can show, checked on every test run:
//! host/src is read as Rust tokens (comments and strings are not code; `#[cfg(test)]` items and
//! test-only files are left out) and each check fails naming the file and line that breaks it.
//! The tokens come from a small lexer here ([`lex`]): proc-macro2 can give line numbers only
//! with a feature that would rebuild every proc-macro and the crates they feed.
//!
//! - no cycle between the top-level modules of host/src (`crate::a` in module `b` and
//!   `crate::b` in `a`, however long the way round);
//! - the journal imports only `config` and `record` of the host (it never decodes a body);
//! - no redb type leaves `journal/embedded/`, no async-nats type leaves `journal/nats/`;
//! - the console, the control socket, the admin listener and the `journal` and `plugin
//!   pause|resume` commands reach the journal only through its operator's face;
//! - only `loader.rs` opens libraries;
//! - plugins never get a refresh token (`call::convert` leaves `UserAuth::refresh_token` none)
//!   and ingress journals only the body without its secrets;
//! - no global mutable state outside the three places ARCHITECTURE.md names;
//! - nothing of the serving host prints to descriptors 1 and 2 (`println!` and the like are the
//!   commands', the runner's and the exec shim's).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The delimiters of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimiter {
    Parenthesis,
    Brace,
    Bracket,
}

/// A token of a source file, flattened: groups become an opening and a closing token.
#[derive(Debug, Clone, PartialEq)]
enum T {
    Ident(String),
    Punct(char, bool),
    Open(Delimiter),
    Close(Delimiter),
    Literal,
}

#[derive(Debug, Clone)]
struct Tok {
    t: T,
    line: usize,
}

impl Tok {
    fn ident(&self) -> Option<&str> {
        match &self.t {
            T::Ident(name) => Some(name),
            _ => None,
        }
    }

    fn is_punct(&self, c: char) -> bool {
        matches!(self.t, T::Punct(p, _) if p == c)
    }

    fn is_ident(&self, name: &str) -> bool {
        self.ident() == Some(name)
    }
}

/// One file of host/src.
struct File {
    /// Relative to the repository root, e.g. `host/src/journal/log.rs`.
    shown: String,
    /// Relative to host/src, e.g. `journal/log.rs`.
    rel: String,
    /// Its module path, e.g. `["journal", "log"]` (`journal/mod.rs`: `["journal"]`).
    module: Vec<String>,
    /// Its tokens, test-only items left out.
    tokens: Vec<Tok>,
}

impl File {
    /// The top-level module the file belongs to (`None` for lib.rs and main.rs).
    fn top(&self) -> Option<&str> {
        self.module.first().map(String::as_str)
    }

    fn under(&self, prefix: &str) -> bool {
        self.rel == prefix || self.rel.starts_with(&format!("{prefix}/"))
    }

    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.shown)
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Rust source as tokens, with their lines: comments dropped (doc comments too), string, char
/// and number literals as [`T::Literal`], a lifetime as `'` and its name (as proc-macro2 gives
/// it). A punctuation character is joint when another one follows it at once (`::`).
fn lex(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let is_ident_start = |ch: char| ch == '_' || ch.is_alphabetic();
    let is_ident = |ch: char| ch == '_' || ch.is_alphanumeric();
    // The end of a (raw) string starting at `j` (at its `r`, `"`, or the `#`s), counting lines.
    let string_end = |mut j: usize, raw: bool, line: &mut usize| {
        let mut hashes = 0;
        if raw {
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
        }
        j += 1; // the opening quote
        while j < c.len() {
            match c[j] {
                '\n' => *line += 1,
                '\\' if !raw => {
                    if at(j + 1) == '\n' {
                        *line += 1;
                    }
                    j += 1;
                }
                '"' if (0..hashes).all(|k| at(j + 1 + k) == '#') => return j + 1 + hashes,
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = string_end(i, false, &mut line);
            out.push(Tok { t: T::Literal, line: start_line });
        } else if matches!(ch, 'b' | 'c' | 'r') && {
            // b"..", br"..", r"..", r#".."#, c"..", cr"..", b'..'
            let mut j = i + 1;
            if ch != 'r' && at(j) == 'r' {
                j += 1;
            }
            at(j) == '"'
                || (at(j) == '#' && (at(j + 1) == '"' || at(j + 1) == '#'))
                || (ch == 'b' && at(i + 1) == '\'')
        } {
            if ch == 'b' && at(i + 1) == '\'' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            } else {
                let raw = ch == 'r' || at(i + 1) == 'r';
                let j = if ch == 'r' {
                    i + 1
                } else if raw {
                    i + 2
                } else {
                    i + 1
                };
                i = string_end(j, raw, &mut line);
            }
            out.push(Tok { t: T::Literal, line: start_line });
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Tok { t: T::Literal, line });
            } else if at(i + 2) == '\'' {
                i += 3;
                out.push(Tok { t: T::Literal, line });
            } else {
                out.push(Tok { t: T::Punct('\'', false), line });
                i += 1;
            }
        } else if ch == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
            let s = i + 2;
            i = s;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(Tok { t: T::Ident(c[s..i].iter().collect()), line });
        } else if is_ident_start(ch) {
            let s = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(Tok { t: T::Ident(c[s..i].iter().collect()), line });
        } else if ch.is_ascii_digit() {
            while i < c.len() && (is_ident(c[i]) || (c[i] == '.' && at(i + 1).is_ascii_digit())) {
                i += 1;
            }
            out.push(Tok { t: T::Literal, line });
        } else {
            let t = match ch {
                '(' => T::Open(Delimiter::Parenthesis),
                '[' => T::Open(Delimiter::Bracket),
                '{' => T::Open(Delimiter::Brace),
                ')' => T::Close(Delimiter::Parenthesis),
                ']' => T::Close(Delimiter::Bracket),
                '}' => T::Close(Delimiter::Brace),
                _ => {
                    let next = at(i + 1);
                    let joint = next.is_ascii_punctuation()
                        && !matches!(next, '(' | ')' | '[' | ']' | '{' | '}' | '"' | '\'' | '_');
                    T::Punct(ch, joint)
                }
            };
            out.push(Tok { t, line });
            i += 1;
        }
    }
    out
}

/// Whether `tokens[i..]` starts `#[cfg(test)]` (or `#![cfg(test)]`); the index after it.
fn cfg_test(tokens: &[Tok], i: usize) -> Option<usize> {
    if !tokens.get(i)?.is_punct('#') {
        return None;
    }
    let mut j = i + 1;
    if tokens.get(j)?.is_punct('!') {
        j += 1;
    }
    let want = [
        T::Open(Delimiter::Bracket),
        T::Ident("cfg".into()),
        T::Open(Delimiter::Parenthesis),
        T::Ident("test".into()),
        T::Close(Delimiter::Parenthesis),
        T::Close(Delimiter::Bracket),
    ];
    for (k, t) in want.iter().enumerate() {
        if tokens.get(j + k)?.t != *t {
            return None;
        }
    }
    Some(j + want.len())
}

/// `tokens` without the items under `#[cfg(test)]`; `None` when the whole file is test-only
/// (`#![cfg(test)]`).
fn without_tests(tokens: Vec<Tok>) -> Option<Vec<Tok>> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let Some(after) = cfg_test(&tokens, i) else {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        };
        if tokens[i + 1].is_punct('!') {
            return None;
        }
        // Skip the item: up to a `;` outside any group or the end of its first braced body.
        let mut depth = 0usize;
        i = after;
        while i < tokens.len() {
            match &tokens[i].t {
                T::Open(_) => depth += 1,
                T::Close(d) => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 && *d == Delimiter::Brace {
                        i += 1;
                        break;
                    }
                }
                T::Punct(';', _) if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    Some(out)
}

/// Every file of host/src that is compiled into the host (test-only files left out).
fn files() -> Vec<File> {
    let root = src_dir();
    let mut paths = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("host/src is readable") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        let shown = format!("host/src/{rel}");
        // `mod tests;` files hold only tests.
        if rel.ends_with("/tests.rs") || rel == "tests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{shown}: {e}"));
        let Some(tokens) = without_tests(lex(&text)) else { continue };
        let mut module: Vec<String> =
            rel.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
        if module.last().is_some_and(|m| m == "mod") || module == ["lib"] || module == ["main"] {
            module.pop();
        }
        out.push(File { shown, rel, module, tokens });
    }
    out
}

/// The top-level modules of host/src: its files and its folders with a `mod.rs`.
fn top_modules() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(src_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && path.join("mod.rs").exists()
            || path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main"
        {
            out.insert(name);
        }
    }
    out
}

/// At `tokens[i]` a `::`?
fn path_sep(tokens: &[Tok], i: usize) -> bool {
    matches!(tokens.get(i).map(|t| &t.t), Some(T::Punct(':', true)))
        && tokens.get(i + 1).is_some_and(|t| t.is_punct(':'))
}

/// The names a path continues with after `tokens[i]` (`name`, or each first name of a
/// `{a::b, c}` group), each with its line.
fn path_heads(tokens: &[Tok], i: usize) -> Vec<(String, usize)> {
    match tokens.get(i).map(|t| &t.t) {
        Some(T::Ident(name)) => vec![(name.clone(), tokens[i].line)],
        Some(T::Open(Delimiter::Brace)) => {
            let mut out = Vec::new();
            let mut depth = 0usize;
            let mut segment_start = true;
            for tok in &tokens[i + 1..] {
                match &tok.t {
                    T::Open(_) => depth += 1,
                    T::Close(_) if depth == 0 => break,
                    T::Close(_) => depth -= 1,
                    T::Punct(',', _) if depth == 0 => {
                        segment_start = true;
                        continue;
                    }
                    T::Ident(name) if depth == 0 && segment_start => {
                        out.push((name.clone(), tok.line))
                    }
                    _ => {}
                }
                segment_start = false;
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Every reference from `file` to another top-level module: `crate::x`, `$crate::x`, `use
/// crate::{x, ..}`, or `super::` reaching the crate root; (module, line).
fn references(file: &File, tops: &BTreeSet<String>) -> Vec<(String, usize)> {
    let tokens = &file.tokens;
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        let heads = if tokens[i].is_ident("crate") && path_sep(tokens, i + 1) {
            path_heads(tokens, i + 3)
        } else if tokens[i].is_ident("super")
            && !(i >= 2 && path_sep(tokens, i - 2) && tokens[i - 3].is_ident("super"))
        {
            // The first `super` of a chain: how far up it goes.
            let mut up = 0;
            let mut j = i;
            while tokens.get(j).is_some_and(|t| t.is_ident("super")) && path_sep(tokens, j + 1) {
                up += 1;
                j += 3;
            }
            if up == 0 || up < file.module.len() { Vec::new() } else { path_heads(tokens, j) }
        } else {
            Vec::new()
        };
        out.extend(
            heads
                .into_iter()
                .filter(|(name, _)| tops.contains(name) && Some(name.as_str()) != file.top()),
        );
    }
    out
}

/// Edges between top-level modules: (from, to) -> where, the first place that makes each.
fn module_graph(files: &[File]) -> BTreeMap<(String, String), String> {
    let tops = top_modules();
    let mut edges = BTreeMap::new();
    for file in files {
        let Some(from) = file.top() else { continue };
        for (to, line) in references(file, &tops) {
            edges.entry((from.to_owned(), to)).or_insert_with(|| file.at(line));
        }
    }
    edges
}

/// A cycle through each strongly connected group of modules, as `a -> b (where) -> ... -> a`.
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // The modules each module reaches.
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(m) = todo.pop() {
            for n in next.get(m).into_iter().flatten() {
                if seen.insert(*n) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let mut reported: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for start in next.keys() {
        if reported.contains(start) || !reach(start).contains(start) {
            continue;
        }
        // The shortest way round from `start` (breadth first).
        let mut back: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([*start]);
        'search: while let Some(m) = queue.pop_front() {
            for n in next.get(m).into_iter().flatten() {
                if *n == *start {
                    back.insert(start, m);
                    break 'search;
                }
                if !back.contains_key(n) {
                    back.insert(n, m);
                    queue.push_back(n);
                }
            }
        }
        let mut way = vec![*start];
        let mut at = back[start];
        while at != *start {
            way.push(at);
            at = back[at];
        }
        way.push(start);
        way.reverse();
        let mut text = way[0].to_owned();
        for pair in way.windows(2) {
            let at = &edges[&(pair[0].to_owned(), pair[1].to_owned())];
            text.push_str(&format!(" -> {} ({at})", pair[1]));
        }
        // Every module of this group is named by this cycle's group.
        let group: BTreeSet<&str> =
            reach(start).into_iter().filter(|m| reach(m).contains(start)).collect();
        reported.extend(group);
        out.push(text);
    }
    out
}

fn fail_with(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let files = files();
    let found = cycles(&module_graph(&files));
    fail_with(
        "cycles between top-level modules of host/src (ARCHITECTURE.md: no module imports one \
         that imports it back)",
        found,
    );
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    // The checker itself: a cycle of three through `use crate::{..}` groups and a plain path.
    let parse = |rel: &str, text: &str| {
        let tokens = lex(text);
        let module = vec![rel.trim_end_matches(".rs").to_owned()];
        File { shown: rel.into(), rel: rel.into(), module, tokens: without_tests(tokens).unwrap() }
    };
    let files = [
        parse("ops.rs", "use crate::{console::{self, Console}, config};"),
        parse(
            "console.rs",
            "fn f() { crate::server::go(); }\n#[cfg(test)] mod t { use crate::ops; }",
        ),
        parse("server.rs", "// crate::nothing\nuse crate::ops::Ops;"),
    ];
    let found = cycles(&module_graph(&files));
    assert_eq!(
        found,
        vec!["console -> server (console.rs:1) -> ops (server.rs:2) -> console (ops.rs:1)"]
    );
}

#[test]
fn the_record_is_a_leaf() {
    let files = files();
    let tops = top_modules();
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| f.top() == Some("record")) {
        for (to, line) in references(file, &tops) {
            problems.push(format!("{}: imports crate::{to}", file.at(line)));
        }
    }
    fail_with("the event record imports nothing of the host (ARCHITECTURE.md)", problems);
}

#[test]
fn the_journal_imports_only_config_and_the_record() {
    let files = files();
    let tops = top_modules();
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| f.top() == Some("journal")) {
        for (to, line) in references(file, &tops) {
            if to != "config" && to != "record" {
                problems.push(format!("{}: imports crate::{to}", file.at(line)));
            }
        }
    }
    fail_with("the journal knows only its own data (ARCHITECTURE.md)", problems);
}

/// Each use of one of `idents` outside the files under `allowed`.
fn confined(files: &[File], idents: &[&str], allowed: &[&str], why: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| !allowed.iter().any(|a| f.under(a))) {
        for tok in &file.tokens {
            if let Some(name) = tok.ident()
                && idents.contains(&name)
            {
                problems.push(format!("{}: `{name}` {why}", file.at(tok.line)));
            }
        }
    }
    problems
}

#[test]
fn no_redb_type_leaves_the_embedded_backend_nor_an_async_nats_type_the_nats_one() {
    let files = files();
    let mut problems = confined(
        &files,
        &["redb"],
        &["journal/embedded"],
        "outside journal/embedded/ (no redb type leaves it)",
    );
    problems.extend(confined(
        &files,
        &["async_nats"],
        &["journal/nats"],
        "outside journal/nats/ (no async-nats type leaves it)",
    ));
    fail_with("readers borrow the database (ARCHITECTURE.md)", problems);
}

#[test]
fn only_the_loader_opens_libraries() {
    let files = files();
    let problems = confined(
        &files,
        &[
            "lib_header_from_path",
            "init_root_module",
            "load_from",
            "load_from_file",
            "load_from_directory",
            "RawLibrary",
            "libloading",
            "dlopen",
        ],
        &["loader.rs"],
        "outside loader.rs (only loader.rs opens libraries)",
    );
    fail_with("only loader.rs opens libraries (ARCHITECTURE.md)", problems);
}

/// The journal's faces and handles other than the operator's.
const NOT_THE_OPERATORS: &[&str] =
    &["Journal", "Log", "State", "Consumer", "Reporter", "Stopper", "Delivery", "Held"];

#[test]
fn the_operators_tools_reach_the_journal_only_through_its_operator_face() {
    let files = files();
    let operators = [
        "console",
        "control.rs",
        "ops.rs",
        "operations.rs",
        "cmd/journal.rs",
        "cmd/plugin_pause.rs",
        "cmd/plugin_resume.rs",
    ];
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| operators.iter().any(|o| f.under(o))) {
        let tokens = &file.tokens;
        for (i, tok) in tokens.iter().enumerate() {
            // `journal::X` or `journal::{.., X, ..}`, at any depth of the group.
            if !(tok.is_ident("journal") && path_sep(tokens, i + 1)) {
                continue;
            }
            let mut names = Vec::new();
            match tokens.get(i + 3).map(|t| &t.t) {
                Some(T::Ident(_)) => names.push(&tokens[i + 3]),
                Some(T::Open(Delimiter::Brace)) => {
                    let mut depth = 0usize;
                    for t in &tokens[i + 4..] {
                        match t.t {
                            T::Open(_) => depth += 1,
                            T::Close(_) if depth == 0 => break,
                            T::Close(_) => depth -= 1,
                            _ => names.push(t),
                        }
                    }
                }
                _ => {}
            }
            for t in names {
                if let Some(name) = t.ident()
                    && NOT_THE_OPERATORS.contains(&name)
                {
                    problems.push(format!("{}: journal::{name}", file.at(t.line)));
                }
            }
        }
        for tok in tokens.iter().filter(|t| t.is_ident("Journal")) {
            problems.push(format!("{}: Journal", file.at(tok.line)));
        }
    }
    fail_with(
        "the console, the control socket, the admin listener and the journal commands use only \
         journal::Operator (ARCHITECTURE.md: the console changes only through the seam)",
        problems,
    );
}

#[test]
fn plugins_never_get_a_refresh_token_nor_the_application_token() {
    let files = files();
    let mut problems = Vec::new();
    for file in &files {
        let tokens = &file.tokens;
        for (i, tok) in tokens.iter().enumerate() {
            // `UserAuth { .. }` is built only by call::convert, and there `refresh_token` is
            // always none.
            if tok.is_ident("UserAuth")
                && matches!(tokens.get(i + 1).map(|t| &t.t), Some(T::Open(Delimiter::Brace)))
                && file.rel != "call/convert.rs"
            {
                problems.push(format!(
                    "{}: a UserAuth built outside call/convert.rs",
                    file.at(tok.line)
                ));
            }
            if file.rel == "call/convert.rs"
                && tok.is_ident("refresh_token")
                && tokens.get(i + 1).is_some_and(|t| t.is_punct(':'))
                && !(tokens.get(i + 2).is_some_and(|t| t.is_ident("ROption"))
                    && tokens.get(i + 5).is_some_and(|t| t.is_ident("RNone")))
            {
                problems.push(format!("{}: refresh_token filled for a plugin", file.at(tok.line)));
            }
        }
    }
    // Ingress journals the body only after `decode::strip::without_secrets`.
    let ingress = files.iter().find(|f| f.rel == "ingress.rs").expect("host/src/ingress.rs");
    let stripped = ingress.tokens.iter().find(|t| t.is_ident("without_secrets")).map(|t| t.line);
    for (i, tok) in ingress.tokens.iter().enumerate() {
        if tok.is_ident("append")
            && i > 0
            && ingress.tokens[i - 1].is_punct('.')
            && stripped.is_none_or(|line| line > tok.line)
        {
            problems.push(format!(
                "{}: an append before decode::strip::without_secrets",
                ingress.at(tok.line)
            ));
        }
    }
    fail_with(
        "plugins never see a refresh token or the application token (ARCHITECTURE.md)",
        problems,
    );
}

#[test]
fn no_global_mutable_state_but_the_named_exceptions() {
    let files = files();
    let allowed = ["plugin_output.rs", "rest/context.rs", "runner/child.rs"];
    let mutable =
        ["Mutex", "RwLock", "Cell", "RefCell", "OnceLock", "OnceCell", "LazyLock", "Lazy"];
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| !allowed.contains(&f.rel.as_str())) {
        let tokens = &file.tokens;
        for (i, tok) in tokens.iter().enumerate() {
            if tok.is_ident("thread_local") && tokens.get(i + 1).is_some_and(|t| t.is_punct('!')) {
                problems.push(format!("{}: thread_local!", file.at(tok.line)));
            }
            // An item `static NAME: TYPE = ..` (not the lifetime `'static`).
            if !tok.is_ident("static") || (i > 0 && tokens[i - 1].is_punct('\'')) {
                continue;
            }
            let end = tokens[i..].iter().position(|t| t.is_punct('=') || t.is_punct(';'));
            let item = &tokens[i..i + end.unwrap_or(1)];
            let is_mut = tokens.get(i + 1).is_some_and(|t| t.is_ident("mut"));
            let interior = item
                .iter()
                .filter_map(Tok::ident)
                .find(|name| mutable.contains(name) || name.starts_with("Atomic"));
            if is_mut || interior.is_some() {
                problems.push(format!("{}: a mutable static", file.at(tok.line)));
            }
        }
    }
    fail_with(
        "no global mutable state in the host but plugin_output.rs, rest/context.rs and \
         runner/child.rs (ARCHITECTURE.md)",
        problems,
    );
}

#[test]
fn the_serving_host_never_prints_to_descriptors_1_and_2() {
    let files = files();
    // The commands print their answers (but `serve`, whose line goes to the kept duplicate);
    // the runner and the exec shim are processes of their own whose output the host reads
    // from pipes.
    let allowed = ["cmd", "main.rs", "runner/child.rs", "runner/shim.rs"];
    let mut problems = Vec::new();
    for file in
        files.iter().filter(|f| f.rel == "cmd/serve.rs" || !allowed.iter().any(|a| f.under(a)))
    {
        let tokens = &file.tokens;
        for (i, tok) in tokens.iter().enumerate() {
            let Some(name) = tok.ident() else { continue };
            let is_macro = ["println", "print", "eprintln", "eprint", "dbg"].contains(&name)
                && tokens.get(i + 1).is_some_and(|t| t.is_punct('!'));
            if is_macro {
                problems.push(format!("{}: {name}!", file.at(tok.line)));
            }
        }
    }
    fail_with(
        "the host never writes to descriptors 1 and 2 while serving (ARCHITECTURE.md); its log \
         goes through tracing",
        problems,
    );
}

#[test]
fn the_lexer_leaves_comments_strings_and_chars_out() {
    let text = "/* crate::a /* nested */ crate::b */ let s = \"crate::c {\"; let r = r#\"crate::d \"}\"#;\n\
                let c = '{'; let e = '\\''; let b = b'}'; fn f<'a>(x: &'a str) {} // crate::e\n\
                /// crate::f\n use crate::g::h;";
    let tokens = lex(text);
    let idents: Vec<&str> = tokens.iter().filter_map(Tok::ident).collect();
    assert_eq!(
        idents,
        [
            "let", "s", "let", "r", "let", "c", "let", "e", "let", "b", "fn", "f", "a", "x", "a",
            "str", "use", "crate", "g", "h"
        ]
    );
    let last = tokens.iter().rev().find(|t| t.is_ident("crate")).unwrap();
    assert_eq!(last.line, 4);
    let opens = tokens.iter().filter(|t| matches!(t.t, T::Open(_))).count();
    let closes = tokens.iter().filter(|t| matches!(t.t, T::Close(_))).count();
    assert_eq!((opens, closes), (2, 2));
}
