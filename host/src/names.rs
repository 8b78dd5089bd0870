//! "Did you mean": plugin names in host.toml that match nothing, and the closest real name.
//!
//! A `[plugin.<name>]` table whose name is neither enabled nor the name of a library in the
//! plugins folder is never read, so a typo would silently lose its settings; `check` and `serve`
//! (and every reload) warn about it, naming the table's line. An enabled name with no library
//! gets the closest library's name in its [`LoadError::Missing`](crate::loader::LoadError).

use std::{collections::BTreeMap, path::PathBuf};

use crate::config::Config;

/// The normalised form of a plugin name: `audit-log`, `audit_log` and `Audit-Log` are one name.
pub fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// The candidate closest to `name`, if it is close enough to be a likely typo: at most one edit
/// per three characters (at least one), comparing case-insensitively with `-` and `_` alike.
/// `name` itself (exactly) is never suggested.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wanted = normalize(name);
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            let other = normalize(c);
            let limit = (wanted.chars().count().max(other.chars().count()) / 3).max(1);
            (strsim::damerau_levenshtein(&wanted, &other), limit, c)
        })
        .filter(|(distance, limit, _)| distance <= limit)
        .min_by_key(|(distance, _, _)| *distance)
        .map(|(_, _, c)| c)
}

/// `; did you mean `x`?`, or nothing.
pub fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
}

/// One warning per `[plugin.<name>]` table that names neither an enabled plugin nor a library
/// in the plugins folder (`libraries`, by normalised name, as `loader::discover` lists them):
/// `host.toml:12:9: [plugin.audti-log] ...; did you mean `audit-log`?`.
pub fn unused_plugin_tables(
    config: &Config,
    libraries: &BTreeMap<String, Vec<PathBuf>>,
) -> Vec<String> {
    let enabled = &config.plugins.enabled;
    let file =
        config.source.as_ref().map_or_else(|| "host.toml".into(), |f| f.display().to_string());
    config
        .plugin
        .keys()
        .filter(|name| !enabled.contains(name))
        .filter(|name| !libraries.contains_key(&normalize(name)))
        .map(|name| {
            let at = match config.plugin_positions.get(name) {
                Some(position) => format!("{file}:{position}"),
                None => file.clone(),
            };
            let suggestion = closest(name, enabled.iter().map(String::as_str));
            format!(
                "{at}: [plugin.{name}] matches no enabled plugin and no library in {}, so it is ignored{}",
                config.plugins.dir.display(),
                did_you_mean(suggestion)
            )
        })
        .collect()
}

/// Logs [`unused_plugin_tables`] as warnings (for `serve` and reloads).
pub fn warn_unused_plugin_tables(config: &Config, libraries: &BTreeMap<String, Vec<PathBuf>>) {
    for warning in unused_plugin_tables(config, libraries) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn suggests_the_closest_name_within_reach() {
        let enabled = ["audit-log", "field-registry", "probe"];
        assert_eq!(closest("audti-log", enabled), Some("audit-log"));
        assert_eq!(closest("audit_log", enabled), Some("audit-log"));
        assert_eq!(closest("Audit-Log", enabled), Some("audit-log"));
        assert_eq!(closest("field-registery", enabled), Some("field-registry"));
        assert_eq!(closest("prbe", enabled), Some("probe"));
        assert_eq!(closest("metrics", enabled), None);
        assert_eq!(closest("audit-log", enabled), None, "a name is not its own suggestion");
        assert_eq!(closest("x", ["ab"]), None);
        assert_eq!(closest("anything", []), None);
    }

    #[test]
    fn warns_about_tables_that_match_nothing_with_their_line() {
        let text = "[plugins]\nenabled = [\"audit-log\"]\n\n[plugin.audti-log]\ntimeout_ms = 5\n\n\
                    [plugin.field-registry]\n[plugin.audit-log]\n[plugin.unrelated]\n";
        let config = Config::parse(text, Path::new("/etc/b24/host.toml")).unwrap();
        let mut libraries = BTreeMap::new();
        libraries.insert("field_registry".to_owned(), vec![PathBuf::from("x.so")]);
        let warnings = unused_plugin_tables(&config, &libraries);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "/etc/b24/host.toml:4:9: [plugin.audti-log] matches no enabled plugin and no library \
             in /etc/b24/plugins, so it is ignored; did you mean `audit-log`?"
        );
        assert!(warnings[1].starts_with("/etc/b24/host.toml:9:9: [plugin.unrelated] "));
        assert!(warnings[1].ends_with("so it is ignored"), "{}", warnings[1]);
    }
}
