//! Helpers shared by the integration tests: fixture paths, and PHP (the reference decoder and
//! encoder) located and driven from the tests.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// `tests/fixtures` of this crate.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// Every file in `dir` with the given extension, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// The file name without its extension.
pub fn stem(path: &Path) -> String {
    path.file_stem().expect("file name").to_string_lossy().into_owned()
}

const INSTALL_PHP: &str = "php-cli is required by this test (PHP's own parse_str and \
    http_build_query are the reference): install it, e.g. `apt-get install php-cli`; the \
    project's test script installs it";

/// Fails the test unless `php` runs.
pub fn require_php() {
    match Command::new("php").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`php --version` failed ({}): {INSTALL_PHP}", out.status),
        Err(e) => panic!("cannot run `php` ({e}): {INSTALL_PHP}"),
    }
}

/// Where `b24-event` is: `$B24_SHARED/tools/b24-event`, else `shared/tools/b24-event` in the
/// nearest ancestor of this crate that has one (the workspace's sibling `../shared`, whether this
/// crate sits at `<root>/host` or elsewhere below the parent of `shared`).
pub fn b24_event_tool() -> PathBuf {
    let mut tried = Vec::new();
    if let Some(shared) = std::env::var_os("B24_SHARED") {
        let tool = PathBuf::from(shared).join("tools").join("b24-event");
        if tool.is_file() {
            return tool;
        }
        tried.push(tool);
    }
    for dir in Path::new(env!("CARGO_MANIFEST_DIR")).ancestors() {
        let tool = dir.join("shared").join("tools").join("b24-event");
        if tool.is_file() {
            return tool;
        }
        tried.push(tool);
    }
    panic!("b24-event not found; set B24_SHARED to the shared/ directory (tried {tried:?})");
}

/// Runs `php b24-event args..` with `stdin` as input and returns its standard output.
pub fn run_tool(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    require_php();
    let mut child = Command::new("php")
        .args(["-d", "display_errors=stderr", "-d", "log_errors=0"])
        .arg(b24_event_tool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning php");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().expect("running b24-event");
    writer.join().expect("writer thread").expect("writing to b24-event");
    assert!(out.status.success(), "b24-event {args:?} failed: {}", out.status);
    out.stdout
}

/// One long-lived PHP process answering one request per line: `D <hex body>` is
/// `json_encode(parse_str(body))` with the flags of `b24-event --decode` (plus
/// `JSON_INVALID_UTF8_SUBSTITUTE`, so bodies with invalid UTF-8 still compare); `E <hex JSON>`
/// is `http_build_query(json_decode(json, true))`.
struct PhpWorker {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const WORKER: &str = r#"
while (($line = fgets(STDIN)) !== false) {
    $line = rtrim($line, "\r\n");
    $arg = (string) hex2bin(substr($line, 2));
    if ($line[0] === 'D') {
        $out = [];
        parse_str($arg, $out);
        echo json_encode($out, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
    } else {
        echo http_build_query(json_decode($arg, true)), "\n";
    }
    flush();
}
"#;

fn worker() -> &'static Mutex<PhpWorker> {
    static WORKER_PROCESS: OnceLock<Mutex<PhpWorker>> = OnceLock::new();
    WORKER_PROCESS.get_or_init(|| {
        require_php();
        let mut child = Command::new("php")
            .args(["-d", "display_errors=stderr", "-d", "log_errors=0", "-r", WORKER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning php");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Mutex::new(PhpWorker { _child: child, stdin, stdout })
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ask(command: char, arg: &[u8]) -> String {
    let mut php = worker().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    writeln!(php.stdin, "{command} {}", hex(arg)).expect("writing to php");
    php.stdin.flush().expect("flushing to php");
    let mut line = String::new();
    php.stdout.read_line(&mut line).expect("reading from php");
    assert!(line.ends_with('\n'), "php exited early (answer {line:?})");
    line.pop();
    line
}

/// PHP's `parse_str` of `body`, as `json_encode` text.
pub fn php_parse_str(body: &[u8]) -> String {
    ask('D', body)
}

/// PHP's `http_build_query(json_decode($json, true))`.
pub fn php_http_build_query(json: &str) -> String {
    ask('E', json.as_bytes())
}

/// Random trees for property tests.
pub mod trees {
    use b24_host::decode::{Key, Map, Value};
    use proptest::prelude::*;

    fn build(entries: Vec<(Key, Value)>) -> Map {
        let mut map = Map::new();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }

    /// Leaf strings: anything, weighted towards the characters the encoding cares about.
    pub fn leaf_string() -> BoxedStrategy<String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(
                prop::sample::select(vec![
                    "a", "Z", "0", "7", " ", "+", "%", "%41", "&", "=", "[", "]", "[]", ".", "_",
                    "-", "~", "\0", "\n", "é", "Я", "😀", "\u{2028}", "\"", "\\", "/",
                ]),
                0..8,
            )
            .prop_map(|parts| parts.concat()),
        ]
        .boxed()
    }

    /// Maps that survive `http_build_query` + `parse_str` unchanged: top-level names without
    /// spaces, dots, `[` or NUL; nested names non-empty, without `]` or NUL, and not a single
    /// whitespace byte (PHP reads `[ ]` as `[]`); no empty maps.
    pub fn php_stable_map() -> BoxedStrategy<Map> {
        let top_key =
            prop_oneof![any::<i64>().prop_map(Key::Int), "[^ .\\[\\x00]{1,8}".prop_map(Key::from),];
        let nested_key = prop_oneof![
            (-3i64..20).prop_map(Key::Int),
            any::<i64>().prop_map(Key::Int),
            "[^\\]\\x00]{1,8}".prop_map(Key::from),
            "[a-z\\[ .]{1,4}".prop_map(Key::from),
        ]
        .prop_filter("PHP reads `[ ]` as `[]`", |key| {
            !matches!(key, Key::Str(s) if matches!(s.as_bytes(), [b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r']))
        });
        let value = leaf_string().prop_map(Value::Str).prop_recursive(4, 48, 5, move |inner| {
            proptest::collection::vec((nested_key.clone(), inner), 1..5)
                .prop_map(|entries| Value::Map(build(entries)))
        });
        proptest::collection::vec((top_key, value), 0..7).prop_map(build).boxed()
    }

    /// Any maps, with any keys (for comparing the encoder with PHP's).
    pub fn any_map() -> BoxedStrategy<Map> {
        let key = prop_oneof![any::<i64>().prop_map(Key::Int), leaf_string().prop_map(Key::from)];
        let value = leaf_string().prop_map(Value::Str).prop_recursive(3, 32, 4, move |inner| {
            proptest::collection::vec((key.clone(), inner), 0..4)
                .prop_map(|entries| Value::Map(build(entries)))
        });
        let top_key =
            prop_oneof![any::<i64>().prop_map(Key::Int), leaf_string().prop_map(Key::from)];
        proptest::collection::vec((top_key, value), 0..6).prop_map(build).boxed()
    }
}
