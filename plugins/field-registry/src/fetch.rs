//! Reading a field back from the portal: the [`Portal`] seam over the host's REST call, which
//! method reads which entity's fields ([`reader`]), and the normalisation of both answer styles
//! (UPPER_CASE `crm.<entity>.userfield.get`, camelCase `userfieldconfig.get`) into one
//! [`FieldDef`].

use b24_plugin_api::{Entity, Host, RestError, RestErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Where Bitrix24 REST calls go. The plugin uses the host's [`Host::rest`]; tests use an
/// in-memory fake.
pub trait Portal {
    /// Calls REST `method` with `params` (a JSON object) on the portal of the event being
    /// handled and returns the answer's `result`.
    fn call(&self, method: &str, params: &Value) -> Result<Value, RestError>;
}

impl Portal for Host {
    fn call(&self, method: &str, params: &Value) -> Result<Value, RestError> {
        let text = self.rest(method, &params.to_string())?;
        serde_json::from_str(&text).map_err(|e| RestError {
            kind: RestErrorKind::Api,
            status: 0,
            error: "INVALID_RESULT".into(),
            description: format!("the `result` of {method} is not JSON: {e}").into(),
        })
    }
}

/// The REST call that reads one field: the method and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Reader {
    /// The REST method, e.g. `crm.deal.userfield.get` or `userfieldconfig.get`.
    pub method: String,
    /// Its parameters: `{"id": n}` or `{"moduleId": "crm", "id": n}`.
    pub params: Value,
}

/// The call that reads field `field_id` of `entity`, or `None` for [`Entity::Other`], which no
/// known method reads.
pub fn reader(entity: Entity, field_id: u64) -> Option<Reader> {
    match entity {
        Entity::SmartProcess { .. } | Entity::SmartInvoice | Entity::SmartDocument => {
            Some(Reader {
                method: "userfieldconfig.get".to_owned(),
                params: json!({"moduleId": "crm", "id": field_id}),
            })
        }
        Entity::Other => None,
        // lead, deal, contact, company, quote, invoice, requisite: `Entity::name` is the
        // method's entity segment.
        legacy => Some(Reader {
            method: format!("crm.{}.userfield.get", legacy.name()),
            params: json!({"id": field_id}),
        }),
    }
}

/// Whether a failed read means "this field does not exist (any more)": the portal's
/// `ERROR_NOT_FOUND` (or `NOT_FOUND`) API error.
pub fn is_not_found(error: &RestError) -> bool {
    error.kind == RestErrorKind::Api
        && (error.error.eq_ignore_ascii_case("ERROR_NOT_FOUND")
            || error.error.eq_ignore_ascii_case("NOT_FOUND"))
}

/// One value of a list (`enumeration`) field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListValue {
    /// The value's id (`ID` / `id`).
    pub id: u64,
    /// The text shown to users (`VALUE` / `value`).
    pub value: String,
    /// Sort index (`SORT` / `sort`); 0 when absent.
    pub sort: i64,
    /// Whether it is the default value (`DEF` / `def`, `Y`/`N`).
    pub def: bool,
    /// External id (`XML_ID` / `xmlId`), when set.
    pub xml_id: Option<String>,
}

/// The normalised definition of one custom field, as kept in the registry and its snapshot.
///
/// A field known only from a DELETE event was never fetched: its `user_type_id`, `label`,
/// `source` and `fetched_at_ms` are `null`, `settings` and `raw` are `null`, `list` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    /// The field's id (`ID` / `id`).
    pub id: u64,
    /// The owning entity, e.g. `CRM_DEAL`, `CRM_13`.
    pub entity_id: String,
    /// The field's code, e.g. `UF_CRM_1724771514`.
    pub field_name: String,
    /// The field type, e.g. `string`, `enumeration`, `crm_status`.
    #[serde(default)]
    pub user_type_id: Option<String>,
    /// Whether the field holds several values.
    #[serde(default)]
    pub multiple: bool,
    /// Whether the field must be filled.
    #[serde(default)]
    pub mandatory: bool,
    /// The edit-form label: the `en` one if set, else the plain string, else the first
    /// non-empty language (then the list-column and filter labels the same way).
    #[serde(default)]
    pub label: Option<String>,
    /// The list values, in the portal's order; empty for fields that are not lists.
    #[serde(default)]
    pub list: Vec<ListValue>,
    /// `SETTINGS` / `settings` exactly as the portal sent it.
    #[serde(default)]
    pub settings: Value,
    /// The whole `result` of the read, exactly as the portal sent it.
    #[serde(default)]
    pub raw: Value,
    /// The REST method that read it.
    #[serde(default)]
    pub source: Option<String>,
    /// When the read was started (ms since the Unix epoch): the answer reflects the portal at
    /// that moment or later.
    #[serde(default)]
    pub fetched_at_ms: Option<i64>,
    /// Whether the field was deleted on the portal.
    #[serde(default)]
    pub deleted: bool,
    /// When the event that told us about the deletion was received by the host.
    #[serde(default)]
    pub deleted_at_ms: Option<i64>,
}

impl FieldDef {
    /// A field we never read, known only from an event (e.g. its DELETE).
    pub fn unseen(id: u64, entity_id: &str, field_name: &str) -> FieldDef {
        FieldDef {
            id,
            entity_id: entity_id.to_owned(),
            field_name: field_name.to_owned(),
            user_type_id: None,
            multiple: false,
            mandatory: false,
            label: None,
            list: Vec::new(),
            settings: Value::Null,
            raw: Value::Null,
            source: None,
            fetched_at_ms: None,
            deleted: false,
            deleted_at_ms: None,
        }
    }

    /// Whether what we hold is newer than an event received at `received_at_ms`: a read
    /// started after it, or a deletion learned from a later event.
    pub fn is_newer_than(&self, received_at_ms: i64) -> bool {
        let fetched = self.fetched_at_ms.is_some_and(|at| at > received_at_ms);
        let deleted = self.deleted && self.deleted_at_ms.is_some_and(|at| at > received_at_ms);
        fetched || deleted
    }
}

/// Normalises the `result` of [`Reader::method`] for field `field_id`, read at
/// `fetched_at_ms`.
///
/// `Ok(None)` means the portal answered "nothing" (`null`, `false`, or `{"field": null}`), which
/// `userfieldconfig.get` does for a missing field. `Err` says what is wrong with an answer that
/// is not a field at all.
pub fn normalise(
    result: &Value,
    method: &str,
    field_id: u64,
    fetched_at_ms: i64,
) -> Result<Option<FieldDef>, String> {
    let field = match result {
        Value::Null | Value::Bool(false) => return Ok(None),
        Value::Object(map) => match map.get("field") {
            Some(Value::Null) => return Ok(None),
            Some(Value::Object(inner)) => inner,
            Some(other) => return Err(format!("`field` is {}, not an object", kind(other))),
            None => map,
        },
        Value::Array(items) if items.is_empty() => return Ok(None),
        other => return Err(format!("the result is {}, not an object", kind(other))),
    };

    let id = get(field, "ID", "id").and_then(as_u64).unwrap_or(field_id);
    if id != field_id {
        return Err(format!("asked for field {field_id}, got field {id}"));
    }
    let list = match get(field, "LIST", "enum") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().filter_map(list_value).collect(),
        // PHP sends a list with non-sequential keys as an object.
        Some(Value::Object(items)) => items.values().filter_map(list_value).collect(),
        Some(other) => return Err(format!("the list values are {}, not a list", kind(other))),
    };
    let label = ["EDIT_FORM_LABEL", "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL"]
        .iter()
        .zip(["editFormLabel", "listColumnLabel", "listFilterLabel"])
        .find_map(|(upper, camel)| get(field, upper, camel).and_then(label_of));

    Ok(Some(FieldDef {
        id,
        entity_id: get(field, "ENTITY_ID", "entityId").and_then(as_string).unwrap_or_default(),
        field_name: get(field, "FIELD_NAME", "fieldName").and_then(as_string).unwrap_or_default(),
        user_type_id: get(field, "USER_TYPE_ID", "userTypeId").and_then(as_string),
        multiple: get(field, "MULTIPLE", "multiple").is_some_and(as_flag),
        mandatory: get(field, "MANDATORY", "mandatory").is_some_and(as_flag),
        label,
        list,
        settings: get(field, "SETTINGS", "settings").cloned().unwrap_or(Value::Null),
        raw: result.clone(),
        source: Some(method.to_owned()),
        fetched_at_ms: Some(fetched_at_ms),
        deleted: false,
        deleted_at_ms: None,
    }))
}

/// The member under its UPPER_CASE name, else its camelCase name.
fn get<'a>(map: &'a Map<String, Value>, upper: &str, camel: &str) -> Option<&'a Value> {
    map.get(upper).or_else(|| map.get(camel))
}

fn list_value(item: &Value) -> Option<ListValue> {
    let item = item.as_object()?;
    Some(ListValue {
        id: get(item, "ID", "id").and_then(as_u64)?,
        value: get(item, "VALUE", "value").and_then(as_string).unwrap_or_default(),
        sort: get(item, "SORT", "sort").and_then(as_i64).unwrap_or(0),
        def: get(item, "DEF", "def").is_some_and(as_flag),
        xml_id: get(item, "XML_ID", "xmlId").and_then(as_string),
    })
}

/// A label: a plain string, or a language map (`en` first, then the first non-empty one).
fn label_of(value: &Value) -> Option<String> {
    let non_empty = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    match value {
        Value::String(_) => non_empty(value),
        Value::Object(langs) => {
            langs.get("en").and_then(non_empty).or_else(|| langs.values().find_map(non_empty))
        }
        _ => None,
    }
}

/// Bitrix24 sends ids as strings (`"554"`) or numbers.
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A string, or a number written as one; `null` and empty strings are `None`.
fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `Y`/`N`, `1`/`0`, `true`/`false`, 1/0.
fn as_flag(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        Value::String(s) => matches!(s.trim(), "Y" | "y" | "1" | "true" | "TRUE" | "True"),
        _ => false,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_entities_use_their_own_method_and_smart_ones_userfieldconfig() {
        let deal = reader(Entity::Deal, 554).unwrap();
        assert_eq!(deal.method, "crm.deal.userfield.get");
        assert_eq!(deal.params, json!({"id": 554}));
        assert_eq!(reader(Entity::Requisite, 1).unwrap().method, "crm.requisite.userfield.get");
        assert_eq!(reader(Entity::Invoice, 1).unwrap().method, "crm.invoice.userfield.get");
        for entity in
            [Entity::SmartProcess { type_id: 13 }, Entity::SmartInvoice, Entity::SmartDocument]
        {
            let r = reader(entity, 7095).unwrap();
            assert_eq!(r.method, "userfieldconfig.get");
            assert_eq!(r.params, json!({"moduleId": "crm", "id": 7095}));
        }
        assert_eq!(reader(Entity::Other, 1), None);
    }

    #[test]
    fn upper_case_answer_is_normalised() {
        let result = json!({
            "ID": "6997", "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": "UF_CRM_COLOUR",
            "USER_TYPE_ID": "enumeration", "XML_ID": null, "SORT": "2000",
            "MULTIPLE": "Y", "MANDATORY": "N",
            "SETTINGS": {"DISPLAY": "LIST", "LIST_HEIGHT": 1},
            "LIST": [
                {"ID": "1", "VALUE": "Red", "SORT": "10", "DEF": "Y", "XML_ID": "RED"},
                {"ID": "2", "VALUE": "Blue", "SORT": "20", "DEF": "N", "XML_ID": null}
            ],
            "EDIT_FORM_LABEL": {"de": "Farbe", "en": "Colour", "ru": ""}
        });
        let def = normalise(&result, "crm.deal.userfield.get", 6997, 42).unwrap().unwrap();
        assert_eq!(def.id, 6997);
        assert_eq!(def.entity_id, "CRM_DEAL");
        assert_eq!(def.field_name, "UF_CRM_COLOUR");
        assert_eq!(def.user_type_id.as_deref(), Some("enumeration"));
        assert!(def.multiple);
        assert!(!def.mandatory);
        assert_eq!(def.label.as_deref(), Some("Colour"));
        assert_eq!(
            def.list,
            vec![
                ListValue {
                    id: 1,
                    value: "Red".into(),
                    sort: 10,
                    def: true,
                    xml_id: Some("RED".into())
                },
                ListValue { id: 2, value: "Blue".into(), sort: 20, def: false, xml_id: None },
            ]
        );
        assert_eq!(def.settings, json!({"DISPLAY": "LIST", "LIST_HEIGHT": 1}));
        assert_eq!(def.raw, result);
        assert_eq!(def.source.as_deref(), Some("crm.deal.userfield.get"));
        assert_eq!(def.fetched_at_ms, Some(42));
        assert!(!def.deleted);
    }

    #[test]
    fn camel_case_answer_under_field_is_normalised() {
        let result = json!({"field": {
            "id": "7095", "entityId": "CRM_7", "fieldName": "UF_CRM_7_LIST",
            "userTypeId": "enumeration", "multiple": "N", "mandatory": "Y",
            "settings": {"DISPLAY": "LIST"},
            "editFormLabel": {"en": "List of characteristics", "de": "Liste"},
            "enum": [
                {"id": "3671", "userFieldId": "7095", "value": "C1", "def": "N", "sort": "100",
                 "xmlId": "38a8"},
                {"id": 3673, "value": "C2", "def": "Y", "sort": 200, "xmlId": "9520"}
            ]
        }});
        let def = normalise(&result, "userfieldconfig.get", 7095, 7).unwrap().unwrap();
        assert_eq!(def.entity_id, "CRM_7");
        assert_eq!(def.field_name, "UF_CRM_7_LIST");
        assert_eq!(def.user_type_id.as_deref(), Some("enumeration"));
        assert!(!def.multiple);
        assert!(def.mandatory);
        assert_eq!(def.label.as_deref(), Some("List of characteristics"));
        assert_eq!(def.list.len(), 2);
        assert_eq!(def.list[0].id, 3671);
        assert_eq!(def.list[0].xml_id.as_deref(), Some("38a8"));
        assert!(def.list[1].def);
        assert_eq!(def.list[1].sort, 200);
        assert_eq!(def.settings, json!({"DISPLAY": "LIST"}));
        assert_eq!(def.raw, result, "raw keeps the whole answer, wrapper included");
    }

    #[test]
    fn labels_prefer_en_then_plain_string_then_any_language() {
        let plain = json!({"ID": 1, "EDIT_FORM_LABEL": "Budget"});
        let label = |r: &Value| normalise(r, "m", 1, 0).unwrap().unwrap().label;
        assert_eq!(label(&plain).as_deref(), Some("Budget"));
        let no_en = json!({"ID": 1, "EDIT_FORM_LABEL": {"en": "", "de": "Etat"}});
        assert_eq!(label(&no_en).as_deref(), Some("Etat"));
        let column = json!({"ID": 1, "EDIT_FORM_LABEL": {"en": ""}, "LIST_COLUMN_LABEL": "Col"});
        assert_eq!(label(&column).as_deref(), Some("Col"));
        assert_eq!(label(&json!({"ID": 1})), None);
    }

    #[test]
    fn a_field_without_list_has_no_values_and_null_settings() {
        let def =
            normalise(&json!({"ID": "5", "USER_TYPE_ID": "string"}), "m", 5, 0).unwrap().unwrap();
        assert!(def.list.is_empty());
        assert_eq!(def.settings, Value::Null);
        assert_eq!(def.entity_id, "");
    }

    #[test]
    fn empty_answers_mean_not_found_and_junk_is_an_error() {
        for empty in [Value::Null, json!(false), json!({"field": null}), json!([])] {
            assert_eq!(normalise(&empty, "m", 1, 0).unwrap(), None, "{empty}");
        }
        assert!(normalise(&json!("text"), "m", 1, 0).is_err());
        assert!(normalise(&json!({"field": 3}), "m", 1, 0).is_err());
        assert!(normalise(&json!({"ID": "2"}), "m", 1, 0).is_err(), "another field's answer");
    }

    #[test]
    fn not_found_is_only_the_api_error_code() {
        let e = |kind, code: &str| RestError {
            kind,
            status: 400,
            error: code.into(),
            description: "The entity with ID '1' is not found".into(),
        };
        assert!(is_not_found(&e(RestErrorKind::Api, "ERROR_NOT_FOUND")));
        assert!(!is_not_found(&e(RestErrorKind::Api, "ACCESS_DENIED")));
        assert!(!is_not_found(&e(RestErrorKind::Unavailable, "ERROR_NOT_FOUND")));
    }
}
