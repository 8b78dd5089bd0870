//! [`FakeHost`]: the host a plugin is created with, for unit tests.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult, RStr, RString},
};

use crate::{
    Create, Host, LogLevel, PluginContext, PluginError, RestError, RestErrorKind,
    abi::{HostServices, HostServices_TO},
    log::with_host,
};

/// What answers a REST call: the method and its params (JSON text) in, the `result` JSON out.
type Answer = dyn Fn(&str, &str) -> Result<String, RestError> + Send + Sync;

/// A stand-in for the host: it records the plugin's log lines and REST calls and answers the
/// calls from a table ([`FakeHost::answer`]) or a closure ([`FakeHost::rest`]); a method it has
/// no answer for fails as Bitrix24 answers an unknown method (`ERROR_METHOD_NOT_FOUND`).
///
/// ```
/// use b24_plugin_api::{prelude::*, testkit::{self, FakeHost}};
///
/// struct Fields { host: Host }
///
/// impl Create for Fields {
///     fn create(ctx: PluginContext) -> Result<Self, PluginError> {
///         Ok(Fields { host: ctx.host })
///     }
/// }
///
/// impl Plugin for Fields {
///     fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
///         let params = format!(r#"{{"id": {}}}"#, event.field_id);
///         let field = self.host.rest("crm.deal.userfield.get", &params)?;
///         self.host.info(&format!("now {field}"));
///         Ok(Outcome::Done)
///     }
/// }
///
/// let host = FakeHost::new().answer("crm.deal.userfield.get", r#"{"ID":"554"}"#);
/// let plugin: Fields = host.create("").unwrap();
/// let event = testkit::user_field("ONCRMDEALUSERFIELDUPDATE").build();
/// assert_eq!(plugin.on_user_field(&event), Ok(Outcome::Done));
/// assert!(host.logged(r#"now {"ID":"554"}"#));
/// assert_eq!(host.rest_calls(), [("crm.deal.userfield.get".to_owned(), r#"{"id": 554}"#.to_owned())]);
/// ```
#[derive(Clone)]
pub struct FakeHost {
    name: String,
    config_dir: PathBuf,
    state_dir: PathBuf,
    table: Vec<(String, String)>,
    rest: Option<Arc<Answer>>,
    record: Arc<Mutex<Record>>,
}

/// What the plugin did through the host.
#[derive(Default)]
struct Record {
    logs: Vec<(LogLevel, String)>,
    rest_calls: Vec<(String, String)>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    /// A host for a plugin named `plugin` ([`FakeHost::named`] changes it), whose config folder
    /// is the current one (the crate's, under `cargo test`) and whose state folder is the
    /// system's temporary folder; it has no REST answers yet.
    pub fn new() -> FakeHost {
        FakeHost {
            name: "plugin".to_owned(),
            config_dir: std::env::current_dir().unwrap_or_default(),
            state_dir: std::env::temp_dir(),
            table: Vec::new(),
            rest: None,
            record: Arc::default(),
        }
    }

    /// The plugin's name, as `PluginContext::name` and its settings errors show it.
    pub fn named(mut self, name: &str) -> FakeHost {
        self.name = name.to_owned();
        self
    }

    /// The folder of the host's config file ([`Host::config_dir`], [`Host::resolve_path`]).
    pub fn config_dir(mut self, dir: impl AsRef<Path>) -> FakeHost {
        self.config_dir = dir.as_ref().to_owned();
        self
    }

    /// The host's state folder ([`Host::state_dir`]).
    pub fn state_dir(mut self, dir: impl AsRef<Path>) -> FakeHost {
        self.state_dir = dir.as_ref().to_owned();
        self
    }

    /// Answers every call of `method` with `result` (the JSON of the answer's `result`).
    pub fn answer(mut self, method: &str, result: &str) -> FakeHost {
        self.table.push((method.to_owned(), result.to_owned()));
        self
    }

    /// Answers the calls the table does not with `answer(method, params)`.
    pub fn rest(
        mut self,
        answer: impl Fn(&str, &str) -> Result<String, RestError> + Send + Sync + 'static,
    ) -> FakeHost {
        self.rest = Some(Arc::new(answer));
        self
    }

    /// A handle on this host, as the real host passes one in [`PluginContext::host`].
    pub fn host(&self) -> Host {
        Host::new(HostServices_TO::from_ptr(RArc::new(self.clone()), TD_Opaque))
    }

    /// The context `create` gets, with `settings` as the `[plugin.NAME.settings]` table's TOML
    /// text (`""` for none).
    pub fn context(&self, settings: &str) -> PluginContext {
        PluginContext { name: self.name.clone(), settings: settings.to_owned(), host: self.host() }
    }

    /// Creates plugin `P` with `settings` (TOML text) as the host would, this host current on
    /// the thread (so [`crate::log`] reaches it).
    pub fn create<P: Create>(&self, settings: &str) -> Result<P, PluginError> {
        let ctx = self.context(settings);
        let host = ctx.host.clone();
        with_host(&host, || P::create(ctx))
    }

    /// Runs `call` (a handler call) with this host current on the thread, as the host does, so
    /// that [`crate::log`] and [`Host::current`] reach it.
    pub fn call<R>(&self, call: impl FnOnce() -> R) -> R {
        with_host(&self.host(), call)
    }

    /// The lines logged so far, in order.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.record().logs.clone()
    }

    /// Whether a line logged so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs().iter().any(|(_, line)| line.contains(text))
    }

    /// The REST calls made so far, in order: (method, params).
    pub fn rest_calls(&self) -> Vec<(String, String)> {
        self.record().rest_calls.clone()
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost").field("name", &self.name).finish_non_exhaustive()
    }
}

impl HostServices for FakeHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        self.record().logs.push((level, message.as_str().to_owned()));
    }

    fn config_dir(&self) -> RString {
        self.config_dir.to_string_lossy().into_owned().into()
    }

    fn state_dir(&self) -> RString {
        self.state_dir.to_string_lossy().into_owned().into()
    }

    fn rest(&self, method: RStr<'_>, params: RStr<'_>) -> RResult<RString, RestError> {
        let (method, params) = (method.as_str(), params.as_str());
        self.record().rest_calls.push((method.to_owned(), params.to_owned()));
        let answer = match self.table.iter().find(|(m, _)| m == method) {
            Some((_, result)) => Ok(result.clone()),
            None => match &self.rest {
                Some(answer) => answer(method, params),
                None => Err(RestError {
                    kind: RestErrorKind::Api,
                    status: 404,
                    error: "ERROR_METHOD_NOT_FOUND".into(),
                    description: format!(
                        "Method not found! (the FakeHost has no answer for {method})"
                    )
                    .into(),
                }),
            },
        };
        answer.map(RString::from).into()
    }
}
