//! The event views a plugin receives: [`UserFieldEvent`] for the 32 CRM user-field events and
//! [`Event`] for every other event code.
//!
//! These structs are `#[repr(C)]` and their layout is checked when a plugin is loaded, so they
//! are frozen for an ABI line (see the crate docs). Whatever may grow later travels in the
//! key/value lists (`data`, [`Delivery::extra`]).

use abi_stable::{
    StableAbi,
    std_types::{ROption, RString, RVec},
};

use crate::Secret;

/// What happened to the custom field.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The field was created (`...USERFIELDADD`).
    Add,
    /// The field's settings changed (`...USERFIELDUPDATE`).
    Update,
    /// The field was removed (`...USERFIELDDELETE`); the portal can no longer return it.
    Delete,
    /// The values of a list field changed (`...USERFIELDSETENUMVALUES`).
    SetEnumValues,
}

impl Action {
    /// The action as the suffix of the event code: `ADD`, `UPDATE`, `DELETE`, `SETENUMVALUES`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "ADD",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
            Action::SetEnumValues => "SETENUMVALUES",
        }
    }
}

/// The CRM entity that owns the custom field, from `data[FIELDS][ENTITY_ID]`.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    /// `CRM_LEAD`
    Lead,
    /// `CRM_DEAL`
    Deal,
    /// `CRM_CONTACT`
    Contact,
    /// `CRM_COMPANY`
    Company,
    /// `CRM_QUOTE`
    Quote,
    /// `CRM_INVOICE` (legacy invoices)
    Invoice,
    /// `CRM_REQUISITE`
    Requisite,
    /// `CRM_<n>`: a smart process; `type_id` is the type's `id` from `crm.type.list`.
    SmartProcess {
        /// The `<n>` of `CRM_<n>`.
        type_id: u64,
    },
    /// `CRM_SMART_INVOICE` (new invoices)
    SmartInvoice,
    /// `CRM_SMART_DOCUMENT`
    SmartDocument,
    /// Anything else; the raw value is in `entity_id`.
    Other,
}

impl Entity {
    /// Classifies a raw `ENTITY_ID` such as `CRM_DEAL` or `CRM_13` (case-insensitive).
    pub fn from_entity_id(entity_id: &str) -> Entity {
        let upper = entity_id.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("CRM_") else {
            return Entity::Other;
        };
        match rest {
            "LEAD" => Entity::Lead,
            "DEAL" => Entity::Deal,
            "CONTACT" => Entity::Contact,
            "COMPANY" => Entity::Company,
            "QUOTE" => Entity::Quote,
            "INVOICE" => Entity::Invoice,
            "REQUISITE" => Entity::Requisite,
            "SMART_INVOICE" => Entity::SmartInvoice,
            "SMART_DOCUMENT" => Entity::SmartDocument,
            digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                match digits.parse() {
                    Ok(type_id) => Entity::SmartProcess { type_id },
                    Err(_) => Entity::Other,
                }
            }
            _ => Entity::Other,
        }
    }

    /// A short lower-case name: `lead`, `deal`, ..., `smart_process`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Lead => "lead",
            Entity::Deal => "deal",
            Entity::Contact => "contact",
            Entity::Company => "company",
            Entity::Quote => "quote",
            Entity::Invoice => "invoice",
            Entity::Requisite => "requisite",
            Entity::SmartProcess { .. } => "smart_process",
            Entity::SmartInvoice => "smart_invoice",
            Entity::SmartDocument => "smart_document",
            Entity::Other => "other",
        }
    }
}

/// The application's licence state on the portal (`auth[status]`).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppStatus {
    /// `L`: local application.
    Local,
    /// `F`: free.
    Free,
    /// `D`: demo.
    Demo,
    /// `T`: trial.
    Trial,
    /// `P`: paid.
    Paid,
    /// `S`: subscription.
    Subscription,
    /// Absent (system events carry no status) or a value this version does not know.
    Unknown,
}

impl AppStatus {
    /// Parses the one-letter code Bitrix24 sends.
    pub fn from_code(code: &str) -> AppStatus {
        match code {
            "L" => AppStatus::Local,
            "F" => AppStatus::Free,
            "D" => AppStatus::Demo,
            "T" => AppStatus::Trial,
            "P" => AppStatus::Paid,
            "S" => AppStatus::Subscription,
            _ => AppStatus::Unknown,
        }
    }
}

/// The Bitrix24 portal (account) that sent the event.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// Stable id of the portal (`auth[member_id]`); key per-portal state by this, not the domain.
    pub member_id: RString,
    /// The portal's current domain, e.g. `example.bitrix24.com`; it can change.
    pub domain: RString,
    /// REST base URL of the portal (`auth[client_endpoint]`), when sent.
    pub client_endpoint: ROption<RString>,
    /// The OAuth server for this portal (`auth[server_endpoint]`), when sent.
    pub server_endpoint: ROption<RString>,
    /// The application's licence state, when sent.
    pub status: AppStatus,
}

/// The tokens of the user whose action caused the event. Absent for events fired by automation
/// rules, workflows or agents.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct UserAuth {
    /// The Bitrix24 user id (`auth[user_id]`); 0 when the portal sent none. A user caused the
    /// event either way; when the id is unknown the host also puts [`EXTRA_USER_ID`] =
    /// [`USER_ID_UNKNOWN`] into `delivery.extra`, so that it does not read as user 0: see
    /// [`Delivery::user_id_unknown`].
    pub user_id: u64,
    /// OAuth access token, valid for about an hour from the event; empty for an offline row
    /// (the portal queues who changed the entity, not their token).
    pub access_token: Secret,
    /// Unix time at which `access_token` expires, when sent.
    pub expires: ROption<i64>,
    /// Granted scopes, comma-separated (`crm,user_brief`).
    pub scope: RString,
    /// Always none: b24-host keeps every refresh token to itself (a refresh token is
    /// single-use; a plugin that spent the portal's would break the host's refresh). Ask the
    /// host to call the portal instead (`Host::rest`). Kept for the ABI's layout.
    pub refresh_token: ROption<Secret>,
}

/// One entry of a PHP-style form: the key path and its value, e.g. `FIELDS[ID]` = `554`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyValue {
    /// The key path in PHP bracket notation relative to its block (`FIELDS[ID]`, `LIST[0][VALUE]`).
    pub key: RString,
    /// The value, always a string as on the wire.
    pub value: RString,
}

impl KeyValue {
    /// Makes a pair.
    pub fn new(key: impl Into<RString>, value: impl Into<RString>) -> Self {
        KeyValue { key: key.into(), value: value.into() }
    }
}

/// Where an event came from.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// POSTed by the portal to the host's handler.
    Online,
    /// Pulled by the host from the portal's offline-event queue.
    Offline,
}

/// Delivery information set by the host.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The host's id for this event; the same across retries and restarts, so a plugin can use
    /// it to stay idempotent.
    pub event_id: u64,
    /// 1 for the first delivery to this plugin, 2 for the first retry, and so on.
    pub attempt: u32,
    /// When the host accepted the event, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// Where the event came from.
    pub origin: Origin,
    /// Further delivery facts added by later host versions, as key/value pairs.
    pub extra: RVec<KeyValue>,
}

/// The `delivery.extra` key the host uses for facts about the user: [`USER_ID_UNKNOWN`] when an
/// event carries a user's token but no `auth[user_id]`; the user id of an offline row.
pub const EXTRA_USER_ID: &str = "user_id";

/// The value of [`EXTRA_USER_ID`] when a user caused the event but the portal did not say which.
pub const USER_ID_UNKNOWN: &str = "unknown";

impl Delivery {
    /// The value of the extra pair `key`, if the host set one.
    pub fn extra_value(&self, key: &str) -> Option<&str> {
        lookup(&self.extra, key)
    }

    /// Whether a user caused the event without the portal naming them (`auth[access_token]`
    /// without `auth[user_id]`): then `UserAuth::user_id` is 0 but means "unknown", not user 0.
    pub fn user_id_unknown(&self) -> bool {
        self.extra_value(EXTRA_USER_ID) == Some(USER_ID_UNKNOWN)
    }
}

/// A change to the definition of a CRM custom field (`ONCRM<ENTITY>USERFIELD<ACTION>`).
///
/// The event says only "field `field_id` of `entity` changed": read the field back through the
/// portal's REST API to see what it is now (after [`Action::Delete`] the portal can no longer
/// answer, so remember `field_id -> field_name` yourself).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct UserFieldEvent {
    /// The event code, upper-case, e.g. `ONCRMDEALUSERFIELDUPDATE`.
    pub code: RString,
    /// What happened to the field.
    pub action: Action,
    /// The entity that owns the field.
    pub entity: Entity,
    /// The raw `ENTITY_ID`, e.g. `CRM_DEAL` or `CRM_13`.
    pub entity_id: RString,
    /// The field's id (`data[FIELDS][ID]`).
    pub field_id: u64,
    /// The field's name, e.g. `UF_CRM_1724771514`; empty when the portal sent none.
    pub field_name: RString,
    /// The id of the binding that sent the event (`event_handler_id`), when sent.
    pub handler_id: ROption<u64>,
    /// The portal's send time (`ts`, Unix seconds; one-second resolution, not an order key).
    pub ts: ROption<i64>,
    /// The portal that sent the event.
    pub portal: Portal,
    /// The acting user's tokens; absent for system events.
    pub user: ROption<UserAuth>,
    /// The whole `data` block as sent, in order (`FIELDS[ID]`, `FIELDS[ENTITY_ID]`, ...).
    pub data: RVec<KeyValue>,
    /// Delivery information set by the host.
    pub delivery: Delivery,
}

/// Any event that is not a user-field event (`ONCRMCONTACTUPDATE`, `ONAPPINSTALL`, ...).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event code, upper-case.
    pub code: RString,
    /// The id of the binding that sent the event (`event_handler_id`), when sent.
    pub handler_id: ROption<u64>,
    /// The portal's send time (`ts`, Unix seconds), when sent.
    pub ts: ROption<i64>,
    /// The portal that sent the event.
    pub portal: Portal,
    /// The acting user's tokens; absent for system events.
    pub user: ROption<UserAuth>,
    /// The whole `data` block as sent, in order, e.g. (`FIELDS[ID]`, `134806`).
    pub data: RVec<KeyValue>,
    /// Delivery information set by the host.
    pub delivery: Delivery,
}

/// The parts of the envelope both event views share, read the same way.
macro_rules! envelope_accessors {
    ($($view:ty),*) => {$(
        impl $view {
            /// The value at `key` in `data`, if present (the last one when a key repeats).
            pub fn data_value(&self, key: &str) -> Option<&str> {
                lookup(&self.data, key)
            }

            /// The acting user's tokens; `None` for system events (automation, workflows,
            /// agents).
            pub fn user(&self) -> Option<&UserAuth> {
                self.user.as_ref().into()
            }

            /// The id of the binding that sent the event, when sent.
            pub fn handler_id(&self) -> Option<u64> {
                self.handler_id.into()
            }

            /// The portal's send time (Unix seconds), when sent.
            pub fn ts(&self) -> Option<i64> {
                self.ts.into()
            }
        }
    )*};
}

envelope_accessors!(UserFieldEvent, Event);

fn lookup<'a>(data: &'a [KeyValue], key: &str) -> Option<&'a str> {
    data.iter().rev().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str())
}

impl Portal {
    /// The portal's REST base URL (`auth[client_endpoint]`), when sent.
    pub fn client_endpoint(&self) -> Option<&str> {
        self.client_endpoint.as_ref().map(RString::as_str).into()
    }

    /// The portal's OAuth server (`auth[server_endpoint]`), when sent.
    pub fn server_endpoint(&self) -> Option<&str> {
        self.server_endpoint.as_ref().map(RString::as_str).into()
    }
}

impl UserAuth {
    /// When the access token expires (Unix seconds), when sent.
    pub fn expires(&self) -> Option<i64> {
        self.expires.into()
    }

    /// The refresh token: always `None` from b24-host, which keeps refresh tokens to itself
    /// (see the field).
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref().into()
    }
}

#[cfg(test)]
mod tests {
    use abi_stable::std_types::RNone;

    use super::*;

    #[test]
    fn optional_parts_read_as_options() {
        let user = UserAuth {
            user_id: 7,
            access_token: Secret::new("t"),
            expires: ROption::RSome(5),
            scope: "crm".into(),
            refresh_token: RNone,
        };
        assert_eq!((user.expires(), user.refresh_token()), (Some(5), None));
        let portal = Portal {
            member_id: "m".into(),
            domain: "d".into(),
            client_endpoint: ROption::RSome("https://d/rest/".into()),
            server_endpoint: RNone,
            status: AppStatus::Unknown,
        };
        assert_eq!(portal.client_endpoint(), Some("https://d/rest/"));
        assert_eq!(portal.server_endpoint(), None);
        let event = Event {
            code: "ONAPPINSTALL".into(),
            handler_id: ROption::RSome(3),
            ts: RNone,
            portal,
            user: ROption::RSome(user),
            data: RVec::new(),
            delivery: Delivery {
                event_id: 1,
                attempt: 1,
                received_at_ms: 0,
                origin: Origin::Online,
                extra: RVec::new(),
            },
        };
        assert_eq!(event.user().map(|u| u.user_id), Some(7));
        assert_eq!((event.handler_id(), event.ts()), (Some(3), None));
    }
}
