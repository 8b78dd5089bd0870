//! The registry itself: every portal's field definitions in memory, the rules that turn one
//! user-field event into a change ([`Registry::apply`]), and the snapshot written after each
//! change.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use b24_plugin_api::{Action, Outcome, PluginError, UserFieldEvent};

use crate::{
    fetch::{self, FieldDef, Portal},
    snapshot::{self, Snapshot},
};

/// A source of "now" in milliseconds since the Unix epoch.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// The wall clock, in milliseconds since the Unix epoch (the host stamps
/// `delivery.received_at_ms` with the same clock).
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What [`Registry::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The field was read from the portal and stored.
    Stored,
    /// The field was marked deleted (a DELETE event, or the portal no longer knows it).
    MarkedDeleted,
    /// The portal no longer knows the field and there was nothing (more) to record.
    NotFound,
    /// The registry already holds a read started after this event was received (or a deletion
    /// learned later): no REST call was made.
    AlreadyCurrent,
    /// A DELETE for a field already marked deleted.
    AlreadyDeleted,
    /// The event's entity is not one any known method reads ([`b24_plugin_api::Entity::Other`]).
    UnsupportedEntity,
}

impl Applied {
    /// The outcome reported to the host: `Done` when the registry changed or the field turned
    /// out to be gone, `Skipped` when there was nothing to do.
    pub fn outcome(self) -> Outcome {
        match self {
            Applied::Stored | Applied::MarkedDeleted | Applied::NotFound => Outcome::Done,
            Applied::AlreadyCurrent | Applied::AlreadyDeleted | Applied::UnsupportedEntity => {
                Outcome::Skipped
            }
        }
    }

    /// A few words for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Stored => "stored",
            Applied::MarkedDeleted => "marked deleted",
            Applied::NotFound => "not found on the portal, nothing to record",
            Applied::AlreadyCurrent => "skipped: a later read already reflects this event",
            Applied::AlreadyDeleted => "skipped: already marked deleted",
            Applied::UnsupportedEntity => "skipped: no REST method reads fields of this entity",
        }
    }
}

/// Every portal's custom-field definitions, kept in memory and mirrored to one snapshot file per
/// portal in a folder.
pub struct Registry {
    dir: PathBuf,
    portals: BTreeMap<String, Snapshot>,
    clock: Clock,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("dir", &self.dir)
            .field("portals", &self.portals.len())
            .finish()
    }
}

impl Registry {
    /// Opens the registry kept in `dir`: creates the folder if needed and loads every snapshot
    /// in it. The error says which file or folder is the problem.
    pub fn open(dir: &Path) -> Result<Registry, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let portals =
            snapshot::load_dir(dir)?.into_iter().map(|s| (s.member_id.clone(), s)).collect();
        Ok(Registry { dir: dir.to_owned(), portals, clock: Box::new(system_clock_ms) })
    }

    /// Replaces the clock (for tests).
    pub fn with_clock(mut self, clock: Clock) -> Registry {
        self.clock = clock;
        self
    }

    /// The folder the snapshots live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The registry of portal `member_id`, as last written to its snapshot.
    pub fn portal(&self, member_id: &str) -> Option<&Snapshot> {
        self.portals.get(member_id)
    }

    /// Field `id` of portal `member_id`.
    pub fn field(&self, member_id: &str, id: u64) -> Option<&FieldDef> {
        self.portals.get(member_id)?.fields.get(&id)
    }

    /// The member ids of all portals the registry knows.
    pub fn member_ids(&self) -> impl Iterator<Item = &str> {
        self.portals.keys().map(String::as_str)
    }

    /// Applies one user-field event, reading the field through `portal` when needed.
    ///
    /// - ADD, UPDATE, SETENUMVALUES: skipped when the registry holds a read started after the
    ///   event was received; otherwise the field is read and stored. If the portal no longer
    ///   knows it, a known field is marked deleted and an unknown one is not recorded.
    /// - DELETE: the field is marked deleted as of `delivery.received_at_ms`, keeping the name
    ///   and entity remembered (or, for a field never seen, those the event carries).
    ///
    /// Every change is written to the portal's snapshot before it is kept in memory: if the
    /// write fails the registry is unchanged and the error is a retry. REST failures become
    /// `Retry` when transient and `Reject` otherwise.
    pub fn apply(
        &mut self,
        event: &UserFieldEvent,
        portal: &dyn Portal,
    ) -> Result<Applied, PluginError> {
        let member_id = event.portal.member_id.as_str();
        if !snapshot::valid_member_id(member_id) {
            return Err(PluginError::reject(format!(
                "member_id {member_id:?} is not 1-128 letters, digits, '_' or '-'"
            )));
        }
        if event.field_id == 0 {
            return Err(PluginError::reject(format!(
                "{} carries no field id (data[FIELDS][ID])",
                event.code
            )));
        }
        match event.action {
            Action::Delete => self.apply_delete(event),
            Action::Add | Action::Update | Action::SetEnumValues => self.apply_read(event, portal),
        }
    }

    fn apply_delete(&mut self, event: &UserFieldEvent) -> Result<Applied, PluginError> {
        let known = self.field(&event.portal.member_id, event.field_id);
        if known.is_some_and(|def| def.deleted) {
            return Ok(Applied::AlreadyDeleted);
        }
        let def = known.cloned().unwrap_or_else(|| {
            FieldDef::unseen(event.field_id, &event.entity_id, &event.field_name)
        });
        self.mark_deleted(event, def)
    }

    fn apply_read(
        &mut self,
        event: &UserFieldEvent,
        portal: &dyn Portal,
    ) -> Result<Applied, PluginError> {
        let received = event.delivery.received_at_ms;
        if self
            .field(&event.portal.member_id, event.field_id)
            .is_some_and(|def| def.is_newer_than(received))
        {
            return Ok(Applied::AlreadyCurrent);
        }
        let Some(reader) = fetch::reader(event.entity, event.field_id) else {
            return Ok(Applied::UnsupportedEntity);
        };
        // Taken before the call: the answer reflects the portal at this moment or later.
        let started = (self.clock)();
        let result = match portal.call(&reader.method, &reader.params) {
            Ok(result) => result,
            Err(e) if fetch::is_not_found(&e) => return self.not_found(event),
            Err(e) => return Err(e.into()),
        };
        match fetch::normalise(&result, &reader.method, event.field_id, started) {
            Ok(Some(mut def)) => {
                if def.entity_id.is_empty() {
                    def.entity_id = event.entity_id.to_string();
                }
                if def.field_name.is_empty() {
                    def.field_name = event.field_name.to_string();
                }
                self.commit(event, def)?;
                Ok(Applied::Stored)
            }
            Ok(None) => self.not_found(event),
            Err(what) => Err(PluginError::reject(format!(
                "{} answered something that is not field {}: {what}",
                reader.method, event.field_id
            ))),
        }
    }

    /// The portal says the field does not exist: it was deleted after the event was sent.
    fn not_found(&mut self, event: &UserFieldEvent) -> Result<Applied, PluginError> {
        match self.field(&event.portal.member_id, event.field_id) {
            Some(def) if !def.deleted => {
                let def = def.clone();
                self.mark_deleted(event, def)
            }
            _ => Ok(Applied::NotFound),
        }
    }

    fn mark_deleted(
        &mut self,
        event: &UserFieldEvent,
        mut def: FieldDef,
    ) -> Result<Applied, PluginError> {
        if def.entity_id.is_empty() {
            def.entity_id = event.entity_id.to_string();
        }
        if def.field_name.is_empty() {
            def.field_name = event.field_name.to_string();
        }
        def.deleted = true;
        def.deleted_at_ms = Some(event.delivery.received_at_ms);
        self.commit(event, def)?;
        Ok(Applied::MarkedDeleted)
    }

    /// Writes the portal's registry with `def` in it, then keeps it in memory.
    fn commit(&mut self, event: &UserFieldEvent, def: FieldDef) -> Result<(), PluginError> {
        let member_id = event.portal.member_id.as_str();
        let mut next =
            self.portals.get(member_id).cloned().unwrap_or_else(|| Snapshot::new(member_id));
        if !event.portal.domain.is_empty() {
            next.domain = event.portal.domain.to_string();
        }
        next.updated_at_ms = (self.clock)();
        next.fields.insert(def.id, def);
        snapshot::write_atomic(&self.dir, &next).map_err(|e| {
            PluginError::retry(format!(
                "cannot write {}: {e}",
                snapshot::path_for(&self.dir, member_id).display()
            ))
        })?;
        self.portals.insert(member_id.to_owned(), next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::RefCell,
        collections::HashMap,
        sync::{
            Arc,
            atomic::{AtomicI64, Ordering},
        },
    };

    use b24_plugin_api::{
        Delivery, Entity, ErrorKind, Origin, Portal as PortalInfo, ROption::RNone, RVec, RestError,
        RestErrorKind,
    };
    use serde_json::{Value, json};

    use super::*;
    use crate::snapshot::tests::TempDir;

    const MEMBER: &str = "a223c6b3710f85df22e9377d6c4f7553";

    /// An in-memory portal: answers `get` calls from its fields, counts calls, and can be told
    /// to fail.
    #[derive(Default)]
    struct FakePortal {
        /// (method, id) -> result.
        fields: RefCell<HashMap<(String, u64), Value>>,
        calls: RefCell<Vec<(String, Value)>>,
        fail: RefCell<Option<RestError>>,
    }

    impl FakePortal {
        fn put(&self, method: &str, id: u64, result: Value) {
            self.fields.borrow_mut().insert((method.to_owned(), id), result);
        }

        fn remove(&self, method: &str, id: u64) {
            self.fields.borrow_mut().remove(&(method.to_owned(), id));
        }

        fn calls(&self) -> usize {
            self.calls.borrow().len()
        }
    }

    impl Portal for FakePortal {
        fn call(&self, method: &str, params: &Value) -> Result<Value, RestError> {
            self.calls.borrow_mut().push((method.to_owned(), params.clone()));
            if let Some(e) = self.fail.borrow().clone() {
                return Err(e);
            }
            let id = params["id"].as_u64().expect("numeric id");
            self.fields.borrow().get(&(method.to_owned(), id)).cloned().ok_or_else(|| RestError {
                kind: RestErrorKind::Api,
                status: 400,
                error: "ERROR_NOT_FOUND".into(),
                description: format!("The entity with ID '{id}' is not found").into(),
            })
        }
    }

    /// A clock the test moves by hand.
    fn manual_clock(start: i64) -> (Arc<AtomicI64>, Clock) {
        let now = Arc::new(AtomicI64::new(start));
        let c = Arc::clone(&now);
        (now, Box::new(move || c.load(Ordering::SeqCst)))
    }

    fn event(
        action: Action,
        entity_id: &str,
        id: u64,
        name: &str,
        received: i64,
    ) -> UserFieldEvent {
        UserFieldEvent {
            code: format!("ONCRMDEALUSERFIELD{}", action.as_str()).into(),
            action,
            entity: Entity::from_entity_id(entity_id),
            entity_id: entity_id.into(),
            field_id: id,
            field_name: name.into(),
            handler_id: RNone,
            ts: RNone,
            portal: PortalInfo {
                member_id: MEMBER.into(),
                domain: "example.bitrix24.com".into(),
                client_endpoint: RNone,
                server_endpoint: RNone,
                status: b24_plugin_api::AppStatus::Local,
            },
            user: RNone,
            data: RVec::new(),
            delivery: Delivery {
                event_id: 1,
                attempt: 1,
                received_at_ms: received,
                origin: Origin::Online,
                extra: RVec::new(),
            },
        }
    }

    fn deal_field(id: u64, name: &str, label: &str) -> Value {
        json!({
            "ID": id.to_string(), "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": name,
            "USER_TYPE_ID": "enumeration", "MULTIPLE": "N", "MANDATORY": "Y",
            "SETTINGS": {"DISPLAY": "LIST"},
            "LIST": [{"ID": "1", "VALUE": "Red", "SORT": "10", "DEF": "Y", "XML_ID": "R"}],
            "EDIT_FORM_LABEL": {"en": label}
        })
    }

    fn read_snapshot(dir: &Path) -> Value {
        let text = std::fs::read(dir.join(format!("{MEMBER}.json"))).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn add_reads_the_field_and_writes_the_snapshot() {
        let dir = TempDir::new("add");
        let (_now, clock) = manual_clock(1_000);
        let mut reg = Registry::open(&dir.0).unwrap().with_clock(clock);
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 554, deal_field(554, "UF_CRM_COLOUR", "Colour"));

        let ev = event(Action::Add, "CRM_DEAL", 554, "UF_CRM_COLOUR", 900);
        assert_eq!(reg.apply(&ev, &portal).unwrap(), Applied::Stored);
        assert_eq!(portal.calls.borrow()[0], ("crm.deal.userfield.get".into(), json!({"id": 554})));

        let def = reg.field(MEMBER, 554).unwrap();
        assert_eq!(def.label.as_deref(), Some("Colour"));
        assert_eq!(def.fetched_at_ms, Some(1_000));
        assert_eq!(def.list[0].value, "Red");

        let snap = read_snapshot(&dir.0);
        assert_eq!(snap["member_id"], MEMBER);
        assert_eq!(snap["domain"], "example.bitrix24.com");
        assert_eq!(snap["updated_at_ms"], 1_000);
        assert_eq!(snap["fields"]["554"]["field_name"], "UF_CRM_COLOUR");
        assert_eq!(snap["fields"]["554"]["source"], "crm.deal.userfield.get");
        assert_eq!(dir.names(), vec![format!("{MEMBER}.json")], "no temp file left");
    }

    #[test]
    fn smart_process_fields_are_read_with_userfieldconfig() {
        let dir = TempDir::new("smart");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        portal.put(
            "userfieldconfig.get",
            7095,
            json!({"field": {"id": "7095", "entityId": "CRM_13", "fieldName": "UF_CRM_13_X",
                "userTypeId": "string", "multiple": "Y", "mandatory": "N",
                "editFormLabel": {"en": "X"}}}),
        );
        let ev = event(Action::Update, "CRM_13", 7095, "UF_CRM_13_X", 5);
        assert_eq!(reg.apply(&ev, &portal).unwrap(), Applied::Stored);
        assert_eq!(
            portal.calls.borrow()[0],
            ("userfieldconfig.get".into(), json!({"moduleId": "crm", "id": 7095}))
        );
        let def = reg.field(MEMBER, 7095).unwrap();
        assert!(def.multiple);
        assert_eq!(def.entity_id, "CRM_13");
        assert_eq!(def.source.as_deref(), Some("userfieldconfig.get"));
    }

    #[test]
    fn a_burst_for_one_field_is_read_once() {
        let dir = TempDir::new("burst");
        let (now, clock) = manual_clock(2_000);
        let mut reg = Registry::open(&dir.0).unwrap().with_clock(clock);
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 7, deal_field(7, "UF_CRM_A", "A"));

        // ADD and SETENUMVALUES both arrived before the first read started (at 2000).
        let add = event(Action::Add, "CRM_DEAL", 7, "UF_CRM_A", 1_500);
        let enums = event(Action::SetEnumValues, "CRM_DEAL", 7, "UF_CRM_A", 1_501);
        assert_eq!(reg.apply(&add, &portal).unwrap(), Applied::Stored);
        now.store(2_100, Ordering::SeqCst);
        assert_eq!(reg.apply(&enums, &portal).unwrap(), Applied::AlreadyCurrent);
        assert_eq!(Applied::AlreadyCurrent.outcome(), Outcome::Skipped);
        assert_eq!(portal.calls(), 1);

        // Redelivery of the ADD (after a crash) is skipped too.
        assert_eq!(reg.apply(&add, &portal).unwrap(), Applied::AlreadyCurrent);
        assert_eq!(portal.calls(), 1);

        // An UPDATE received in the very millisecond the read started is read again.
        let same_ms = event(Action::Update, "CRM_DEAL", 7, "UF_CRM_A", 2_000);
        portal.put("crm.deal.userfield.get", 7, deal_field(7, "UF_CRM_A", "A2"));
        assert_eq!(reg.apply(&same_ms, &portal).unwrap(), Applied::Stored);
        assert_eq!(portal.calls(), 2);
        assert_eq!(reg.field(MEMBER, 7).unwrap().label.as_deref(), Some("A2"));
        assert_eq!(reg.field(MEMBER, 7).unwrap().fetched_at_ms, Some(2_100));

        // A later UPDATE is read again.
        now.store(3_000, Ordering::SeqCst);
        let later = event(Action::Update, "CRM_DEAL", 7, "UF_CRM_A", 2_500);
        assert_eq!(reg.apply(&later, &portal).unwrap(), Applied::Stored);
        assert_eq!(portal.calls(), 3);
    }

    #[test]
    fn the_burst_rule_is_per_portal() {
        let dir = TempDir::new("perportal");
        let (_now, clock) = manual_clock(2_000);
        let mut reg = Registry::open(&dir.0).unwrap().with_clock(clock);
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 7, deal_field(7, "UF_CRM_A", "A"));
        reg.apply(&event(Action::Add, "CRM_DEAL", 7, "UF_CRM_A", 1_000), &portal).unwrap();
        let mut other = event(Action::Add, "CRM_DEAL", 7, "UF_CRM_A", 1_000);
        other.portal.member_id = "bbbbbbbb".into();
        assert_eq!(reg.apply(&other, &portal).unwrap(), Applied::Stored);
        assert_eq!(portal.calls(), 2);
        assert_eq!(reg.member_ids().collect::<Vec<_>>(), vec![MEMBER, "bbbbbbbb"]);
        assert!(dir.0.join("bbbbbbbb.json").is_file());
    }

    #[test]
    fn delete_keeps_the_remembered_name_and_entity() {
        let dir = TempDir::new("delete");
        let (now, clock) = manual_clock(1_000);
        let mut reg = Registry::open(&dir.0).unwrap().with_clock(clock);
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 9, deal_field(9, "UF_CRM_KEEP", "Keep"));
        reg.apply(&event(Action::Add, "CRM_DEAL", 9, "UF_CRM_KEEP", 900), &portal).unwrap();

        portal.remove("crm.deal.userfield.get", 9);
        now.store(5_000, Ordering::SeqCst);
        // The DELETE event carries no name here: the remembered one stays.
        let del = event(Action::Delete, "CRM_DEAL", 9, "", 4_000);
        assert_eq!(reg.apply(&del, &portal).unwrap(), Applied::MarkedDeleted);
        assert_eq!(portal.calls(), 1, "DELETE makes no REST call");
        let def = reg.field(MEMBER, 9).unwrap();
        assert!(def.deleted);
        assert_eq!(def.deleted_at_ms, Some(4_000));
        assert_eq!(def.field_name, "UF_CRM_KEEP");
        assert_eq!(def.entity_id, "CRM_DEAL");
        assert_eq!(def.label.as_deref(), Some("Keep"), "the last definition is kept");

        let snap = read_snapshot(&dir.0);
        assert_eq!(snap["fields"]["9"]["deleted"], true);
        assert_eq!(snap["fields"]["9"]["deleted_at_ms"], 4_000);
        assert_eq!(snap["updated_at_ms"], 5_000);

        // Redelivery: nothing changes.
        assert_eq!(reg.apply(&del, &portal).unwrap(), Applied::AlreadyDeleted);
        assert_eq!(reg.field(MEMBER, 9).unwrap().deleted_at_ms, Some(4_000));
        // A stale UPDATE received before the DELETE is skipped without a call.
        let stale = event(Action::Update, "CRM_DEAL", 9, "UF_CRM_KEEP", 3_000);
        assert_eq!(reg.apply(&stale, &portal).unwrap(), Applied::AlreadyCurrent);
        assert_eq!(portal.calls(), 1);
    }

    #[test]
    fn delete_of_an_unseen_field_uses_the_event_name_and_entity() {
        let dir = TempDir::new("delete-unseen");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        let del = event(Action::Delete, "CRM_13", 44, "UF_CRM_13_GONE", 4_000);
        assert_eq!(reg.apply(&del, &portal).unwrap(), Applied::MarkedDeleted);
        let def = reg.field(MEMBER, 44).unwrap();
        assert_eq!((def.entity_id.as_str(), def.field_name.as_str()), ("CRM_13", "UF_CRM_13_GONE"));
        assert!(def.deleted);
        assert_eq!(def.fetched_at_ms, None);
        assert_eq!(def.user_type_id, None);
        assert_eq!(read_snapshot(&dir.0)["fields"]["44"]["fetched_at_ms"], Value::Null);
    }

    #[test]
    fn not_found_marks_a_known_field_deleted_and_records_nothing_for_an_unknown_one() {
        let dir = TempDir::new("notfound");
        let (now, clock) = manual_clock(1_000);
        let mut reg = Registry::open(&dir.0).unwrap().with_clock(clock);
        let portal = FakePortal::default();

        // Unknown field, already gone: Done, nothing recorded, no file written.
        let add = event(Action::Add, "CRM_DEAL", 3, "UF_CRM_X", 900);
        let applied = reg.apply(&add, &portal).unwrap();
        assert_eq!(applied, Applied::NotFound);
        assert_eq!(applied.outcome(), Outcome::Done);
        assert!(reg.field(MEMBER, 3).is_none());
        assert!(dir.names().is_empty());

        // Known field, then gone.
        portal.put("crm.deal.userfield.get", 4, deal_field(4, "UF_CRM_Y", "Y"));
        reg.apply(&event(Action::Add, "CRM_DEAL", 4, "UF_CRM_Y", 900), &portal).unwrap();
        portal.remove("crm.deal.userfield.get", 4);
        now.store(3_000, Ordering::SeqCst);
        let upd = event(Action::Update, "CRM_DEAL", 4, "UF_CRM_Y", 2_000);
        assert_eq!(reg.apply(&upd, &portal).unwrap(), Applied::MarkedDeleted);
        let def = reg.field(MEMBER, 4).unwrap();
        assert!(def.deleted);
        assert_eq!(def.deleted_at_ms, Some(2_000));
        assert_eq!(def.field_name, "UF_CRM_Y");
        assert_eq!(read_snapshot(&dir.0)["fields"]["4"]["deleted"], true);

        // The DELETE that follows changes nothing.
        let del = event(Action::Delete, "CRM_DEAL", 4, "UF_CRM_Y", 2_001);
        assert_eq!(reg.apply(&del, &portal).unwrap(), Applied::AlreadyDeleted);
    }

    #[test]
    fn a_null_userfieldconfig_answer_is_not_found() {
        let dir = TempDir::new("nullanswer");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        portal.put("userfieldconfig.get", 8, Value::Null);
        let ev = event(Action::Add, "CRM_SMART_INVOICE", 8, "UF_CRM_SMART_INVOICE_1", 1);
        assert_eq!(reg.apply(&ev, &portal).unwrap(), Applied::NotFound);
        assert!(reg.portal(MEMBER).is_none());
    }

    #[test]
    fn transient_failures_retry_and_leave_the_registry_unchanged() {
        let dir = TempDir::new("retry");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 5, deal_field(5, "UF_CRM_Z", "Z"));
        *portal.fail.borrow_mut() = Some(RestError {
            kind: RestErrorKind::Unavailable,
            status: 503,
            error: "QUERY_LIMIT_EXCEEDED".into(),
            description: "Too many requests".into(),
        });
        let ev = event(Action::Add, "CRM_DEAL", 5, "UF_CRM_Z", 10);
        let err = reg.apply(&ev, &portal).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Retry);
        assert!(err.message.contains("QUERY_LIMIT_EXCEEDED"), "{}", err.message);
        assert!(reg.field(MEMBER, 5).is_none());

        // The redelivery succeeds.
        *portal.fail.borrow_mut() = None;
        assert_eq!(reg.apply(&ev, &portal).unwrap(), Applied::Stored);
    }

    #[test]
    fn permanent_failures_reject() {
        let dir = TempDir::new("reject");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        *portal.fail.borrow_mut() = Some(RestError {
            kind: RestErrorKind::Api,
            status: 403,
            error: "ACCESS_DENIED".into(),
            description: "Access denied".into(),
        });
        let ev = event(Action::Add, "CRM_DEAL", 5, "UF_CRM_Z", 10);
        assert_eq!(reg.apply(&ev, &portal).unwrap_err().kind, ErrorKind::Reject);

        *portal.fail.borrow_mut() = None;
        portal.put("crm.deal.userfield.get", 6, json!("junk"));
        let ev = event(Action::Add, "CRM_DEAL", 6, "UF_CRM_Z", 10);
        assert_eq!(reg.apply(&ev, &portal).unwrap_err().kind, ErrorKind::Reject);
    }

    #[test]
    fn unusable_events_are_rejected_or_skipped() {
        let dir = TempDir::new("unusable");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        let mut bad = event(Action::Add, "CRM_DEAL", 5, "UF_CRM_Z", 10);
        bad.portal.member_id = "../../etc".into();
        assert_eq!(reg.apply(&bad, &portal).unwrap_err().kind, ErrorKind::Reject);
        let no_id = event(Action::Add, "CRM_DEAL", 0, "UF_CRM_Z", 10);
        assert_eq!(reg.apply(&no_id, &portal).unwrap_err().kind, ErrorKind::Reject);
        let other = event(Action::Add, "TASKS_TASK", 5, "UF_X", 10);
        assert_eq!(reg.apply(&other, &portal).unwrap(), Applied::UnsupportedEntity);
        assert_eq!(portal.calls(), 0);
        assert!(dir.names().is_empty());
    }

    #[test]
    fn a_failed_snapshot_write_retries_and_changes_nothing() {
        let dir = TempDir::new("writefail");
        let mut reg = Registry::open(&dir.0).unwrap();
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 5, deal_field(5, "UF_CRM_Z", "Z"));
        // A folder where the snapshot file should go makes the rename fail.
        std::fs::create_dir(dir.0.join(format!("{MEMBER}.json"))).unwrap();
        let ev = event(Action::Add, "CRM_DEAL", 5, "UF_CRM_Z", 10);
        assert_eq!(reg.apply(&ev, &portal).unwrap_err().kind, ErrorKind::Retry);
        assert!(reg.field(MEMBER, 5).is_none(), "memory only changes after the write");
        assert_eq!(dir.names(), vec![format!("{MEMBER}.json")], "the temp file was removed");

        std::fs::remove_dir(dir.0.join(format!("{MEMBER}.json"))).unwrap();
        assert_eq!(reg.apply(&ev, &portal).unwrap(), Applied::Stored, "the retry reads again");
    }

    #[test]
    fn a_restart_reloads_the_registry() {
        let dir = TempDir::new("restart");
        let (_now, clock) = manual_clock(2_000);
        let portal = FakePortal::default();
        portal.put("crm.deal.userfield.get", 1, deal_field(1, "UF_CRM_ONE", "One"));
        {
            let mut reg = Registry::open(&dir.0).unwrap().with_clock(clock);
            reg.apply(&event(Action::Add, "CRM_DEAL", 1, "UF_CRM_ONE", 1_000), &portal).unwrap();
            reg.apply(&event(Action::Delete, "CRM_LEAD", 2, "UF_CRM_TWO", 1_500), &portal).unwrap();
        }
        let before = portal.calls();
        let mut reg = Registry::open(&dir.0).unwrap();
        let snap = reg.portal(MEMBER).unwrap();
        assert_eq!(snap.domain, "example.bitrix24.com");
        assert_eq!(snap.fields.len(), 2);
        assert_eq!(reg.field(MEMBER, 1).unwrap().label.as_deref(), Some("One"));
        assert!(reg.field(MEMBER, 2).unwrap().deleted);

        // A redelivered event from before the restart is still skipped.
        let again = event(Action::Add, "CRM_DEAL", 1, "UF_CRM_ONE", 1_000);
        assert_eq!(reg.apply(&again, &portal).unwrap(), Applied::AlreadyCurrent);
        assert_eq!(portal.calls(), before);
    }
}
