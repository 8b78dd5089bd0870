//! What the binder knows of one portal after a pass, as `bind --check`, `check`, the console
//! and `/metrics` show it: whether the app's installation is finished (`app.info`), what the
//! plugins need bound, what is bound, what is missing and what is extra.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::plan::Binding;

/// One portal's bindings and installation, as of the last pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalBindings {
    /// The portal.
    pub member_id: String,
    /// Its domain, from the stored install's REST address.
    #[serde(default)]
    pub domain: Option<String>,
    /// When the pass ended, ms since the epoch; `None` before the first.
    #[serde(default)]
    pub checked_at_ms: Option<i64>,
    /// `app.info`'s `INSTALLED`: `false` while the app's installation was never finished
    /// (`installFinish`), and then the portal sends no events; `None` when unknown.
    #[serde(default)]
    pub installed: Option<bool>,
    /// Whether the portal's offline queue is polled (codes are bound `offline`).
    #[serde(default)]
    pub offline: bool,
    /// What the plugins need bound (with `ONAPPUNINSTALL`, and `ONOFFLINEEVENT` when offline).
    #[serde(default)]
    pub needed: BTreeSet<Binding>,
    /// What is bound to this host's handler (and its connector's offline queue).
    #[serde(default)]
    pub bound: BTreeSet<Binding>,
    /// Needed and not bound.
    #[serde(default)]
    pub missing: BTreeSet<Binding>,
    /// Bound to this host and needed by nothing (unbound when `bind.prune` is on).
    #[serde(default)]
    pub extra: BTreeSet<Binding>,
    /// `plugin: GLOB` for each wildcard the host could not expand into codes.
    #[serde(default)]
    pub unexpanded: Vec<String>,
    /// Codes a plugin's wildcard stands for that the portal does not offer the app (outside
    /// its scopes, or not on this portal): not bound, not missing.
    #[serde(default)]
    pub not_offered: BTreeSet<String>,
    /// Why a binding failed, one line each (`CODE: error`).
    #[serde(default)]
    pub failures: Vec<String>,
    /// What kept the pass from finishing (no tokens, a refusal, the portal unreachable).
    #[serde(default)]
    pub error: Option<String>,
}

impl PortalBindings {
    /// Whether the operator must act: something needed is not bound, or the pass failed.
    pub fn needs_attention(&self) -> bool {
        !self.missing.is_empty() || self.error.is_some()
    }

    /// The installation state in words.
    pub fn installation(&self) -> &'static str {
        match self.installed {
            Some(true) => "installation finished",
            Some(false) => {
                "installation NOT finished (installFinish never called): the portal sends no events"
            }
            None => "installation state unknown",
        }
    }

    /// The report as `bind --check` prints it.
    pub fn describe(&self) -> String {
        let list = |set: &BTreeSet<Binding>| {
            set.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
        };
        let mut out = format!("portal {}", self.member_id);
        if let Some(domain) = &self.domain {
            out.push_str(&format!(" ({domain})"));
        }
        out.push_str(&format!(": {}", self.installation()));
        if self.offline {
            out.push_str("; offline queue polled");
        }
        out.push('\n');
        if let Some(error) = &self.error {
            out.push_str(&format!("  error: {error}\n"));
        }
        out.push_str(&format!("  needed  {:>3}: {}\n", self.needed.len(), list(&self.needed)));
        out.push_str(&format!("  bound   {:>3}\n", self.bound.len()));
        out.push_str(&format!("  missing {:>3}: {}\n", self.missing.len(), list(&self.missing)));
        out.push_str(&format!("  extra   {:>3}: {}\n", self.extra.len(), list(&self.extra)));
        for glob in &self.unexpanded {
            out.push_str(&format!(
                "  not expanded: {glob} (matches no code the host knows; name the codes in plugin.<name>.events)\n"
            ));
        }
        if !self.not_offered.is_empty() {
            let codes: Vec<&str> = self.not_offered.iter().map(String::as_str).collect();
            out.push_str(&format!(
                "  not offered by the portal (outside the app's scopes): {}\n",
                codes.join(", ")
            ));
        }
        for failure in &self.failures {
            out.push_str(&format!("  failed: {failure}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_what_is_missing_and_why() {
        let report = PortalBindings {
            member_id: "m1".into(),
            domain: Some("acme.bitrix24.com".into()),
            installed: Some(false),
            needed: [Binding::online("ONAPPUNINSTALL"), Binding::offline("ONCRMLEADADD")].into(),
            bound: [Binding::online("ONAPPUNINSTALL")].into(),
            missing: [Binding::offline("ONCRMLEADADD")].into(),
            unexpanded: vec!["bot: ONIMBOT*".into()],
            failures: vec!["ONCRMLEADADD (offline): ACCESS_DENIED".into()],
            ..PortalBindings::default()
        };
        let text = report.describe();
        assert!(
            text.starts_with("portal m1 (acme.bitrix24.com): installation NOT finished"),
            "{text}"
        );
        assert!(text.contains("missing   1: ONCRMLEADADD (offline)"), "{text}");
        assert!(text.contains("not expanded: bot: ONIMBOT*"), "{text}");
        assert!(text.contains("failed: ONCRMLEADADD (offline): ACCESS_DENIED"), "{text}");
        assert!(report.needs_attention());
    }
}
