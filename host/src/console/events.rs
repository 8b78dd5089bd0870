//! The events page: a filter form (portal, code, status, time range), one page of the
//! journal's `query` newest first, and an "Older" link while older events may remain.

use maud::{Markup, html};

use super::{field, when};
use crate::journal::admin::{EventStatus, EventSummary, Query};

/// Events per page.
pub const PAGE_SIZE: usize = 50;

/// The filters as given (kept to fill the form and the "Older" link back in).
pub struct Filter {
    portal: Option<String>,
    code: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// The query the filters make.
    pub query: Query,
}

/// Reads the filters from the query string; `Err((field, why))` for a bad one.
pub fn filter(pairs: &[(String, String)]) -> Result<Filter, (String, String)> {
    let bad = |name: &str, why: String| (name.to_owned(), why);
    let status = match field(pairs, "status") {
        None => None,
        Some("pending") => Some(EventStatus::Pending),
        Some("done") => Some(EventStatus::Done),
        Some("dead") => Some(EventStatus::Dead),
        Some(other) => {
            return Err(bad("status", format!("{other:?} is not one of pending, done, dead")));
        }
    };
    let time = |name: &str| -> Result<Option<i64>, (String, String)> {
        field(pairs, name).map(when::parse).transpose().map_err(|why| bad(name, why))
    };
    let before_id = field(pairs, "before")
        .map(|b| b.parse::<u64>().map_err(|_| bad("before", format!("{b:?} is not an event id"))))
        .transpose()?;
    let query = Query {
        member_id: field(pairs, "portal").map(str::to_owned),
        code: field(pairs, "code").map(str::to_owned),
        status,
        since_ms: time("since")?,
        until_ms: time("until")?,
        before_id,
        limit: PAGE_SIZE,
    };
    Ok(Filter {
        portal: query.member_id.clone(),
        code: query.code.clone(),
        status: field(pairs, "status").map(str::to_owned),
        since: field(pairs, "since").map(str::to_owned),
        until: field(pairs, "until").map(str::to_owned),
        query,
    })
}

impl Filter {
    /// The query string of these filters (without `before`).
    fn query_string(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("portal", &self.portal),
            ("code", &self.code),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(value) = value {
                out.append_pair(name, value);
            }
        }
        out.finish()
    }
}

/// The filter form, filled with `filter` (empty when `None`).
pub fn form(filter: Option<&Filter>) -> Markup {
    let value =
        |f: fn(&Filter) -> &Option<String>| filter.and_then(|x| f(x).clone()).unwrap_or_default();
    let status = value(|f| &f.status);
    html! {
        form.filter id="event-filter" method="get" action="/events" {
            label { "portal (member_id)" input name="portal" value=(value(|f| &f.portal)); }
            label { "event code" input name="code" value=(value(|f| &f.code)); }
            label { "status"
                select name="status" {
                    option value="" selected[status.is_empty()] { "any" }
                    @for s in ["pending", "done", "dead"] {
                        option value=(s) selected[status == s] { (s) }
                    }
                }
            }
            label { "since (UTC)" input name="since" type="datetime-local" value=(value(|f| &f.since)); }
            label { "until (UTC)" input name="until" type="datetime-local" value=(value(|f| &f.until)); }
            button type="submit" id="filter" { "Filter" }
            a href="/events" { "clear" }
        }
    }
}

/// The page's body: the form and the page of `events`, `next_before` for "Older".
pub fn body(filter: &Filter, events: &[EventSummary], next_before: Option<u64>) -> Markup {
    html! {
        h1 { "Events" }
        (form(Some(filter)))
        table id="events" {
            thead { tr { th { "id" } th { "received (UTC)" } th { "portal" } th { "code" } th { "plugins" } } }
            tbody {
                @for e in events {
                    tr id=(format!("event-{}", e.id)) {
                        td { a href=(format!("/events/{}", e.id)) { (e.id) } }
                        td.time { (when::format_ms(e.received_at_ms)) }
                        td.portal { (e.member_id) }
                        td.code { (e.code) }
                        td.plugins {
                            @if e.pending.is_empty() && e.dead.is_empty() {
                                span.state.done { "done" }
                            }
                            @for p in &e.pending { span.state.pending { (p) ": pending" } " " }
                            @for p in &e.dead { span.state.dead { (p) ": dead" } " " }
                        }
                    }
                }
            }
        }
        @if events.is_empty() {
            p.empty { "no event matches in this stretch of the journal" }
        }
        @if let Some(before) = next_before {
            @let base = filter.query_string();
            @let sep = if base.is_empty() { "" } else { "&" };
            p { a id="older" href=(format!("/events?{base}{sep}before={before}")) { "Older" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::pairs;

    #[test]
    fn filters_become_a_query_and_a_bad_one_names_its_field() {
        let f = filter(&pairs("portal=m1&code=ONCRMDEALADD&status=dead&since=2026-12-01T21:30&until=1796160700000&before=77")).expect("valid");
        assert_eq!(f.query.member_id.as_deref(), Some("m1"));
        assert_eq!(f.query.status, Some(EventStatus::Dead));
        assert_eq!(f.query.since_ms, Some(1_796_160_600_000));
        assert_eq!(f.query.until_ms, Some(1_796_160_700_000));
        assert_eq!((f.query.before_id, f.query.limit), (Some(77), PAGE_SIZE));
        assert!(!f.query_string().contains("before"), "the Older link sets it");
        let empty = filter(&pairs("portal=&status=")).expect("empty fields are no filter");
        assert_eq!(empty.query, Query { limit: PAGE_SIZE, ..Query::default() });
        for (text, name) in
            [("status=maybe", "status"), ("since=soon", "since"), ("before=x", "before")]
        {
            assert_eq!(filter(&pairs(text)).err().map(|e| e.0), Some(name.to_owned()), "{text}");
        }
    }
}
