//! REST through the host and the field-registry plugin, against the fake Bitrix24 portal: a
//! random sequence of field changes must leave the registry equal to the portal, within its rate
//! limit, across token expiry, refresh and a moved portal.

use std::time::Duration;

use b24_tests::fake_portal::{FakePortal, PortalOptions, RequestKind};
use serde_json::Value;

use crate::support::*;

/// The registry snapshot reduced to what the fake portal's `snapshot()` shows: live fields,
/// keyed by id, with entity, name, type, label and list texts in sort order.
fn live_view(snapshot: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(fields) = snapshot["fields"].as_object() {
        for (id, def) in fields {
            if def["deleted"] == true {
                continue;
            }
            let mut list: Vec<(u64, u64, String)> = def["list"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|v| {
                            (
                                v["sort"].as_u64().unwrap_or(0),
                                v["id"].as_u64().unwrap_or(0),
                                v["value"].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            list.sort();
            out.insert(
                id.clone(),
                serde_json::json!({
                    "entity_id": def["entity_id"],
                    "field_name": def["field_name"],
                    "user_type_id": def["user_type_id"],
                    "label": def["label"],
                    "list": list.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
                }),
            );
        }
    }
    Value::Object(out)
}

const ENTITIES: [(&str, &str); 4] =
    [("CRM_DEAL", "DEAL"), ("CRM_CONTACT", "CONTACT"), ("CRM_LEAD", "LEAD"), ("CRM_7", "TYPE")];

#[test]
fn the_field_registry_mirrors_the_portal_through_host_rest_calls() {
    let portal = FakePortal::start(PortalOptions {
        rate_per_sec: 20.0,
        burst: 12,
        ..PortalOptions::default()
    });
    // The events name another OAuth server: the host must refresh at rest.oauth_url only, so
    // the app's client secret never reaches a server an event chose.
    let elsewhere = FakePortal::start(PortalOptions::default());
    let options = portal.options();
    let dir = HostDir::new(&["field-registry"]);
    dir.write_config(&format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\nrate_per_sec = 2.0\nburst = 50\n\n[rest.portals.\"{MEMBER}\"]\nrate_per_sec = 20.0\nburst = 10\n\n[plugin.field-registry.settings]\ndir = \"registry\"\n",
        config(&["field-registry"], ""),
        options.client_id,
        options.client_secret,
        portal.oauth_url(),
    ));
    let host = start(&dir);

    let send = |code: &str, id: u64, entity_id: &str, name: &str| {
        let mut a = args(code);
        a.field_id = id;
        a.field_name = name.to_owned();
        a.entity_id = Some(entity_id.to_owned());
        // Fired by automation: no user token, so the host must use the stored OAuth tokens.
        a.system = true;
        a.client_endpoint = Some(portal.client_endpoint());
        a.server_endpoint = Some(elsewhere.server_endpoint());
        a.domain = portal.domain();
        let answer = host.post_form(&form(&a));
        assert_eq!(answer.status, 200, "{code}: {answer:?}");
    };

    // The app is installed: the host keeps the portal's OAuth pair.
    post_app_install(&host, &portal);

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut live: Vec<(u64, &str, &str, String)> = Vec::new();
    let mut events = 0;
    for step in 0..40 {
        if step == 15 || step == 30 {
            // Tokens expire: the host must refresh, and the second time use the refresh token
            // the first refresh gave it (the fake's refresh tokens are single-use).
            portal.expire_access_tokens();
        }
        if step == 25 {
            portal.set_moved(true);
        }
        let op = if live.is_empty() { 0 } else { next_random(&mut seed) % 4 };
        match op {
            0 => {
                let (entity_id, family) = ENTITIES[(next_random(&mut seed) % 4) as usize];
                let name = format!("UF_CRM_{step}");
                let list = next_random(&mut seed).is_multiple_of(2);
                let values = if list { vec!["red", "green"] } else { vec![] };
                let kind = if list { "enumeration" } else { "string" };
                let id = portal.add_field(entity_id, &name, kind, values);
                send(&format!("ONCRM{family}USERFIELDADD"), id, entity_id, &name);
                events += 1;
                if list {
                    // Created with values: Bitrix24 sends ADD and SETENUMVALUES.
                    send(&format!("ONCRM{family}USERFIELDSETENUMVALUES"), id, entity_id, &name);
                    events += 1;
                }
                live.push((id, entity_id, family, name));
            }
            1 => {
                let (id, entity_id, family, name) =
                    live[(next_random(&mut seed) % live.len() as u64) as usize].clone();
                portal.set_label(id, &format!("Label {step}"));
                send(&format!("ONCRM{family}USERFIELDUPDATE"), id, entity_id, &name);
                events += 1;
            }
            2 => {
                let (id, entity_id, family, name) =
                    live[(next_random(&mut seed) % live.len() as u64) as usize].clone();
                if portal.field(id).is_some_and(|f| f.user_type_id == "enumeration") {
                    portal.set_list(id, vec!["blue", "green", &format!("v{step}")]);
                    send(&format!("ONCRM{family}USERFIELDSETENUMVALUES"), id, entity_id, &name);
                } else {
                    portal.set_label(id, &format!("Renamed {step}"));
                    send(&format!("ONCRM{family}USERFIELDUPDATE"), id, entity_id, &name);
                }
                events += 1;
            }
            _ => {
                let index = (next_random(&mut seed) % live.len() as u64) as usize;
                let (id, entity_id, family, name) = live.remove(index);
                portal.delete_field(id);
                send(&format!("ONCRM{family}USERFIELDDELETE"), id, entity_id, &name);
                events += 1;
            }
        }
    }

    // Wait until the plugin has worked through every event.
    let drained = eventually(Duration::from_secs(60), || {
        dir.stats().get("field-registry").is_some_and(|(backlog, _, _)| *backlog == 0)
    });
    assert!(drained, "registry still has a backlog: {:?}\n{}", dir.stats(), host.log_text());
    assert_eq!(dir.stats()["field-registry"], (0, 0, 0), "{}", host.log_text());

    let file = dir.path().join("registry").join(format!("{MEMBER}.json"));
    let snapshot: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(live_view(&snapshot), portal.snapshot());

    let refreshes = portal.refreshes();
    assert_eq!(refreshes.len(), 2, "one refresh per expiry: {refreshes:?}");
    assert!(elsewhere.requests().is_empty(), "the host asked the event's server_endpoint");
    assert_eq!(
        refreshes[1].0, refreshes[0].1,
        "the second refresh used the first one's new refresh token"
    );
    assert_eq!(portal.violations(), 0, "the host went over the portal's rate limit");
    assert!(
        portal.requests().iter().any(|r| r.kind == RequestKind::Redirect),
        "the move was never exercised"
    );
    let reads =
        portal.requests().iter().filter(|r| r.kind == RequestKind::Rest && r.status == 200).count();
    let peak = portal.peak_rate(Duration::from_secs(1));
    eprintln!(
        "field-registry: {events} events, {reads} successful REST reads, peak {peak:.1} requests/s in a 1 s window"
    );
    let log = host.log_text();
    assert!(!log.contains(&portal.initial_oauth().1), "a refresh token reached the log");
    assert!(host.stop());
}
