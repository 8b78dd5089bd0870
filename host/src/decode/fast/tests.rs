//! The fast path against the full one: the same view (or error), the same blanked body and the
//! same duplicate key for every body it takes, and the full path for every body it must not.

use bytes::Bytes;
use proptest::prelude::*;

use super::scan;
use crate::decode::encode::{http_build_query, map_from_pairs};
use crate::decode::{Format, decode, decode_full, dedup_key, intake, strip};

/// Checks `body` both ways; whether the fast path took it.
fn check(body: &[u8]) -> Result<bool, TestCaseError> {
    let shown = String::from_utf8_lossy(body).into_owned();
    let full = decode_full(body, Format::Form);
    let stripped = strip::without_secrets(Bytes::copy_from_slice(body), Format::Form);
    let fast = scan(body);
    let taken = fast.is_some();
    if let Some(fast) = fast {
        let blanked = match &fast {
            Ok((_, blanks)) => blanks.apply(body).unwrap_or_else(|| body.to_vec()),
            Err(_) => stripped.0.to_vec(),
        };
        let fast = fast.map(|(event, _)| event);
        prop_assert_eq!(&fast, &full, "body {}", shown);
        prop_assert_eq!(&blanked[..], &stripped.0[..], "body {}", shown);
        if let (Ok(fast), Ok(full)) = (&fast, &full) {
            prop_assert_eq!(dedup_key(fast), dedup_key(full), "body {}", shown);
        }
    }
    // The public faces agree whichever path they take.
    prop_assert_eq!(&decode(body, Format::Form), &full, "body {}", shown);
    match intake(Bytes::copy_from_slice(body), Format::Form) {
        Ok((event, received)) => {
            prop_assert_eq!(Ok(&event), full.as_ref(), "body {}", shown);
            prop_assert_eq!(received.without_secrets(), stripped, "body {}", shown);
        }
        Err(e) => prop_assert_eq!(Err(e), full, "body {}", shown),
    }
    Ok(taken)
}

fn taken(body: &str) -> bool {
    check(body.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "form"))
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("fixture"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_fixture_decodes_alike_and_real_bodies_take_the_fast_path() {
    let all = fixtures();
    assert!(all.len() > 60, "{} fixtures", all.len());
    for (name, body) in &all {
        let fast = check(body).unwrap_or_else(|e| panic!("{name}: {e}"));
        // What the PHP encoder made of a Bitrix24 payload, as opposed to hand-written edge cases
        // (odd-values has keys with spaces, dots, Cyrillic and `[]`).
        let real = !name.starts_with("edge-") && name != "odd-values.form";
        assert!(fast || !real, "{name} took the full path");
    }
}

#[test]
fn plain_variants_take_the_fast_path() {
    for body in [
        "event=ONCRMDEALUSERFIELDADD&data%5BFIELDS%5D%5BID%5D=5",
        // Raw brackets and lower-case escapes read the same.
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]=5&data%5bFIELDS%5d%5bENTITY_ID%5d=CRM_LEAD",
        // Empty pieces, a name without a value, keys the view ignores, integer-like keys.
        "&&event=x&&flag&0=a&-5=b&data[0][01]=c&data[0][-0]=d&data[9223372036854775808]=e&",
        // Values: empty, `+`, `%2B`, bad escapes, a NUL, unicode.
        "event=E&data[a]=&data[b]=+&data[c]=%2B&data[d]=%zz%4%&data[e]=%00x&data[f]=%D0%AF+%F0%9F%98%80",
        "event=E&data=plain&auth=plain&ts=-1&event_handler_id=1x",
        "event=E&auth[refresh_token]&auth[application_token]=",
        "event=E&auth[application_token]=a&auth[refresh_token]=r&auth[access_token]=t",
        "event=E&event_handler_id[x]=1&ts[y]=2&auth[member_id][z]=m",
        "event[a]=1",
        "data[FIELDS][ID]=1",
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID][x]=1",
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]=12a",
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS]=x&data[id]=3&data2[FIELDS][ID]=1",
        "event=oncrmtypeuserfieldupdate&data[FIELDS][id]=3&data[FIELDS][entityId]=&data[entityId]=CRM_7&data[fieldName]=UF_X",
        "event=ONCRMLEADUSERFIELDADD&data[FIELDS][ENTITY_ID][x]=1&data[FIELDS][ID]=4&data[id]=5",
        "",
        "&",
    ] {
        assert!(taken(body), "{body}");
    }
    let deep = format!("event=E&data{}=v", "[k]".repeat(super::MAX_LEVELS - 1));
    assert!(taken(&deep));
}

#[test]
fn every_fallback_trigger_falls_back() {
    let deep = format!("event=E&data{}=v", "[k]".repeat(super::MAX_LEVELS));
    let php_deep = format!("event=E&data{}=v", "[k]".repeat(65));
    let crowded: String =
        (0..200).map(|i| format!("data[k{i}]=v&")).collect::<String>() + "event=E";
    for body in [
        // A name PHP rewrites: spaces and dots in the base, leading spaces, an empty base.
        "event=E&a.b=1",
        "event=E&a+b=1",
        "event=E&a%20b=1",
        "+event=E",
        "%20event=E",
        "event=E&=x",
        "event=E&[x]=1",
        // Bracket oddities: append, the whitespace quirk, junk after `]`, unclosed, nested `[`,
        // an empty or unusual segment.
        "event=E&data[]=1",
        "event=E&data[ ]=1",
        "event=E&data[%09]=1",
        "event=E&data[a]b=1",
        "event=E&data[a=1",
        "event=E&data[a][b=1",
        "event=E&data[a[b]=1",
        "event=E&data]a=1",
        "event=E&data[a b]=1",
        "event=E&data[a+b]=1",
        "event=E&data[%D0%AF]=1",
        "event=E&data[a]]=1",
        // Repeated names, a string made an array or the other way, an array reopened.
        "event=E&event=F",
        "event=E&data[a]=1&data[a]=2",
        "event=E&data=1&data[a]=2",
        "event=E&data[a]=1&data=2",
        "event=E&data[a]=1&data[a][b]=2",
        "event=E&data[a][x]=1&data[b]=2&data[a][y]=3",
        "data[a]=1&event=E&data[b]=2",
        "event=E&auth[domain]=d&auth[domain]=e",
        "event=E&auth[refresh_token]=a&auth%5Brefresh_token%5D=b",
        // Unusual escapes in a name, a NUL in it or in the body.
        "event=E&data%5B%41%5D=1",
        "event=E&dat%61=1",
        "event=E&a%00b=1",
        "event=E&a=1\0&b=2",
        // Not UTF-8: a name, or a value the view keeps.
        "event=E&%FF=1",
        "event=E%FF",
        "event=E&data[a]=%C3",
        "event=E&auth[domain]=%FF",
    ] {
        let fast = check(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert!(!fast, "{body:?} took the fast path");
        assert!(scan(body.as_bytes()).is_none(), "{body:?}");
    }
    for body in [&deep, &php_deep, &crowded] {
        assert!(!taken(body), "{} bytes", body.len());
    }
    // Limits: 1000 variables are taken, one more is not.
    let vars = |n: usize| {
        (0..n).map(|i| format!("g{}[k{}]=v&", i / 100, i % 100)).collect::<String>() + "event=E"
    };
    assert!(taken(&vars(999)));
    assert!(!taken(&vars(1000)));
}

#[test]
fn blanking_keeps_the_body_when_nothing_changes() {
    let body = Bytes::from_static(b"event=E&auth[application_token]=&auth[member_id]=m");
    let (event, received) = intake(body.clone(), Format::Form).expect("decodes");
    assert!(event.auth.application_token.is_empty());
    let (kept, _) = received.without_secrets();
    // The same allocation: nothing was copied.
    assert_eq!(kept.as_ptr(), body.as_ptr());
    let secret = Bytes::from_static(b"auth[refresh_token]=r&event=E&auth%5Bapplication_token%5D=a");
    let (_, received) = intake(secret, Format::Form).expect("decodes");
    let shown = format!("{received:?}");
    assert!(!shown.contains("application_token") && !shown.contains("=a"), "{shown}");
    assert_eq!(
        &received.without_secrets().0[..],
        b"auth[refresh_token]=&event=E&auth%5Bapplication_token%5D="
    );
}

/// Every event code in `shared/bitrix24-events.md`, and a few spelled otherwise.
fn codes() -> Vec<String> {
    let mut codes = Vec::new();
    for family in ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "TYPE"] {
        for action in ["ADD", "UPDATE", "DELETE", "SETENUMVALUES"] {
            codes.push(format!("ONCRM{family}USERFIELD{action}"));
        }
    }
    for code in [
        "ONAPPINSTALL",
        "ONAPPUPDATE",
        "ONAPPUNINSTALL",
        "ONOFFLINEEVENT",
        "ONCRMCONTACTADD",
        "ONCRMCONTACTUPDATE",
        "OnImBotMessageAdd",
        "onCrmDealUserFieldUpdate",
        "",
    ] {
        codes.push(code.to_owned());
    }
    codes
}

/// Values as Bitrix24 sends them and worse: empty, `+`, `%` and `&` in them, unicode, long.
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "", "554", "0", "-7", "18446744073709551616", "abc", " 1", "+", "%2B", "1+1=2", "a&b",
            "100%", "%zz", "Привет, мир", "😀 x", "CRM_DEAL", "CRM_13", "UF_CRM_1724771514",
            "https://oauth.bitrix.info/rest/", "crm,placement,user_brief", "\0", "\t\n",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
        1 => (1usize..20_000).prop_map(|n| "x%".repeat(n / 2)),
    ]
    .boxed()
}

/// Plain key paths for the rest of `data`: `[FIELDS][PHONE][0]`.
fn data_key() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(vec![
            "FIELDS",
            "ID",
            "id",
            "ENTITY_ID",
            "entityId",
            "FIELD_NAME",
            "fieldName",
            "PHONE",
            "0",
            "1",
            "01",
            "-1",
            "VALUE",
            "LANGUAGE_ID",
            "a.b",
            "x-y",
        ]),
        1..5,
    )
    .prop_map(|keys| keys.iter().map(|k| format!("[{k}]")).collect())
}

/// A body shaped as Bitrix24 sends one (its pairs in Bitrix24's order, encoded by PHP's
/// `http_build_query`), with arbitrary values.
fn bitrix_body() -> impl Strategy<Value = String> {
    let envelope = (
        prop::sample::select(codes()),
        proptest::option::of(value()),
        proptest::option::of(value()),
    );
    let fields = (
        prop::sample::select(vec![
            "data[FIELDS][ID]",
            "data[FIELDS][id]",
            "data[id]",
            "data[FIELDS][ID][0]",
            "none",
        ]),
        prop_oneof![3 => "[0-9]{1,6}", 1 => value()],
        proptest::option::of(value()),
        proptest::option::of(value()),
        proptest::collection::vec((data_key(), value()), 0..6),
    );
    let auth = (
        proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "member_id",
                    "domain",
                    "application_token",
                    "client_endpoint",
                    "server_endpoint",
                    "status",
                    "access_token",
                    "expires",
                    "expires_in",
                    "scope",
                    "user_id",
                    "refresh_token",
                ]),
                value(),
            ),
            0..14,
        ),
        any::<bool>(),
    );
    (envelope, fields, auth).prop_map(
        |((code, handler, ts), (id_key, id, entity, name, extra), (auth, plain_data))| {
            let mut pairs: Vec<(String, String)> = vec![("event".into(), code)];
            if let Some(handler) = handler {
                pairs.push(("event_handler_id".into(), handler));
            }
            if plain_data {
                pairs.push(("data".into(), id));
            } else {
                if id_key != "none" {
                    pairs.push((id_key.to_owned(), id));
                }
                if let Some(entity) = entity {
                    pairs.push(("data[FIELDS][ENTITY_ID]".into(), entity));
                }
                if let Some(name) = name {
                    pairs.push(("data[FIELDS][FIELD_NAME]".into(), name));
                }
                pairs.extend(extra.into_iter().map(|(k, v)| (format!("data{k}"), v)));
            }
            if let Some(ts) = ts {
                pairs.push(("ts".into(), ts));
            }
            pairs.extend(auth.into_iter().map(|(k, v)| (format!("auth[{k}]"), v)));
            let pairs: Vec<(&str, &str)> =
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            http_build_query(&map_from_pairs(&pairs))
        },
    )
}

/// A change to a real-shaped body that may or may not leave it plain.
#[derive(Debug, Clone)]
enum Edit {
    /// A copy of pair `i` inserted before pair `j`.
    Repeat(prop::sample::Index, prop::sample::Index),
    /// Pair `i` moved before pair `j`.
    Move(prop::sample::Index, prop::sample::Index),
    /// This piece inserted before pair `j`.
    Insert(&'static str, prop::sample::Index),
    /// Every `%5B`/`%5D` written otherwise.
    Brackets(&'static str, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        (index(), index()).prop_map(|(i, j)| Edit::Repeat(i, j)),
        (index(), index()).prop_map(|(i, j)| Edit::Move(i, j)),
        (
            prop::sample::select(vec![
                "",
                "x",
                "a.b=1",
                "data[]=1",
                "data[ ]=1",
                "data=s",
                "auth=s",
                "event=X",
                "data[FIELDS]=s",
                "data[FIELDS][ID][]=2",
                "auth[refresh_token][x]=r",
                "auth[application_token]",
                "%20auth[refresh_token]=r",
                "auth[refresh_token]x=r",
                "data[a]b=1",
                "data[FIELDS=1",
                "ts=5",
                "x%00=1",
                "k=%FF",
                "event[]=E",
            ]),
            index()
        )
            .prop_map(|(piece, j)| Edit::Insert(piece, j)),
        prop::sample::select(vec![("[", "]"), ("%5b", "%5d"), ("%5B", "]"), ("%5B%5B", "%5D")])
            .prop_map(|(open, close)| Edit::Brackets(open, close)),
    ]
}

fn apply(body: &str, edit: &Edit) -> String {
    let mut pairs: Vec<String> = body.split('&').map(str::to_owned).collect();
    match edit {
        Edit::Repeat(i, j) => {
            let copy = pairs[i.index(pairs.len())].clone();
            pairs.insert(j.index(pairs.len() + 1), copy);
        }
        Edit::Move(i, j) => {
            let pair = pairs.remove(i.index(pairs.len()));
            pairs.insert(j.index(pairs.len() + 1), pair);
        }
        Edit::Insert(piece, j) => pairs.insert(j.index(pairs.len() + 1), (*piece).to_owned()),
        Edit::Brackets(open, close) => {
            return body.replace("%5B", open).replace("%5D", close);
        }
    }
    pairs.join("&")
}

/// Pieces of bodies around the names the view reads, raw and encoded.
fn soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(vec![
            "event",
            "data",
            "auth",
            "ts",
            "event_handler_id",
            "FIELDS",
            "ID",
            "id",
            "x",
            "refresh_token",
            "application_token",
            "member_id",
            "[",
            "]",
            "%5B",
            "%5D",
            "%5b",
            "%5d",
            "[]",
            "=",
            "&",
            "+",
            " ",
            ".",
            "%00",
            "\0",
            "%2B",
            "%FF",
            "é",
            "1",
            "-",
            "_",
            "ONCRMDEALUSERFIELDADD",
            "ONAPPINSTALL",
        ]),
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Names over a small alphabet, so names repeat, nest into each other and interleave.
fn structured() -> impl Strategy<Value = String> {
    let name = (
        prop::sample::select(vec!["event", "data", "auth", "ts", "x", "0", "a.b", " a"]),
        proptest::collection::vec(
            prop::sample::select(vec![
                "[FIELDS]",
                "[ID]",
                "%5BID%5D",
                "[id]",
                "[]",
                "[0]",
                "[ x]",
                "[refresh_token]",
                "%5Bapplication_token%5D",
                "[member_id]",
                "[y",
                "]x",
            ]),
            0..4,
        ),
    )
        .prop_map(|(base, brackets)| format!("{base}{}", brackets.concat()));
    let var = (
        name,
        proptest::option::of(prop::sample::select(vec![
            "1",
            "",
            "554",
            "abc",
            "%FF",
            "a+b",
            "%2B",
            "x%00y",
            "ONCRMLEADUSERFIELDADD",
        ])),
    )
        .prop_map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name,
        });
    let event = proptest::option::of(prop::sample::select(vec![
        "event=ONCRMLEADUSERFIELDADD&data[FIELDS][ID]=1",
        "event=ONAPPINSTALL",
        "event=E&auth[application_token]=a",
    ]));
    (event, proptest::collection::vec(var, 0..10)).prop_map(|(event, vars)| {
        event.into_iter().map(str::to_owned).chain(vars).collect::<Vec<_>>().join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A real-shaped body always takes the fast path, with the full path's results.
    #[test]
    fn real_shaped_bodies_take_the_fast_path_with_the_same_results(body in bitrix_body()) {
        prop_assert!(check(body.as_bytes())?, "not taken: {}", body);
    }

    /// Edited, it takes the fast path only when that gives the full path's results.
    #[test]
    fn edited_bodies_decode_alike(body in bitrix_body(), edits in proptest::collection::vec(edit(), 1..4)) {
        let body = edits.iter().fold(body, |body, edit| apply(&body, edit));
        check(body.as_bytes())?;
    }

    #[test]
    fn soups_decode_alike(body in soup()) {
        check(body.as_bytes())?;
    }

    #[test]
    fn structured_bodies_decode_alike(body in structured()) {
        check(body.as_bytes())?;
    }
}
