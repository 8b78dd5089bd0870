//! The state folder (`state_dir`) is the owner's: the journal with its tokens, the plugins'
//! copies, the in-flight records and the control socket live in it. Whoever creates it, or a
//! folder in it, does so here.

/// Creates `dir` (and its parents) if needed and makes it the owner's only (0700): it holds the
/// journal with tokens, the plugin copies and the control socket.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
