//! Event bindings (`event.bind`, `event.unbind`, `event.get`), the events the portal offers the
//! app (`events`) and the app's own state (`app.info`), with the checks of Bitrix24's `rest`
//! module (`lib/api/event.php`, `HandlerHelper::checkCallback`, `EventTable::checkUniq`).
//!
//! **Who may call**: every method here needs the application's OAuth: through an [incoming
//! webhook](FakePortal::add_webhook) `event.bind`, `event.unbind`, `event.get` and `events`
//! answer 403 `WRONG_AUTH_TYPE`. The app's user is user [`APP_USER_ID`], an administrator
//! unless [`FakePortal::set_app_user_admin`] says otherwise.
//!
//! - `event.bind` `{event, handler?, event_type?, auth_type?, auth_connector?, options?}`,
//!   keys case-insensitive, checked in the portal's order:
//!   1. `auth_type` > 0 of another user by a non-admin: 403 `ACCESS_DENIED` "Access denied!
//!      Event binding with AUTH_TYPE requires administrator access rights"; a non-admin's
//!      binding is always made for themselves (`auth_type` = their id).
//!   2. no `event`: 400 `ERROR_ARGUMENT` "Argument 'EVENT' is null or empty".
//!   3. `event_type` other than `online`/`offline`: 400 `ERROR_ARGUMENT` "Value must be one of
//!      {online|offline}".
//!   4. offline by a non-admin: 403 `ACCESS_DENIED` "Access denied! Offline events binding
//!      requires administrator access rights". An offline binding takes no handler and no
//!      `auth_type` (both are dropped, not refused).
//!   5. online without `handler`: 400 `ERROR_ARGUMENT` "Argument 'HANDLER' is null or empty".
//!   6. a handler whose host is empty or has no dot after its first character (`localhost`):
//!      400 `ERROR_WRONG_HANDLER_URL` "Wrong handler URL"; a scheme other than http/https: 400
//!      `ERROR_UNSUPPORTED_PROTOCOL` "Unsupported handler protocol".
//!   7. an event the portal does not offer ([`FakePortal::set_events_offered`]): 400
//!      `ERROR_EVENT_NOT_FOUND` "Event not found".
//!   8. `ONOFFLINEEVENT` offline: 400 `ERROR_ARGUMENT` "Offline event cannot be registered for
//!      this event.".
//!   9. the same (event, handler, auth_type, connector) bound already: 400 `ERROR_CORE` "Unable
//!      to set event handler: Handler already binded".
//!
//!   `options` are kept only where the event allows them: `minTimeout` (an integer) of
//!   `ONOFFLINEEVENT`. The binding's connector is the call's `auth_connector`. Answers `true`.
//! - `event.unbind` `{event, handler?, event_type?, auth_type?}`: `event` required; offline:
//!   admin only (403 "Access denied! Offline events unbinding requires administrator access
//!   rights"), removes the offline bindings of the call's connector; online: `handler`
//!   required (400 "Argument 'HANDLER' is null or empty"), removes that event's bindings to
//!   that handler, whatever their connector, only those of `auth_type` when given (a non-admin:
//!   only their own). Answers `{"count": n}`.
//! - `event.get`: the app's bindings in the order made, `{event, handler, auth_type, offline:
//!   0}` online and `{event, connector_id, offline: 1}` offline; a non-admin sees only their own.
//! - `events`: the codes the portal offers the app (default: [`DEFAULT_EVENTS`]).
//! - `app.info`: `{ID, CODE, VERSION, STATUS, INSTALLED, PAYMENT_EXPIRED, DAYS, LANGUAGE_ID,
//!   LICENSE}`; `INSTALLED` is false until [`FakePortal::set_installation_finished`].
//!
//! Binding feeds no event by itself: tests post events and push offline rows themselves.

use serde_json::{Map, Value, json};

use super::{
    FakePortal,
    offline::param_ci,
    state::{ApiError, CallResult, State},
    wire::value_text,
};

/// The user whose tokens the app holds (the installer).
pub const APP_USER_ID: u64 = 1;

/// The codes the fake offers an app by default: the 32 user-field events, the CRM entities'
/// add, update and delete, and the application's own events.
pub const DEFAULT_EVENTS: &[&str] = &[
    "ONAPPINSTALL",
    "ONAPPUNINSTALL",
    "ONAPPUPDATE",
    "ONAPPTEST",
    "ONAPPMETHODCONFIRM",
    "ONOFFLINEEVENT",
];

const FAMILIES: [&str; 8] =
    ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "TYPE"];
const ACTIONS: [&str; 4] = ["ADD", "UPDATE", "DELETE", "SETENUMVALUES"];
const ENTITIES: [&str; 8] =
    ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "DYNAMICITEM"];

/// Every code the fake offers by default, upper-case.
pub(super) fn default_events() -> Vec<String> {
    let user_fields =
        FAMILIES.iter().flat_map(|f| ACTIONS.iter().map(move |a| format!("ONCRM{f}USERFIELD{a}")));
    let entities =
        ENTITIES.iter().flat_map(|e| ACTIONS[..3].iter().map(move |a| format!("ONCRM{e}{a}")));
    DEFAULT_EVENTS.iter().map(|c| (*c).to_owned()).chain(user_fields).chain(entities).collect()
}

/// One `event.bind` subscription.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Binding {
    pub(super) event: String,
    /// `""` for offline bindings.
    pub(super) handler: String,
    /// The user whose tokens go with the event (`"0"`: the user who caused it).
    pub(super) auth_type: String,
    pub(super) offline: bool,
    pub(super) auth_connector: Option<String>,
    pub(super) options: Value,
}

impl Binding {
    /// The shape of `event.get`.
    pub(super) fn short(&self) -> Value {
        if self.offline {
            json!({
                "event": self.event,
                "connector_id": self.auth_connector.clone().unwrap_or_default(),
                "offline": 1,
            })
        } else {
            json!({
                "event": self.event,
                "handler": self.handler,
                "auth_type": self.auth_type,
                "offline": 0,
            })
        }
    }

    /// Everything, for [`FakePortal::bindings`].
    pub(super) fn full(&self) -> Value {
        json!({
            "event": self.event,
            "handler": self.handler,
            "auth_type": self.auth_type,
            "offline": i32::from(self.offline),
            "auth_connector": self.auth_connector,
            "options": self.options,
        })
    }

    fn same_as(&self, other: &Binding) -> bool {
        self.event == other.event
            && self.handler == other.handler
            && self.auth_type == other.auth_type
            && self.auth_connector == other.auth_connector
    }
}

impl FakePortal {
    /// The subscriptions made with `event.bind` (minus those removed by `event.unbind`), in
    /// order: `{"event", "handler" ("" for offline), "auth_type" ("0" unless given),
    /// "offline" (0/1), "auth_connector" (string or null), "options" (object or null)}`.
    pub fn bindings(&self) -> Vec<Value> {
        self.shared.lock().bindings.iter().map(Binding::full).collect()
    }

    /// Deletes every binding of the app, as Bitrix24 does when the app is updated or
    /// uninstalled.
    pub fn clear_bindings(&self) {
        self.shared.lock().bindings.clear();
    }

    /// Binds `event` offline for `connector`, as another application (or another connector of
    /// this one) would: from now on changes of that event are queued for it too.
    pub fn bind_offline_for(&self, connector: &str, event: &str) {
        self.shared.lock().bindings.push(Binding {
            event: event.to_ascii_uppercase(),
            handler: String::new(),
            auth_type: "0".into(),
            offline: true,
            auth_connector: Some(connector.to_owned()).filter(|c| !c.is_empty()),
            options: Value::Null,
        });
    }

    /// The codes the portal offers the app (`events`, and what `event.bind` accepts); the
    /// default is every code of [`DEFAULT_EVENTS`], the 32 user-field codes and the CRM
    /// entities' add, update and delete.
    pub fn set_events_offered(&self, codes: &[&str]) {
        self.shared.lock().events_offered = codes.iter().map(|c| c.to_ascii_uppercase()).collect();
    }

    /// Whether the app's installation is finished (`app.info` `INSTALLED`; default true). A
    /// real portal sends no events while it is not; the fake only reports it.
    pub fn set_installation_finished(&self, finished: bool) {
        self.shared.lock().installation_finished = finished;
    }
}

impl State {
    /// `event.bind`, `event.unbind`, `event.get`, `events`, `app.info`.
    pub(super) fn call_binding(
        &mut self,
        method: &str,
        params: &Map<String, Value>,
        webhook: bool,
    ) -> CallResult {
        if webhook && method != "app.info" {
            return Err(ApiError::new(
                403,
                "WRONG_AUTH_TYPE",
                "Current authorization type is denied for this method",
            ));
        }
        match method {
            "event.bind" => self.event_bind(params),
            "event.unbind" => self.event_unbind(params),
            "event.get" => {
                let admin = self.app_user_admin;
                let mine = APP_USER_ID.to_string();
                let list: Vec<Value> = self
                    .bindings
                    .iter()
                    .filter(|b| admin || b.auth_type == mine)
                    .map(Binding::short)
                    .collect();
                Ok((Value::Array(list), Vec::new()))
            }
            "events" => Ok((json!(self.events_offered), Vec::new())),
            "app.info" if webhook => Ok((json!({ "LICENSE": "en_project" }), Vec::new())),
            "app.info" => Ok((
                json!({
                    "ID": 7,
                    "CODE": self.opts.client_id,
                    "VERSION": 1,
                    "STATUS": "L",
                    "INSTALLED": self.installation_finished,
                    "PAYMENT_EXPIRED": "N",
                    "DAYS": null,
                    "LANGUAGE_ID": "en",
                    "LICENSE": "en_project",
                }),
                Vec::new(),
            )),
            _ => Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }

    fn event_bind(&mut self, params: &Map<String, Value>) -> CallResult {
        let text = |k: &str| param_ci(params, k).map(value_text).unwrap_or_default();
        let admin = self.app_user_admin;
        let event = text("event").trim().to_ascii_uppercase();
        let event_type = text("event_type").trim().to_ascii_lowercase();
        let mut user: u64 = text("auth_type").trim().parse::<i64>().unwrap_or(0).max(0) as u64;
        let mut handler = text("handler");
        if user > 0 {
            if !admin && user != APP_USER_ID {
                return Err(denied(
                    "Event binding with AUTH_TYPE requires administrator access rights",
                ));
            }
        } else if !admin {
            user = APP_USER_ID;
        }
        if event.is_empty() {
            return Err(null_argument("EVENT"));
        }
        let offline = match event_type.as_str() {
            "" | "online" => false,
            "offline" => true,
            _ => {
                return Err(ApiError::new(
                    400,
                    "ERROR_ARGUMENT",
                    "Value must be one of {online|offline}",
                ));
            }
        };
        if offline {
            if !admin {
                return Err(denied("Offline events binding requires administrator access rights"));
            }
            handler.clear();
            user = 0;
        } else if handler.is_empty() {
            return Err(null_argument("HANDLER"));
        }
        if !handler.is_empty() {
            check_handler(&handler)?;
        }
        if !self.events_offered.contains(&event) {
            return Err(ApiError::new(400, "ERROR_EVENT_NOT_FOUND", "Event not found"));
        }
        if offline && event == "ONOFFLINEEVENT" {
            return Err(ApiError::new(
                400,
                "ERROR_ARGUMENT",
                "Offline event cannot be registered for this event.",
            ));
        }
        let options = match param_ci(params, "options") {
            Some(Value::Object(given)) if event == "ONOFFLINEEVENT" => match given
                .get("minTimeout")
                .map(value_text)
                .and_then(|t| t.trim().parse::<i64>().ok())
            {
                Some(timeout) => json!({ "minTimeout": timeout }),
                None => Value::Null,
            },
            _ => Value::Null,
        };
        let binding = Binding {
            event,
            handler,
            auth_type: user.to_string(),
            offline,
            auth_connector: Some(text("auth_connector")).filter(|c| !c.is_empty()),
            options,
        };
        if self.bindings.iter().any(|b| b.same_as(&binding)) {
            return Err(ApiError::new(
                400,
                "ERROR_CORE",
                "Unable to set event handler: Handler already binded",
            ));
        }
        self.bindings.push(binding);
        Ok((json!(true), Vec::new()))
    }

    fn event_unbind(&mut self, params: &Map<String, Value>) -> CallResult {
        let text = |k: &str| param_ci(params, k).map(value_text).unwrap_or_default();
        let admin = self.app_user_admin;
        let event = text("event").trim().to_ascii_uppercase();
        if event.is_empty() {
            return Err(null_argument("EVENT"));
        }
        let offline = match text("event_type").trim().to_ascii_lowercase().as_str() {
            "" | "online" => false,
            "offline" => true,
            _ => {
                return Err(ApiError::new(
                    400,
                    "ERROR_ARGUMENT",
                    "Value must be one of {online|offline}",
                ));
            }
        };
        let handler = text("handler");
        let before = self.bindings.len();
        if offline {
            if !admin {
                return Err(denied(
                    "Offline events unbinding requires administrator access rights",
                ));
            }
            let connector = Some(text("auth_connector")).filter(|c| !c.is_empty());
            self.bindings.retain(|b| {
                !(b.event == event && b.handler.is_empty() && b.auth_connector == connector)
            });
        } else {
            if handler.is_empty() {
                return Err(null_argument("HANDLER"));
            }
            let user = match param_ci(params, "auth_type") {
                Some(given) => {
                    if !admin {
                        return Err(denied(
                            "Event unbinding with AUTH_TYPE requires administrator access rights",
                        ));
                    }
                    Some(value_text(given).trim().parse::<u64>().unwrap_or(0).to_string())
                }
                None if !admin => Some(APP_USER_ID.to_string()),
                None => None,
            };
            self.bindings.retain(|b| {
                !(b.event == event
                    && b.handler == handler
                    && user.as_ref().is_none_or(|u| &b.auth_type == u))
            });
        }
        Ok((json!({ "count": before - self.bindings.len() }), Vec::new()))
    }
}

fn denied(why: &str) -> ApiError {
    ApiError::new(403, "ACCESS_DENIED", &format!("Access denied! {why}"))
}

fn null_argument(name: &str) -> ApiError {
    ApiError::new(400, "ERROR_ARGUMENT", &format!("Argument '{name}' is null or empty"))
}

/// `HandlerHelper::checkCallback`: a host with a dot after its first character, http or https.
fn check_handler(handler: &str) -> Result<(), ApiError> {
    let (scheme, rest) = handler.split_once("://").unwrap_or(("", handler));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| format!("{h}]")).unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default().to_owned()
    };
    if scheme.is_empty() || host.is_empty() || host.find('.').is_none_or(|dot| dot == 0) {
        return Err(ApiError::new(400, "ERROR_WRONG_HANDLER_URL", "Wrong handler URL"));
    }
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(ApiError::new(
            400,
            "ERROR_UNSUPPORTED_PROTOCOL",
            "Unsupported handler protocol",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_portal::testkit::*;

    const HANDLER: &str = "http://host.example/events";

    #[test]
    fn fake_portal_event_bind_checks_what_the_portal_checks() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let bind = |params: Value| {
            let mut p = params;
            p["auth"] = json!(token);
            post(&portal, "event.bind", p)
        };
        let error = |a: &Raw| {
            (
                a.status,
                a.json["error"].as_str().unwrap_or("").to_owned(),
                a.json["error_description"].as_str().unwrap_or("").to_owned(),
            )
        };
        let a = bind(json!({"event": "ONCRMDEALUSERFIELDUPDATE", "event_type": "offline",
                            "auth_connector": "b24host", "handler": "ignored"}));
        assert_eq!((a.status, &a.json["result"]), (200, &json!(true)), "{}", a.json);
        let a = bind(json!({"event": "ONOFFLINEEVENT", "handler": HANDLER,
                            "options": {"minTimeout": "5", "other": 1}}));
        assert_eq!(a.status, 200, "{}", a.json);
        let a = bind(json!({"EVENT": "onofflineevent", "HANDLER": HANDLER}));
        assert_eq!(
            error(&a),
            (
                400,
                "ERROR_CORE".into(),
                "Unable to set event handler: Handler already binded".into()
            )
        );
        let a = bind(
            json!({"event": "ONCRMDEALADD", "handler": HANDLER, "options": {"minTimeout": 5}}),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(
            bind(json!({"event": "ONOFFLINEEVENT", "event_type": "offline"})).json["error_description"],
            "Offline event cannot be registered for this event."
        );
        assert_eq!(
            error(&bind(json!({"event": "ONCRMDEALADD"}))).2,
            "Argument 'HANDLER' is null or empty"
        );
        assert_eq!(
            error(&bind(json!({"handler": HANDLER}))).2,
            "Argument 'EVENT' is null or empty"
        );
        assert_eq!(
            error(&bind(
                json!({"event": "ONCRMDEALADD", "handler": HANDLER, "event_type": "later"})
            ))
            .2,
            "Value must be one of {online|offline}"
        );
        for (url, code) in [
            ("http://localhost/events", "ERROR_WRONG_HANDLER_URL"),
            ("/events", "ERROR_WRONG_HANDLER_URL"),
            ("ftp://host.example/events", "ERROR_UNSUPPORTED_PROTOCOL"),
        ] {
            assert_eq!(
                error(&bind(json!({"event": "ONCRMDEALADD", "handler": url}))).1,
                code,
                "{url}"
            );
        }
        assert_eq!(
            error(&bind(json!({"event": "ONIMBOTMESSAGEADD", "handler": HANDLER}))),
            (400, "ERROR_EVENT_NOT_FOUND".into(), "Event not found".into())
        );
        // The same event and handler with another connector is another binding.
        let a = bind(json!({"event": "ONCRMDEALADD", "handler": HANDLER, "auth_connector": "x"}));
        assert_eq!(a.status, 200, "{}", a.json);

        let bindings = portal.bindings();
        assert_eq!(
            bindings[0],
            json!({"event": "ONCRMDEALUSERFIELDUPDATE", "handler": "",
            "auth_type": "0", "offline": 1, "auth_connector": "b24host", "options": null})
        );
        assert_eq!(bindings[1]["options"], json!({"minTimeout": 5}), "only the allowed option");
        assert_eq!(bindings[2]["options"], Value::Null, "ONCRMDEALADD takes no options");
        let got = post(&portal, "event.get", json!({"auth": token}));
        assert_eq!(
            got.json["result"],
            json!([
                {"event": "ONCRMDEALUSERFIELDUPDATE", "connector_id": "b24host", "offline": 1},
                {"event": "ONOFFLINEEVENT", "handler": HANDLER, "auth_type": "0", "offline": 0},
                {"event": "ONCRMDEALADD", "handler": HANDLER, "auth_type": "0", "offline": 0},
                {"event": "ONCRMDEALADD", "handler": HANDLER, "auth_type": "0", "offline": 0},
            ])
        );

        // Online unbind takes every connector's binding to the handler; offline only the
        // call's connector's.
        let a = post(&portal, "event.unbind", json!({"event": "ONCRMDEALADD", "auth": token}));
        assert_eq!(a.json["error_description"], "Argument 'HANDLER' is null or empty");
        let a = post(
            &portal,
            "event.unbind",
            json!({"event": "ONCRMDEALADD", "handler": HANDLER, "auth": token}),
        );
        assert_eq!(a.json["result"], json!({"count": 2}));
        let a = post(
            &portal,
            "event.unbind",
            json!({"event": "ONCRMDEALUSERFIELDUPDATE", "event_type": "offline", "auth": token}),
        );
        assert_eq!(a.json["result"], json!({"count": 0}), "another connector's queue");
        let a = post(
            &portal,
            "event.unbind",
            json!({"event": "ONCRMDEALUSERFIELDUPDATE", "event_type": "offline", "auth_connector": "b24host", "auth": token}),
        );
        assert_eq!(a.json["result"], json!({"count": 1}));
        assert_eq!(portal.bindings().len(), 1);
        portal.clear_bindings();
        assert!(portal.bindings().is_empty());
    }

    #[test]
    fn fake_portal_bindings_of_a_non_admin_are_their_own_and_online_only() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        post(
            &portal,
            "event.bind",
            json!({"event": "ONCRMLEADADD", "handler": HANDLER, "auth": token}),
        );
        portal.set_app_user_admin(false);
        let a = post(
            &portal,
            "event.bind",
            json!({"event": "ONCRMLEADADD", "event_type": "offline", "auth": token}),
        );
        assert_eq!(
            (a.status, a.json["error_description"].as_str()),
            (
                403,
                Some("Access denied! Offline events binding requires administrator access rights")
            )
        );
        let a = post(
            &portal,
            "event.bind",
            json!({"event": "ONCRMLEADADD", "handler": HANDLER, "auth_type": 5, "auth": token}),
        );
        assert_eq!(a.status, 403, "{}", a.json);
        let a = post(
            &portal,
            "event.bind",
            json!({"event": "ONCRMLEADADD", "handler": HANDLER, "auth": token}),
        );
        assert_eq!(a.status, 200, "made for the user themselves: {}", a.json);
        let got = post(&portal, "event.get", json!({"auth": token}));
        assert_eq!(
            got.json["result"],
            json!([{"event": "ONCRMLEADADD", "handler": HANDLER, "auth_type": "1", "offline": 0}])
        );
        portal.set_app_user_admin(true);
        let got = post(&portal, "event.get", json!({"auth": token}));
        assert_eq!(got.json["result"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn fake_portal_events_and_app_info_and_webhooks() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let a = post(&portal, "events", json!({"auth": token}));
        let offered = a.json["result"].as_array().unwrap();
        assert_eq!(offered.len(), 6 + 32 + 24);
        assert!(offered.contains(&json!("ONCRMTYPEUSERFIELDADD")));
        portal.set_events_offered(&["ONAPPUNINSTALL", "onofflineevent"]);
        let a = post(&portal, "events", json!({"auth": token}));
        assert_eq!(a.json["result"], json!(["ONAPPUNINSTALL", "ONOFFLINEEVENT"]));
        let a = post(&portal, "app.info", json!({"auth": token}));
        assert_eq!(a.json["result"]["INSTALLED"], json!(true));
        portal.set_installation_finished(false);
        let a = post(&portal, "app.info", json!({"auth": token}));
        assert_eq!(a.json["result"]["INSTALLED"], json!(false));

        let hook = portal.add_webhook(1);
        let path = hook.trim_start_matches(&portal.base_url()).to_owned();
        for method in ["event.bind", "event.get", "event.unbind", "events"] {
            let a =
                send(portal.addr(), "POST", &format!("{path}{method}"), "application/json", "{}");
            assert_eq!(
                (a.status, a.json["error"].as_str()),
                (403, Some("WRONG_AUTH_TYPE")),
                "{method}"
            );
        }
        let a = send(portal.addr(), "POST", &format!("{path}app.info"), "application/json", "{}");
        assert_eq!(a.status, 200);
    }
}
