//! The typed view of a decoded event ([`Decoded`]): the envelope (`event`, `event_handler_id`,
//! `ts`), the `auth` block, the `data` block flattened to key paths, and, for the 32 CRM
//! user-field events, the field that changed.
//!
//! Only `event` is required, plus the field id for user-field events; every other key may be
//! absent (empty string or `None`), and optional numbers that are present but not integers are
//! treated as absent rather than rejecting the event, since Bitrix24 never re-sends an event the
//! host refused. Unknown keys inside `data` are kept; unknown top-level keys are ignored.

use std::borrow::Cow;

use b24_plugin_api::{Action, Entity, Secret};

use super::DecodeError;
use super::tree::{Key, Map, Value};

/// A decoded webhook event. `Debug` never shows a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The event code, ASCII upper-cased (codes match case-insensitively).
    pub code: String,
    /// `event_handler_id`, the id of the binding that sent the event.
    pub handler_id: Option<u64>,
    /// `ts`, the portal's send time in Unix seconds.
    pub ts: Option<i64>,
    /// The `auth` block.
    pub auth: AuthBlock,
    /// The `data` block flattened in order, with PHP key paths relative to `data`:
    /// `("FIELDS[ID]", "554")`, `("LIST[0][VALUE]", "x")`. A `data` that is a plain string gives
    /// one pair with an empty key.
    pub data: Vec<(String, String)>,
    /// What kind of event this is.
    pub kind: EventKind,
}

/// The kinds of event the host tells apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// One of the 32 `ONCRM<FAMILY>USERFIELD<ACTION>` events.
    UserField(UserField),
    /// Any other event code (`ONAPPINSTALL`, `ONCRMCONTACTUPDATE`, unknown ones).
    Other,
}

/// The custom field a user-field event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserField {
    /// What happened, from the event code.
    pub action: Action,
    /// The owning entity, from `ENTITY_ID` (or from the event code when that is absent).
    pub entity: Entity,
    /// `data[FIELDS][ENTITY_ID]` as sent; when absent, derived from the event code (`CRM_LEAD`,
    /// ...), or empty for `ONCRMTYPEUSERFIELD*`, whose entity cannot be derived.
    pub entity_id: String,
    /// `data[FIELDS][ID]`.
    pub field_id: u64,
    /// `data[FIELDS][FIELD_NAME]`, empty when absent.
    pub field_name: String,
}

/// The `auth` block. Every field may be absent on the wire: strings are then empty and options
/// `None`; an empty value counts as absent. `Debug` redacts the tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthBlock {
    /// `auth[member_id]`, the portal's stable id.
    pub member_id: String,
    /// `auth[domain]`, the portal's current domain.
    pub domain: String,
    /// `auth[application_token]`, compared with the stored one to authenticate the event.
    pub application_token: Secret,
    /// `auth[client_endpoint]`, the portal's REST base URL.
    pub client_endpoint: Option<String>,
    /// `auth[server_endpoint]`, the OAuth server.
    pub server_endpoint: Option<String>,
    /// `auth[status]`, the one-letter licence state.
    pub status: Option<String>,
    /// The acting user's tokens; `Some` only when `auth[access_token]` is present and non-empty.
    pub user: Option<UserTokens>,
    /// `auth[refresh_token]` (only `ONAPPINSTALL`, `ONAPPUPDATE`, `ONOFFLINEEVENT`).
    pub refresh_token: Option<Secret>,
}

/// The tokens of the user whose action caused the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTokens {
    /// `auth[user_id]`; `None` when absent (Bitrix24's own example sends a user's token without
    /// it): a user caused the event, but which one is unknown.
    pub user_id: Option<u64>,
    /// `auth[access_token]`.
    pub access_token: Secret,
    /// `auth[expires]`, Unix seconds.
    pub expires: Option<i64>,
    /// `auth[scope]`, comma-separated; empty when absent.
    pub scope: String,
}

/// The eight user-field event families (`ONCRM<family>USERFIELD<action>`), each with the entity
/// id its code implies when the portal sends none (`""` for `ONCRMTYPEUSERFIELD*`); its
/// [`Entity`] is the plugin API's mapping, [`Entity::from_entity_id`], as for a sent one.
const FAMILIES: [(&str, &str); 8] = [
    ("LEAD", "CRM_LEAD"),
    ("DEAL", "CRM_DEAL"),
    ("CONTACT", "CRM_CONTACT"),
    ("COMPANY", "CRM_COMPANY"),
    ("QUOTE", "CRM_QUOTE"),
    ("INVOICE", "CRM_INVOICE"),
    ("REQUISITE", "CRM_REQUISITE"),
    ("TYPE", ""),
];

const ACTIONS: [(&str, Action); 4] = [
    ("ADD", Action::Add),
    ("UPDATE", Action::Update),
    ("DELETE", Action::Delete),
    ("SETENUMVALUES", Action::SetEnumValues),
];

/// The family's default entity id (see [`FAMILIES`]) and the action of a user-field event code
/// (upper-case), or `None` for other codes.
/// Whether `code` (upper-case) is one of the user-field events (`ONCRM<family>USERFIELD<action>`).
pub fn is_user_field_code(code: &str) -> bool {
    classify(code).is_some()
}

fn classify(code: &str) -> Option<(&'static str, Action)> {
    let rest = code.strip_prefix("ONCRM")?;
    let (family, rest) =
        FAMILIES.iter().find_map(|&(name, entity)| Some((entity, rest.strip_prefix(name)?)))?;
    let action = rest.strip_prefix("USERFIELD")?;
    let action = ACTIONS.iter().find(|&&(name, _)| name == action)?.1;
    Some((family, action))
}

/// Where each user-field datum may be: the documented key first, then the legacy spellings
/// (`id`/`entityId`/`fieldName`, inside `FIELDS` or directly in `data`).
const FIELD_ID: [(&str, &[&str]); 3] = [
    ("data[FIELDS][ID]", &["FIELDS", "ID"]),
    ("data[FIELDS][id]", &["FIELDS", "id"]),
    ("data[id]", &["id"]),
];
const ENTITY_ID: [(&str, &[&str]); 3] = [
    ("data[FIELDS][ENTITY_ID]", &["FIELDS", "ENTITY_ID"]),
    ("data[FIELDS][entityId]", &["FIELDS", "entityId"]),
    ("data[entityId]", &["entityId"]),
];
const FIELD_NAME: [(&str, &[&str]); 3] = [
    ("data[FIELDS][FIELD_NAME]", &["FIELDS", "FIELD_NAME"]),
    ("data[FIELDS][fieldName]", &["FIELDS", "fieldName"]),
    ("data[fieldName]", &["fieldName"]),
];

/// What a user-field lookup finds at a path under `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot<'a> {
    /// Nothing there.
    Absent,
    /// A string.
    Leaf(&'a str),
    /// A nested array.
    Array,
}

/// The `data` block as the user-field lookups see it: the decoded tree, or the fast path's
/// flattened pairs (`decode::fast`).
pub(super) trait DataLookup {
    /// What is at `path` (e.g. `["FIELDS", "ID"]`) under `data`.
    fn at(&self, path: &[&str]) -> Slot<'_>;
}

impl DataLookup for Option<&Map> {
    fn at(&self, path: &[&str]) -> Slot<'_> {
        match self.and_then(|data| data.get_path(path)) {
            None => Slot::Absent,
            Some(Value::Str(s)) => Slot::Leaf(s),
            Some(Value::Map(_)) => Slot::Array,
        }
    }
}

/// The first of `places` present in `data`, with its display name.
fn lookup<'m>(
    data: &'m impl DataLookup,
    places: &[(&'static str, &[&str])],
) -> Option<(&'static str, Slot<'m>)> {
    places.iter().find_map(|&(name, path)| match data.at(path) {
        Slot::Absent => None,
        found => Some((name, found)),
    })
}

/// A non-empty string at one of `places`; arrays count as absent.
fn lookup_str<'m>(
    data: &'m impl DataLookup,
    places: &[(&'static str, &[&str])],
) -> Option<&'m str> {
    places.iter().find_map(|&(_, path)| match data.at(path) {
        Slot::Leaf(s) if !s.is_empty() => Some(s),
        _ => None,
    })
}

fn user_field(
    default_entity_id: &str,
    action: Action,
    data: &impl DataLookup,
) -> Result<UserField, DecodeError> {
    let field_id = match lookup(data, &FIELD_ID) {
        None | Some((_, Slot::Absent)) => return Err(DecodeError::Missing("data[FIELDS][ID]")),
        Some((key, Slot::Array)) => return Err(DecodeError::NotAString(key)),
        Some((key, Slot::Leaf(raw))) => {
            parse_u64(raw).ok_or_else(|| DecodeError::not_a_number(key, raw))?
        }
    };
    let entity_id = lookup_str(data, &ENTITY_ID).unwrap_or(default_entity_id);
    let (entity_id, entity) = (entity_id.to_owned(), Entity::from_entity_id(entity_id));
    let field_name = lookup_str(data, &FIELD_NAME).unwrap_or_default().to_owned();
    Ok(UserField { action, entity, entity_id, field_id, field_name })
}

/// The kind of the event with upper-case `code`: for a user-field code, its field as `data`
/// gives it (an error when the field id is missing or not a number).
pub(super) fn kind_of(code: &str, data: &impl DataLookup) -> Result<EventKind, DecodeError> {
    Ok(match classify(code) {
        Some((default_entity_id, action)) => {
            EventKind::UserField(user_field(default_entity_id, action, data)?)
        }
        None => EventKind::Other,
    })
}

/// What was found at the top-level `event` key.
pub(super) enum Code {
    /// No such key.
    Absent,
    /// `event[..]`.
    Array,
    /// A string.
    Text(String),
}

/// The event code, ASCII upper-cased; `event` must be a non-empty string.
pub(super) fn event_code(found: Code) -> Result<String, DecodeError> {
    let mut code = match found {
        Code::Absent => return Err(DecodeError::Missing("event")),
        Code::Array => return Err(DecodeError::NotAString("event")),
        Code::Text(code) if code.is_empty() => return Err(DecodeError::Missing("event")),
        Code::Text(code) => code,
    };
    code.make_ascii_uppercase();
    Ok(code)
}

/// Decimal digits only (no sign, no spaces), within `u64`.
pub(super) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An optional `-` and decimal digits, within `i64`.
pub(super) fn parse_i64(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The string of a leaf; arrays and empty strings count as absent.
fn leaf(value: Value) -> Option<String> {
    match value {
        Value::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The `auth[..]` keys the view reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthKey {
    MemberId,
    Domain,
    ApplicationToken,
    ClientEndpoint,
    ServerEndpoint,
    Status,
    RefreshToken,
    AccessToken,
    UserId,
    Expires,
    Scope,
}

impl AuthKey {
    /// The key named `name`, if the view reads it.
    pub(super) fn of(name: &str) -> Option<AuthKey> {
        Some(match name {
            "member_id" => AuthKey::MemberId,
            "domain" => AuthKey::Domain,
            "application_token" => AuthKey::ApplicationToken,
            "client_endpoint" => AuthKey::ClientEndpoint,
            "server_endpoint" => AuthKey::ServerEndpoint,
            "status" => AuthKey::Status,
            "refresh_token" => AuthKey::RefreshToken,
            "access_token" => AuthKey::AccessToken,
            "user_id" => AuthKey::UserId,
            "expires" => AuthKey::Expires,
            "scope" => AuthKey::Scope,
            _ => return None,
        })
    }
}

/// An [`AuthBlock`] being read key by key.
#[derive(Default)]
pub(super) struct AuthFields {
    block: AuthBlock,
    access_token: Option<String>,
    user_id: Option<u64>,
    expires: Option<i64>,
    scope: Option<String>,
}

impl AuthFields {
    /// The string `value` of `auth[key]`; an empty one counts as absent.
    pub(super) fn set(&mut self, key: AuthKey, value: Cow<'_, str>) {
        if value.is_empty() {
            return;
        }
        let block = &mut self.block;
        match key {
            AuthKey::MemberId => block.member_id = value.into_owned(),
            AuthKey::Domain => block.domain = value.into_owned(),
            AuthKey::ApplicationToken => block.application_token = Secret::from(value.into_owned()),
            AuthKey::ClientEndpoint => block.client_endpoint = Some(value.into_owned()),
            AuthKey::ServerEndpoint => block.server_endpoint = Some(value.into_owned()),
            AuthKey::Status => block.status = Some(value.into_owned()),
            AuthKey::RefreshToken => block.refresh_token = Some(Secret::from(value.into_owned())),
            AuthKey::AccessToken => self.access_token = Some(value.into_owned()),
            AuthKey::UserId => self.user_id = parse_u64(&value),
            AuthKey::Expires => self.expires = parse_i64(&value),
            AuthKey::Scope => self.scope = Some(value.into_owned()),
        }
    }

    /// The block read.
    pub(super) fn finish(self) -> AuthBlock {
        let AuthFields { mut block, access_token, user_id, expires, scope } = self;
        block.user = access_token.map(|token| UserTokens {
            user_id,
            access_token: Secret::from(token),
            expires,
            scope: scope.unwrap_or_default(),
        });
        block
    }
}

impl AuthBlock {
    /// Reads the `auth` map, moving its strings out.
    pub fn from_map(auth: Map) -> AuthBlock {
        let mut fields = AuthFields::default();
        for (key, value) in auth.into_entries() {
            let Key::Str(name) = key else { continue };
            let (Some(key), Some(value)) = (AuthKey::of(&name), leaf(value)) else { continue };
            fields.set(key, Cow::Owned(value));
        }
        fields.finish()
    }
}

impl Decoded {
    /// Builds the view from a decoded tree, moving its strings out.
    pub fn from_tree(tree: Map) -> Result<Decoded, DecodeError> {
        let mut event = Code::Absent;
        let mut handler_id = None;
        let mut ts = None;
        let mut auth = None;
        let mut data = None;
        for (key, value) in tree.into_entries() {
            let Key::Str(name) = key else { continue };
            match name.as_str() {
                "event" => {
                    event = match value {
                        Value::Str(s) => Code::Text(s),
                        Value::Map(_) => Code::Array,
                    }
                }
                "event_handler_id" => handler_id = leaf(value).as_deref().and_then(parse_u64),
                "ts" => ts = leaf(value).as_deref().and_then(parse_i64),
                "auth" => auth = Some(value),
                "data" => data = Some(value),
                _ => {}
            }
        }
        let code = event_code(event)?;
        let kind = kind_of(&code, &data.as_ref().and_then(Value::as_map))?;
        let auth = match auth {
            Some(Value::Map(map)) => AuthBlock::from_map(map),
            _ => AuthBlock::default(),
        };
        let data = match data {
            Some(Value::Map(map)) => map.into_flat(),
            Some(Value::Str(s)) => vec![(String::new(), s)],
            None => Vec::new(),
        };
        Ok(Decoded { code, handler_id, ts, auth, data, kind })
    }

    /// The user field, for user-field events.
    pub fn user_field(&self) -> Option<&UserField> {
        match &self.kind {
            EventKind::UserField(field) => Some(field),
            EventKind::Other => None,
        }
    }

    /// The value at `key` in [`Decoded::data`] (e.g. `FIELDS[ID]`), if present.
    pub fn data_value(&self, key: &str) -> Option<&str> {
        self.data.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::form;

    fn view(body: &str) -> Result<Decoded, DecodeError> {
        Decoded::from_tree(form::parse(body.as_bytes()))
    }

    #[test]
    fn classify_all_codes() {
        let mut n = 0;
        for (family_name, default_entity_id) in FAMILIES {
            for (action_name, action) in ACTIONS {
                let code = format!("ONCRM{family_name}USERFIELD{action_name}");
                assert_eq!(classify(&code), Some((default_entity_id, action)), "{code}");
                n += 1;
            }
        }
        assert_eq!(n, 32);
        for code in [
            "ONCRMCONTACTUPDATE",
            "ONAPPINSTALL",
            "ONCRMUSERFIELDADD",
            "ONCRMDEALUSERFIELD",
            "ONCRMDEALUSERFIELDADDX",
            "XONCRMDEALUSERFIELDADD",
            "ONCRMSMARTUSERFIELDADD",
            "",
        ] {
            assert_eq!(classify(code), None, "{code}");
        }
    }

    #[test]
    fn minimal_and_lenient() {
        let d = view("event=onCrmLeadUserFieldDelete&data[FIELDS][ID]=7&ts=x&event_handler_id=-1")
            .expect("decodes");
        assert_eq!(d.code, "ONCRMLEADUSERFIELDDELETE");
        assert_eq!(d.ts, None);
        assert_eq!(d.handler_id, None);
        assert_eq!(d.auth, AuthBlock::default());
        assert_eq!(
            d.kind,
            EventKind::UserField(UserField {
                action: Action::Delete,
                entity: Entity::Lead,
                entity_id: "CRM_LEAD".into(),
                field_id: 7,
                field_name: String::new(),
            })
        );
        let t = view("event=ONCRMTYPEUSERFIELDADD&data[FIELDS][ID]=7").expect("decodes");
        assert_eq!(
            t.user_field().map(|f| (f.entity, f.entity_id.as_str())),
            Some((Entity::Other, ""))
        );
    }

    #[test]
    fn legacy_spellings() {
        let d = view("event=ONCRMINVOICEUSERFIELDADD&data[FIELDS][id]=9&data[FIELDS][entityId]=CRM_INVOICE&data[FIELDS][fieldName]=UF_CRM_X")
            .expect("decodes");
        let f = d.user_field().expect("user field");
        assert_eq!((f.field_id, f.entity, f.field_name.as_str()), (9, Entity::Invoice, "UF_CRM_X"));
        let top = view("event=ONCRMINVOICEUSERFIELDADD&data[id]=10&data[fieldName]=UF_Y")
            .expect("decodes");
        assert_eq!(
            top.user_field().map(|f| (f.field_id, f.field_name.as_str())),
            Some((10, "UF_Y"))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(view("a=1").err(), Some(DecodeError::Missing("event")));
        assert_eq!(view("event=").err(), Some(DecodeError::Missing("event")));
        assert_eq!(view("event[]=x").err(), Some(DecodeError::NotAString("event")));
        assert_eq!(
            view("event=ONCRMDEALUSERFIELDADD").err(),
            Some(DecodeError::Missing("data[FIELDS][ID]"))
        );
        assert_eq!(
            view("event=ONCRMDEALUSERFIELDADD&data=x").err(),
            Some(DecodeError::Missing("data[FIELDS][ID]"))
        );
        assert_eq!(
            view("event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]=abc")
                .map_err(|e| e.to_string())
                .err(),
            Some("`data[FIELDS][ID]` is not a number: \"abc\"".to_owned())
        );
        for bad in ["", "-1", "+1", " 1", "1.0", "18446744073709551616"] {
            assert!(
                matches!(
                    view(&format!(
                        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]={}",
                        bad.replace('+', "%2B")
                    )),
                    Err(DecodeError::NotANumber { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            view("event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID][]=1").err(),
            Some(DecodeError::NotAString("data[FIELDS][ID]"))
        );
        // Other events need no data at all.
        assert!(
            view("event=ONCRMCONTACTUPDATE")
                .is_ok_and(|d| d.kind == EventKind::Other && d.data.is_empty())
        );
    }

    #[test]
    fn auth_tokens_and_debug() {
        let d = view(
            "event=ONAPPINSTALL&auth[access_token]=AT-SECRET&auth[refresh_token]=RT-SECRET\
             &auth[application_token]=APP-SECRET&auth[user_id]=12&auth[expires]=1700000000&auth[scope]=crm\
             &auth[status]=F&auth[member_id]=m&auth[domain]=d&data=plain",
        )
        .expect("decodes");
        let user = d.auth.user.as_ref().expect("user tokens");
        assert_eq!(
            (user.user_id, user.expires, user.scope.as_str()),
            (Some(12), Some(1_700_000_000), "crm")
        );
        assert_eq!(user.access_token.expose(), "AT-SECRET");
        assert_eq!(d.auth.refresh_token.as_ref().map(Secret::expose), Some("RT-SECRET"));
        assert_eq!(d.auth.application_token.expose(), "APP-SECRET");
        assert_eq!(d.auth.status.as_deref(), Some("F"));
        assert_eq!(d.data, vec![(String::new(), "plain".to_owned())]);
        let dbg = format!("{d:?} {:?}", d.auth.user);
        assert!(!dbg.contains("SECRET"), "{dbg}");
        assert!(dbg.contains("ONAPPINSTALL"));

        let no_user_id = view("event=X&auth[access_token]=AT").expect("decodes");
        assert_eq!(no_user_id.auth.user.map(|u| u.user_id), Some(None), "unknown, not user 0");
        let user_zero = view("event=X&auth[access_token]=AT&auth[user_id]=0").expect("decodes");
        assert_eq!(user_zero.auth.user.map(|u| u.user_id), Some(Some(0)));

        let empty_token = view("event=X&auth[access_token]=&auth[user_id]=3").expect("decodes");
        assert_eq!(empty_token.auth.user, None);
        let array_auth = view("event=X&auth[domain][]=d&auth[member_id]=m").expect("decodes");
        assert_eq!(
            (array_auth.auth.domain.as_str(), array_auth.auth.member_id.as_str()),
            ("", "m")
        );
    }
}
