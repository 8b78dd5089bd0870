//! The on-disk form of the registry: one JSON file per portal, `<dir>/<member_id>.json`, written
//! atomically (temp file in the same folder, fsync, rename, fsync of the folder) and read back
//! when the plugin starts.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};

use crate::fetch::FieldDef;

/// One portal's registry, exactly as stored in `<dir>/<member_id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The portal's stable id (`auth[member_id]`); also the file's name.
    pub member_id: String,
    /// The portal's domain as of the last event that changed the registry.
    #[serde(default)]
    pub domain: String,
    /// When the registry last changed (ms since the Unix epoch).
    #[serde(default)]
    pub updated_at_ms: i64,
    /// The fields by id (JSON keys are the ids as strings, in numeric order).
    #[serde(default)]
    pub fields: BTreeMap<u64, FieldDef>,
}

impl Snapshot {
    /// An empty registry for portal `member_id`.
    pub fn new(member_id: &str) -> Snapshot {
        Snapshot {
            member_id: member_id.to_owned(),
            domain: String::new(),
            updated_at_ms: 0,
            fields: BTreeMap::new(),
        }
    }

    /// The live (not deleted) fields in a neutral shape, for comparing with a portal's state:
    ///
    /// ```text
    /// { "<id>": { "entity_id": "CRM_DEAL", "field_name": "UF_CRM_COLOR",
    ///             "user_type_id": "enumeration", "label": "Colour",
    ///             "list": ["red", "green"] } }
    /// ```
    ///
    /// Keys are the ids in increasing order; `list` holds the list values' texts in `sort, id`
    /// order (`[]` for fields without a list); `user_type_id` and `label` are `null` when
    /// unknown.
    pub fn live_view(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for def in self.fields.values().filter(|def| !def.deleted) {
            let mut list: Vec<&crate::fetch::ListValue> = def.list.iter().collect();
            list.sort_by_key(|v| (v.sort, v.id));
            out.insert(
                def.id.to_string(),
                serde_json::json!({
                    "entity_id": def.entity_id,
                    "field_name": def.field_name,
                    "user_type_id": def.user_type_id,
                    "label": def.label,
                    "list": list.iter().map(|v| v.value.as_str()).collect::<Vec<_>>(),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// Whether `member_id` is safe as a file name: 1 to 128 ASCII letters, digits, `_` or `-`
/// (Bitrix24 sends 32 hex digits). Anything else could name a path outside the folder.
pub fn valid_member_id(member_id: &str) -> bool {
    (1..=128).contains(&member_id.len())
        && member_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The snapshot file of portal `member_id` in `dir`.
pub fn path_for(dir: &Path, member_id: &str) -> PathBuf {
    dir.join(format!("{member_id}.json"))
}

/// Temp files are `.<member_id>.json.<pid>.<n>.tmp`: hidden, and never ending in `.json`.
const TEMP_SUFFIX: &str = ".tmp";

fn temp_path_for(dir: &Path, member_id: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{member_id}.json.{}.{n}{TEMP_SUFFIX}", std::process::id()))
}

/// Writes `snapshot` to `<dir>/<member_id>.json` atomically: readers see the old file or the
/// new one, never a part. Returns the path written.
pub fn write_atomic(dir: &Path, snapshot: &Snapshot) -> io::Result<PathBuf> {
    if !valid_member_id(&snapshot.member_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("member_id {:?} is not usable as a file name", snapshot.member_id),
        ));
    }
    let mut text = serde_json::to_vec_pretty(snapshot).map_err(io::Error::other)?;
    text.push(b'\n');
    let path = path_for(dir, &snapshot.member_id);
    let temp = temp_path_for(dir, &snapshot.member_id);
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(path)
}

/// Makes the rename durable (Unix); best effort elsewhere.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Reads every `<member_id>.json` in `dir` and removes temp files a crash left behind.
///
/// A file that cannot be read or parsed, or whose `member_id` is not its name, is an error that
/// names it: better to stop than to overwrite a registry later with a blank one.
pub fn load_dir(dir: &Path) -> Result<Vec<Snapshot>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut snapshots = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(stem) = name.strip_suffix(".json") else { continue };
        if !valid_member_id(stem) || !path.is_file() {
            continue;
        }
        let text = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let snapshot: Snapshot = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a field-registry snapshot: {e}", path.display()))?;
        if snapshot.member_id != stem {
            return Err(format!(
                "{} holds the registry of portal {:?}, not of {stem:?}",
                path.display(),
                snapshot.member_id
            ));
        }
        snapshots.push(snapshot);
    }
    snapshots.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    Ok(snapshots)
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    /// A fresh, empty folder under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("field-registry-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Snapshot {
        let mut def = FieldDef::unseen(554, "CRM_DEAL", "UF_CRM_1");
        def.user_type_id = Some("string".into());
        def.settings = json!({"SIZE": 20});
        def.raw = json!({"ID": "554"});
        def.fetched_at_ms = Some(10);
        let mut gone = FieldDef::unseen(12, "CRM_13", "UF_CRM_13_X");
        gone.deleted = true;
        gone.deleted_at_ms = Some(11);
        let mut s = Snapshot::new("a223c6b3710f85df22e9377d6c4f7553");
        s.domain = "example.bitrix24.com".into();
        s.updated_at_ms = 12;
        s.fields.insert(554, def);
        s.fields.insert(12, gone);
        s
    }

    #[test]
    fn round_trip_leaves_only_the_json_file() {
        let dir = TempDir::new("roundtrip");
        let s = sample();
        let path = write_atomic(&dir.0, &s).unwrap();
        assert_eq!(path, dir.0.join("a223c6b3710f85df22e9377d6c4f7553.json"));
        assert_eq!(dir.names(), vec!["a223c6b3710f85df22e9377d6c4f7553.json"]);
        assert_eq!(load_dir(&dir.0).unwrap(), vec![s.clone()]);

        // Overwriting replaces the file and still leaves no temp file.
        let mut s2 = s;
        s2.updated_at_ms = 99;
        write_atomic(&dir.0, &s2).unwrap();
        assert_eq!(dir.names(), vec!["a223c6b3710f85df22e9377d6c4f7553.json"]);
        assert_eq!(load_dir(&dir.0).unwrap(), vec![s2]);
    }

    #[test]
    fn the_file_has_the_documented_shape() {
        let dir = TempDir::new("shape");
        let path = write_atomic(&dir.0, &sample()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
        assert_eq!(v["member_id"], "a223c6b3710f85df22e9377d6c4f7553");
        assert_eq!(v["domain"], "example.bitrix24.com");
        assert_eq!(v["updated_at_ms"], 12);
        let keys: Vec<&String> = v["fields"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["12", "554"]);
        let f = &v["fields"]["554"];
        assert_eq!(f["field_name"], "UF_CRM_1");
        assert_eq!(f["deleted"], false);
        assert_eq!(f["deleted_at_ms"], serde_json::Value::Null);
        assert_eq!(v["fields"]["12"]["deleted_at_ms"], 11);
    }

    #[test]
    fn the_live_view_leaves_out_deleted_fields_and_sorts_list_values() {
        let mut s = sample();
        let def = s.fields.get_mut(&554).unwrap();
        def.label = Some("One".into());
        def.list = vec![
            crate::fetch::ListValue {
                id: 2,
                value: "b".into(),
                sort: 20,
                def: false,
                xml_id: None,
            },
            crate::fetch::ListValue {
                id: 3,
                value: "c".into(),
                sort: 10,
                def: false,
                xml_id: None,
            },
            crate::fetch::ListValue { id: 1, value: "a".into(), sort: 20, def: true, xml_id: None },
        ];
        assert_eq!(
            s.live_view(),
            json!({"554": {"entity_id": "CRM_DEAL", "field_name": "UF_CRM_1",
                "user_type_id": "string", "label": "One", "list": ["c", "a", "b"]}})
        );
    }

    #[test]
    fn load_removes_stale_temp_files_and_ignores_other_files() {
        let dir = TempDir::new("stale");
        write_atomic(&dir.0, &sample()).unwrap();
        fs::write(dir.0.join(".a223c6b3710f85df22e9377d6c4f7553.json.1.0.tmp"), b"{half").unwrap();
        fs::write(dir.0.join("notes.txt"), b"hello").unwrap();
        assert_eq!(load_dir(&dir.0).unwrap().len(), 1);
        assert_eq!(dir.names(), vec!["a223c6b3710f85df22e9377d6c4f7553.json", "notes.txt"]);
    }

    #[test]
    fn a_corrupt_or_misnamed_snapshot_is_an_error_naming_the_file() {
        let dir = TempDir::new("corrupt");
        fs::write(dir.0.join("abc.json"), b"{not json").unwrap();
        let err = load_dir(&dir.0).unwrap_err();
        assert!(err.contains("abc.json"), "{err}");

        let dir = TempDir::new("misnamed");
        let mut s = sample();
        s.member_id = "other".into();
        fs::write(dir.0.join("abc.json"), serde_json::to_vec(&s).unwrap()).unwrap();
        let err = load_dir(&dir.0).unwrap_err();
        assert!(err.contains("\"other\""), "{err}");
    }

    #[test]
    fn member_ids_that_are_not_plain_names_are_refused() {
        assert!(valid_member_id("a223c6b3710f85df22e9377d6c4f7553"));
        for bad in ["", "../x", "a/b", "a.b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!valid_member_id(bad), "{bad:?}");
        }
        let dir = TempDir::new("badid");
        let mut s = sample();
        s.member_id = "../escape".into();
        assert!(write_atomic(&dir.0, &s).is_err());
        assert!(dir.names().is_empty());
    }
}
