//! Decoding of Bitrix24 webhook request bodies: from bytes to a PHP-like tree ([`tree`], built by
//! [`form`] for `application/x-www-form-urlencoded` bodies exactly as PHP's `parse_str`, or by
//! [`json`] for JSON bodies) and from the tree to the typed event view [`Decoded`] ([`view`]).
//! [`encode`] is the inverse: PHP's `http_build_query`, for `send` and the tests.
//!
//! Form bodies in the plain shape Bitrix24 sends take a fast path (`fast`): one scan that
//! builds the same [`Decoded`] without the tree, and finds the secrets [`strip`] blanks. Every
//! other body takes the full path ([`decode_full`]); the results are the same either way.
//!
//! ```
//! use b24_host::decode::{decode, Format, EventKind};
//!
//! let body = b"event=ONCRMDEALUSERFIELDADD&data%5BFIELDS%5D%5BID%5D=554\
//!              &data%5BFIELDS%5D%5BFIELD_NAME%5D=UF_CRM_1&auth%5Bmember_id%5D=m1";
//! let event = decode(body, Format::Form).unwrap();
//! assert_eq!(event.code, "ONCRMDEALUSERFIELDADD");
//! assert_eq!(event.auth.member_id, "m1");
//! let EventKind::UserField(field) = &event.kind else { panic!() };
//! assert_eq!(field.field_id, 554);
//! assert_eq!(field.entity_id, "CRM_DEAL"); // derived from the code when ENTITY_ID is absent
//! ```

pub mod encode;
mod fast;
pub mod form;
pub mod json;
pub mod php_json;
pub mod redact;
mod stored;
pub mod strip;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod tree;
pub mod view;

use bytes::Bytes;

pub use form::{Limits, Parsed, Warnings};
pub use stored::{dedup_key, record};
pub use tree::{Key, KeyRef, Map, Value};
pub use view::{AuthBlock, Decoded, EventKind, UserField, UserTokens, is_user_field_code};

pub use crate::record::Format;

/// Why a body could not be decoded. The `Display` text is a short reason fit for an HTTP 400
/// body; it never contains a token (only data values such as a bad field id, cut to 40
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A required key is absent or empty, e.g. `event`.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// A key that must hold a string holds an array (`event[]=..`).
    #[error("`{0}` is an array, not a string")]
    NotAString(&'static str),
    /// A key that must hold an unsigned integer holds something else.
    #[error("`{key}` is not a number: {value:?}")]
    NotANumber {
        /// The key, e.g. `data[FIELDS][ID]`.
        key: &'static str,
        /// The offending value, cut to 40 characters.
        value: String,
    },
    /// A JSON body whose top level is not an object.
    #[error("JSON body is not an object: it is {0}")]
    JsonNotObject(&'static str),
    /// A JSON body that repeats long keys over so many values that decoding it as its form
    /// encoding would take far longer than its size warrants.
    #[error("JSON body too complex: long keys shared by too many values")]
    JsonTooComplex,
    /// A body that is not valid JSON (or not UTF-8).
    #[error("invalid JSON body at byte {offset}: {reason}")]
    InvalidJson {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong there.
        reason: &'static str,
    },
}

impl DecodeError {
    /// A [`DecodeError::NotANumber`], cutting `value` to 40 characters.
    pub fn not_a_number(key: &'static str, value: &str) -> DecodeError {
        const MAX: usize = 40;
        let value = match value.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        DecodeError::NotANumber { key, value }
    }
}

/// Decodes a request body into the typed event view (the fast path for a plain form body, else
/// [`decode_full`]; the same view either way).
pub fn decode(body: &[u8], format: Format) -> Result<Decoded, DecodeError> {
    if format == Format::Form
        && let Some(fast) = fast::scan(body)
    {
        return fast.map(|(event, _)| event);
    }
    decode_full(body, format)
}

/// Decodes a request body through the PHP-like tree ([`decode_tree`], then
/// [`Decoded::from_tree`]): the reference the fast path is held to.
pub fn decode_full(body: &[u8], format: Format) -> Result<Decoded, DecodeError> {
    Decoded::from_tree(decode_tree(body, format)?.map)
}

/// Decodes a request body as ingress receives it: the view, and the body kept for the journal
/// ([`Received::without_secrets`]). A plain form body is scanned once for both.
pub fn intake(body: Bytes, format: Format) -> Result<(Decoded, Received), DecodeError> {
    if format == Format::Form
        && let Some(fast) = fast::scan(&body)
    {
        let (event, blanks) = fast?;
        return Ok((event, Received { body, format, blanks: Some(blanks) }));
    }
    let event = decode_full(&body, format)?;
    Ok((event, Received { body, format, blanks: None }))
}

/// A request body as received, with where its secrets are when the fast path found them.
/// `Debug` shows its format and length, never its bytes (they hold the tokens).
pub struct Received {
    body: Bytes,
    format: Format,
    blanks: Option<fast::Blanks>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("format", &self.format)
            .field("len", &self.body.len())
            .field("fast", &self.blanks.is_some())
            .finish_non_exhaustive()
    }
}

impl Received {
    /// The body the journal keeps and its format: exactly
    /// [`strip::without_secrets`]`(body, format)` (the same bytes, not copied when nothing is
    /// blanked).
    pub fn without_secrets(self) -> (Bytes, Format) {
        match self.blanks {
            Some(blanks) => match blanks.apply(&self.body) {
                Some(blanked) => (Bytes::from(blanked), self.format),
                None => (self.body, self.format),
            },
            None => strip::without_secrets(self.body, self.format),
        }
    }
}

/// Decodes a request body into the PHP-like tree only, with PHP's default [`Limits`], and
/// reports what PHP would have warned about.
pub fn decode_tree(body: &[u8], format: Format) -> Result<Parsed, DecodeError> {
    match format {
        Format::Form => Ok(form::parse_with(body, &Limits::PHP)),
        Format::Json => json::parse_with(body, &Limits::PHP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts() {
        assert_eq!(DecodeError::Missing("event").to_string(), "missing `event`");
        assert_eq!(
            DecodeError::not_a_number("data[FIELDS][ID]", "abc").to_string(),
            "`data[FIELDS][ID]` is not a number: \"abc\""
        );
        let long = "я".repeat(100);
        let err = DecodeError::not_a_number("data[FIELDS][ID]", &long).to_string();
        assert!(err.ends_with("…\""), "{err}");
        assert_eq!(err.matches('я').count(), 40);
    }
}
