//! Finds plugin libraries in the plugins folder and loads them through abi_stable.
//!
//! This is the only module that knows how plugins are loaded. Each file is opened with
//! `lib_header_from_path` + `init_root_module`, never `RootModule::load_from*`: the latter keeps
//! one module per interface type, so a second plugin would silently come back as the first.
//! Libraries are never unloaded (abi_stable leaks them on purpose).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use abi_stable::{
    library::{LibraryError, RootModule, lib_header_from_path},
    sabi_types::VersionNumber,
    std_types::{RErr, ROk},
};
use b24_plugin_api::{ABI_VERSION, HostHandle, HostServicesArc, PluginBox, PluginModuleRef};

/// Why a plugin could not be loaded or created. Each message names the plugin, the file and what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plugins folder cannot be listed.
    #[error("cannot read the plugins folder {dir}: {source}")]
    Dir {
        /// The folder.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No library for an enabled plugin.
    #[error(
        "plugin `{name}`: no library in {dir} (expected {expected}); build it and copy it there, or remove it from plugins.enabled{}",
        crate::names::did_you_mean(suggestion.as_deref())
    )]
    Missing {
        /// The plugin.
        name: String,
        /// The plugins folder.
        dir: PathBuf,
        /// The file name we looked for.
        expected: String,
        /// The closest plugin name among the libraries that are there, if one is close.
        suggestion: Option<String>,
    },
    /// Two libraries claim the same plugin name.
    #[error("plugin `{name}`: several libraries claim this name: {}; keep only one", list(.files))]
    Ambiguous {
        /// The plugin.
        name: String,
        /// The competing files.
        files: Vec<PathBuf>,
    },
    /// The file is not a loadable shared library.
    #[error("plugin `{name}`: {} cannot be opened as a shared library: {detail}", .path.display())]
    Open {
        /// The plugin.
        name: String,
        /// The file.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// The library has no b24 plugin root module.
    #[error(
        "plugin `{name}`: {} is not a b24-host plugin (it exports no plugin root module); build it with `b24_plugin_api::export_plugin!`",
        .path.display()
    )]
    NotAPlugin {
        /// The plugin.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Built against another ABI line of b24-plugin-api.
    #[error(
        "plugin `{name}`: {} was built against b24-plugin-api {found}, this host speaks {expected}; rebuild the plugin against b24-plugin-api {expected}",
        .path.display()
    )]
    Incompatible {
        /// The plugin.
        name: String,
        /// The file.
        path: PathBuf,
        /// The ABI line the plugin was built against.
        found: String,
        /// The ABI line of this host.
        expected: String,
    },
    /// The types the plugin was built with differ from the host's.
    #[error(
        "plugin `{name}`: {} has a different plugin ABI than this host ({detail}); rebuild it against b24-plugin-api {expected}",
        .path.display()
    )]
    Abi {
        /// The plugin.
        name: String,
        /// The file.
        path: PathBuf,
        /// abi_stable's explanation (first lines).
        detail: String,
        /// The ABI line of this host.
        expected: String,
    },
    /// The library declares another plugin name than its file name says.
    #[error(
        "plugin `{name}`: {} declares itself as `{declared}`; rename the file to {expected_file} or enable `{declared}`",
        .path.display()
    )]
    NameMismatch {
        /// The name from the config.
        name: String,
        /// The file.
        path: PathBuf,
        /// The name the plugin declares.
        declared: String,
        /// The file name that would match the declared name.
        expected_file: String,
    },
    /// The plugin's `create` failed or panicked.
    #[error("plugin `{name}`: create failed: {message}")]
    Create {
        /// The plugin.
        name: String,
        /// The plugin's message.
        message: String,
    },
}

fn list(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// What the host knows of a plugin's library (from the loader, or from a runner's `Ready`).
#[derive(Debug, Clone)]
pub struct PluginMeta {
    /// The plugin's declared name.
    pub name: String,
    /// The library file it runs from.
    pub path: PathBuf,
    /// The plugin's own version.
    pub version: String,
    /// The event-code globs the plugin subscribes to.
    pub events: Vec<String>,
    /// Whether the plugin may be called from several threads at once.
    pub concurrent: bool,
    /// The exact b24-plugin-api version it was built against.
    pub api_version: String,
    /// How long opening and checking the library took.
    pub load_time: Duration,
}

/// A plugin library that passed every check and can create instances; its [`PluginMeta`]
/// through `Deref`.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// What the library says of itself.
    pub meta: PluginMeta,
    module: PluginModuleRef,
}

impl std::ops::Deref for LoadedPlugin {
    type Target = PluginMeta;

    fn deref(&self) -> &PluginMeta {
        &self.meta
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("meta", &self.meta).finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Creates a new instance with the plugin's settings (TOML text) and host services.
    pub fn create(&self, settings: &str, host: HostServicesArc) -> Result<PluginBox, LoadError> {
        let _output = crate::plugin_output::in_plugin(&self.name);
        match (self.module.create())(settings.into(), HostHandle::new(host)) {
            ROk(instance) => Ok(instance.into_plugin()),
            RErr(err) => {
                Err(LoadError::Create { name: self.name.clone(), message: err.to_string() })
            }
        }
    }
}

pub use crate::names::normalize;

/// The file name a plugin library has on this platform, e.g. `libaudit_log.so`.
pub fn library_file_name(name: &str) -> String {
    format!("{}{}{}", std::env::consts::DLL_PREFIX, normalize(name), std::env::consts::DLL_SUFFIX)
}

/// The plugin name a library file stands for, if it is a shared library:
/// `libaudit_log.so` and `audit-log.so` both give `audit_log`.
fn plugin_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.strip_suffix(std::env::consts::DLL_SUFFIX)?;
    let stem = stem.strip_prefix(std::env::consts::DLL_PREFIX).unwrap_or(stem);
    (!stem.is_empty()).then(|| normalize(stem))
}

/// Lists the shared libraries in `dir` by the (normalised) plugin name they stand for.
pub fn discover(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>, LoadError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| LoadError::Dir { dir: dir.to_owned(), source })?;
    let mut found: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Dir { dir: dir.to_owned(), source })?;
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        if let Some(name) = plugin_name_of(&path) {
            found.entry(name).or_default().push(path);
        }
    }
    for files in found.values_mut() {
        files.sort();
    }
    Ok(found)
}

/// Finds the one library of the enabled plugin `name` in `dir`: the single place that decides
/// between none (with the closest name that is there), one, and several claiming the name.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf, LoadError> {
    locate_in(dir, &discover(dir)?, name)
}

/// [`locate`] among libraries already listed by [`discover`].
pub fn locate_in(
    dir: &Path,
    discovered: &BTreeMap<String, Vec<PathBuf>>,
    name: &str,
) -> Result<PathBuf, LoadError> {
    match discovered.get(&normalize(name)).map(Vec::as_slice) {
        None | Some([]) => Err(LoadError::Missing {
            name: name.to_owned(),
            dir: dir.to_owned(),
            expected: library_file_name(name),
            suggestion: suggest_library(name, discovered),
        }),
        Some([one]) => Ok(one.clone()),
        Some(many) => Err(LoadError::Ambiguous { name: name.to_owned(), files: many.to_vec() }),
    }
}

/// The name of the library in `discovered` closest to the missing `name`, written with `-` if
/// `name` is (`discover` lists names with `_`).
fn suggest_library(name: &str, discovered: &BTreeMap<String, Vec<PathBuf>>) -> Option<String> {
    let found = crate::names::closest(name, discovered.keys().map(String::as_str))?;
    Some(if name.contains('-') { found.replace('_', "-") } else { found.to_owned() })
}

/// Loads one library file as plugin `name`, checking the ABI line, the type layouts and the
/// declared name.
pub fn load_file(name: &str, path: &Path) -> Result<LoadedPlugin, LoadError> {
    let started = Instant::now();
    let header = lib_header_from_path(path).map_err(|err| match err {
        LibraryError::GetSymbolError { .. } => {
            LoadError::NotAPlugin { name: name.to_owned(), path: path.to_owned() }
        }
        other => LoadError::Open {
            name: name.to_owned(),
            path: path.to_owned(),
            detail: first_lines(&other.to_string()),
        },
    })?;

    let incompatible = |found: String| LoadError::Incompatible {
        name: name.to_owned(),
        path: path.to_owned(),
        found,
        expected: abi_line(ABI_VERSION),
    };
    let found = header.version_strings().version.as_str().to_owned();
    let expected: VersionNumber =
        VersionNumber::new(b24_plugin_api::PluginModuleRef::VERSION_STRINGS)
            .map_err(|_| incompatible(found.clone()))?;
    match VersionNumber::new(header.version_strings()) {
        Ok(v) if v.major == expected.major && v.minor == expected.minor => {}
        _ => return Err(incompatible(abi_line(&found))),
    }

    let module = header.init_root_module::<PluginModuleRef>().map_err(|err| match err {
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
            incompatible(abi_line(&actual_version.to_string()))
        }
        other => LoadError::Abi {
            name: name.to_owned(),
            path: path.to_owned(),
            detail: first_lines(&other.to_string()),
            expected: abi_line(ABI_VERSION),
        },
    })?;

    let info = (module.info())();
    let declared = info.name.as_str().to_owned();
    if normalize(&declared) != normalize(name) {
        return Err(LoadError::NameMismatch {
            name: name.to_owned(),
            path: path.to_owned(),
            expected_file: library_file_name(&declared),
            declared,
        });
    }
    Ok(LoadedPlugin {
        meta: PluginMeta {
            name: declared,
            path: path.to_owned(),
            version: info.version.into_string(),
            events: info.events.into_iter().map(|e| e.into_string()).collect(),
            concurrent: info.concurrent,
            api_version: info.api_version.into_string(),
            load_time: started.elapsed(),
        },
        module,
    })
}

/// `0.1.0` -> `0.1`: the line a version belongs to, as users name it.
fn abi_line(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => version.to_owned(),
    }
}

/// abi_stable's layout errors run to pages; the first few lines say what differs.
fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(6).collect();
    lines.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_map_to_plugin_names() {
        assert_eq!(plugin_name_of(Path::new("/p/libaudit_log.so")).as_deref(), Some("audit_log"));
        assert_eq!(plugin_name_of(Path::new("/p/audit-log.so")).as_deref(), Some("audit_log"));
        assert_eq!(plugin_name_of(Path::new("/p/audit-log.txt")), None);
        assert_eq!(plugin_name_of(Path::new("/p/lib.so")), None);
        assert_eq!(library_file_name("audit-log"), "libaudit_log.so");
    }

    #[test]
    fn two_files_for_one_plugin_are_refused_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libwatch.so"), b"").unwrap();
        std::fs::write(dir.path().join("watch.so"), b"").unwrap();
        std::fs::write(dir.path().join("README.txt"), b"").unwrap();
        let found = discover(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        let err = locate(dir.path(), "watch").unwrap_err();
        assert!(matches!(err, LoadError::Ambiguous { ref files, .. } if files.len() == 2), "{err}");
        assert!(err.to_string().contains("keep only one"));
        let err = locate_in(dir.path(), &found, "other").unwrap_err();
        assert!(err.to_string().contains("libother.so"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_library_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libjunk.so");
        std::fs::write(&path, b"not an ELF file").unwrap();
        let err = load_file("junk", &path).unwrap_err();
        assert!(matches!(err, LoadError::Open { .. }), "{err}");
    }

    #[test]
    fn abi_lines_are_major_and_minor() {
        assert_eq!(abi_line("0.1.0"), "0.1");
        assert_eq!(abi_line("junk"), "junk");
    }
}
