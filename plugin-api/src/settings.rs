//! Typed plugin settings: [`PluginContext::settings`] reads the `[plugin.<name>.settings]`
//! table into any `serde::Deserialize` type, refusing keys the type does not know.

use serde::de::DeserializeOwned;

use crate::{PluginContext, PluginError};

impl PluginContext {
    /// The plugin's settings (`[plugin.<name>.settings]` in host.toml) as a `T`. No table, or an
    /// empty one, gives `T::default()`; mark the struct `#[serde(default)]` to let a table set
    /// only some keys. A key `T` does not know, a value of the wrong type or a missing key is a
    /// [`ErrorKind::Reject`](crate::ErrorKind::Reject) error that names the plugin and the key,
    /// e.g. `audit-log settings: unknown key `pth``; return it from `create` with `?` and the
    /// plugin does not load, with that message in the host's log and in `b24-host check`.
    ///
    /// ```
    /// # use b24_plugin_api::{Host, PluginContext};
    /// #[derive(Default, serde::Deserialize)]
    /// #[serde(default)]
    /// struct Settings {
    ///     path: String,
    ///     limit: u32,
    /// }
    /// # fn f(ctx: PluginContext) -> Result<(), b24_plugin_api::PluginError> {
    /// let settings: Settings = ctx.settings()?;
    /// # Ok(()) }
    /// ```
    pub fn settings<T: DeserializeOwned + Default>(&self) -> Result<T, PluginError> {
        parse(&self.name, &self.settings)
    }
}

/// Parses settings text for plugin `name`.
pub(crate) fn parse<T: DeserializeOwned + Default>(
    name: &str,
    text: &str,
) -> Result<T, PluginError> {
    let fail = |message: String| PluginError::reject(format!("{name} settings: {message}"));
    let table: toml::Table = toml::from_str(text).map_err(|e| fail(e.message().to_owned()))?;
    if table.is_empty() {
        return Ok(T::default());
    }
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(toml::Value::Table(table), |path| {
        unknown.push(path.to_string());
    })
    .map_err(|e: toml::de::Error| fail(rewrite(e.message())))?;
    match unknown.as_slice() {
        [] => Ok(value),
        [key] => Err(fail(format!("unknown key `{key}`"))),
        keys => Err(fail(format!("unknown keys `{}`", keys.join("`, `")))),
    }
}

/// serde's wording in the host's terms: fields are keys.
fn rewrite(message: &str) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    message.to_owned()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::ErrorKind;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Settings {
        path: String,
        limit: u32,
        nested: Nested,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Nested {
        on: bool,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Required {
        dir: String,
    }

    impl Default for Required {
        fn default() -> Self {
            Required { dir: "here".into() }
        }
    }

    fn message<T: DeserializeOwned + Default + std::fmt::Debug>(text: &str) -> String {
        let err = parse::<T>("audit-log", text).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Reject);
        err.message.into_string()
    }

    #[test]
    fn an_empty_table_gives_the_default() {
        assert_eq!(parse::<Settings>("p", "").unwrap(), Settings::default());
        assert_eq!(parse::<Settings>("p", "# nothing\n").unwrap(), Settings::default());
        // Even for a type whose keys are required: no table means "all defaults".
        assert_eq!(parse::<Required>("p", "").unwrap(), Required::default());
    }

    #[test]
    fn values_are_read_and_missing_ones_default() {
        let s: Settings = parse("p", "limit = 3\n[nested]\non = true\n").unwrap();
        assert_eq!(s, Settings { path: String::new(), limit: 3, nested: Nested { on: true } });
    }

    #[test]
    fn unknown_keys_are_refused_with_the_plugin_and_the_key() {
        assert_eq!(message::<Settings>("pth = \"x\""), "audit-log settings: unknown key `pth`");
        assert_eq!(
            message::<Settings>("[nested]\noff = 1\n"),
            "audit-log settings: unknown key `nested.off`"
        );
        assert_eq!(
            message::<Settings>("a = 1\nb = 2\n"),
            "audit-log settings: unknown keys `a`, `b`"
        );
    }

    #[test]
    fn wrong_types_and_missing_keys_name_the_plugin() {
        let m = message::<Settings>("limit = \"ten\"");
        assert!(m.starts_with("audit-log settings: invalid type: string \"ten\""), "{m}");
        assert_eq!(message::<Required>("other = 1"), "audit-log settings: missing key `dir`");
        let m = message::<Settings>("limit = ");
        assert!(m.starts_with("audit-log settings: "), "{m}");
    }
}
