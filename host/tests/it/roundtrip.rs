//! Property tests of the encoder against the decoder: trees that PHP round-trips unchanged come
//! back unchanged through `http_build_query` + `parse_str`, and through JSON.

use crate::common::trees::php_stable_map;
use b24_host::decode::encode::http_build_query;
use b24_host::decode::{form, json, test_support::PhpJson};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn encode_then_decode_is_identity(map in php_stable_map()) {
        let body = http_build_query(&map);
        let parsed = form::parse_with(body.as_bytes(), &form::Limits::PHP);
        prop_assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        prop_assert_eq!(&parsed.map, &map, "body {}", body);
        // The encoder's output is plain ASCII without raw brackets or spaces.
        prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.%+=&".contains(&b)), "{}", body);
    }

    #[test]
    fn json_of_the_tree_decodes_to_the_tree(map in php_stable_map()) {
        prop_assume!(!map.is_list());
        let text = map.to_php_json();
        prop_assert_eq!(json::parse(text.as_bytes()), Ok(map));
    }
}
