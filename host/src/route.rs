//! Which events a plugin receives: its own subscriptions, narrowed by its host.toml table.
//!
//! [`recipients`] is the one place that decides who receives an event, by the supervisor's live
//! routes (published at start and after every reload): ingress passes the current ones, the
//! offline pollers hold a [`Router`] on them, so a plugin enabled or disabled by a reload gets
//! (or stops getting) events from either path at once. Workers check a plugin's own route again.

use std::sync::{Arc, RwLock};

use wildmatch::WildMatch;

use crate::{
    config::PluginConfig,
    decode::{Decoded, EventKind},
};

/// Every enabled plugin's name with its route, as ingress and the offline poller use them.
pub type Routes = Vec<(Arc<str>, Route)>;

/// The routes as the supervisor publishes them (at start and after every reload).
pub type LiveRoutes = Arc<RwLock<Arc<Routes>>>;

/// Who receives an event, by the routes `routes` (ingress passes the supervisor's current ones).
pub fn recipients(routes: &Routes, event: &Decoded) -> Vec<Arc<str>> {
    routes.iter().filter(|(_, route)| route.matches(event)).map(|(name, _)| name.clone()).collect()
}

/// A handle on the supervisor's live routes; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: LiveRoutes,
}

impl Router {
    /// A handle on `routes`.
    pub fn new(routes: LiveRoutes) -> Router {
        Router { routes }
    }

    /// Replaces the routes.
    pub fn publish(&self, routes: Routes) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// The routes as they are now.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The plugins that receive `event`, by the routes as they are now.
    pub fn recipients(&self, event: &Decoded) -> Vec<Arc<str>> {
        recipients(&self.routes(), event)
    }
}

/// A plugin's compiled subscription filter.
#[derive(Debug, Clone)]
pub struct Route {
    subscribed: Vec<WildMatch>,
    events: Option<Vec<WildMatch>>,
    entities: Option<Vec<WildMatch>>,
    fields: Option<Vec<WildMatch>>,
}

fn compile(globs: &[String]) -> Vec<WildMatch> {
    globs.iter().map(|g| WildMatch::new(&g.to_ascii_uppercase())).collect()
}

impl Route {
    /// Combines the plugin's declared event globs with the host-side filters from its config.
    pub fn new(subscribed: &[String], config: &PluginConfig) -> Route {
        Route {
            subscribed: compile(subscribed),
            events: config.events.as_deref().map(compile),
            entities: config.entities.as_deref().map(compile),
            fields: config.fields.as_deref().map(compile),
        }
    }

    /// The route of a plugin that did not load: its own subscriptions are unknown, so only the
    /// host-side filters apply. Its events wait in the journal until it loads.
    pub fn config_only(config: &PluginConfig) -> Route {
        Route::new(&["*".to_owned()], config)
    }

    /// Whether the plugin wants `event`. Codes match case-insensitively; the entity and field
    /// filters apply to user-field events only.
    pub fn matches(&self, event: &Decoded) -> bool {
        match &event.kind {
            EventKind::UserField(field) => self.matches_parts(
                &event.code,
                Some((
                    &field.entity_id.to_ascii_uppercase(),
                    &field.field_name.to_ascii_uppercase(),
                )),
            ),
            EventKind::Other => self.matches_parts(&event.code, None),
        }
    }

    /// [`Route::matches`] from an event's facts as its record keeps them: the code and, for a
    /// user-field event, its entity and field name (upper-case).
    pub fn matches_parts(&self, code: &str, user_field: Option<(&str, &str)>) -> bool {
        if !self.subscribed.iter().any(|g| g.matches(code)) {
            return false;
        }
        if let Some(events) = &self.events
            && !events.iter().any(|g| g.matches(code))
        {
            return false;
        }
        if let Some((entity, name)) = user_field {
            if let Some(entities) = &self.entities
                && !entities.iter().any(|g| g.matches(entity))
            {
                return false;
            }
            if let Some(fields) = &self.fields
                && !fields.iter().any(|g| g.matches(name))
            {
                return false;
            }
        }
        true
    }

    /// Whether the route filters by entity or field (which a record older than its
    /// `user_field` metadata needs decoded for).
    pub fn filters_fields(&self) -> bool {
        self.entities.is_some() || self.fields.is_some()
    }

    /// Whether the route takes events with code `code` (upper-case) at all: its own
    /// subscriptions and its `events` narrowing; the entity and field filters need an event.
    pub fn receives_code(&self, code: &str) -> bool {
        self.subscribed.iter().any(|g| g.matches(code))
            && self.events.as_ref().is_none_or(|events| events.iter().any(|g| g.matches(code)))
    }

    /// Every code glob of the route (its subscriptions, then its `events` narrowing), as
    /// written, upper-case: what the binder expands.
    pub fn code_globs(&self) -> impl Iterator<Item = String> + '_ {
        self.subscribed.iter().chain(self.events.iter().flatten()).map(|g| g.to_string())
    }

    /// The event codes this route names without a wildcard (for the metrics' `code` label).
    pub fn literal_codes(&self) -> impl Iterator<Item = String> + '_ {
        self.subscribed
            .iter()
            .chain(self.events.iter().flatten())
            .map(|g| g.to_string())
            .filter(|g| !g.contains(['*', '?']))
    }

    /// The subscription globs, for `check`.
    pub fn describe(&self) -> String {
        let show = |globs: &[WildMatch]| {
            globs.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
        };
        let mut out = show(&self.subscribed);
        if let Some(events) = &self.events {
            out.push_str(&format!("; narrowed to {}", show(events)));
        }
        if let Some(entities) = &self.entities {
            out.push_str(&format!("; entities {}", show(entities)));
        }
        if let Some(fields) = &self.fields {
            out.push_str(&format!("; fields {}", show(fields)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Format, decode};

    fn event(code: &str) -> Decoded {
        let body = format!(
            r#"{{"event":"{code}","data":{{"FIELDS":{{"ID":"1","ENTITY_ID":"CRM_DEAL","FIELD_NAME":"UF_CRM_A"}}}},"auth":{{"member_id":"m","domain":"d"}}}}"#
        );
        decode(body.as_bytes(), Format::Json).expect("decodes")
    }

    #[test]
    fn the_router_answers_by_the_routes_published_last() {
        let router = Router::default();
        let deal = event("ONCRMDEALUSERFIELDUPDATE");
        assert!(router.recipients(&deal).is_empty());
        let config = PluginConfig::default();
        router.publish(vec![
            (Arc::from("a"), Route::new(&["ONCRMDEAL*".to_owned()], &config)),
            (Arc::from("b"), Route::new(&["ONCRMLEAD*".to_owned()], &config)),
        ]);
        assert_eq!(router.recipients(&deal), vec![Arc::<str>::from("a")]);
        router.publish(vec![(Arc::from("b"), Route::new(&["*".to_owned()], &config))]);
        assert_eq!(router.recipients(&deal), vec![Arc::<str>::from("b")]);
    }
}
