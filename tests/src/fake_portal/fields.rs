//! User fields: what the fake stores, the `crm.*.userfield.*` and `userfieldconfig.*` methods,
//! and the test-side calls that add, change and delete fields.

use serde_json::{Map, Value, json};

use super::{
    FakePortal,
    state::{ApiError, CallResult, State},
    wire::value_text,
};

/// Page size of the `*.list` methods, as in Bitrix24.
pub(super) const PAGE: usize = 50;
/// The classic CRM entities: the method's word and the `ENTITY_ID` its fields carry.
pub(super) const CLASSIC: [(&str, &str); 7] = [
    ("lead", "CRM_LEAD"),
    ("deal", "CRM_DEAL"),
    ("contact", "CRM_CONTACT"),
    ("company", "CRM_COMPANY"),
    ("quote", "CRM_QUOTE"),
    ("invoice", "CRM_INVOICE"),
    ("requisite", "CRM_REQUISITE"),
];

/// One value of an `enumeration` field's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumValue {
    /// Value id (`ID`); global and increasing across the portal.
    pub id: u64,
    /// The text (`VALUE`).
    pub value: String,
    /// `SORT` (10, 20, ... as set by [`FakePortal::add_field`] / [`FakePortal::set_list`]).
    pub sort: u32,
    /// `DEF`: whether it is the default value.
    pub def: bool,
    /// `XML_ID` (32 hex digits, derived from the id).
    pub xml_id: String,
}

/// A user field as the fake stores it. Change it with [`FakePortal::update_field`].
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// `ID`, global and increasing; never changes.
    pub id: u64,
    /// `ENTITY_ID`, e.g. `CRM_DEAL` or `CRM_7`.
    pub entity_id: String,
    /// `FIELD_NAME`, e.g. `UF_CRM_COLOR`.
    pub field_name: String,
    /// `USER_TYPE_ID`, e.g. `string`, `enumeration`.
    pub user_type_id: String,
    /// `XML_ID` (`null` when `None`).
    pub xml_id: Option<String>,
    /// `SORT` (default 100).
    pub sort: u32,
    /// `MULTIPLE`.
    pub multiple: bool,
    /// `MANDATORY`.
    pub mandatory: bool,
    /// `SHOW_FILTER`: `N`, `I`, `E` or `S` (default `N`).
    pub show_filter: String,
    /// `SHOW_IN_LIST` (default true).
    pub show_in_list: bool,
    /// `EDIT_IN_LIST` (default true).
    pub edit_in_list: bool,
    /// `IS_SEARCHABLE`.
    pub is_searchable: bool,
    /// `SETTINGS`, as Bitrix24 shapes it for the type.
    pub settings: Value,
    /// The English label: `EDIT_FORM_LABEL`, `LIST_COLUMN_LABEL` and `LIST_FILTER_LABEL`
    /// (default: the field name).
    pub label: String,
    /// The list values (sent as `LIST`/`enum` for `enumeration` fields only).
    pub list: Vec<EnumValue>,
    /// Deleted fields are kept so ids stay unique; they answer `ERROR_NOT_FOUND`.
    pub deleted: bool,
}

impl FakePortal {
    /// Adds a field and returns its new id (ids are global and increasing, from 1001). `list`
    /// becomes the field's list values, in order (`SORT` 10, 20, ...); they are served only when
    /// `user_type` is `enumeration`. The label is the field name until changed.
    pub fn add_field(
        &self,
        entity_id: &str,
        field_name: &str,
        user_type: &str,
        list: Vec<&str>,
    ) -> u64 {
        let mut state = self.shared.lock();
        let id = state.next_field_id;
        state.next_field_id += 1;
        let list = state.make_list(&[], &list);
        let field = Field {
            id,
            entity_id: entity_id.to_owned(),
            field_name: field_name.to_owned(),
            user_type_id: user_type.to_owned(),
            xml_id: None,
            sort: 100,
            multiple: false,
            mandatory: false,
            show_filter: "N".to_owned(),
            show_in_list: true,
            edit_in_list: true,
            is_searchable: false,
            settings: default_settings(user_type),
            label: field_name.to_owned(),
            list,
            deleted: false,
        };
        state.fields.insert(id, field);
        id
    }

    /// A copy of a field (deleted ones too), `None` if the id was never used.
    pub fn field(&self, id: u64) -> Option<Field> {
        self.shared.lock().fields.get(&id).cloned()
    }

    /// Changes a field with `change` (run on a copy, without holding the fake's lock, so it may
    /// call the fake); the id cannot change. Returns false if the id was never used.
    pub fn update_field(&self, id: u64, change: impl FnOnce(&mut Field)) -> bool {
        let Some(mut field) = self.field(id) else { return false };
        change(&mut field);
        field.id = id;
        let mut state = self.shared.lock();
        match state.fields.get_mut(&id) {
            Some(slot) => {
                *slot = field;
                true
            }
            None => false,
        }
    }

    /// Sets the field's English label. Returns false if the id was never used.
    pub fn set_label(&self, id: u64, label: &str) -> bool {
        self.update_field(id, |f| f.label = label.to_owned())
    }

    /// Replaces the field's list values, as SETENUMVALUES does: a value already in the list
    /// keeps its id and flags, a new value gets a new id, missing ones are removed; `SORT`
    /// becomes 10, 20, ... in the given order. Returns false if the id was never used.
    pub fn set_list(&self, id: u64, values: Vec<&str>) -> bool {
        let mut state = self.shared.lock();
        let Some(old) = state.fields.get(&id).map(|f| f.list.clone()) else { return false };
        let list = state.make_list(&old, &values);
        if let Some(field) = state.fields.get_mut(&id) {
            field.list = list;
        }
        true
    }

    /// Deletes a field: from now on it answers `ERROR_NOT_FOUND` and leaves
    /// [`Self::snapshot`]. Returns false if the id is unknown or already deleted.
    pub fn delete_field(&self, id: u64) -> bool {
        match self.shared.lock().fields.get_mut(&id) {
            Some(field) if !field.deleted => {
                field.deleted = true;
                true
            }
            _ => false,
        }
    }

    /// The live (not deleted) fields in a neutral shape to compare with what a registry
    /// plugin built:
    ///
    /// ```text
    /// { "<id>": { "entity_id": "CRM_DEAL", "field_name": "UF_CRM_COLOR",
    ///             "user_type_id": "enumeration", "label": "<English label>",
    ///             "list": ["red", "green"] } }
    /// ```
    ///
    /// Keys are the decimal ids in increasing order; `list` holds the list values' texts in
    /// `SORT, ID` order for `enumeration` fields and is `[]` for every other type.
    pub fn snapshot(&self) -> Value {
        let state = self.shared.lock();
        let mut out = Map::new();
        for field in state.fields.values().filter(|f| !f.deleted) {
            let list: Vec<Value> = if field.is_enum() {
                field.sorted_list().into_iter().map(|v| json!(v.value)).collect()
            } else {
                Vec::new()
            };
            out.insert(
                field.id.to_string(),
                json!({
                    "entity_id": field.entity_id,
                    "field_name": field.field_name,
                    "user_type_id": field.user_type_id,
                    "label": field.label,
                    "list": list,
                }),
            );
        }
        Value::Object(out)
    }
}

impl Field {
    pub(super) fn is_enum(&self) -> bool {
        self.user_type_id == "enumeration"
    }

    pub(super) fn sorted_list(&self) -> Vec<&EnumValue> {
        let mut list: Vec<&EnumValue> = self.list.iter().collect();
        list.sort_by_key(|v| (v.sort, v.id));
        list
    }

    pub(super) fn is_smart(&self) -> bool {
        is_smart_entity(&self.entity_id)
    }

    /// The UPPER_CASE shape of `crm.*.userfield.get`/`.list`. `labels`: `None` for language
    /// maps (get), `Some(None)` for no labels (list without LANG), `Some(Some(lang))` for
    /// strings (list with LANG).
    pub(super) fn upper(&self, labels: Option<Option<&str>>) -> Value {
        let mut m = Map::new();
        m.insert("ID".into(), json!(self.id.to_string()));
        m.insert("ENTITY_ID".into(), json!(self.entity_id));
        m.insert("FIELD_NAME".into(), json!(self.field_name));
        m.insert("USER_TYPE_ID".into(), json!(self.user_type_id));
        m.insert("XML_ID".into(), json!(self.xml_id));
        m.insert("SORT".into(), json!(self.sort.to_string()));
        m.insert("MULTIPLE".into(), yn(self.multiple));
        m.insert("MANDATORY".into(), yn(self.mandatory));
        m.insert("SHOW_FILTER".into(), json!(self.show_filter));
        m.insert("SHOW_IN_LIST".into(), yn(self.show_in_list));
        m.insert("EDIT_IN_LIST".into(), yn(self.edit_in_list));
        m.insert("IS_SEARCHABLE".into(), yn(self.is_searchable));
        m.insert("SETTINGS".into(), self.settings.clone());
        let label_keys = ["EDIT_FORM_LABEL", "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL"];
        match labels {
            None => {
                for key in label_keys {
                    m.insert(key.into(), json!({ "en": self.label }));
                }
                m.insert("ERROR_MESSAGE".into(), json!({ "en": "" }));
                m.insert("HELP_MESSAGE".into(), json!({ "en": "" }));
            }
            Some(Some(lang)) => {
                let text = if lang.eq_ignore_ascii_case("en") { self.label.as_str() } else { "" };
                for key in label_keys {
                    m.insert(key.into(), json!(text));
                }
                m.insert("ERROR_MESSAGE".into(), Value::Null);
                m.insert("HELP_MESSAGE".into(), Value::Null);
            }
            Some(None) => {}
        }
        if self.is_enum() {
            let list: Vec<Value> = self
                .sorted_list()
                .into_iter()
                .map(|v| {
                    json!({
                        "ID": v.id.to_string(),
                        "SORT": v.sort.to_string(),
                        "VALUE": v.value,
                        "DEF": yn(v.def),
                        "XML_ID": v.xml_id,
                    })
                })
                .collect();
            m.insert("LIST".into(), Value::Array(list));
        }
        Value::Object(m)
    }

    /// The camelCase shape of `userfieldconfig.get` (with `enum`) and `.list` (without).
    pub(super) fn camel(&self, with_enum: bool) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id.to_string()));
        m.insert("entityId".into(), json!(self.entity_id));
        m.insert("fieldName".into(), json!(self.field_name));
        m.insert("userTypeId".into(), json!(self.user_type_id));
        m.insert("xmlId".into(), json!(self.xml_id));
        m.insert("sort".into(), json!(self.sort.to_string()));
        m.insert("multiple".into(), yn(self.multiple));
        m.insert("mandatory".into(), yn(self.mandatory));
        m.insert("showFilter".into(), json!(self.show_filter));
        m.insert("showInList".into(), yn(self.show_in_list));
        m.insert("editInList".into(), yn(self.edit_in_list));
        m.insert("isSearchable".into(), yn(self.is_searchable));
        m.insert("settings".into(), self.settings.clone());
        m.insert("languageId".into(), json!({ "en": "en" }));
        m.insert("editFormLabel".into(), json!({ "en": self.label }));
        m.insert("listColumnLabel".into(), json!({ "en": self.label }));
        m.insert("listFilterLabel".into(), json!({ "en": self.label }));
        m.insert("errorMessage".into(), json!({ "en": null }));
        m.insert("helpMessage".into(), json!({ "en": null }));
        if with_enum && self.is_enum() {
            let list: Vec<Value> = self
                .sorted_list()
                .into_iter()
                .map(|v| {
                    json!({
                        "id": v.id.to_string(),
                        "userFieldId": self.id.to_string(),
                        "value": v.value,
                        "def": yn(v.def),
                        "sort": v.sort.to_string(),
                        "xmlId": v.xml_id,
                    })
                })
                .collect();
            m.insert("enum".into(), Value::Array(list));
        }
        Value::Object(m)
    }
}

impl State {
    /// A new list for `values`, keeping the ids and flags of values already in `old`.
    pub(super) fn make_list(&mut self, old: &[EnumValue], values: &[&str]) -> Vec<EnumValue> {
        let mut taken = vec![false; old.len()];
        let mut list = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let sort = (i as u32 + 1) * 10;
            let reuse = old.iter().enumerate().find(|(j, v)| !taken[*j] && v.value == *value);
            let item = match reuse {
                Some((j, v)) => {
                    taken[j] = true;
                    EnumValue { sort, ..v.clone() }
                }
                None => {
                    let id = self.next_enum_id;
                    self.next_enum_id += 1;
                    EnumValue {
                        id,
                        value: (*value).to_owned(),
                        sort,
                        def: false,
                        xml_id: format!("{:032x}", 0x5eed_0000_u64 * 0x1_0000_0000 + id),
                    }
                }
            };
            list.push(item);
        }
        list
    }

    pub(super) fn live_field(&self, id: u64) -> Option<&Field> {
        self.fields.get(&id).filter(|f| !f.deleted)
    }

    /// Runs a field method (`crm.<entity>.userfield.*`, `userfieldconfig.*`); any other method
    /// is 404 `ERROR_METHOD_NOT_FOUND`.
    pub(super) fn call_fields(&mut self, method: &str, params: &Map<String, Value>) -> CallResult {
        if let Some(rest) = method.strip_prefix("crm.") {
            let mut parts = rest.splitn(2, '.');
            let word = parts.next().unwrap_or_default();
            let action = parts.next().unwrap_or_default();
            if let Some((_, entity)) = CLASSIC.iter().find(|(w, _)| *w == word) {
                match action {
                    "userfield.get" => {
                        let id = param_id(params)?;
                        return match self.live_field(id) {
                            Some(f) if f.entity_id == *entity => Ok((f.upper(None), Vec::new())),
                            _ => Err(not_found(id)),
                        };
                    }
                    "userfield.list" => return self.classic_list(entity, params),
                    "userfield.update" => {
                        let id = param_id(params)?;
                        let field = match self.live_field(id) {
                            Some(f) if f.entity_id == *entity => f.clone(),
                            _ => return Err(not_found(id)),
                        };
                        let label = params
                            .get("fields")
                            .and_then(|f| f.get("EDIT_FORM_LABEL"))
                            .map(|l| l.get("en").map_or_else(|| value_text(l), value_text));
                        if let (Some(label), Some(slot)) = (label, self.fields.get_mut(&id)) {
                            slot.label = label;
                        }
                        // The change goes to the offline queues, but not to the connector
                        // of this call ("skip your own changes").
                        let connector = params.get("auth_connector").map(value_text);
                        let data = json!({ "FIELDS": {
                            "ID": id.to_string(),
                            "ENTITY_ID": field.entity_id,
                            "FIELD_NAME": field.field_name,
                        }});
                        let code = format!("ONCRM{}USERFIELDUPDATE", word.to_ascii_uppercase());
                        self.queue_change(&code, data, Some(1), connector.as_deref());
                        return Ok((json!(true), Vec::new()));
                    }
                    _ => {}
                }
            }
        }
        match method {
            "userfieldconfig.get" => {
                check_module(params)?;
                let id = param_id(params)?;
                match self.live_field(id) {
                    Some(f) if f.is_smart() => Ok((json!({ "field": f.camel(true) }), Vec::new())),
                    _ => Err(not_found(id)),
                }
            }
            "userfieldconfig.list" => {
                check_module(params)?;
                let filter = params.get("filter").and_then(Value::as_object);
                let entity = filter.and_then(|f| f.get("entityId")).map(value_text);
                let all: Vec<&Field> = self
                    .fields
                    .values()
                    .filter(|f| !f.deleted && f.is_smart())
                    .filter(|f| entity.as_ref().is_none_or(|e| *e == f.entity_id))
                    .collect();
                let (page, extra) = paginate(&all, params);
                let fields: Vec<Value> = page.iter().map(|f| f.camel(false)).collect();
                Ok((json!({ "fields": fields }), extra))
            }
            _ => Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }

    pub(super) fn classic_list(&self, entity: &str, params: &Map<String, Value>) -> CallResult {
        let filter = match params.get("filter") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ApiError::new(400, "", "Parameter 'filter' must be array.")),
        };
        let lang = filter.get("LANG").map(value_text);
        let mut all: Vec<&Field> = self
            .fields
            .values()
            .filter(|f| !f.deleted && f.entity_id == entity)
            .filter(|f| {
                filter.iter().all(|(key, want)| {
                    let want = value_text(want);
                    match key.as_str() {
                        "ID" => f.id.to_string() == want,
                        "FIELD_NAME" => f.field_name == want,
                        "USER_TYPE_ID" => f.user_type_id == want,
                        "XML_ID" => f.xml_id.as_deref() == Some(want.as_str()),
                        "MULTIPLE" => yn_str(f.multiple) == want,
                        "MANDATORY" => yn_str(f.mandatory) == want,
                        _ => true,
                    }
                })
            })
            .collect();
        all.sort_by_key(|f| (f.sort, f.id));
        let (page, extra) = paginate(&all, params);
        let items: Vec<Value> = page.iter().map(|f| f.upper(Some(lang.as_deref()))).collect();
        Ok((Value::Array(items), extra))
    }
}

pub(super) fn not_found(id: u64) -> ApiError {
    ApiError::new(400, "ERROR_NOT_FOUND", &format!("The entity with ID '{id}' is not found."))
}

/// The `id` param as a positive integer (number or decimal string).
pub(super) fn param_id(params: &Map<String, Value>) -> Result<u64, ApiError> {
    let id = match params.get("id").or_else(|| params.get("ID")) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    id.filter(|id| *id > 0).ok_or_else(|| ApiError::new(400, "", "ID is not defined or invalid."))
}

pub(super) fn check_module(params: &Map<String, Value>) -> Result<(), ApiError> {
    match params.get("moduleId").map(value_text) {
        Some(m) if m == "crm" => Ok(()),
        _ => Err(ApiError::new(400, "", "No settings for UserFieldAccess")),
    }
}

/// One page of `all` from the `start` param, and the `next`/`total` members.
pub(super) fn paginate<'a, T>(
    all: &'a [T],
    params: &Map<String, Value>,
) -> (&'a [T], Vec<(&'static str, Value)>) {
    let start = params
        .get("start")
        .map(value_text)
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(all.len());
    let end = (start + PAGE).min(all.len());
    let mut extra = Vec::new();
    if end < all.len() {
        extra.push(("next", json!(end)));
    }
    extra.push(("total", json!(all.len())));
    (&all[start..end], extra)
}

pub(super) fn is_smart_entity(entity: &str) -> bool {
    entity == "CRM_SMART_INVOICE"
        || entity == "CRM_SMART_DOCUMENT"
        || entity
            .strip_prefix("CRM_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn default_settings(user_type: &str) -> Value {
    match user_type {
        "string" => json!({
            "SIZE": 20, "ROWS": 1, "REGEXP": "", "MIN_LENGTH": 0, "MAX_LENGTH": 0,
            "DEFAULT_VALUE": "",
        }),
        "enumeration" => json!({
            "DISPLAY": "LIST", "LIST_HEIGHT": 1, "CAPTION_NO_VALUE": "", "SHOW_NO_VALUE": "Y",
        }),
        "integer" => json!({ "SIZE": 20, "MIN_VALUE": 0, "MAX_VALUE": 0, "DEFAULT_VALUE": null }),
        "double" => json!({
            "PRECISION": 2, "SIZE": 20, "MIN_VALUE": 0, "MAX_VALUE": 0, "DEFAULT_VALUE": null,
        }),
        "boolean" => json!({ "DEFAULT_VALUE": 0, "DISPLAY": "CHECKBOX", "LABEL": ["", ""] }),
        _ => json!({}),
    }
}

pub(super) fn yn(b: bool) -> Value {
    json!(yn_str(b))
}

pub(super) fn yn_str(b: bool) -> &'static str {
    if b { "Y" } else { "N" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_portal::testkit::*;

    #[test]
    fn fake_portal_userfield_get_round_trip() {
        let portal = FakePortal::start(PortalOptions::default());
        assert!(portal.client_endpoint().ends_with("/rest/"));
        assert_eq!(portal.server_endpoint(), portal.client_endpoint());
        let deal =
            portal.add_field("CRM_DEAL", "UF_CRM_COLOR", "enumeration", vec!["red", "green"]);
        let text = portal.add_field("CRM_DEAL", "UF_CRM_NOTE", "string", vec![]);
        let smart = portal.add_field("CRM_7", "UF_CRM_7_SIZE", "enumeration", vec!["S", "M"]);
        assert!(deal < text && text < smart);
        let token = portal.issue_access_token();

        let a = post(&portal, "crm.deal.userfield.get", json!({"id": deal, "auth": token}));
        assert_eq!(a.status, 200, "{}", a.json);
        let f = &a.json["result"];
        assert_eq!(f["ID"], deal.to_string());
        assert_eq!(f["ENTITY_ID"], "CRM_DEAL");
        assert_eq!(f["FIELD_NAME"], "UF_CRM_COLOR");
        assert_eq!(f["USER_TYPE_ID"], "enumeration");
        assert_eq!(f["MULTIPLE"], "N");
        assert_eq!(f["EDIT_FORM_LABEL"]["en"], "UF_CRM_COLOR");
        let values: Vec<&str> =
            f["LIST"].as_array().unwrap().iter().map(|v| v["VALUE"].as_str().unwrap()).collect();
        assert_eq!(values, ["red", "green"]);
        assert_eq!(f["LIST"][0]["DEF"], "N");
        assert!(a.json["time"]["start"].is_f64());
        assert_eq!(a.header("content-type"), Some("application/json; charset=utf-8"));

        // A string field has no LIST; `.json` suffix, token in the query, form body.
        let a = send(
            portal.addr(),
            "POST",
            &format!("/rest/crm.deal.userfield.get.json?auth={token}"),
            "application/x-www-form-urlencoded",
            &format!("id={text}"),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["result"]["USER_TYPE_ID"], "string");
        assert!(a.json["result"].get("LIST").is_none());

        // Wrong entity for the method.
        let a = post(&portal, "crm.lead.userfield.get", json!({"id": deal, "auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("ERROR_NOT_FOUND")));
        let a = post(
            &portal,
            "userfieldconfig.get",
            json!({"moduleId": "crm", "id": deal, "auth": token}),
        );
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("ERROR_NOT_FOUND")));

        // Smart-process field through userfieldconfig.get, after SETENUMVALUES and a new label.
        let old = portal.field(smart).unwrap().list;
        assert!(portal.set_list(smart, vec!["M", "L"]));
        assert!(portal.set_label(smart, "Size"));
        let a = post(
            &portal,
            "userfieldconfig.get",
            json!({"moduleId": "crm", "id": smart, "auth": token}),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        let f = &a.json["result"]["field"];
        assert_eq!(f["entityId"], "CRM_7");
        assert_eq!(f["editFormLabel"]["en"], "Size");
        assert_eq!(f["enum"][0]["value"], "M");
        assert_eq!(f["enum"][0]["id"], old[1].id.to_string(), "kept value keeps its id");
        assert_eq!(f["enum"][1]["value"], "L");
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": smart, "auth": token}));
        assert_eq!(a.json["error"], "ERROR_NOT_FOUND");

        // Lists.
        let a = post(&portal, "crm.deal.userfield.list", json!({"auth": token}));
        assert_eq!(a.json["total"], 2);
        assert!(a.json["result"][0].get("EDIT_FORM_LABEL").is_none());
        let a = post(
            &portal,
            "crm.deal.userfield.list",
            json!({"filter": {"LANG": "en"}, "auth": token}),
        );
        assert_eq!(a.json["result"][0]["EDIT_FORM_LABEL"], "UF_CRM_COLOR");
        let a = send(
            portal.addr(),
            "POST",
            "/rest/crm.deal.userfield.list",
            "application/x-www-form-urlencoded",
            &format!("auth={token}&filter%5BFIELD_NAME%5D=UF_CRM_NOTE"),
        );
        assert_eq!(a.json["total"], 1, "{}", a.json);
        let a = post(&portal, "userfieldconfig.list", json!({"moduleId": "crm", "auth": token}));
        assert_eq!(a.json["result"]["fields"][0]["fieldName"], "UF_CRM_7_SIZE");

        // Bad input and unknown methods.
        let a = send(
            portal.addr(),
            "POST",
            "/rest/crm.deal.userfield.get",
            "application/json",
            "{nope",
        );
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("INVALID_REQUEST")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": "x", "auth": token}));
        assert_eq!(a.status, 400);
        let a = post(&portal, "no.such.method", json!({"auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (404, Some("ERROR_METHOD_NOT_FOUND")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": deal}));
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("NO_AUTH_FOUND")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": deal, "auth": "forged"}));
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("invalid_token")));
        let a = send(portal.addr(), "GET", "/elsewhere", "", "");
        assert_eq!(a.status, 404);

        assert_eq!(portal.calls("crm.deal.userfield.get"), 8);
        let snapshot = portal.snapshot();
        assert_eq!(
            snapshot[deal.to_string()],
            json!({"entity_id": "CRM_DEAL", "field_name": "UF_CRM_COLOR",
                   "user_type_id": "enumeration", "label": "UF_CRM_COLOR", "list": ["red", "green"]})
        );
        assert_eq!(snapshot[text.to_string()]["list"], json!([]));
        assert_eq!(snapshot[smart.to_string()]["list"], json!(["M", "L"]));
        let record = portal.requests().into_iter().next().unwrap();
        assert_eq!(record.kind, RequestKind::Rest);
        assert_eq!(record.method, "crm.deal.userfield.get");
        assert_eq!(record.token.as_deref(), Some(token.as_str()));
        assert_eq!(record.status, 200);
    }

    #[test]
    fn fake_portal_not_found_after_delete() {
        let portal = FakePortal::start(PortalOptions::default());
        let id = portal.add_field("CRM_CONTACT", "UF_CRM_GONE", "string", vec![]);
        let token = portal.issue_access_token();
        let a = post(&portal, "crm.contact.userfield.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 200);
        assert!(portal.delete_field(id));
        assert!(!portal.delete_field(id));
        let a = post(&portal, "crm.contact.userfield.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 400);
        assert_eq!(a.json["error"], "ERROR_NOT_FOUND");
        assert_eq!(a.json["error_description"], format!("The entity with ID '{id}' is not found."));
        assert_eq!(portal.snapshot(), json!({}));
        let next = portal.add_field("CRM_CONTACT", "UF_CRM_NEW", "string", vec![]);
        assert!(next > id, "ids are never reused");
    }
}
