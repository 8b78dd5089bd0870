//! The test kit against bodies made by Bitrix24's PHP encoder (the host's fixtures, made with
//! `shared/tools/b24-event`): builders and decoder agree with them, errors say what the host
//! would say, the fake host records what a plugin does.

use super::*;
use crate::{Action, Entity, LogLevel, Origin, Outcome, PluginError, RestErrorKind, prelude::*};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../host/tests/fixtures")
        .join(format!("{name}.form"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_builder_makes_the_event_bitrix24_sends_for_every_user_field_code() {
    for family in ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "TYPE"] {
        for action in ["ADD", "UPDATE", "DELETE", "SETENUMVALUES"] {
            let code = format!("ONCRM{family}USERFIELD{action}");
            let sent = user_field_from_form(&fixture(&code));
            assert_eq!(user_field(&code.to_lowercase()).build(), sent, "{code}");
        }
    }
    let system = user_field_from_form(&fixture("system-ONCRMDEALUSERFIELDUPDATE"));
    assert_eq!(user_field("ONCRMDEALUSERFIELDUPDATE").system().build(), system);
    assert!(system.user().is_none());
}

#[test]
fn a_body_gives_the_view_the_host_delivers() {
    let event = user_field_from_form(&fixture("ONCRMDEALUSERFIELDUPDATE"));
    assert_eq!((event.action, event.entity), (Action::Update, Entity::Deal));
    assert_eq!((event.field_id, event.field_name.as_str()), (554, "UF_CRM_1724771514"));
    assert_eq!((event.handler_id(), event.ts()), (Some(15), Some(1_727_018_926)));
    assert_eq!(event.portal.member_id.as_str(), defaults::MEMBER_ID);
    assert_eq!(event.portal.client_endpoint(), Some("https://some-domain.bitrix24.com/rest/"));
    let user = event.user().unwrap();
    assert_eq!((user.user_id, user.access_token.expose()), (1, defaults::ACCESS_TOKEN));
    assert_eq!((user.expires(), user.scope.as_str()), (Some(1_727_022_526), "crm"));
    let keys: Vec<&str> = event.data.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["FIELDS[ID]", "FIELDS[ENTITY_ID]", "FIELDS[FIELD_NAME]"]);
    assert_eq!((event.delivery.event_id, event.delivery.attempt), (1, 1));

    // A smart process's field, and a legacy invoice's camel-case keys.
    let smart = user_field_from_form(&fixture("smart-process"));
    assert_eq!(smart.entity, Entity::SmartProcess { type_id: 13 });
    let legacy = user_field_from_form(&fixture("legacy-invoice"));
    assert_eq!((legacy.field_id, legacy.entity), (231, Entity::Invoice));
    assert_eq!(legacy.field_name.as_str(), "UF_CRM_1724771999");
}

#[test]
fn other_events_keep_their_whole_data_block_in_order() {
    let contact = event_from_form(&fixture("contact-update"));
    assert_eq!(contact.code.as_str(), "ONCRMCONTACTUPDATE");
    assert_eq!(contact.data_value("FIELDS[NAME]"), Some("Иван Петров 😀"));
    assert_eq!(contact.data_value("FIELDS[PHONE][1][VALUE]"), Some("a&b=c%d+e"));
    assert_eq!(contact.data_value("FIELDS[TAGS][2][0]"), Some("z"));
    let install = event_from_form(&fixture("ONAPPINSTALL"));
    let user = install.user().unwrap();
    assert!(user.refresh_token().is_none(), "the host gives plugins no refresh token");
    assert_eq!(install.data_value("LANGUAGE_ID"), Some("en"));

    let built = event("onCrmContactUpdate").data("FIELDS[ID]", "134806").system().build();
    assert_eq!(built.code.as_str(), "ONCRMCONTACTUPDATE");
    assert_eq!((built.data_value("FIELDS[ID]"), built.user().is_none()), (Some("134806"), true));
}

#[test]
fn a_user_token_without_a_user_id_is_marked_unknown_as_the_host_marks_it() {
    let event = user_field_from_form(
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]=5&auth[access_token]=t&auth[member_id]=m",
    );
    assert_eq!(event.user().map(|u| u.user_id), Some(0));
    assert!(event.delivery.user_id_unknown());
}

#[test]
fn the_builder_sets_what_a_test_is_about() {
    let event = user_field("ONCRMDEALUSERFIELDUPDATE")
        .field_id(7)
        .field_name("UF_CRM_7")
        .entity_id("CRM_31")
        .member_id("m2")
        .domain("b.example.com")
        .user_id(9)
        .handler_id(3)
        .ts(100)
        .data("FIELDS[EXTRA]", "x")
        .event_id(42)
        .attempt(2)
        .offline()
        .build();
    assert_eq!((event.field_id, event.field_name.as_str()), (7, "UF_CRM_7"));
    assert_eq!(event.entity, Entity::SmartProcess { type_id: 31 });
    assert_eq!(event.data_value("FIELDS[ID]"), Some("7"));
    assert_eq!(event.data_value("FIELDS[EXTRA]"), Some("x"));
    assert_eq!(
        (event.portal.member_id.as_str(), event.portal.domain.as_str()),
        ("m2", "b.example.com")
    );
    assert_eq!(event.portal.client_endpoint(), Some("https://b.example.com/rest/"));
    assert_eq!(
        (event.user().map(|u| u.user_id), event.handler_id(), event.ts()),
        (Some(9), Some(3), Some(100))
    );
    assert_eq!((event.delivery.event_id, event.delivery.attempt), (42, 2));
    assert_eq!(event.delivery.origin, Origin::Offline);
}

#[test]
fn a_body_the_host_would_refuse_is_an_error_with_its_reason() {
    let err = |body: &str| parse_form(body).unwrap_err().to_string();
    assert_eq!(err("data[x]=1"), "the host would refuse this body (400): missing `event`");
    assert!(err("event[]=x").ends_with("`event` is an array, not a string"));
    assert!(err("event=ONCRMDEALUSERFIELDADD").ends_with("missing `data[FIELDS][ID]`"));
    assert!(
        err("event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]=x").ends_with("is not a number: \"x\"")
    );
    assert!(
        err("event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID][]=1")
            .ends_with("is an array, not a string")
    );
}

#[test]
#[should_panic(
    expected = "ONCRMCONTACTUPDATE is not a user-field event; use testkit::event_from_form"
)]
fn asking_a_body_of_another_event_for_a_user_field_event_says_what_to_use() {
    user_field_from_form(&fixture("contact-update"));
}

#[test]
#[should_panic(expected = "ONAPPINSTALL is not a user-field event code; use testkit::event")]
fn a_builder_for_another_code_says_what_to_use() {
    let _ = user_field("onAppInstall");
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Settings {
    prefix: String,
}

struct Watch {
    host: Host,
    settings: Settings,
}

impl Create for Watch {
    fn create(ctx: PluginContext) -> Result<Self, PluginError> {
        crate::log::info("creating");
        Ok(Watch { settings: ctx.settings()?, host: ctx.host })
    }
}

impl Plugin for Watch {
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        if event.action == Action::Delete {
            return Ok(Outcome::Skipped);
        }
        let field =
            self.host.rest("crm.deal.userfield.get", &format!("{{\"id\":{}}}", event.field_id))?;
        crate::log::warn(&format!("{}{field}", self.settings.prefix));
        Ok(Outcome::Done)
    }
}

#[test]
fn a_fake_host_creates_the_plugin_with_its_settings_and_records_logs_and_calls() {
    let host = FakeHost::new().named("watch").answer("crm.deal.userfield.get", "{\"ID\":\"554\"}");
    let err = host.create::<Watch>("prefx = 1").err().unwrap();
    assert_eq!(err.message.as_str(), "watch settings: unknown key `prefx`");
    let plugin: Watch = host.create("prefix = \"got \"").unwrap();
    let event = user_field("ONCRMDEALUSERFIELDUPDATE").build();
    assert_eq!(host.call(|| plugin.on_user_field(&event)), Ok(Outcome::Done));
    let deleted = user_field("ONCRMDEALUSERFIELDDELETE").build();
    assert_eq!(host.call(|| plugin.on_user_field(&deleted)), Ok(Outcome::Skipped));
    assert_eq!(
        host.logs(),
        [
            (LogLevel::Info, "creating".to_owned()),
            (LogLevel::Info, "creating".to_owned()),
            (LogLevel::Warn, "got {\"ID\":\"554\"}".to_owned())
        ]
    );
    assert_eq!(
        host.rest_calls(),
        [("crm.deal.userfield.get".to_owned(), "{\"id\":554}".to_owned())]
    );
}

#[test]
fn a_fake_host_answers_from_a_closure_and_refuses_unknown_methods_as_bitrix24_does() {
    let plugin_host = FakeHost::new();
    let plugin: Watch = plugin_host.create("").unwrap();
    let event = user_field("ONCRMDEALUSERFIELDUPDATE").build();
    let err = plugin.on_user_field(&event).unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Reject);
    assert!(err.message.contains("ERROR_METHOD_NOT_FOUND"), "{err}");

    let host = FakeHost::new().rest(|method, _params| {
        Err(RestError {
            kind: RestErrorKind::Unavailable,
            status: 503,
            error: "QUERY_LIMIT_EXCEEDED".into(),
            description: format!("{method}: too many requests").into(),
        })
    });
    let plugin: Watch = host.create("").unwrap();
    let err = plugin.on_user_field(&event).unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Retry);
    assert!(err.message.contains("crm.deal.userfield.get: too many requests"), "{err}");
}
