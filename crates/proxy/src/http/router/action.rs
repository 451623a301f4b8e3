//! The router's first step (Envoy's `Router::Filter::decodeHeaders`): the
//! router sees every request that gets this far, routed or not, and the
//! matched route's action answers it: a direct response, a redirect, or
//! forwarding upstream.

use super::redirect::redirect_location;
use crate::http::conn_manager::stream::Stream;
use crate::http::conn_manager::{Found, Hcm, Matched, Step};
use crate::http::route::{Action, RouteAction, RouteTable};
use http::request::Parts;
use std::ops::ControlFlow::{Break, Continue};

impl Hcm {
    /// The router's first step for a request that passed the connection
    /// manager and its filters (`found`: the route it matched): a direct
    /// response or a redirect answers it; a forwarding route hands back what
    /// `forward` needs. Not async, so the common path adds no future of its own.
    pub(in crate::http) fn route_request<'t>(
        &self,
        mut stream: Box<Stream>,
        parts: Parts,
        table: Option<&'t RouteTable>,
        found: Found<'t>,
    ) -> Step<(Box<Stream>, Parts, Matched<'t>, &'t RouteAction)> {
        let st = &self.stats;
        st.rq_total.inc();
        if let Some(vh) = table.and_then(|t| t.find_vhost(&stream.authority)) {
            if vh.redirects_to_tls(&parts.headers) {
                // Envoy's SSL redirect route: 301 to the same host and path
                // over https, without the route levels' header mutations.
                st.rq_direct_response.inc();
                let location = format!("https://{}{}", stream.authority, stream.path);
                let mut r = self.router_reply(stream, None, 301, "direct_response", "", None);
                if let Ok(v) = http::HeaderValue::from_str(&location) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                return Break(r);
            }
        }
        let (Some(table), Some((vh, route))) = (table, found) else {
            st.no_route.inc();
            return Break(self.local_reply(stream, 404, "route_not_found", "NR", None));
        };
        stream.route_name.clone_from(&route.name);
        // Response header values may read the request (%REQ(...)%): keep its
        // headers when some level has response mutations.
        let has_response_mutations =
            !(route.response_headers.is_empty() && vh.response_headers.is_empty() && table.response_headers.is_empty());
        if has_response_mutations && stream.request_headers.is_none() {
            stream.request_headers = Some(parts.headers.clone());
        }
        let matched = (table, vh, route);
        Break(match &route.action {
            Action::Direct { status, body } => {
                st.rq_direct_response.inc();
                self.direct_reply(stream, *status, body.clone(), matched)
            }
            Action::Redirect(rd) => {
                // Envoy counts redirects as direct responses (rq_redirect stays 0).
                st.rq_direct_response.inc();
                let location = redirect_location(rd, route, &stream.authority, &stream.path);
                self.redirect_reply(stream, rd.status, location, matched)
            }
            Action::Forward(ra) => return Continue((stream, parts, matched, ra)),
        })
    }
}
