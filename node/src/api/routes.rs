//! The one table of the API's routes: the router is built from it, the 404 answer lists it,
//! and a test holds `docs/api.md`'s headings (`### `GET /v1/cluster``) to it, in order.

use std::sync::Arc;

use axum::routing::{on, MethodFilter, MethodRouter};

use apiary_consensus::tokens::Scope;

use super::access::Access;
use super::{config, dashboard, handlers, join_tokens, profiles, tokens, ApiState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Patch => MethodFilter::PATCH,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

pub struct Route {
    pub method: Method,
    /// In axum's syntax, as docs/api.md writes it (`/v1/members/{id}`).
    pub path: &'static str,
    /// A heading of its own in docs/api.md, and in the 404 answer's list. Only the dashboard's
    /// assets are not: docs/api.md describes them under `GET /`.
    pub documented: bool,
    /// Who may call it.
    pub access: Access,
    /// The handler, served for `method` (each handler has its own extractors, hence a function
    /// per route).
    pub handler: fn(MethodFilter) -> MethodRouter<Arc<ApiState>>,
}

use Access::{Needs, Public};
use Method::{Delete, Get, Patch, Post};
use Scope::{Admin, Metrics, Read, Write};

/// Every route of the API, in docs/api.md's order.
pub const ROUTES: &[Route] = &[
    Route {
        method: Get,
        path: "/healthz",
        documented: true,
        access: Public,
        handler: |m| on(m, handlers::healthz),
    },
    Route {
        method: Get,
        path: "/metrics",
        documented: true,
        access: Needs(Metrics),
        handler: |m| on(m, handlers::prometheus),
    },
    Route {
        method: Get,
        path: "/v1/cluster",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::cluster),
    },
    Route {
        method: Get,
        path: "/v1/config",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, config::get_config),
    },
    Route {
        method: Patch,
        path: "/v1/config",
        documented: true,
        access: Needs(Write),
        handler: |m| on(m, config::patch_config),
    },
    Route {
        method: Get,
        path: "/v1/config/history",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, config::history),
    },
    Route {
        method: Post,
        path: "/v1/config/revert",
        documented: true,
        access: Needs(Write),
        handler: |m| on(m, config::revert),
    },
    Route {
        method: Get,
        path: "/v1/profiles",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, profiles::list),
    },
    Route {
        method: Post,
        path: "/v1/profiles/apply",
        documented: true,
        access: Needs(Write),
        handler: |m| on(m, profiles::apply),
    },
    Route {
        method: Delete,
        path: "/v1/members/{id}",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, handlers::remove_member),
    },
    Route {
        method: Get,
        path: "/v1/ca",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::ca_status),
    },
    Route {
        method: Post,
        path: "/v1/ca/rotate",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, handlers::rotate_ca),
    },
    Route {
        method: Get,
        path: "/v1/probes",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::probes),
    },
    Route {
        method: Get,
        path: "/v1/spans",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::spans),
    },
    Route {
        method: Get,
        path: "/v1/spans/stream",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::stream_spans),
    },
    Route {
        method: Get,
        path: "/v1/traces/{trace_id}",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::trace),
    },
    Route {
        method: Get,
        path: "/v1/export",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::export_status),
    },
    Route {
        method: Get,
        path: "/v1/intensity",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::intensity),
    },
    Route {
        method: Get,
        path: "/v1/red",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::red),
    },
    Route {
        method: Get,
        path: "/v1/predictions",
        documented: true,
        access: Needs(Read),
        handler: |m| on(m, handlers::predictions),
    },
    Route {
        method: Get,
        path: "/v1/tokens",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, tokens::list),
    },
    Route {
        method: Post,
        path: "/v1/tokens",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, tokens::create),
    },
    Route {
        method: Delete,
        path: "/v1/tokens/{id}",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, tokens::revoke),
    },
    Route {
        method: Get,
        path: "/v1/join-tokens",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, join_tokens::list),
    },
    Route {
        method: Post,
        path: "/v1/join-tokens",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, join_tokens::create),
    },
    Route {
        method: Delete,
        path: "/v1/join-tokens/{id}",
        documented: true,
        access: Needs(Admin),
        handler: |m| on(m, join_tokens::revoke),
    },
    Route {
        method: Get,
        path: "/",
        documented: true,
        access: Public,
        handler: |m| on(m, dashboard::index),
    },
    Route {
        method: Get,
        path: "/assets/{*file}",
        documented: false,
        access: Public,
        handler: |m| on(m, dashboard::asset),
    },
];

impl Route {
    /// `GET /v1/cluster`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method.as_str(), self.path)
    }

    /// This route's handler, for `Router::route(self.path, …)`.
    pub fn service(&self) -> MethodRouter<Arc<ApiState>> {
        (self.handler)(self.method.filter())
    }
}

#[cfg(test)]
mod tests {
    use super::ROUTES;

    /// docs/api.md documents exactly the routes the router serves.
    #[test]
    fn api_doc_lists_every_route() {
        let doc = include_str!("../../../docs/api.md");
        let documented: Vec<(String, String)> = doc
            .lines()
            .filter_map(|line| line.strip_prefix("### `")?.strip_suffix('`'))
            .filter_map(|heading| {
                let (method, path) = heading.split_once(' ')?;
                Some((method.to_string(), path.to_string()))
            })
            .collect();
        let served: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|route| route.documented)
            .map(|route| (route.method.as_str().to_string(), route.path.to_string()))
            .collect();
        assert_eq!(documented, served, "docs/api.md and api::ROUTES differ");
    }
}
