//! A test kit for plugin authors (feature `testkit`): realistic events and a fake host, so a
//! unit test can call a handler as the host would.
//!
//! ```toml
//! [dev-dependencies]
//! b24-plugin-api = { path = "...", features = ["testkit"] }   # the same source as [dependencies]
//! ```
//!
//! Events come two ways, both giving exactly the view the host delivers:
//!
//! - from a body as Bitrix24 POSTs it (copy one from the host's `journal show`, or make one with
//!   `b24-host send --print`): [`user_field_from_form`], [`event_from_form`], or
//!   [`parse_form`] for either;
//! - from the fields that matter, the rest filled in as Bitrix24 fills it (portal, user and
//!   tokens made up, `event_handler_id`, `ts`): [`user_field`] and [`event`].
//!
//! ```
//! use b24_plugin_api::{prelude::*, testkit};
//!
//! let event = testkit::user_field("ONCRMDEALUSERFIELDUPDATE")
//!     .field_id(554)
//!     .field_name("UF_CRM_1")
//!     .member_id("a223c6b3710f85df22e9377d6c4f7553")
//!     .build();
//! assert_eq!((event.action, event.entity), (Action::Update, Entity::Deal));
//! assert_eq!(event.data_value("FIELDS[ENTITY_ID]"), Some("CRM_DEAL"));
//!
//! let same = testkit::user_field_from_form(
//!     "event=ONCRMDEALUSERFIELDUPDATE&data%5BFIELDS%5D%5BID%5D=554\
//!      &data%5BFIELDS%5D%5BENTITY_ID%5D=CRM_DEAL&data%5BFIELDS%5D%5BFIELD_NAME%5D=UF_CRM_1\
//!      &auth%5Bmember_id%5D=a223c6b3710f85df22e9377d6c4f7553",
//! );
//! assert_eq!((same.field_id, same.field_name.as_str()), (554, "UF_CRM_1"));
//! ```
//!
//! [`FakeHost`] stands in for the host a plugin is created with: it captures log lines and
//! answers REST calls from a table or a closure.
//!
//! The form decoder is the test kit's own, small one (`form.rs`): this crate cannot use the
//! host's, and the host's tests check that both give the same event for every body in their
//! fixtures. Nothing here changes a type that crosses the ABI.

mod build;
mod form;
mod host;
mod view;

pub use build::{EventBuilder, UserFieldBuilder, defaults, event, user_field};
pub use host::FakeHost;

use crate::{Event, UserFieldEvent};
use form::Value;
use view::{Envelope, classify, leaf, parse_i64, parse_u64, user_field_of};

/// An event as the host delivers it: a user-field event or any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// One of the 32 `ONCRM<ENTITY>USERFIELD<ACTION>` events, for [`crate::Plugin::on_user_field`].
    UserField(UserFieldEvent),
    /// Any other event, for [`crate::Plugin::on_event`].
    Event(Event),
}

/// Why a body is not an event the host would deliver: the reason the host would answer 400 with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError(String);

impl std::fmt::Display for FormError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the host would refuse this body (400): {}", self.0)
    }
}

impl std::error::Error for FormError {}

/// The event a form body (as Bitrix24 POSTs it) becomes when the host delivers it: code
/// upper-cased, the `data` block as (key path, value) pairs in order, the portal and user from
/// `auth`, and a first delivery (`event_id` 1, attempt 1, received at `ts`).
pub fn parse_form(body: &str) -> Result<Received, FormError> {
    let mut top = form::parse(body.as_bytes());
    let mut take = |name: &str| {
        let at = top.iter().position(|(k, _)| k == name)?;
        Some(top.remove(at).1)
    };
    let code = match take("event") {
        None => return Err(FormError("missing `event`".into())),
        Some(Value::Map(_)) => return Err(FormError("`event` is an array, not a string".into())),
        Some(Value::Str(code)) if code.is_empty() => {
            return Err(FormError("missing `event`".into()));
        }
        Some(Value::Str(code)) => code.to_ascii_uppercase(),
    };
    let handler_id = take("event_handler_id").and_then(leaf).as_deref().and_then(parse_u64);
    let ts = take("ts").and_then(leaf).as_deref().and_then(parse_i64);
    let auth = match take("auth") {
        Some(Value::Map(auth)) => auth,
        _ => Vec::new(),
    };
    let data = take("data");
    let field = match classify(&code) {
        None => None,
        Some((default_entity_id, action)) => {
            let empty = Vec::new();
            let map = match &data {
                Some(Value::Map(map)) => map,
                _ => &empty,
            };
            Some(user_field_of(map, default_entity_id, action)?)
        }
    };
    let data = match data {
        Some(Value::Map(map)) => form::flatten(&map),
        Some(Value::Str(s)) => vec![(String::new(), s)],
        None => Vec::new(),
    };
    let envelope = Envelope::from_auth(code, handler_id, ts, auth, data);
    Ok(match field {
        Some(field) => Received::UserField(envelope.user_field(field)),
        None => Received::Event(envelope.event()),
    })
}

/// The user-field event a form body becomes (see [`parse_form`]).
///
/// # Panics
///
/// When the host would refuse the body, or it is not a user-field event: a test's mistake,
/// reported with the reason.
pub fn user_field_from_form(body: &str) -> UserFieldEvent {
    match parse_form(body) {
        Ok(Received::UserField(event)) => event,
        Ok(Received::Event(event)) => panic!(
            "testkit: {} is not a user-field event; use testkit::event_from_form",
            event.code
        ),
        Err(e) => panic!("testkit: {e}"),
    }
}

/// The event a form body of any other event (`ONAPPINSTALL`, `ONCRMCONTACTUPDATE`, ...) becomes
/// (see [`parse_form`]).
///
/// # Panics
///
/// When the host would refuse the body, or it is a user-field event (the host delivers those to
/// `on_user_field`: use [`user_field_from_form`]).
pub fn event_from_form(body: &str) -> Event {
    match parse_form(body) {
        Ok(Received::Event(event)) => event,
        Ok(Received::UserField(event)) => panic!(
            "testkit: {} is a user-field event; use testkit::user_field_from_form",
            event.code
        ),
        Err(e) => panic!("testkit: {e}"),
    }
}

#[cfg(test)]
mod tests;
