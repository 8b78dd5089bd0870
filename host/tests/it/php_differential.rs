//! Differential tests against live PHP (php-cli required; the test fails, not skips, without
//! it): random bodies decoded by `form::parse` and by PHP's `parse_str`, random trees encoded by
//! `http_build_query` here and in PHP, and a sample checked against the `b24-event` tool itself.

use crate::common::trees::any_map;
use crate::common::{php_http_build_query, php_parse_str, require_php, run_tool};
use b24_host::decode::encode::{http_build_query, urlencode};
use b24_host::decode::{Map, form, test_support::PhpJson};
use proptest::prelude::*;

/// Pieces of names and values, raw or percent-encoded, that exercise the decoder's rules.
fn fragment() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "a", "b", "Z", "x_y", "0", "1", "-1", "01", "-0", "+1", "9223372036854775807",
            "9223372036854775808", "-9223372036854775808", "[", "]", "[]", "[[", "]]", "][", ".",
            " ", "+", "%", "%5B", "%5b", "%5D", "%5d", "%20", "%2B", "%2b", "%25", "%26", "%3D",
            "%00", "%zz", "%4", "%f", "%ff", "%C3%A9", "%e2%82%ac", "%F0%9F%98%80", "é", "Я",
            "😀", "=", "&", "&&", "_", "~", "\"", "\\", "\t", "%0A", "\u{7f}",
        ]).prop_map(str::to_owned),
        1 => any::<String>().prop_map(|s| urlencode(&s)),
        1 => "[a-c\\[\\]. %+=&]{1,6}",
    ]
    .boxed()
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..6).prop_map(|parts| parts.concat())
}

/// A body: variables of random fragments, sometimes with a value, joined by `&`.
fn body() -> impl Strategy<Value = String> {
    let var = (text(), proptest::option::of(text())).prop_map(|(name, value)| match value {
        Some(v) => format!("{name}={v}"),
        None => name,
    });
    proptest::collection::vec(var, 0..8).prop_map(|vars| vars.join("&"))
}

/// A body with bracketed names over a small alphabet, so keys collide and nest often.
fn structured_body() -> impl Strategy<Value = String> {
    let name = (
        prop::sample::select(vec!["a", "b", "a.b", " a", "1", "-2"]),
        proptest::collection::vec(
            prop::sample::select(vec![
                "[x]", "[]", "[0]", "[1]", "[-1]", "[y", "]", "[ z.]", "[5]",
            ]),
            0..5,
        ),
    )
        .prop_map(|(base, brackets)| format!("{base}{}", brackets.concat()));
    let var = (name, prop::sample::select(vec!["1", "2", "", "v w", "%41"]))
        .prop_map(|(name, value)| format!("{name}={value}"));
    proptest::collection::vec(var, 0..10).prop_map(|vars| vars.join("&"))
}

fn ours(body: &[u8]) -> String {
    form::parse(body).to_php_json()
}

/// Compares with PHP. Invalid UTF-8 is replaced differently (Rust's maximal-subpart U+FFFD here,
/// PHP's own substitution in `json_encode` there) and can merge keys here that PHP keeps apart,
/// so bodies that decode to invalid UTF-8 are only checked for not panicking.
fn check(body: &[u8]) -> Result<(), TestCaseError> {
    let ours = ours(body);
    let php = php_parse_str(body);
    if std::str::from_utf8(&form::url_decode(body)).is_ok() {
        prop_assert_eq!(ours, php, "body {:?}", String::from_utf8_lossy(body));
    }
    Ok(())
}

#[test]
fn php_is_installed() {
    require_php();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn random_bodies_decode_like_php(body in body()) {
        check(body.as_bytes())?;
    }

    #[test]
    fn structured_bodies_decode_like_php(body in structured_body()) {
        prop_assert!(std::str::from_utf8(&form::url_decode(body.as_bytes())).is_ok());
        check(body.as_bytes())?;
    }

    #[test]
    fn raw_bytes_decode_like_php(parts in proptest::collection::vec(prop::sample::select(vec![
        &b"a"[..], b"1", b"[", b"]", b".", b" ", b"\t", b"\x0b", b"+", b"%", b"=", b"&", b"\0",
        "é".as_bytes(), b"%C3", b"%A9", b"\xff", b"%ff",
    ]), 0..40)) {
        check(&parts.concat())?;
    }

    #[test]
    fn encoder_matches_php(map in any_map()) {
        prop_assert_eq!(http_build_query(&map), php_http_build_query(&map.to_php_json()));
    }
}

/// A sample through the real `b24-event --decode`, to tie the inline PHP above to the tool.
#[test]
fn sample_through_the_b24_event_tool() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut bodies = vec![
        "event=ONCRMDEALUSERFIELDADD&data%5BFIELDS%5D%5BID%5D=5&a[b]c=1&a.b=1&a[=1&[]=1".to_owned(),
        "a[]=1&a[]=2&a[5]=x&a[]=y&a=1&a[b]=2&%00=1&x%5bq%5d=%zz".to_owned(),
    ];
    for _ in 0..20 {
        let body = body().new_tree(&mut runner).expect("strategy").current();
        // The tool's json_encode fails on invalid UTF-8; keep the sample to valid text.
        if std::str::from_utf8(&form::url_decode(body.as_bytes())).is_ok() && !body.contains('\0') {
            bodies.push(body);
        }
    }
    for body in &bodies {
        let tool = String::from_utf8(run_tool(&["--decode"], body.as_bytes())).expect("utf8");
        let tool = tool.strip_suffix('\n').unwrap_or(&tool);
        assert_eq!(ours(body.as_bytes()), tool, "body {body:?}");
        assert_eq!(
            php_parse_str(body.as_bytes()),
            tool,
            "inline PHP differs from the tool on {body:?}"
        );
    }
}

#[test]
fn var_limit_and_nesting_like_php() {
    let many: String = (0..1200).map(|i| format!("k{}={i}&", i % 1100)).collect();
    assert_eq!(ours(many.as_bytes()), php_parse_str(many.as_bytes()));
    let deep = format!("z=0&a[q]=1&a{}=v&a[r]=2", "[x]".repeat(65));
    assert_eq!(ours(deep.as_bytes()), php_parse_str(deep.as_bytes()));
    let empty = Map::new();
    assert_eq!(http_build_query(&empty), php_http_build_query("[]"));
}
