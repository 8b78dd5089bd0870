//! The login page: one password field for `admin.token`, posted to `/login`.

use maud::{DOCTYPE, Markup, html};

/// The login form, with `problem` (e.g. "wrong token") above it.
pub fn page(problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · b24-host" }
                link rel="stylesheet" href="/static/console.css";
            }
            body.login {
                main {
                    h1 { "b24-host console" }
                    @if let Some(problem) = problem {
                        p.problem id="login-problem" { (problem) }
                    }
                    form method="post" action="/login" {
                        label for="token" { "Admin token (admin.token)" }
                        input id="token" name="token" type="password" autocomplete="current-password" autofocus;
                        button id="login" type="submit" { "Log in" }
                    }
                }
                footer { "b24-host " (env!("CARGO_PKG_VERSION")) }
            }
        }
    }
}
