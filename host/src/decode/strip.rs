//! What the journal keeps of a body: all of it but the two secrets only the host needs,
//! `auth[refresh_token]` and `auth[application_token]`, whose values are blanked before the
//! body is journaled. So no plugin, in the host or in a runner process (which decodes the
//! journaled body itself), and no replica of a shared log ever holds them: the refresh token is
//! single-use (a plugin that spent it would break the host's refresh of the portal's pair) and
//! the application token is the portal's proof of authenticity. The user's access token stays:
//! plugins are given it.
//!
//! A form body (what Bitrix24 sends) keeps every byte but those values: a pair whose name
//! decodes, as PHP's `parse_str` reads it, to `auth[refresh_token]` or `auth[application_token]`
//! keeps its name and loses its value, so the variable count and every other variable decode
//! exactly as before. A JSON body (which Bitrix24 never sends) is decoded and written again as
//! the form PHP's `http_build_query` makes of the same tree, blanked the same way; should that
//! form not read back to the same tree, the body is kept as it came.

use bytes::Bytes;

use super::{
    Format, form,
    tree::{KeyRef, Map, Value},
};

/// The names whose values are blanked (after `auth[`).
const SECRETS: [&[u8]; 2] = [b"refresh_token]", b"application_token]"];

/// `body` without the secrets, and its format (a JSON body comes back as a form).
pub fn without_secrets(body: Bytes, format: Format) -> (Bytes, Format) {
    match format {
        Format::Form => (blank_form(body), Format::Form),
        Format::Json => match rewrite_json(&body) {
            Some(form) => (form, Format::Form),
            None => (body, Format::Json),
        },
    }
}

/// Whether a form variable's raw name is one of the secrets, as `parse_str` reads names: URL
/// decoded, cut at a NUL byte, leading spaces dropped; then base `auth` and the one bracket
/// `[refresh_token]` or `[application_token]` (a further bracket makes the value a map, never a
/// token; anything else after it PHP ignores).
fn is_secret_name(raw: &[u8]) -> bool {
    let decoded = form::url_decode(raw);
    let name = decoded.split(|&b| b == 0).next().unwrap_or_default();
    let name = &name[name.iter().take_while(|&&b| b == b' ').count()..];
    name.strip_prefix(b"auth[").is_some_and(|rest| {
        SECRETS.iter().any(|s| rest.strip_prefix(*s).is_some_and(|after| !after.starts_with(b"[")))
    })
}

/// One pass over the variables; the body is copied only when a secret is found, in slices.
fn blank_form(body: Bytes) -> Bytes {
    // Variables after a raw NUL byte are never read (PHP scans a C string): left as they are.
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let head = &body[..end];
    let mut out: Option<Vec<u8>> = None;
    // What of `head` is in `out` so far.
    let mut copied = 0;
    let mut start = 0;
    for var in head.split(|&b| b == b'&') {
        let here = start;
        start += var.len() + 1;
        let name = var.iter().position(|&b| b == b'=').map_or(var, |eq| &var[..eq]);
        // Cheap first: the name must begin like `auth` does, raw or encoded.
        let may_be = name.starts_with(b"auth") || matches!(name.first(), Some(b'%' | b'+' | b' '));
        if !may_be || !is_secret_name(name) {
            continue;
        }
        let out = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
        out.extend_from_slice(&head[copied..here]);
        out.extend_from_slice(name);
        out.push(b'=');
        copied = here + var.len();
    }
    match out {
        None => body,
        Some(mut out) => {
            out.extend_from_slice(&body[copied..]);
            Bytes::from(out)
        }
    }
}

/// The journaled form `body` with the portal's application token put back where ingress
/// blanked it (the `auth[application_token]` variables with an empty value), every other byte
/// as it is: the body Bitrix24 sent, but for `auth[refresh_token]`, which stays blank. For an
/// http plugin's `format = "form"` (`crate::forward`).
pub fn with_application_token(body: &[u8], token: &str) -> Vec<u8> {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let mut out = Vec::with_capacity(body.len() + encoded.len());
    let mut first = true;
    for var in body[..end].split(|&b| b == b'&') {
        if !first {
            out.push(b'&');
        }
        first = false;
        let (name, value) = match var.iter().position(|&b| b == b'=') {
            Some(eq) => (&var[..eq], Some(&var[eq + 1..])),
            None => (var, None),
        };
        let application_token = is_secret_name(name) && {
            let decoded = form::url_decode(name);
            decoded.windows(18).any(|w| w == b"application_token]")
        };
        if application_token && value.is_none_or(<[u8]>::is_empty) {
            out.extend_from_slice(name);
            out.push(b'=');
            out.extend_from_slice(encoded.as_bytes());
        } else {
            out.extend_from_slice(var);
        }
    }
    out.extend_from_slice(&body[end..]);
    out
}

/// The JSON body's tree, blanked, as a form that reads back to that tree; `None` when it does
/// not (or the body is not JSON the decoder takes).
fn rewrite_json(body: &[u8]) -> Option<Bytes> {
    let mut tree = super::decode_tree(body, Format::Json).ok()?.map;
    blank_tree(&mut tree);
    let form = super::encode::http_build_query(&tree);
    let again = form::parse(form.as_bytes());
    (again == tree).then(|| Bytes::from(form))
}

/// Blanks the secrets in a decoded tree (strings only; their places are kept).
pub fn blank_tree(tree: &mut Map) {
    if !matches!(tree.get("auth"), Some(Value::Map(_))) {
        return;
    }
    let auth = tree.child_map(KeyRef::from_php("auth"));
    for key in ["refresh_token", "application_token"] {
        if matches!(auth.get(key), Some(Value::Str(_))) {
            auth.insert(key, "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, decode_tree};

    const FORM: &str = "event=ONCRMDEALUSERFIELDUPDATE&data%5BFIELDS%5D%5BID%5D=5&ts=1\
        &auth%5Baccess_token%5D=AT-1&auth%5Brefresh_token%5D=RT-2&auth%5Bmember_id%5D=m\
        &auth%5Bapplication_token%5D=APP-3&auth%5Bdomain%5D=p.bitrix24.com";

    fn tree(body: &[u8], format: Format) -> Map {
        decode_tree(body, format).unwrap().map
    }

    #[test]
    fn the_application_token_goes_back_where_it_was_blanked() {
        let (journaled, _) = without_secrets(Bytes::from_static(FORM.as_bytes()), Format::Form);
        let filled = with_application_token(&journaled, "APP-3");
        let expected = FORM.replace("RT-2", "");
        assert_eq!(String::from_utf8(filled).unwrap(), expected);
        // A token with characters a form encodes, and a value that was not blank, kept.
        let body = b"auth[application_token]=&auth%5Bapplication_token%5D=kept&x=1";
        assert_eq!(
            with_application_token(body, "a b&c"),
            b"auth[application_token]=a+b%26c&auth%5Bapplication_token%5D=kept&x=1".to_vec()
        );
    }

    #[test]
    fn a_form_keeps_every_byte_but_the_two_secret_values() {
        let (out, format) = without_secrets(Bytes::from(FORM), Format::Form);
        assert_eq!(format, Format::Form);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text, FORM.replace("RT-2", "").replace("APP-3", ""));
        let event = decode(&out, Format::Form).unwrap();
        assert!(event.auth.application_token.is_empty());
        assert!(event.auth.refresh_token.as_ref().is_none_or(|t| t.is_empty()));
        assert_eq!(event.auth.user.as_ref().map(|u| u.access_token.expose()), Some("AT-1"));
        let mut expected = tree(FORM.as_bytes(), Format::Form);
        blank_tree(&mut expected);
        assert_eq!(tree(&out, Format::Form), expected);
    }

    #[test]
    fn names_are_read_as_php_reads_them() {
        for (body, secret) in [
            ("auth[refresh_token]=x", true),
            ("auth%5brefresh_token%5d=x", true),
            ("++auth[application_token]=x", true),
            ("auth[refresh_token]%00tail=x", true),
            ("auth[refresh_token]tail=x", true),
            ("auth[refresh_token][0]=x", false),
            ("auth[Refresh_token]=x", false),
            ("auth[ refresh_token]=x", false),
            ("data[auth][refresh_token]=x", false),
            ("auth%00[refresh_token]=x", false),
            ("xauth[refresh_token]=x", false),
        ] {
            let (out, _) = without_secrets(Bytes::from(body), Format::Form);
            assert_eq!(out.ends_with(b"=x"), !secret, "{body}: {}", String::from_utf8_lossy(&out));
        }
        // Bytes after a NUL are not read by PHP and stay; nothing else changes without secrets.
        let body = Bytes::from_static(b"event=E&auth[refresh_token]=r\0&auth[application_token]=a");
        let (out, _) = without_secrets(body, Format::Form);
        assert_eq!(&out[..], b"event=E&auth[refresh_token]=\0&auth[application_token]=a");
        let plain = Bytes::from_static(b"event=E&data[x]=1&&auth[member_id]=m");
        assert_eq!(without_secrets(plain.clone(), Format::Form).0, plain);
    }

    proptest::proptest! {
        /// Whatever the body, the stripped one decodes to the original's tree with the secrets
        /// blanked, and to nothing else.
        #[test]
        fn a_stripped_form_decodes_to_the_blanked_tree(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "auth", "[", "]", "refresh_token", "application_token", "access_token",
                    "%5B", "%5D", "%5b", "%00", "\0", "=", "&", "+", " ", "a", "x", "data", "[]",
                ]),
                0..40,
            )
        ) {
            let body = Bytes::from(parts.concat());
            let (out, format) = without_secrets(body.clone(), Format::Form);
            proptest::prop_assert_eq!(format, Format::Form);
            let mut expected = tree(&body, Format::Form);
            blank_tree(&mut expected);
            proptest::prop_assert_eq!(tree(&out, Format::Form), expected);
        }
    }

    #[test]
    fn a_json_body_becomes_the_same_tree_as_a_form_without_the_secrets() {
        let json = r#"{"event":"ONAPPINSTALL","data":{"VERSION":"1","LIST":["a","b"]},
            "auth":{"access_token":"ACC-1","refresh_token":"REF-2","application_token":"TOK-3","member_id":"m"}}"#;
        let (out, format) = without_secrets(Bytes::from(json), Format::Json);
        assert_eq!(format, Format::Form);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            !text.contains("REF-2") && !text.contains("TOK-3") && text.contains("ACC-1"),
            "{text}"
        );
        let mut expected = tree(json.as_bytes(), Format::Json);
        blank_tree(&mut expected);
        assert_eq!(tree(&out, Format::Form), expected);
        // The JSON decoder applies PHP's form limits (64 levels, 1000 variables): what it
        // drops, the form drops too.
        let deep = format!("{{\"event\":\"E\",\"data\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        let (out, format) = without_secrets(Bytes::from(deep.clone()), Format::Json);
        assert_eq!(tree(&out, format), tree(deep.as_bytes(), Format::Json));
    }
}
