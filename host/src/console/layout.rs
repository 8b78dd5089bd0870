//! The frame of every page: head (the stylesheet, htmx), the navigation with its fixed ids,
//! the logout form for a session, the footer with the host's version.

use maud::{DOCTYPE, Markup, html};

use super::auth::Who;

/// A whole page titled `title` around `body`; `who` and `csrf` decide the logout form.
pub fn page(title: &str, who: &Who, csrf: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · b24-host" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/htmx.min.js" defer {}
            }
            body {
                header {
                    nav {
                        span.brand { "b24-host" }
                        a id="nav-overview" href="/" { "Overview" }
                        a id="nav-events" href="/events" { "Events" }
                        a id="nav-dead" href="/dead" { "Dead letters" }
                        a id="nav-plugins" href="/plugins" { "Plugins" }
                        a id="nav-portals" href="/portals" { "Portals" }
                        @if let Who::Session { .. } = who {
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button id="logout" type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
                footer { "b24-host " (env!("CARGO_PKG_VERSION")) }
            }
        }
    }
}

/// A page with only a message (errors: 400, 404, 403).
pub fn message(title: &str, who: &Who, csrf: &str, text: &str) -> Markup {
    page(title, who, csrf, html! { h1 { (title) } p id="message" { (text) } })
}
