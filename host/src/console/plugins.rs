//! The plugins page: name, version, kind (an exec plugin's command and its environment's
//! names, an http plugin's URL without credentials), subscriptions, isolation, library SHA-256,
//! the settings with secrets redacted, the state (`paused`, with why and since when, above the
//! loaded state) with a Pause or Resume button; and the reload button with the reload report.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::when;
use crate::{
    journal::{Pause, now_ms},
    supervisor::PluginView,
};

/// What a redacted value shows.
const REDACTED: &str = "<redacted>";

/// Whether a settings key names a secret.
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "secret", "password", "key"].iter().any(|w| key.contains(w))
}

/// A plugin's settings (TOML text) as `(dotted key, shown value)` rows, secrets redacted: a
/// key containing token, secret, password or key, and every `{ env = .. }` value. Text that
/// does not parse shows as one redacted row (it may hold anything).
pub fn settings_rows(settings: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if settings.trim().is_empty() {
        return out;
    }
    match settings.parse::<toml::Table>() {
        Ok(table) => flatten("", &toml::Value::Table(table), &mut out),
        Err(_) => out.push(("(unreadable)".to_owned(), REDACTED.to_owned())),
    }
    out
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) if table.contains_key("env") && !prefix.is_empty() => {
            out.push((prefix.to_owned(), REDACTED.to_owned()));
        }
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                if secret_key(key) {
                    out.push((path, REDACTED.to_owned()));
                } else {
                    flatten(&path, value, out);
                }
            }
        }
        toml::Value::Array(items) if items.iter().any(|v| v.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        // A URL with credentials in it (`scheme://user:password@host`).
        toml::Value::String(text) if text.contains("://") && text.contains('@') => {
            out.push((prefix.to_owned(), REDACTED.to_owned()));
        }
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// A plugin's pause as the state column shows it: why, and how long ago.
pub fn paused_text(pause: &Pause) -> String {
    match pause.at_ms {
        0 => pause.describe(),
        at => format!("{}, {} ago", pause.describe(), when::age(now_ms() - at)),
    }
}

/// The page's body; `paused`: the plugins paused now; `report` is the reload report to show,
/// if a reload just ran.
pub fn body(
    views: &[PluginView],
    paused: &BTreeMap<String, Pause>,
    csrf: &str,
    report: Option<&str>,
) -> Markup {
    html! {
        h1 { "Plugins" }
        form.actions method="post" action="/plugins/reload" {
            input type="hidden" name="csrf" value=(csrf);
            button.primary id="reload" type="submit" { "Reload host.toml and the plugins" }
        }
        @if let Some(report) = report {
            section id="reload-result" {
                h2 { "Reload report" }
                pre id="reload-report" { (report) }
            }
        }
        table id="plugins" {
            thead { tr { th { "name" } th { "version" } th { "kind" } th { "subscriptions" } th { "isolation" } th { "library SHA-256" } th { "settings" } th { "state" } } }
            tbody {
                @for v in views {
                    tr id=(format!("plugin-{}", v.name)) {
                        td.name { (v.name) }
                        td.version { (v.version.as_deref().unwrap_or("-")) }
                        td.kind {
                            (v.kind)
                            @if let Some(target) = &v.target { br; code { (target) } }
                        }
                        td.subscriptions { (v.subscriptions.as_deref().unwrap_or("-")) }
                        td.isolation { (v.isolation.unwrap_or("-")) }
                        td.sha256 { code { (v.sha256.as_deref().unwrap_or("-")) } }
                        td.settings {
                            @let rows = settings_rows(&v.settings);
                            @if rows.is_empty() { "none" } @else {
                                table.settings {
                                    @for (k, value) in &rows { tr { td { code { (k) } } td { code { (value) } } } }
                                }
                            }
                        }
                        td.state {
                            @if let Some(pause) = paused.get(&v.name) {
                                span.state-paused { "paused" }
                                " "
                                span.paused-reason title=(format!("since {} UTC; its events wait in the journal", when::format_ms(pause.at_ms))) { (paused_text(pause)) }
                                br;
                            }
                            span class=(format!("state-{}", v.state)) { (v.state) }
                            @if let Some(f) = &v.failure { br; (f) }
                            @if let Some(r) = &v.runner {
                                br; "runner " (r.state) ", " (r.restarts) " restarts"
                                @if let Some(pid) = r.pid { ", pid " (pid) }
                                @if let Some(exit) = &r.last_exit { br; "last exit: " (exit) }
                            }
                            @let (action, label) = if paused.contains_key(&v.name) { ("resume", "Resume") } else { ("pause", "Pause") };
                            form.pause method="post" action=(format!("/plugins/{}/{action}", v.name)) {
                                input type="hidden" name="csrf" value=(csrf);
                                button id=(format!("{action}-{}", v.name)) type="submit" { (label) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_show_without_secrets() {
        let rows = settings_rows(
            "file = \"audit.jsonl\"\napi_key = \"k-123\"\n[db]\nurl = \"postgres://u:pw2@x\"\npassword = \"pw\"\nconn = { env = \"DB_URL\" }\n[[hooks]]\nauth_token = \"t\"\nname = \"a\"\n",
        );
        let text = format!("{rows:?}");
        for secret in ["k-123", "\"pw\"", "DB_URL", "\"t\"", "pw2"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(rows.contains(&("file".into(), "\"audit.jsonl\"".into())), "{text}");
        assert!(rows.contains(&("db.conn".into(), REDACTED.into())), "{text}");
        assert!(rows.contains(&("hooks[0].name".into(), "\"a\"".into())), "{text}");
        assert_eq!(settings_rows("= broken"), [("(unreadable)".into(), REDACTED.into())]);
    }
}
