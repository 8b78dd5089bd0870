//! An event's view from its decoded parts, as the host builds it (`decode/view.rs` and
//! `call/convert.rs` there): what the form decoder and the builders both end in.

use abi_stable::std_types::{ROption, RString, RVec};

use crate::{
    Action, AppStatus, Delivery, EXTRA_USER_ID, Entity, Event, KeyValue, Origin, Portal, Secret,
    USER_ID_UNKNOWN, UserAuth, UserFieldEvent,
};

use super::{
    FormError,
    build::defaults,
    form::{self, Value},
};

/// What a user-field event says about its field.
pub(super) struct Field {
    pub(super) action: Action,
    pub(super) entity: Entity,
    pub(super) entity_id: String,
    pub(super) field_id: u64,
    pub(super) field_name: String,
}

/// The parts both views share, as the host fills them.
pub(super) struct Envelope {
    pub(super) code: String,
    pub(super) handler_id: Option<u64>,
    pub(super) ts: Option<i64>,
    pub(super) portal: Portal,
    pub(super) user: Option<UserAuth>,
    pub(super) data: Vec<(String, String)>,
    pub(super) delivery: Delivery,
}

impl Envelope {
    /// Reads the `auth` block as the host does: non-empty strings only; a user only with an
    /// access token; a user's token without `auth[user_id]` marked in `delivery.extra`.
    pub(super) fn from_auth(
        code: String,
        handler_id: Option<u64>,
        ts: Option<i64>,
        auth: form::Map,
        data: Vec<(String, String)>,
    ) -> Envelope {
        let get = |name: &str| {
            let at = auth.iter().position(|(k, _)| k == name)?;
            leaf(auth[at].1.clone())
        };
        let status = get("status");
        let portal = Portal {
            member_id: get("member_id").unwrap_or_default().into(),
            domain: get("domain").unwrap_or_default().into(),
            client_endpoint: get("client_endpoint").map(RString::from).into(),
            server_endpoint: get("server_endpoint").map(RString::from).into(),
            status: status.as_deref().map_or(AppStatus::Unknown, AppStatus::from_code),
        };
        let user_id = get("user_id").as_deref().and_then(parse_u64);
        let expires = get("expires").as_deref().and_then(parse_i64);
        let scope = get("scope").unwrap_or_default();
        let user = get("access_token").map(|token| UserAuth {
            user_id: user_id.unwrap_or(0),
            access_token: Secret::from(token),
            expires: expires.into(),
            scope: scope.into(),
            // The host keeps refresh tokens to itself: a plugin never gets one.
            refresh_token: ROption::RNone,
        });
        let mut extra = RVec::new();
        if user.is_some() && user_id.is_none() {
            extra.push(KeyValue::new(EXTRA_USER_ID, USER_ID_UNKNOWN));
        }
        let delivery = Delivery {
            event_id: 1,
            attempt: 1,
            received_at_ms: ts.unwrap_or(defaults::TS).saturating_mul(1000),
            origin: Origin::Online,
            extra,
        };
        Envelope { code, handler_id, ts, portal, user, data, delivery }
    }

    fn pairs(data: Vec<(String, String)>) -> RVec<KeyValue> {
        data.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect()
    }

    pub(super) fn user_field(self, field: Field) -> UserFieldEvent {
        UserFieldEvent {
            code: self.code.into(),
            action: field.action,
            entity: field.entity,
            entity_id: field.entity_id.into(),
            field_id: field.field_id,
            field_name: field.field_name.into(),
            handler_id: self.handler_id.into(),
            ts: self.ts.into(),
            portal: self.portal,
            user: ROption::from(self.user),
            data: Envelope::pairs(self.data),
            delivery: self.delivery,
        }
    }

    pub(super) fn event(self) -> Event {
        Event {
            code: self.code.into(),
            handler_id: self.handler_id.into(),
            ts: self.ts.into(),
            portal: self.portal,
            user: ROption::from(self.user),
            data: Envelope::pairs(self.data),
            delivery: self.delivery,
        }
    }
}

/// The string of a leaf; arrays and empty strings count as absent.
pub(super) fn leaf(value: Value) -> Option<String> {
    match value {
        Value::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// Decimal digits only, within `u64`.
pub(super) fn parse_u64(s: &str) -> Option<u64> {
    s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten()
}

/// An optional `-` and decimal digits, within `i64`.
pub(super) fn parse_i64(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten()
}

/// The user-field families (`ONCRM<FAMILY>USERFIELD<ACTION>`) with the entity id their code
/// implies (none for `TYPE`, smart processes), and the actions.
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

/// The implied entity id and the action of a user-field code (upper-case).
pub(super) fn classify(code: &str) -> Option<(&'static str, Action)> {
    let rest = code.strip_prefix("ONCRM")?;
    let (entity_id, rest) =
        FAMILIES.iter().find_map(|&(family, entity)| Some((entity, rest.strip_prefix(family)?)))?;
    let action = rest.strip_prefix("USERFIELD")?;
    ACTIONS.iter().find(|&&(name, _)| name == action).map(|&(_, action)| (entity_id, action))
}

/// Reads the field of a user-field event from its `data` block as the host does: the
/// documented keys first, then the legacy spellings (`id`, `entityId`, `fieldName`, inside
/// `FIELDS` or directly in `data`); a field id is required.
pub(super) fn user_field_of(
    data: &form::Map,
    default_entity_id: &str,
    action: Action,
) -> Result<Field, FormError> {
    fn at<'m>(map: &'m form::Map, path: &[&str]) -> Option<&'m Value> {
        let (first, rest) = path.split_first()?;
        let value = &map.iter().find(|(k, _)| k == first)?.1;
        match (rest.is_empty(), value) {
            (true, value) => Some(value),
            (false, Value::Map(inner)) => at(inner, rest),
            (false, Value::Str(_)) => None,
        }
    }
    // Where each datum may be, the documented key first: `FIELDS[<a>]`, `FIELDS[<b>]`, `<b>`.
    let text = |a: &str, b: &str| {
        [vec!["FIELDS", a], vec!["FIELDS", b], vec![b]].into_iter().find_map(|path| {
            match at(data, &path) {
                Some(Value::Str(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            }
        })
    };
    let id_places = [
        ("data[FIELDS][ID]", vec!["FIELDS", "ID"]),
        ("data[FIELDS][id]", vec!["FIELDS", "id"]),
        ("data[id]", vec!["id"]),
    ];
    let field_id = match id_places.iter().find_map(|(name, path)| Some((name, at(data, path)?))) {
        None => return Err(FormError("missing `data[FIELDS][ID]`".into())),
        Some((name, Value::Map(_))) => {
            return Err(FormError(format!("`{name}` is an array, not a string")));
        }
        Some((name, Value::Str(raw))) => {
            parse_u64(raw).ok_or_else(|| FormError(format!("`{name}` is not a number: {raw:?}")))?
        }
    };
    let entity_id = text("ENTITY_ID", "entityId").unwrap_or_else(|| default_entity_id.to_owned());
    Ok(Field {
        action,
        entity: Entity::from_entity_id(&entity_id),
        entity_id,
        field_id,
        field_name: text("FIELD_NAME", "fieldName").unwrap_or_default(),
    })
}
