//! Every committed body in `tests/fixtures` decodes exactly as PHP's `parse_str` decoded it when
//! the fixtures were made (`tests/fixtures/regenerate.sh`), and every JSON payload decodes to
//! the same tree as the form body PHP encoded from it.

use crate::common::{files_with_ext, fixtures_dir, stem};
use b24_host::decode::{Format, decode, decode_tree, form, json, test_support::PhpJson};

#[test]
fn forms_decode_like_php() {
    let forms = files_with_ext(&fixtures_dir(), "form");
    assert!(forms.len() >= 60, "fixtures missing: run tests/fixtures/regenerate.sh");
    for path in &forms {
        let body = std::fs::read(path).expect("reading fixture");
        let expected_path = path.with_extension("json");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let expected = expected.strip_suffix('\n').unwrap_or(&expected);
        let map = form::parse(&body);
        assert_eq!(map.to_php_json(), expected, "{}", path.display());
        let expected_value: serde_json::Value =
            serde_json::from_str(expected).expect("fixture JSON");
        assert_eq!(map.to_json(), expected_value, "{}", path.display());
    }
}

#[test]
fn the_32_user_field_bodies_are_there() {
    let dir = fixtures_dir();
    let mut n = 0;
    for family in ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "TYPE"] {
        for action in ["ADD", "UPDATE", "DELETE", "SETENUMVALUES"] {
            let path = dir.join(format!("ONCRM{family}USERFIELD{action}.form"));
            assert!(path.is_file(), "{} missing", path.display());
            n += 1;
        }
    }
    assert_eq!(n, 32);
}

#[test]
fn json_payloads_decode_like_their_forms() {
    let payloads = files_with_ext(&fixtures_dir().join("payloads"), "json");
    assert!(payloads.len() >= 8, "payload fixtures missing");
    for path in &payloads {
        let payload = std::fs::read(path).expect("reading payload");
        let form_path = fixtures_dir().join(format!("{}.form", stem(path)));
        let body =
            std::fs::read(&form_path).unwrap_or_else(|e| panic!("{}: {e}", form_path.display()));
        let from_json = json::parse(&payload).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(from_json, form::parse(&body), "{}", path.display());
        assert_eq!(
            decode_tree(&payload, Format::Json).map(|p| p.map),
            decode_tree(&body, Format::Form).map(|p| p.map),
        );
        assert_eq!(
            decode(&payload, Format::Json),
            decode(&body, Format::Form),
            "{}",
            path.display()
        );
    }
}

#[test]
fn drop_warnings_match_what_php_dropped() {
    let dir = fixtures_dir();
    let read = |name: &str| std::fs::read(dir.join(name)).expect("fixture");
    let parsed = form::parse_with(&read("edge-max-vars.form"), &form::Limits::PHP);
    assert!(parsed.warnings.vars_exceeded);
    assert_eq!(parsed.map.len(), 1000);
    assert_eq!(
        form::parse_with(&read("edge-deep-70.form"), &form::Limits::PHP).warnings.too_deep,
        1
    );
    assert!(
        form::parse_with(&read("edge-raw-nul.form"), &form::Limits::PHP).warnings.nul_truncated
    );
    assert!(
        form::parse_with(&read("ONCRMDEALUSERFIELDADD.form"), &form::Limits::PHP)
            .warnings
            .is_empty()
    );
}
