//! The typed view ([`Decoded`]) of real Bitrix24 bodies from `tests/fixtures`, its errors, and
//! robustness against truncated and arbitrary input.

use crate::common::{files_with_ext, fixtures_dir};
use b24_host::decode::{AuthBlock, DecodeError, Decoded, EventKind, Format, UserField, decode};
use b24_plugin_api::{Action, Entity, Secret};
use proptest::prelude::*;

const TS: i64 = 1_727_018_926;
const APP_TOKEN: &str = "51856fefc120afa4b628cc82d3935cce";
const ACCESS_TOKEN: &str = "s6p6eclrvim6da22ft9ch94ekreb52lv";
const REFRESH_TOKEN: &str = "4s386p3q0tr8dy89xvmt96234v3dljg8";

fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn decode_fixture(name: &str) -> Decoded {
    decode(&fixture(name), Format::Form).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[test]
fn all_32_user_field_events() {
    let families = [
        ("LEAD", "CRM_LEAD", Entity::Lead),
        ("DEAL", "CRM_DEAL", Entity::Deal),
        ("CONTACT", "CRM_CONTACT", Entity::Contact),
        ("COMPANY", "CRM_COMPANY", Entity::Company),
        ("QUOTE", "CRM_QUOTE", Entity::Quote),
        ("INVOICE", "CRM_INVOICE", Entity::Invoice),
        ("REQUISITE", "CRM_REQUISITE", Entity::Requisite),
        ("TYPE", "CRM_13", Entity::SmartProcess { type_id: 13 }),
    ];
    let actions = [
        ("ADD", Action::Add),
        ("UPDATE", Action::Update),
        ("DELETE", Action::Delete),
        ("SETENUMVALUES", Action::SetEnumValues),
    ];
    for (family, entity_id, entity) in families {
        for (action_name, action) in actions {
            let code = format!("ONCRM{family}USERFIELD{action_name}");
            let d = decode_fixture(&format!("{code}.form"));
            assert_eq!(d.code, code);
            assert_eq!(d.handler_id, Some(15));
            assert_eq!(d.ts, Some(TS));
            assert_eq!(
                d.kind,
                EventKind::UserField(UserField {
                    action,
                    entity,
                    entity_id: entity_id.to_owned(),
                    field_id: 554,
                    field_name: "UF_CRM_1724771514".to_owned(),
                }),
                "{code}"
            );
            assert_eq!(
                d.data,
                pairs(&[
                    ("FIELDS[ID]", "554"),
                    ("FIELDS[ENTITY_ID]", entity_id),
                    ("FIELDS[FIELD_NAME]", "UF_CRM_1724771514"),
                ])
            );
            let auth = &d.auth;
            assert_eq!(auth.member_id, "a223c6b3710f85df22e9377d6c4f7553");
            assert_eq!(auth.domain, "some-domain.bitrix24.com");
            assert_eq!(auth.application_token.expose(), APP_TOKEN);
            assert_eq!(
                auth.client_endpoint.as_deref(),
                Some("https://some-domain.bitrix24.com/rest/")
            );
            assert_eq!(auth.server_endpoint.as_deref(), Some("https://oauth.bitrix.info/rest/"));
            assert_eq!(auth.status.as_deref(), Some("F"));
            assert_eq!(auth.refresh_token, None);
            let user = auth.user.as_ref().expect("user tokens");
            assert_eq!(user.user_id, Some(1));
            assert_eq!(user.access_token.expose(), ACCESS_TOKEN);
            assert_eq!(user.expires, Some(TS + 3600));
            assert_eq!(user.scope, "crm");
        }
    }
}

#[test]
fn system_event_has_no_user() {
    let d = decode_fixture("system-ONCRMDEALUSERFIELDUPDATE.form");
    assert_eq!(d.auth.user, None);
    assert_eq!(d.auth.status, None);
    assert_eq!(d.auth.application_token.expose(), APP_TOKEN);
    assert_eq!(d.user_field().map(|f| (f.action, f.entity)), Some((Action::Update, Entity::Deal)));
}

#[test]
fn app_install_has_refresh_token() {
    let d = decode_fixture("ONAPPINSTALL.form");
    assert_eq!(d.kind, EventKind::Other);
    assert_eq!(d.auth.refresh_token.as_ref().map(Secret::expose), Some(REFRESH_TOKEN));
    assert!(d.auth.user.is_some());
    assert_eq!(
        d.data,
        pairs(&[("VERSION", "1"), ("ACTIVE", "Y"), ("INSTALLED", "Y"), ("LANGUAGE_ID", "en")])
    );
}

#[test]
fn app_uninstall_has_only_the_application_token() {
    let d = decode_fixture("ONAPPUNINSTALL.form");
    assert_eq!(d.kind, EventKind::Other);
    assert_eq!(d.auth.user, None);
    assert_eq!(d.auth.refresh_token, None);
    assert_eq!(d.auth.status, None);
    assert_eq!(d.auth.application_token.expose(), APP_TOKEN);
    assert_eq!(d.data, pairs(&[("LANGUAGE_ID", "en"), ("CLEAN", "0")]));
}

#[test]
fn smart_process_field() {
    let d = decode_fixture("smart-process.form");
    let f = d.user_field().expect("user field");
    assert_eq!(f.entity, Entity::SmartProcess { type_id: 13 });
    assert_eq!(f.entity_id, "CRM_13");
    assert_eq!(f.field_name, "UF_CRM_13_1742999523");
    assert_eq!(f.action, Action::Add);
}

#[test]
fn legacy_invoice_spelling() {
    let d = decode_fixture("legacy-invoice.form");
    let f = d.user_field().expect("user field");
    assert_eq!((f.field_id, f.entity, f.entity_id.as_str()), (231, Entity::Invoice, "CRM_INVOICE"));
    assert_eq!(f.field_name, "UF_CRM_1724771999");
    assert_eq!(d.auth.user, None);
}

#[test]
fn generic_event_with_lists_and_odd_values() {
    let d = decode_fixture("contact-update.form");
    assert_eq!(d.code, "ONCRMCONTACTUPDATE");
    assert_eq!(d.kind, EventKind::Other);
    assert_eq!(d.handler_id, Some(58));
    assert_eq!(d.data_value("FIELDS[NAME]"), Some("Иван Петров 😀"));
    assert_eq!(d.data_value("FIELDS[PHONE][1][VALUE]"), Some("a&b=c%d+e"));
    assert_eq!(d.data_value("FIELDS[OPENED]"), Some("1"));
    assert_eq!(d.data_value("FIELDS[EXPORT]"), Some("0"));
    assert_eq!(d.data_value("FIELDS[TAGS][2][0]"), Some("z"));
    assert_eq!(d.data_value("FIELDS[EMAIL]"), None);
    assert_eq!(d.auth.user.as_ref().map(|u| u.scope.as_str()), Some("crm,placement,user_brief"));
    assert_eq!(d.auth.status.as_deref(), Some("L"));

    let odd = decode_fixture("odd-values.form");
    assert_eq!(odd.code, "ONCRMDEALUSERFIELDUPDATE");
    assert_eq!(odd.user_field().map(|f| f.field_id), Some(77));
    for (key, value) in [
        ("spaces", "  two  spaces  "),
        ("amp", "a&b&&c"),
        ("eq", "x=y==z"),
        ("pct", "100% %41 %zz %"),
        ("plus", "1+1=2"),
        ("cyrillic", "Привет, мир"),
        ("emoji", "👍🏽 🇷🇺 👨‍👩‍👧"),
        ("brackets", "[a][b]]"),
        ("key with spaces.and.dots", "k"),
        ("Ключ", "значение"),
        ("0", "empty key"),
        ("nested[a b][c.d]", "e"),
    ] {
        assert_eq!(odd.data_value(key), Some(value), "{key}");
    }
    assert_eq!(odd.auth.user, None);
}

#[test]
fn json_body_gives_the_same_decoded() {
    for name in [
        "ONCRMDEALUSERFIELDADD",
        "system-ONCRMDEALUSERFIELDUPDATE",
        "ONAPPINSTALL",
        "smart-process",
    ] {
        let from_json =
            decode(&fixture(&format!("payloads/{name}.json")), Format::Json).expect("json");
        assert_eq!(from_json, decode_fixture(&format!("{name}.form")), "{name}");
    }
}

#[test]
fn errors_are_short_and_never_show_tokens() {
    let no_event = String::from_utf8(fixture("ONCRMDEALUSERFIELDADD.form"))
        .expect("utf8")
        .replace("event=ONCRMDEALUSERFIELDADD&", "");
    let err = decode(no_event.as_bytes(), Format::Form).expect_err("no event");
    assert_eq!(err, DecodeError::Missing("event"));
    assert_eq!(err.to_string(), "missing `event`");

    let bad_id = String::from_utf8(fixture("ONCRMDEALUSERFIELDADD.form"))
        .expect("utf8")
        .replace("%5BID%5D=554", "%5BID%5D=55x");
    let err = decode(bad_id.as_bytes(), Format::Form).expect_err("bad id");
    assert_eq!(err.to_string(), "`data[FIELDS][ID]` is not a number: \"55x\"");
    assert!(!format!("{err} {err:?}").contains(APP_TOKEN));

    let missing_id = b"event=ONCRMDEALUSERFIELDADD&data[FIELDS][FIELD_NAME]=UF_X";
    assert_eq!(decode(missing_id, Format::Form), Err(DecodeError::Missing("data[FIELDS][ID]")));

    for (body, text) in [
        ("[1,2]", "JSON body is not an object: it is an array"),
        ("\"ONAPPINSTALL\"", "JSON body is not an object: it is a string"),
        ("42", "JSON body is not an object: it is a number"),
    ] {
        assert_eq!(
            decode(body.as_bytes(), Format::Json).map_err(|e| e.to_string()),
            Err(text.to_owned())
        );
    }
    let secret_json = format!(r#"{{"auth":{{"application_token":"{APP_TOKEN}"}},"#);
    let err = decode(secret_json.as_bytes(), Format::Json).expect_err("truncated JSON");
    assert!(!format!("{err} {err:?}").contains(APP_TOKEN), "{err}");
}

#[test]
fn debug_never_prints_tokens() {
    for name in ["ONAPPINSTALL.form", "ONCRMDEALUSERFIELDADD.form"] {
        let d = decode_fixture(name);
        let text = format!("{d:?} {d:#?} {:?}", d.auth);
        for token in [APP_TOKEN, ACCESS_TOKEN, REFRESH_TOKEN] {
            assert!(!text.contains(token), "{name}: {text}");
        }
        let tree = b24_host::decode::form::parse(&fixture(name));
        let text = format!("{tree:?}");
        for token in [APP_TOKEN, ACCESS_TOKEN, REFRESH_TOKEN] {
            assert!(!text.contains(token), "{name}: {text}");
        }
    }
    assert_eq!(format!("{:?}", AuthBlock::default().application_token), "Secret(<redacted>)");
}

#[test]
fn every_prefix_of_real_bodies_decodes_without_panic() {
    let mut bodies: Vec<(Vec<u8>, Format)> = files_with_ext(&fixtures_dir(), "form")
        .iter()
        .map(|p| (std::fs::read(p).expect("fixture"), Format::Form))
        .collect();
    bodies.extend(
        files_with_ext(&fixtures_dir().join("payloads"), "json")
            .iter()
            .map(|p| (std::fs::read(p).expect("fixture"), Format::Json)),
    );
    let mut decoded = 0;
    for (body, format) in &bodies {
        // Every prefix of ordinary bodies; a sample of the few large ones.
        let step = if body.len() > 4096 { 97 } else { 1 };
        for end in (0..=body.len()).step_by(step) {
            let _ = decode(&body[..end], *format);
            decoded += 1;
        }
    }
    assert!(decoded > 10_000, "only {decoded} prefixes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&body, Format::Form);
        let _ = decode(&body, Format::Json);
    }

    #[test]
    fn mutated_real_bodies_never_panic(
        index in 0usize..62,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), prop::sample::select(b"[]%=&+.\0{}\":,\\5aZ".to_vec())), 1..8),
    ) {
        let forms = files_with_ext(&fixtures_dir(), "form");
        let mut body = std::fs::read(&forms[index % forms.len()]).expect("fixture");
        if !body.is_empty() {
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
        }
        let _ = decode(&body, Format::Form);
        let _ = decode(&body, Format::Json);
    }
}
