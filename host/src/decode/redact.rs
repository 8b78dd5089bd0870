//! The decoded event as an operator sees it: JSON with every token replaced by `<redacted>`.

use super::Decoded;

/// The decoded event as JSON, tokens replaced by `<redacted>`.
pub fn redacted(event: &Decoded) -> serde_json::Value {
    let auth = &event.auth;
    let hidden = |present: bool| {
        if present { serde_json::json!("<redacted>") } else { serde_json::Value::Null }
    };
    serde_json::json!({
        "event": event.code,
        "event_handler_id": event.handler_id,
        "ts": event.ts,
        "data": event.data.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
        "auth": {
            "member_id": auth.member_id,
            "domain": auth.domain,
            "client_endpoint": auth.client_endpoint,
            "server_endpoint": auth.server_endpoint,
            "status": auth.status,
            "application_token": hidden(!auth.application_token.is_empty()),
            "user_id": auth.user.as_ref().map(|u| u.user_id.map_or(serde_json::json!("unknown"), |id| serde_json::json!(id))),
            "scope": auth.user.as_ref().map(|u| u.scope.clone()),
            "access_token": hidden(auth.user.is_some()),
            "refresh_token": hidden(auth.refresh_token.is_some()),
        },
    })
}
