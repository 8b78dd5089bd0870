//! The Bitrix24 event codes the host knows by name: the 32 user-field codes and the CRM
//! entities' `ADD`/`UPDATE`/`DELETE` (the catalog), and the application's own events.
//!
//! Two users: the binder expands a plugin's wildcard subscriptions (`ONCRM*USERFIELD*`) over
//! [`catalog`] into concrete codes to `event.bind` (a portal binds codes, never patterns), and
//! the metrics give each known code its own `code` label ([`is_known`]). App lifecycle events
//! are known but not in the catalog: `ONAPPINSTALL` reaches the host through the app's install
//! handler, `ONAPPUNINSTALL` and `ONOFFLINEEVENT` are bound by the host itself, so a wildcard
//! never stands for them (a plugin that wants one names it).

/// The user-field families (`ONCRM<family>USERFIELD<action>`).
const FAMILIES: [&str; 8] =
    ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "TYPE"];
/// The user-field actions.
const ACTIONS: [&str; 4] = ["ADD", "UPDATE", "DELETE", "SETENUMVALUES"];
/// CRM entities whose `ONCRM<ENTITY>{ADD,UPDATE,DELETE}` are in the catalog.
const CRM_ENTITIES: [&str; 8] =
    ["LEAD", "DEAL", "CONTACT", "COMPANY", "QUOTE", "INVOICE", "REQUISITE", "DYNAMICITEM"];

/// The application's own events.
pub const APP_EVENTS: [&str; 6] = [
    "ONAPPINSTALL",
    "ONAPPUNINSTALL",
    "ONAPPUPDATE",
    "ONAPPTEST",
    "ONAPPMETHODCONFIRM",
    "ONOFFLINEEVENT",
];

/// The uninstall event: always bound online by the host, so an uninstall reaches it.
pub const ON_APP_UNINSTALL: &str = "ONAPPUNINSTALL";
/// The offline queue's online nudge.
pub const ON_OFFLINE_EVENT: &str = "ONOFFLINEEVENT";

/// Every code a wildcard can stand for, upper-case: the 32 user-field codes, then the CRM
/// entities' add, update and delete.
pub fn catalog() -> Vec<String> {
    let user_fields = FAMILIES.iter().flat_map(|family| {
        ACTIONS.iter().map(move |action| format!("ONCRM{family}USERFIELD{action}"))
    });
    let entities = CRM_ENTITIES
        .iter()
        .flat_map(|entity| ACTIONS[..3].iter().map(move |action| format!("ONCRM{entity}{action}")));
    user_fields.chain(entities).collect()
}

/// Whether `code` (upper-case) is in the [`catalog`] or one of the [`APP_EVENTS`].
pub fn is_known(code: &str) -> bool {
    if APP_EVENTS.contains(&code) {
        return true;
    }
    let Some(rest) = code.strip_prefix("ONCRM") else { return false };
    FAMILIES.iter().any(|family| {
        rest.strip_prefix(family)
            .and_then(|r| r.strip_prefix("USERFIELD"))
            .is_some_and(|action| ACTIONS.contains(&action))
    }) || CRM_ENTITIES.iter().any(|entity| {
        rest.strip_prefix(entity).is_some_and(|action| ACTIONS[..3].contains(&action))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_what_is_known_minus_the_app_events() {
        let catalog = catalog();
        assert_eq!(catalog.len(), 32 + 24);
        assert!(catalog.iter().all(|c| is_known(c)));
        assert!(catalog.contains(&"ONCRMTYPEUSERFIELDSETENUMVALUES".to_owned()));
        assert!(catalog.contains(&"ONCRMDYNAMICITEMDELETE".to_owned()));
        assert!(APP_EVENTS.iter().all(|c| is_known(c) && !catalog.contains(&(*c).to_owned())));
        assert!(!is_known("ONCRMDEALSETENUMVALUES") && !is_known("ONIMBOTMESSAGEADD"));
    }
}
