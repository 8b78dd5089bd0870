//! The event builders: [`user_field`] and [`event`] start from what Bitrix24 sends by default
//! and change only what a test is about.

use crate::{Action, Entity, Event, Origin, UserFieldEvent};

use super::{
    form::Value,
    view::{Envelope, Field, classify},
};

/// The portal, user and delivery the builders start from: what `b24-host send` and the
/// `b24-event` tool send by default.
pub mod defaults {
    /// `auth[member_id]`.
    pub const MEMBER_ID: &str = "a223c6b3710f85df22e9377d6c4f7553";
    /// `auth[domain]`.
    pub const DOMAIN: &str = "some-domain.bitrix24.com";
    /// `auth[user_id]`.
    pub const USER_ID: u64 = 1;
    /// `auth[access_token]` (made up).
    pub const ACCESS_TOKEN: &str = "s6p6eclrvim6da22ft9ch94ekreb52lv";
    /// `event_handler_id`.
    pub const HANDLER_ID: u64 = 15;
    /// `ts`, the portal's send time (Unix seconds).
    pub const TS: i64 = 1_727_018_926;
    /// `data[FIELDS][ID]` of a user-field event.
    pub const FIELD_ID: u64 = 554;
    /// `data[FIELDS][FIELD_NAME]` of a user-field event.
    pub const FIELD_NAME: &str = "UF_CRM_1724771514";
}

/// Starts a user-field event with code `code` (any case), e.g. `ONCRMDEALUSERFIELDUPDATE`:
/// field [`defaults::FIELD_ID`] named [`defaults::FIELD_NAME`] of the entity the code names
/// (`CRM_DEAL`; `CRM_13`, a smart process, for `ONCRMTYPEUSERFIELD*`), caused by user 1 of the
/// default portal. Change what the test is about, then [`UserFieldBuilder::build`].
///
/// # Panics
///
/// When `code` is not one of the 32 user-field codes (use [`event`]).
pub fn user_field(code: &str) -> UserFieldBuilder {
    let code = code.to_ascii_uppercase();
    let Some((entity_id, action)) = classify(&code) else {
        panic!("testkit: {code} is not a user-field event code; use testkit::event");
    };
    let entity_id = if entity_id.is_empty() { "CRM_13" } else { entity_id };
    UserFieldBuilder {
        envelope: Builder::new(code),
        action,
        field_id: defaults::FIELD_ID,
        entity_id: entity_id.to_owned(),
        field_name: defaults::FIELD_NAME.to_owned(),
    }
}

/// Starts any other event with code `code` (any case), e.g. `ONCRMCONTACTUPDATE`, with an empty
/// `data` block (add pairs with [`EventBuilder::data`]), caused by user 1 of the default portal.
///
/// # Panics
///
/// When `code` is a user-field code (the host delivers those as [`UserFieldEvent`]: use
/// [`user_field`]).
pub fn event(code: &str) -> EventBuilder {
    let code = code.to_ascii_uppercase();
    if classify(&code).is_some() {
        panic!("testkit: {code} is a user-field event code; use testkit::user_field");
    }
    EventBuilder { envelope: Builder::new(code) }
}

/// Builds a [`UserFieldEvent`]; see [`user_field`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the event"]
pub struct UserFieldBuilder {
    envelope: Builder,
    action: Action,
    field_id: u64,
    entity_id: String,
    field_name: String,
}

/// Builds an [`Event`]; see [`event`].
#[derive(Debug, Clone)]
#[must_use = "call .build() to get the event"]
pub struct EventBuilder {
    envelope: Builder,
}

/// What both builders set: the envelope, portal, user and delivery.
#[derive(Debug, Clone)]
struct Builder {
    code: String,
    handler_id: Option<u64>,
    ts: Option<i64>,
    member_id: String,
    domain: String,
    user_id: Option<u64>,
    data: Vec<(String, String)>,
    event_id: u64,
    attempt: u32,
    origin: Origin,
}

impl Builder {
    fn new(code: String) -> Builder {
        Builder {
            code,
            handler_id: Some(defaults::HANDLER_ID),
            ts: Some(defaults::TS),
            member_id: defaults::MEMBER_ID.to_owned(),
            domain: defaults::DOMAIN.to_owned(),
            user_id: Some(defaults::USER_ID),
            data: Vec::new(),
            event_id: 1,
            attempt: 1,
            origin: Origin::Online,
        }
    }

    /// The `auth` block Bitrix24 would send for these settings (as `b24-event` builds it).
    fn envelope(self, data: Vec<(String, String)>) -> Envelope {
        let ts = self.ts.unwrap_or(defaults::TS);
        let mut auth = Vec::new();
        let mut put = |key: &str, value: String| auth.push((key.to_owned(), Value::Str(value)));
        if let Some(user_id) = self.user_id {
            put("access_token", defaults::ACCESS_TOKEN.to_owned());
            put("expires", (ts + 3600).to_string());
            put("scope", "crm".to_owned());
            put("status", "F".to_owned());
            put("user_id", user_id.to_string());
        }
        put("domain", self.domain.clone());
        put("server_endpoint", "https://oauth.bitrix.info/rest/".to_owned());
        put("client_endpoint", format!("https://{}/rest/", self.domain));
        put("member_id", self.member_id);
        let mut envelope = Envelope::from_auth(self.code, self.handler_id, self.ts, auth, data);
        envelope.delivery.event_id = self.event_id;
        envelope.delivery.attempt = self.attempt;
        envelope.delivery.origin = self.origin;
        envelope
    }
}

/// The setters both builders share.
macro_rules! envelope_setters {
    ($($builder:ty),*) => {$(
        impl $builder {
            /// `auth[member_id]`, the portal's id.
            pub fn member_id(mut self, member_id: &str) -> Self {
                self.envelope.member_id = member_id.to_owned();
                self
            }

            /// `auth[domain]` (and the client endpoint `https://<domain>/rest/`).
            pub fn domain(mut self, domain: &str) -> Self {
                self.envelope.domain = domain.to_owned();
                self
            }

            /// The user who caused the event (`auth[user_id]`, with a made-up access token).
            pub fn user_id(mut self, user_id: u64) -> Self {
                self.envelope.user_id = Some(user_id);
                self
            }

            /// No user caused the event (automation, a workflow, an agent): no user tokens.
            pub fn system(mut self) -> Self {
                self.envelope.user_id = None;
                self
            }

            /// `event_handler_id`, the binding that sent it.
            pub fn handler_id(mut self, handler_id: u64) -> Self {
                self.envelope.handler_id = Some(handler_id);
                self
            }

            /// `ts`, the portal's send time (Unix seconds).
            pub fn ts(mut self, ts: i64) -> Self {
                self.envelope.ts = Some(ts);
                self
            }

            /// Appends a pair to the `data` block (`FIELDS[NAME]`, `LIST[0][VALUE]`).
            pub fn data(mut self, key: &str, value: &str) -> Self {
                self.envelope.data.push((key.to_owned(), value.to_owned()));
                self
            }

            /// The host's event id (`delivery.event_id`; default 1).
            pub fn event_id(mut self, event_id: u64) -> Self {
                self.envelope.event_id = event_id;
                self
            }

            /// The delivery attempt (`delivery.attempt`; 2 is the first retry).
            pub fn attempt(mut self, attempt: u32) -> Self {
                self.envelope.attempt = attempt;
                self
            }

            /// Pulled from the portal's offline queue rather than POSTed.
            pub fn offline(mut self) -> Self {
                self.envelope.origin = Origin::Offline;
                self
            }
        }
    )*};
}

envelope_setters!(UserFieldBuilder, EventBuilder);

impl UserFieldBuilder {
    /// `data[FIELDS][ID]`.
    pub fn field_id(mut self, field_id: u64) -> Self {
        self.field_id = field_id;
        self
    }

    /// `data[FIELDS][FIELD_NAME]`.
    pub fn field_name(mut self, field_name: &str) -> Self {
        self.field_name = field_name.to_owned();
        self
    }

    /// `data[FIELDS][ENTITY_ID]`, e.g. `CRM_DEAL` or `CRM_13` (sets `entity` too).
    pub fn entity_id(mut self, entity_id: &str) -> Self {
        self.entity_id = entity_id.to_owned();
        self
    }

    /// The event.
    pub fn build(self) -> UserFieldEvent {
        let mut data = vec![
            ("FIELDS[ID]".to_owned(), self.field_id.to_string()),
            ("FIELDS[ENTITY_ID]".to_owned(), self.entity_id.clone()),
            ("FIELDS[FIELD_NAME]".to_owned(), self.field_name.clone()),
        ];
        data.extend(self.envelope.data.iter().cloned());
        let field = Field {
            action: self.action,
            entity: Entity::from_entity_id(&self.entity_id),
            entity_id: self.entity_id,
            field_id: self.field_id,
            field_name: self.field_name,
        };
        self.envelope.envelope(data).user_field(field)
    }
}

impl EventBuilder {
    /// The event.
    pub fn build(self) -> Event {
        let data = self.envelope.data.clone();
        self.envelope.envelope(data).event()
    }
}
