//! How the journal can fail, whatever the backend.

/// The journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the file open: a running host.
    #[error("the journal {path} is in use by another process (a running host)")]
    InUse {
        /// The file.
        path: String,
    },
    /// There is no journal to inspect (a command run before the host ever ran).
    #[error("no journal at {path} (has the host run with this state_dir?)")]
    NotFound {
        /// Where it was looked for.
        path: String,
    },
    /// Any other storage failure of the embedded backend (disk full, permissions, damage), as
    /// the storage library put it (its error type stays inside `journal/embedded/`).
    #[error("journal storage failed: {0}")]
    Db(String),
    /// The writer thread is gone.
    #[error("the journal is closed")]
    Closed,
    /// The storage library panicked on the file (a damaged page): contained at the backend's
    /// boundary, never the end of the host.
    #[error(
        "the journal file looks damaged: the storage library failed while {what}: {message}; \
         check it with `b24-host journal verify` and copy what is readable with \
         `b24-host journal salvage --to NEW`"
    )]
    Damaged {
        /// What the journal was doing.
        what: &'static str,
        /// The library's panic message.
        message: String,
    },
    /// The host must not start on this journal: the message says what happened and what to do.
    #[error("{0}")]
    Refused(String),
    /// A storage failure reported to several waiters (the original error stays in the log).
    #[error("{0}")]
    Storage(String),
}
