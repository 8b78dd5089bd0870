//! `b24-host plugin new NAME [--lang L] [--dir D]`: writes a plugin that works and has its own
//! test, and prints the host.toml lines that enable it.
//!
//! A language is one folder of templates, `host/templates/<lang>/`, embedded here with
//! `include_str!` in a [`Template`]: the files to write (`*.tmpl`, placeholders `{{name}}`), the
//! host.toml lines and the next steps to print. Adding a language is a folder and a
//! [`Template`] entry in [`template`]. Rust writes a crate against b24-plugin-api; PHP, Python
//! and Node write an exec plugin (a program speaking JSON lines with the host) with a test run
//! by the interpreter alone; the exec languages share their host.toml lines
//! (`host/templates/exec/`), whose `command` names the handler by its absolute path.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, bail};

use crate::cli::{NewPluginArgs, PluginLang};

/// One language's templates.
pub struct Template {
    /// An exec plugin's command: the interpreter, then files of the plugin's folder (written
    /// into host.toml with the folder's absolute path); empty for Rust.
    pub command: &'static [&'static str],
    /// The files to write: path in the plugin's folder, template text.
    pub files: &'static [(&'static str, &'static str)],
    /// The lines to add to host.toml.
    pub host_toml: &'static str,
    /// How to build, test and install it.
    pub next: &'static str,
}

/// A Rust `cdylib` crate depending on b24-plugin-api, with a unit test using its test kit.
pub const RUST: Template = Template {
    command: &[],
    files: &[
        ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml.tmpl")),
        ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs.tmpl")),
        ("README.md", include_str!("../../templates/rust/README.md.tmpl")),
        (".gitignore", include_str!("../../templates/rust/gitignore.tmpl")),
    ],
    host_toml: include_str!("../../templates/rust/enable.toml.tmpl"),
    next: include_str!("../../templates/rust/next.txt.tmpl"),
};

/// The host.toml lines of every exec language.
const EXEC_HOST_TOML: &str = include_str!("../../templates/exec/enable.toml.tmpl");

/// A PHP exec plugin (`php handler.php`), tested by `php test.php`.
pub const PHP: Template = Template {
    command: &["php", "handler.php"],
    files: &[
        ("handler.php", include_str!("../../templates/php/handler.php.tmpl")),
        ("test.php", include_str!("../../templates/php/test.php.tmpl")),
        ("README.md", include_str!("../../templates/php/README.md.tmpl")),
    ],
    host_toml: EXEC_HOST_TOML,
    next: include_str!("../../templates/php/next.txt.tmpl"),
};

/// A Python exec plugin (`python3 handler.py`, standard library only), tested by
/// `python3 -m unittest`.
pub const PYTHON: Template = Template {
    command: &["python3", "handler.py"],
    files: &[
        ("handler.py", include_str!("../../templates/python/handler.py.tmpl")),
        ("test_handler.py", include_str!("../../templates/python/test_handler.py.tmpl")),
        ("README.md", include_str!("../../templates/python/README.md.tmpl")),
        (".gitignore", include_str!("../../templates/python/gitignore.tmpl")),
    ],
    host_toml: EXEC_HOST_TOML,
    next: include_str!("../../templates/python/next.txt.tmpl"),
};

/// A Node.js exec plugin (`node handler.js`, no npm packages), tested by `node --test`.
pub const NODE: Template = Template {
    command: &["node", "handler.js"],
    files: &[
        ("handler.js", include_str!("../../templates/node/handler.js.tmpl")),
        ("handler.test.js", include_str!("../../templates/node/handler.test.js.tmpl")),
        ("README.md", include_str!("../../templates/node/README.md.tmpl")),
    ],
    host_toml: EXEC_HOST_TOML,
    next: include_str!("../../templates/node/next.txt.tmpl"),
};

/// The templates of `lang`.
pub fn template(lang: PluginLang) -> &'static Template {
    match lang {
        PluginLang::Rust => &RUST,
        PluginLang::Php => &PHP,
        PluginLang::Python => &PYTHON,
        PluginLang::Node => &NODE,
    }
}

/// An exec plugin's `command` as a TOML array: the interpreter, then its files in `dir` by
/// their absolute paths (so host.toml may be anywhere).
fn command_toml(command: &[&str], dir: &Path) -> anyhow::Result<String> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} an absolute path", dir.display()))?;
    let argv = command.iter().enumerate().map(|(i, arg)| {
        let arg = if i == 0 { (*arg).to_owned() } else { dir.join(arg).display().to_string() };
        toml::Value::String(arg).to_string()
    });
    Ok(format!("[{}]", argv.collect::<Vec<_>>().join(", ")))
}

/// Where the generated crate takes b24-plugin-api from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSource {
    /// A folder holding the crate (`plugin-api` of a b24-host checkout).
    Path(PathBuf),
    /// A git repository of b24-host, at a commit, tag or branch (cargo's default branch when
    /// none).
    Git {
        /// The repository's URL.
        url: String,
        /// `rev = ..`, `tag = ..` or `branch = ..`.
        reference: Option<(&'static str, String)>,
    },
}

impl ApiSource {
    /// The source as the keys of a TOML inline table: `path = "..."`, `git = "...", tag = ".."`.
    fn toml_keys(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        match self {
            ApiSource::Path(path) => format!("path = {}", quote(&path.to_string_lossy())),
            ApiSource::Git { url, reference: None } => format!("git = {}", quote(url)),
            ApiSource::Git { url, reference: Some((key, value)) } => {
                format!("git = {}, {key} = {}", quote(url), quote(value))
            }
        }
    }

    /// Where it comes from, in words.
    fn origin(&self) -> String {
        match self {
            ApiSource::Path(path) => format!("the folder {}", path.display()),
            ApiSource::Git { url, reference: None } => format!("{url}, its default branch"),
            ApiSource::Git { url, reference: Some((key, value)) } => {
                format!("{url}, {key} {value}")
            }
        }
    }
}

/// The `plugin-api` folder of the checkout this binary was built from, when it is still there
/// (not yet checked to be this host's API: [`api_folder`] does that).
pub fn built_from_checkout() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.join("plugin-api");
    dir.join("Cargo.toml").is_file().then_some(dir)
}

/// The ABI line plugins must be built against, `0.2` (from `b24_plugin_api::ABI_VERSION`).
fn abi_line() -> &'static str {
    let version = b24_plugin_api::ABI_VERSION;
    version.strip_suffix(".0").unwrap_or(version)
}

/// `dir` (a b24-host checkout, or its `plugin-api` folder) as the absolute path of a
/// b24-plugin-api of this host's ABI line.
pub fn api_folder(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = if dir.join("plugin-api").join("Cargo.toml").is_file() {
        dir.join("plugin-api")
    } else {
        dir.to_owned()
    };
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "{}: no Cargo.toml there (give the plugin-api folder of a b24-host checkout, or \
             the checkout)",
            dir.display()
        )
    })?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let package = table.get("package").and_then(toml::Value::as_table);
    let name = package.and_then(|p| p.get("name")).and_then(toml::Value::as_str);
    if name != Some("b24-plugin-api") {
        bail!(
            "{}: that is not b24-plugin-api (its Cargo.toml names {}); give the plugin-api \
             folder of a b24-host checkout",
            dir.display(),
            name.map_or("no package".to_owned(), |n| format!("`{n}`"))
        );
    }
    // A version inherited from a workspace is left to cargo, which checks the requirement.
    if let Some(version) = package.and_then(|p| p.get("version")).and_then(toml::Value::as_str) {
        let line = abi_line();
        let same_line = version.strip_prefix(line).is_some_and(|rest| rest.starts_with('.'));
        if !same_line {
            bail!(
                "{}: that is b24-plugin-api {version}, and this host loads plugins built \
                 against {line}.x; use the checkout of this host's release",
                dir.display()
            );
        }
    }
    std::fs::canonicalize(&dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

/// The API source the options ask for; without `--api-path` or `--api-git`, the checkout this
/// binary was built from (`built`, when it is still there).
pub fn api_source(args: &NewPluginArgs, built: Option<PathBuf>) -> anyhow::Result<ApiSource> {
    if let Some(url) = &args.api_git {
        if url.trim().is_empty() {
            bail!("--api-git: give the URL of a b24-host git repository");
        }
        let reference = match (&args.api_rev, &args.api_tag, &args.api_branch) {
            (Some(rev), ..) => Some(("rev", rev.clone())),
            (_, Some(tag), _) => Some(("tag", tag.clone())),
            (.., Some(branch)) => Some(("branch", branch.clone())),
            _ => None,
        };
        return Ok(ApiSource::Git { url: url.clone(), reference });
    }
    match (&args.api_path, built) {
        (Some(path), _) => Ok(ApiSource::Path(api_folder(path).context("--api-path")?)),
        (None, Some(path)) => Ok(ApiSource::Path(api_folder(&path).context(
            "the b24-plugin-api of the checkout this b24-host was built from (give --api-path \
             or --api-git to take another)",
        )?)),
        (None, None) => bail!(
            "where is b24-plugin-api? This b24-host was not built from a checkout that is still \
             here (installed from a package?): give --api-path <b24-host checkout>/plugin-api, \
             or --api-git <URL of the b24-host repository> --api-tag <the release of this host>"
        ),
    }
}

/// Whether `name` can name a plugin of `lang` (and a Rust plugin's crate); the reason when not.
pub fn check_name(name: &str, lang: PluginLang) -> Result<(), String> {
    let rule = "lower-case ASCII letters, digits, '-' and '_', starting with a letter, at most 64; \
                it names the [plugin.NAME] table (and a Rust plugin's crate and library)";
    let fine = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !fine {
        return Err(format!("{name:?} is not a plugin name: {rule}"));
    }
    if lang != PluginLang::Rust {
        return Ok(());
    }
    let ident = name.replace('-', "_");
    if KEYWORDS.contains(&ident.as_str()) {
        return Err(format!("{name:?} is a Rust keyword; choose another name"));
    }
    if TAKEN.contains(&ident.as_str()) {
        return Err(format!(
            "{name:?} is the name of a crate the plugin uses; choose another name"
        ));
    }
    Ok(())
}

/// Rust's keywords, reserved words included (as crate names they fail to build).
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Crate names a plugin crate cannot take: the standard library's and its own dependencies'.
const TAKEN: &[&str] = &["std", "core", "alloc", "proc_macro", "test", "b24_plugin_api", "serde"];

/// Names in scope in the Rust template (its prelude, std's, its own types): the plugin's type
/// gets `Plugin` appended rather than shadow one.
const IN_SCOPE: &[&str] = &[
    "Action",
    "Create",
    "Delivery",
    "Entity",
    "ErrorKind",
    "Event",
    "Host",
    "KeyValue",
    "LogLevel",
    "Origin",
    "Outcome",
    "Plugin",
    "PluginContext",
    "PluginError",
    "Portal",
    "RestError",
    "Secret",
    "UserAuth",
    "UserFieldEvent",
    "Settings",
    "Deserialize",
    "FakeHost",
    "Box",
    "Vec",
    "String",
    "Option",
    "Result",
    "Some",
    "None",
    "Ok",
    "Err",
    "Default",
    "Debug",
    "Clone",
    "Copy",
    "Send",
    "Sync",
    "Sized",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Iterator",
    "IntoIterator",
    "Extend",
    "ToString",
    "ToOwned",
    "Into",
    "From",
    "TryFrom",
    "TryInto",
    "AsRef",
    "AsMut",
    "Eq",
    "PartialEq",
    "Ord",
    "PartialOrd",
    "Hash",
    "Unpin",
    "FromIterator",
];

/// The plugin's Rust type: `deal-watch` is `DealWatch`.
pub fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .flat_map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars)
        })
        .collect();
    if IN_SCOPE.contains(&camel.as_str()) { format!("{camel}Plugin") } else { camel }
}

/// `template` with each `{{key}}` of `vars` replaced; a placeholder left over is an error (a
/// template naming a value this command does not give).
pub fn render(template: &str, vars: &[(&str, String)]) -> anyhow::Result<String> {
    let mut text = template.to_owned();
    for (key, value) in vars {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(left) = placeholders(&text).next() {
        bail!("template placeholder {{{{{left}}}}} has no value");
    }
    Ok(text)
}

/// The `{{key}}` placeholders in `text` (a key is ASCII letters and `_`; Rust's `{{"` is none).
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices("{{").filter_map(|(at, _)| {
        let rest = &text[at + 2..];
        let end = rest.find("}}")?;
        let key = &rest[..end];
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_'))
            .then_some(key)
    })
}

/// What `plugin new` wrote and what to print.
#[derive(Debug)]
pub struct Written {
    /// The files, relative to the folder.
    pub files: Vec<&'static str>,
    /// The host.toml lines.
    pub host_toml: String,
    /// The build steps.
    pub next: String,
}

/// The values the templates may use: the API's only with `api` (Rust's templates need them),
/// the `command` only for an exec language.
fn vars(
    template: &Template,
    name: &str,
    dir: &Path,
    api: Option<&ApiSource>,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut vars = vec![("name", name.to_owned()), ("dir", dir.display().to_string())];
    if !template.command.is_empty() {
        vars.push(("command", command_toml(template.command, dir)?));
    }
    if let Some(api) = api {
        let api_comment = match api {
            ApiSource::Path(_) => "From a b24-host checkout; or from its git repository:\n\
                                   # { git = \"https://...\", tag = \"...\" } (`b24-host plugin new --api-git`)."
                .to_owned(),
            ApiSource::Git { .. } => "From b24-host's git repository; or from a checkout:\n\
                                      # { path = \"/path/to/b24-host/plugin-api\" }."
                .to_owned(),
        };
        vars.extend([
            ("Type", type_name(name)),
            ("library", crate::loader::library_file_name(name)),
            ("api_source", api.toml_keys()),
            ("api_origin", api.origin()),
            ("api_comment", api_comment),
            ("api_line", abi_line().to_owned()),
        ]);
    }
    let host_toml = render(template.host_toml, &vars)?;
    vars.push(("host_toml", host_toml));
    Ok(vars)
}

/// Refuses a `dir` that exists and is not an empty folder.
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty; give another --dir, or remove it first",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => {
            bail!("{} exists and is not a folder; give another --dir", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Writes plugin `name` in `lang` into `dir`; a Rust plugin takes b24-plugin-api from `api`.
pub fn write(
    name: &str,
    lang: PluginLang,
    dir: &Path,
    api: Option<&ApiSource>,
) -> anyhow::Result<Written> {
    check_name(name, lang).map_err(anyhow::Error::msg)?;
    let template = template(lang);
    if lang == PluginLang::Rust && api.is_none() {
        bail!("a Rust plugin needs b24-plugin-api's source");
    }
    check_dir(dir)?;
    let vars = vars(template, name, dir, api)?;
    // Render everything first, so a template error writes nothing.
    let files = template
        .files
        .iter()
        .map(|(path, text)| Ok((*path, render(text, &vars)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let written = Written {
        files: files.iter().map(|(path, _)| *path).collect(),
        host_toml: render(template.host_toml, &vars)?,
        next: render(template.next, &vars)?,
    };
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(written)
}

/// The command.
pub fn run(args: &NewPluginArgs) -> anyhow::Result<ExitCode> {
    let context = |e: anyhow::Error| e.context("plugin new");
    check_name(&args.name, args.lang).map_err(|e| context(anyhow::Error::msg(e)))?;
    let api = match args.lang {
        PluginLang::Rust => Some(api_source(args, built_from_checkout()).map_err(context)?),
        _ if args.api_path.is_some() || args.api_git.is_some() => {
            return Err(context(anyhow::anyhow!(
                "--api-path and --api-git are for --lang rust: a {} plugin uses no library",
                args.lang.title()
            )));
        }
        _ => None,
    };
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    let written = write(&args.name, args.lang, &dir, api.as_ref()).map_err(context)?;
    println!(
        "wrote the {} plugin {} in {} ({})",
        args.lang.title(),
        args.name,
        dir.display(),
        written.files.join(", ")
    );
    if let Some(api) = &api {
        let built = args.api_path.is_none() && args.api_git.is_none();
        let note = if built { " (the checkout this b24-host was built from)" } else { "" };
        println!("b24-plugin-api: {}{note}", api.toml_keys());
    }
    println!();
    print!("{}", written.next);
    println!();
    println!("Add to host.toml:");
    println!();
    print!("{}", written.host_toml);
    println!();
    println!("Then `b24-host check` lists it, and `b24-host reload` (or a restart) starts it.");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
