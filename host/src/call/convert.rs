//! Turns a decoded event into the stable-ABI views plugins receive.

use b24_plugin_api::{
    AppStatus, Delivery, Event, KeyValue, Origin, Portal, ROption, RVec, UserAuth, UserFieldEvent,
};

use super::Envelope;
use crate::{
    decode::{AuthBlock, Decoded, EventKind},
    record::Source,
};

/// The view of one event for one delivery attempt.
#[derive(Debug, Clone)]
pub enum PluginEvent {
    /// One of the 32 user-field events.
    UserField(UserFieldEvent),
    /// Any other event.
    Generic(Event),
}

/// Builds the view of `envelope`, decoded as `event`, for delivery attempt `attempt` (1-based).
pub fn plugin_event(envelope: &Envelope, event: &Decoded, attempt: u32) -> PluginEvent {
    let meta = envelope.meta();
    let delivery = Delivery {
        event_id: envelope.id,
        attempt,
        received_at_ms: meta.received_at_ms,
        origin: match meta.source {
            Source::Online => Origin::Online,
            Source::Offline => Origin::Offline,
        },
        extra: meta
            .extra
            .iter()
            .map(|(k, v)| KeyValue::new(k.as_str(), v.as_str()))
            .chain(user_id_unknown(&event.auth))
            .collect(),
    };
    let data: RVec<KeyValue> =
        event.data.iter().map(|(k, v)| KeyValue::new(k.as_str(), v.as_str())).collect();
    let portal = portal(&event.auth);
    let user = match user(&event.auth) {
        ROption::RNone => offline_user(envelope),
        known => known,
    };
    let handler_id = event.handler_id.into();
    let ts = event.ts.into();
    match &event.kind {
        EventKind::UserField(field) => PluginEvent::UserField(UserFieldEvent {
            code: event.code.as_str().into(),
            action: field.action,
            entity: field.entity,
            entity_id: field.entity_id.as_str().into(),
            field_id: field.field_id,
            field_name: field.field_name.as_str().into(),
            handler_id,
            ts,
            portal,
            user,
            data,
            delivery,
        }),
        EventKind::Other => PluginEvent::Generic(Event {
            code: event.code.as_str().into(),
            handler_id,
            ts,
            portal,
            user,
            data,
            delivery,
        }),
    }
}

fn portal(auth: &AuthBlock) -> Portal {
    Portal {
        member_id: auth.member_id.as_str().into(),
        domain: auth.domain.as_str().into(),
        client_endpoint: auth.client_endpoint.as_deref().map(Into::into).into(),
        server_endpoint: auth.server_endpoint.as_deref().map(Into::into).into(),
        status: auth.status.as_deref().map_or(AppStatus::Unknown, AppStatus::from_code),
    }
}

/// `user_id` = `unknown` for the delivery's extra pairs when a user's token came without
/// `auth[user_id]`: the ABI's `UserAuth::user_id` is then 0, which must not read as user 0.
fn user_id_unknown(auth: &AuthBlock) -> Option<KeyValue> {
    auth.user
        .as_ref()
        .filter(|u| u.user_id.is_none())
        .map(|_| KeyValue::new(b24_plugin_api::EXTRA_USER_ID, b24_plugin_api::USER_ID_UNKNOWN))
}

/// The user who changed the entity of an offline row: the row names them
/// (`EVENT_ADDITIONAL.user_id`, kept as `user_id` among the extra pairs) but carries no token,
/// so the access token is empty. `0` (an agent, an automation) is no user.
fn offline_user(envelope: &Envelope) -> ROption<UserAuth> {
    let meta = envelope.meta();
    if meta.source != Source::Offline {
        return ROption::RNone;
    }
    meta.extra
        .iter()
        .find(|(key, _)| key == "user_id")
        .and_then(|(_, id)| id.parse::<u64>().ok())
        .filter(|id| *id > 0)
        .map(|user_id| UserAuth {
            user_id,
            access_token: b24_plugin_api::Secret::new(""),
            expires: ROption::RNone,
            scope: "".into(),
            refresh_token: ROption::RNone,
        })
        .into()
}

/// The acting user's access token, never a refresh token: the refresh token is single-use and
/// the host's (an install's is the portal's stored pair; a plugin that spent one would break
/// the host's refresh), so `UserAuth::refresh_token` is always none. (Events journaled since
/// the host blanks it carry none anyway, see `decode::strip`.)
fn user(auth: &AuthBlock) -> ROption<UserAuth> {
    auth.user
        .as_ref()
        .map(|tokens| UserAuth {
            user_id: tokens.user_id.unwrap_or(0),
            access_token: tokens.access_token.clone(),
            expires: tokens.expires.into(),
            scope: tokens.scope.as_str().into(),
            refresh_token: ROption::RNone,
        })
        .into()
}
