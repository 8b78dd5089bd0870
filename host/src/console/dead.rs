//! Dead letters: per plugin, with replay and purge of one, a selection, or everything since a
//! time, always in two steps: a POST without `confirm=1` answers with the count of dead
//! letters that match now and a form to confirm; with `confirm=1` it runs (the journal's
//! `replay` or `purge`, nothing else) and says how many.

use maud::{Markup, html};

use super::{field, when};
use crate::journal::admin::{DeadRow, Selection};

/// Rows listed on a page (the count says how many there are; "Older" pages on).
pub const SHOWN: usize = 100;

/// Replay or purge.
#[derive(Clone, Copy)]
pub enum Action {
    /// Back into delivery.
    Replay,
    /// Deleted for good.
    Purge,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Replay => "/dead/replay",
            Action::Purge => "/dead/purge",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Replay => "Replay",
            Action::Purge => "Purge",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Replay => "Replayed",
            Action::Purge => "Purged",
        }
    }
}

/// The page's body: one page of `rows` (newest event first) of `total` matching, the filter,
/// the actions, and a link to the older ones (`next_before`).
pub fn body(
    page: &crate::journal::admin::DeadPage,
    plugin: Option<&str>,
    since: Option<&str>,
    csrf: &str,
) -> Markup {
    let rows = &page.rows;
    html! {
        h1 { "Dead letters" @if let Some(p) = plugin { " of " (p) } }
        form.filter id="dead-filter" method="get" action="/dead" {
            label { "plugin" input name="plugin" value=(plugin.unwrap_or_default()); }
            label { "given up since (UTC)" input name="since" type="datetime-local" value=(since.unwrap_or_default()); }
            button type="submit" { "Filter" }
            a href="/dead" { "clear" }
        }
        p.count id="dead-count" { (page.total) " dead letters"
            @if (rows.len() as u64) < page.total { " (" (rows.len()) " on this page)" } }
        form id="dead-selection" method="post" action="/dead/replay" {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(p) = plugin { input type="hidden" name="plugin" value=(p); }
            table id="dead" {
                thead { tr { th {} th { "event" } th { "plugin" } th { "code" } th { "portal" } th { "reason" } th { "attempts" } th { "given up (UTC)" } } }
                tbody {
                    @for r in rows.iter().take(SHOWN) {
                        tr id=(format!("dead-{}-{}", r.plugin, r.id)) {
                            td { input type="checkbox" name="ids" value=(r.id) aria-label=(format!("select {}", r.id)); }
                            td { a href=(format!("/events/{}", r.id)) { (r.id) } }
                            td.plugin { (r.plugin) }
                            td.code { (r.code) }
                            td.portal { (r.member_id) }
                            td.reason { (r.dead.reason) }
                            td.attempts { (r.dead.attempts) }
                            td.time { (when::format_ms(r.dead.at_ms)) }
                        }
                    }
                }
            }
            @if let Some(before) = page.next_before {
                p { a id="older" href=(older_link(plugin, since, before)) { "Older" } }
            }
            div.actions {
                button.primary id="replay-selected" type="submit" formaction="/dead/replay" { "Replay selected" }
                button.danger id="purge-selected" type="submit" formaction="/dead/purge" { "Purge selected" }
            }
        }
        @for action in [Action::Replay, Action::Purge] {
            form.actions method="post" action=(action.path()) {
                input type="hidden" name="csrf" value=(csrf);
                @if let Some(p) = plugin { input type="hidden" name="plugin" value=(p); }
                label { (action.verb()) " everything " @if let Some(p) = plugin { "of " (p) " " } "given up since (UTC) "
                    input name="since" type="datetime-local" required value=(since.unwrap_or_default()); }
                button class=(match action { Action::Replay => "primary", Action::Purge => "danger" })
                    id=(format!("{}-since", action.verb().to_lowercase())) type="submit" { (action.verb()) " since…" }
            }
        }
    }
}

/// The link to the page of dead letters below event `before`, same filter.
fn older_link(plugin: Option<&str>, since: Option<&str>, before: u64) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("plugin", plugin), ("since", since)] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    query.append_pair("before", &before.to_string());
    format!("/dead?{}", query.finish())
}

/// What a replay or purge form asks for: the selection and whether it is confirmed;
/// `Err((field, why))` for a bad field or an empty selection.
pub fn selection(fields: &[(String, String)]) -> Result<(Selection, bool), (String, String)> {
    let mut ids = Vec::new();
    for (_, id) in fields.iter().filter(|(k, _)| k == "ids") {
        for id in id.split([',', ' ']).filter(|s| !s.is_empty()) {
            ids.push(
                id.parse::<u64>()
                    .map_err(|_| ("ids".to_owned(), format!("{id:?} is not an event id")))?,
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let since_ms = field(fields, "since")
        .map(when::parse)
        .transpose()
        .map_err(|why| ("since".to_owned(), why))?;
    if ids.is_empty() && since_ms.is_none() {
        return Err((
            "ids".to_owned(),
            "choose dead letters: tick some, or give a time for everything since".to_owned(),
        ));
    }
    let plugin = field(fields, "plugin").map(str::to_owned);
    Ok((Selection { plugin, ids, since_ms }, field(fields, "confirm") == Some("1")))
}

/// The confirmation step: how many match now, and the form that runs it.
pub fn confirm(
    action: Action,
    which: &Selection,
    count: u64,
    matched: &[DeadRow],
    csrf: &str,
) -> Markup {
    html! {
        h1 { (action.verb()) " dead letters" }
        p { (action.verb()) " the dead letters that match"
            @if let Some(p) = &which.plugin { " of plugin " (p) }
            @if !which.ids.is_empty() { ", events " (ids_text(&which.ids)) }
            @if let Some(since) = which.since_ms { ", given up since " (when::format_ms(since)) " UTC" }
            ":" }
        p id="confirm-count" { (count) }
        ul.matched {
            @for r in matched.iter().take(50) {
                li { a href=(format!("/events/{}", r.id)) { (r.id) } " (" (r.plugin) ", " (r.code) ")" }
            }
        }
        form method="post" action=(action.path()) {
            input type="hidden" name="csrf" value=(csrf);
            @if let Some(p) = &which.plugin { input type="hidden" name="plugin" value=(p); }
            @for id in &which.ids { input type="hidden" name="ids" value=(id); }
            @if let Some(since) = which.since_ms { input type="hidden" name="since" value=(since); }
            input type="hidden" name="confirm" value="1";
            button class=(match action { Action::Replay => "primary", Action::Purge => "danger" })
                id="confirm" type="submit" disabled[count == 0] { (action.verb()) " " (count) }
            " "
            a href="/dead" { "Cancel" }
        }
    }
}

/// The result: how many, with links to the events.
pub fn result(action: Action, done: &[(String, u64)]) -> Markup {
    html! {
        h1 { (action.verb()) " dead letters" }
        p id="result" { (action.done()) " " (done.len()) " dead letters" }
        ul {
            @for (plugin, id) in done.iter().take(200) {
                li { a href=(format!("/events/{id}")) { (id) } " (" (plugin) ")" }
            }
        }
        p { a href="/dead" { "Back to the dead letters" } }
    }
}

fn ids_text(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(20).map(u64::to_string).collect();
    let more = if ids.len() > 20 { format!(" and {} more", ids.len() - 20) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::pairs;

    #[test]
    fn a_selection_needs_ids_or_a_time_and_confirm_is_explicit() {
        let (which, confirmed) = selection(&pairs("plugin=probe&ids=3&ids=1,2&ids=3")).expect("ok");
        assert_eq!(
            (which.plugin.as_deref(), which.ids.as_slice()),
            (Some("probe"), &[1, 2, 3][..])
        );
        assert!(!confirmed);
        let (which, confirmed) = selection(&pairs("since=0&confirm=1")).expect("ok");
        assert_eq!((which.plugin, which.since_ms, confirmed), (None, Some(0), true));
        assert_eq!(selection(&pairs("plugin=probe")).err().map(|e| e.0), Some("ids".into()));
        assert_eq!(selection(&pairs("ids=x")).err().map(|e| e.0), Some("ids".into()));
        assert_eq!(selection(&pairs("since=later")).err().map(|e| e.0), Some("since".into()));
    }
}
