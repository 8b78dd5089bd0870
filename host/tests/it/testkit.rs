//! `b24_plugin_api::testkit` (plugins' unit tests) against the host itself: for every body in the
//! fixtures, the test kit's event is the view the host delivers to a plugin, and a body the host
//! refuses is refused by the test kit with the host's reason. The test kit decodes on its own
//! (the plugin API cannot depend on the host), so this keeps the two from drifting apart.

use crate::common::{files_with_ext, fixtures_dir, stem};
use b24_host::{
    call::{
        Envelope,
        convert::{PluginEvent, plugin_event},
    },
    decode::{self, Format, decode},
    record::Source,
};
use b24_plugin_api::testkit::{self, Received};

/// What the host hands a plugin for `body`, as its first delivery of event 1 received at `ts`.
fn delivered(body: &[u8]) -> Result<Received, String> {
    let event = decode(body, Format::Form).map_err(|e| e.to_string())?;
    let received_at_ms = event.ts.unwrap_or(testkit::defaults::TS) * 1000;
    let raw = bytes::Bytes::copy_from_slice(body);
    let key = decode::dedup_key(&event);
    let record =
        decode::record(&event, raw, Format::Form, Source::Online, &key, Vec::new(), received_at_ms);
    let envelope = Envelope::new(1, record);
    let event = envelope.event().map_err(|e| e.to_string())?;
    Ok(match plugin_event(&envelope, event, 1) {
        PluginEvent::UserField(event) => Received::UserField(event),
        PluginEvent::Generic(event) => Received::Event(event),
    })
}

#[test]
fn the_test_kit_gives_the_event_the_host_delivers_for_every_fixture() {
    let (mut events, mut refused) = (0, 0);
    for path in files_with_ext(&fixtures_dir(), "form") {
        let body = std::fs::read(&path).unwrap();
        let name = stem(&path);
        let kit = testkit::parse_form(&String::from_utf8_lossy(&body));
        match (delivered(&body), kit) {
            (Ok(host), Ok(kit)) => {
                assert_eq!(kit, host, "{name}");
                events += 1;
            }
            (Err(host), Err(kit)) => {
                assert!(
                    kit.to_string().ends_with(&host),
                    "{name}: the host says {host:?}, the kit {kit}"
                );
                refused += 1;
            }
            (host, kit) => panic!("{name}: the host gives {host:?}, the test kit {kit:?}"),
        }
    }
    // Every event fixture (the 32 user-field codes, installs, smart processes, ...) and the edge
    // cases, which have no `event`.
    assert!(events >= 39 && refused >= 24, "{events} events, {refused} refused");
}

#[test]
fn odd_bodies_are_refused_with_the_hosts_reason_or_give_the_hosts_event() {
    for body in [
        "event=ONCRMDEALUSERFIELDADD",
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID]=x5",
        "event=ONCRMDEALUSERFIELDADD&data[FIELDS][ID][]=5",
        "event[]=ONAPPINSTALL",
        "event=",
    ] {
        let host = delivered(body.as_bytes()).unwrap_err();
        let kit = testkit::parse_form(body).unwrap_err().to_string();
        assert!(kit.ends_with(&host), "{body}: the host says {host:?}, the kit {kit}");
    }
    for body in [
        "event=onCrmDealUserFieldAdd&data[FIELDS][id]=5&data[entityId]=CRM_7&data[FIELDS][FIELD_NAME]=",
        "event=ONCRMLEADUSERFIELDDELETE&data[id]=9&auth[access_token]=t&auth[user_id]=x&auth[expires]=-1",
        "event=ONCRMCONTACTUPDATE&data=plain&event_handler_id=07&ts=x&auth[status]=Q",
    ] {
        assert_eq!(
            testkit::parse_form(body).unwrap(),
            delivered(body.as_bytes()).unwrap(),
            "{body}"
        );
    }
}
