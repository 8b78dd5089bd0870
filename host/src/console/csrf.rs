//! The CSRF rule of state-changing requests (replay, purge, reload, logout): the form field
//! `csrf` or the header `X-CSRF-Token` must carry the token of the session (or of the process
//! without `admin.token`), compared in constant time. Exempt: bearer-authenticated requests,
//! and requests with none of `Cookie`, `Origin`, `Sec-Fetch-Site` (a script such as curl: a
//! browser sends at least one of them on a cross-site POST, so a forged form cannot pass).

use hyper::HeaderMap;

use super::auth::{Console, Who, same};

/// The header a script may send the token in.
pub const HEADER: &str = "x-csrf-token";
/// The form field.
pub const FIELD: &str = "csrf";
/// The refusal's text.
pub const REFUSED: &str = "CSRF token missing or wrong";

/// Whether a state-changing request of `who` with `headers` and the form field `field` passes.
pub fn passes(console: &Console, who: &Who, headers: &HeaderMap, field: Option<&str>) -> bool {
    if matches!(who, Who::Bearer) {
        return true;
    }
    let browser = ["cookie", "origin", "sec-fetch-site"].iter().any(|h| headers.contains_key(*h));
    if !browser {
        return true;
    }
    let expected = console.csrf_for(who);
    let given = field.or_else(|| headers.get(HEADER).and_then(|v| v.to_str().ok()));
    match given {
        Some(given) => !expected.is_empty() && same(given, &expected),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_need_the_token_scripts_do_not() {
        let console = Console::new(None, Default::default());
        let token = console.csrf_for(&Who::Open);
        let mut browser = HeaderMap::new();
        browser.insert("origin", "http://127.0.0.1:8025".parse().expect("value"));
        assert!(passes(&console, &Who::Open, &HeaderMap::new(), None), "curl");
        assert!(!passes(&console, &Who::Open, &browser, None));
        assert!(!passes(&console, &Who::Open, &browser, Some("wrong")));
        assert!(passes(&console, &Who::Open, &browser, Some(&token)));
        browser.insert(HEADER, token.parse().expect("value"));
        assert!(passes(&console, &Who::Open, &browser, None));
        assert!(passes(&console, &Who::Bearer, &browser, Some("anything")));
    }
}
