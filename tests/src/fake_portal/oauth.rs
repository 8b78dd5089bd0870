//! The fake OAuth server and the tokens it issues.
//!
//! Wrong `client_id`/`client_secret`: 401 `invalid_client`; `grant_type` other than
//! `refresh_token`: 400 `unsupported_grant_type`; unknown or already used refresh token: 400
//! `invalid_grant`. A successful refresh answers a new pair and spends the old refresh token and
//! the access token issued with it. OAuth calls are never rate-limited.

use std::time::Instant;

use serde_json::{Map, Value, json};

use super::{
    FakePortal,
    state::{ApiError, State, unix_now},
    wire::{Reply, value_text},
};

pub(super) struct AccessToken {
    pub(super) expires_at: Instant,
    /// Spent by a refresh of the refresh token it was issued with.
    pub(super) stale: bool,
    /// The user it was issued to.
    pub(super) user: User,
}

pub(super) struct RefreshToken {
    /// The access token issued together with it.
    pub(super) access: String,
    pub(super) used: bool,
    /// The user the pair belongs to (a refresh gives the same user a new pair).
    pub(super) user: User,
}

/// Whose tokens: a user of the portal and whether they administer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct User {
    pub(super) id: u64,
    pub(super) admin: bool,
}

/// The portal's first administrator, whose tokens an install carries.
pub(super) const ADMIN: User = User { id: 1, admin: true };

impl FakePortal {
    /// Adds an incoming webhook of user `user_id` and returns its REST base,
    /// `http://127.0.0.1:PORT/rest/<user_id>/<code>/`: calls under it need no token, but
    /// `event.offline.*` refuses them (403 `WRONG_AUTH_TYPE`), as Bitrix24 does.
    pub fn add_webhook(&self, user_id: u64) -> String {
        let mut state = self.shared.lock();
        let code = format!("wh{:014x}", 0x00c0_ffee_u64 + state.webhooks.len() as u64);
        state.webhooks.push(code.clone());
        format!("{}/rest/{user_id}/{code}/", state.base)
    }

    /// Mints a new access token valid for `access_ttl`, not tied to any refresh token: the user
    /// token an event carries in `auth[access_token]`.
    pub fn issue_access_token(&self) -> String {
        let mut state = self.shared.lock();
        state.mint_access(Instant::now())
    }

    /// The `(access_token, refresh_token)` pair an ONAPPINSTALL carries, minted at start; the
    /// same pair on every call (once refreshed, the refresh token is spent).
    pub fn initial_oauth(&self) -> (String, String) {
        self.shared.lock().initial.clone()
    }

    /// Mints a fresh `(access_token, refresh_token)` pair of the administrator (e.g. for a
    /// second install).
    pub fn issue_oauth_pair(&self) -> (String, String) {
        let mut state = self.shared.lock();
        state.mint_pair(Instant::now())
    }

    /// Mints a pair of user `user_id`, an administrator of the portal or not: what an
    /// `ONOFFLINEEVENT` or a bot event caused by that user carries. A user who is not an
    /// administrator gets 403 `ACCESS_DENIED` from `event.offline.*` (as Bitrix24 answers).
    pub fn issue_user_oauth_pair(&self, user_id: u64, admin: bool) -> (String, String) {
        let mut state = self.shared.lock();
        state.mint_pair_for(Instant::now(), User { id: user_id, admin })
    }

    /// Makes every access token issued so far expire now (they answer `expired_token`); tokens
    /// issued later are valid as usual.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for token in self.shared.lock().access.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }

    /// The event's `auth` block for this portal as JSON: `access_token`, `expires`,
    /// `expires_in`, `scope`, `status` and `user_id` when `access` is given, `refresh_token`
    /// when `refresh` is given, and always `domain`, `client_endpoint`, `server_endpoint`,
    /// `member_id`, `application_token`.
    pub fn auth_json(
        &self,
        access: Option<&str>,
        refresh: Option<&str>,
        application_token: &str,
    ) -> Value {
        let state = self.shared.lock();
        let mut auth = Map::new();
        if let Some(access) = access {
            let ttl = state.opts.access_ttl.as_secs();
            auth.insert("access_token".into(), json!(access));
            auth.insert("expires".into(), json!((unix_now() as u64 + ttl).to_string()));
            auth.insert("expires_in".into(), json!(ttl.to_string()));
            auth.insert("scope".into(), json!("crm"));
        }
        auth.insert("domain".into(), json!(state.domain));
        auth.insert("server_endpoint".into(), json!(format!("{}/rest/", state.base)));
        if access.is_some() {
            auth.insert("status".into(), json!("L"));
        }
        auth.insert("client_endpoint".into(), json!(format!("{}/rest/", state.base)));
        auth.insert("member_id".into(), json!(state.opts.member_id));
        if access.is_some() {
            auth.insert("user_id".into(), json!("1"));
        }
        if let Some(refresh) = refresh {
            auth.insert("refresh_token".into(), json!(refresh));
        }
        auth.insert("application_token".into(), json!(application_token));
        Value::Object(auth)
    }
}

impl State {
    pub(super) fn mint_access(&mut self, now: Instant) -> String {
        self.mint_access_for(now, ADMIN)
    }

    fn mint_access_for(&mut self, now: Instant, user: User) -> String {
        let port = self.base.rsplit(':').next().unwrap_or("0").to_owned();
        let token = format!("fake-at-{port}-{:06}", self.next_token);
        self.next_token += 1;
        self.access.insert(
            token.clone(),
            AccessToken { expires_at: now + self.opts.access_ttl, stale: false, user },
        );
        token
    }

    pub(super) fn mint_pair(&mut self, now: Instant) -> (String, String) {
        self.mint_pair_for(now, ADMIN)
    }

    pub(super) fn mint_pair_for(&mut self, now: Instant, user: User) -> (String, String) {
        let access = self.mint_access_for(now, user);
        let port = self.base.rsplit(':').next().unwrap_or("0").to_owned();
        let refresh = format!("fake-rt-{port}-{:06}", self.next_token);
        self.next_token += 1;
        self.refresh
            .insert(refresh.clone(), RefreshToken { access: access.clone(), used: false, user });
        (access, refresh)
    }

    /// Whether the access token among `params` (`auth`) is a portal administrator's; true for
    /// calls without one (a webhook, whose refusals come first).
    pub(super) fn caller_is_admin(&self, params: &Map<String, Value>) -> bool {
        params
            .get("auth")
            .map(value_text)
            .and_then(|token| self.access.get(&token))
            .is_none_or(|t| t.user.admin)
    }

    pub(super) fn check_token(&self, token: Option<&str>, now: Instant) -> Result<(), ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError::new(401, "NO_AUTH_FOUND", "Wrong authorization data"));
        };
        match self.access.get(token) {
            None => {
                Err(ApiError::new(401, "invalid_token", "The access token provided is invalid."))
            }
            Some(t) if t.stale || now >= t.expires_at => {
                Err(ApiError::new(401, "expired_token", "The access token provided has expired."))
            }
            Some(_) => Ok(()),
        }
    }

    pub(super) fn oauth(&mut self, params: &Map<String, Value>, now: Instant) -> Reply {
        let get = |k: &str| params.get(k).map(value_text).unwrap_or_default();
        if get("client_id") != self.opts.client_id
            || get("client_secret") != self.opts.client_secret
        {
            return Reply::error(&ApiError::new(
                401,
                "invalid_client",
                "Invalid client credentials",
            ));
        }
        if get("grant_type") != "refresh_token" {
            return Reply::error(&ApiError::new(
                400,
                "unsupported_grant_type",
                "Only grant_type=refresh_token is supported",
            ));
        }
        let used = get("refresh_token");
        let (old_access, user) = match self.refresh.get_mut(&used) {
            Some(rt) if !rt.used => {
                rt.used = true;
                (rt.access.clone(), rt.user)
            }
            _ => {
                return Reply::error(&ApiError::new(400, "invalid_grant", "Invalid refresh token"));
            }
        };
        if let Some(token) = self.access.get_mut(&old_access) {
            token.stale = true;
        }
        let (access, refresh) = self.mint_pair_for(now, user);
        self.refreshes.push((used, refresh.clone()));
        let ttl = self.opts.access_ttl.as_secs();
        let client_endpoint = if self.moved {
            format!("{}/moved/rest/", self.base)
        } else {
            format!("{}/rest/", self.base)
        };
        Reply::json(
            200,
            &json!({
                "access_token": access,
                "expires": unix_now() as u64 + ttl,
                "expires_in": ttl,
                "scope": "crm",
                "domain": self.domain,
                "server_endpoint": format!("{}/rest/", self.base),
                "status": "L",
                "client_endpoint": client_endpoint,
                "member_id": self.opts.member_id,
                "user_id": user.id,
                "refresh_token": refresh,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_portal::testkit::*;

    #[test]
    fn fake_portal_expired_token_refresh_single_use() {
        let portal = FakePortal::start(PortalOptions::default());
        let id = portal.add_field("CRM_LEAD", "UF_CRM_X", "string", vec![]);
        let (access, refresh_token) = portal.initial_oauth();
        let user = portal.issue_access_token();
        assert_eq!(
            post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": access})).status,
            200
        );

        portal.expire_access_tokens();
        for token in [&access, &user] {
            let a = post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": token}));
            assert_eq!(a.status, 401);
            assert_eq!(a.json["error"], "expired_token");
            assert_eq!(a.json["error_description"], "The access token provided has expired.");
        }

        let a = refresh(&portal, "wrong", &refresh_token);
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("invalid_client")));
        let a = refresh(&portal, &portal.options().client_secret, &refresh_token);
        assert_eq!(a.status, 200, "{}", a.json);
        let new_access = a.json["access_token"].as_str().unwrap().to_owned();
        let new_refresh = a.json["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(new_access, access);
        assert_ne!(new_refresh, refresh_token);
        assert_eq!(a.json["expires_in"], 3600);
        assert_eq!(a.json["scope"], "crm");
        assert_eq!(a.json["status"], "L");
        assert_eq!(a.json["member_id"], crate::MEMBER);
        assert_eq!(a.json["client_endpoint"], portal.client_endpoint());
        assert_eq!(a.json["server_endpoint"], portal.server_endpoint());
        assert!(a.json["expires"].as_u64().unwrap() > 1_700_000_000);

        let a = post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": new_access}));
        assert_eq!(a.status, 200);
        // The old refresh token is spent; the old access token stays dead.
        let a = refresh(&portal, &portal.options().client_secret, &refresh_token);
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("invalid_grant")));
        let a = refresh(&portal, &portal.options().client_secret, "never-issued");
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("invalid_grant")));
        assert_eq!(portal.refreshes(), vec![(refresh_token.clone(), new_refresh.clone())]);

        // A refresh makes the access token of its pair stale even before it expires.
        let (a2, r2) = portal.issue_oauth_pair();
        assert_eq!(
            post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": a2})).status,
            200
        );
        assert_eq!(refresh(&portal, &portal.options().client_secret, &r2).status, 200);
        let a = post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": a2}));
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("expired_token")));

        let oauth: Vec<_> =
            portal.requests().into_iter().filter(|r| r.kind == RequestKind::OAuth).collect();
        assert_eq!(oauth.len(), 5);
        assert_eq!(portal.violations(), 0, "OAuth is not rate-limited");
    }
}
