//! The router's first step (Envoy's `Router::Filter::decodeHeaders`): the
//! router sees every request that gets this far, routed or not, and the
//! matched route's action answers it: a direct response, a redirect, or
//! forwarding upstream.

use super::redirect::redirect_location;
use crate::body::ProxyBody;
use crate::http::conn_manager::stream::Stream;
use crate::http::conn_manager::upgrade::Upgrade;
use crate::http::conn_manager::{answered, Found, Hcm, ProxyResponse};
use crate::http::route::{Action, RouteTable};
use http::request::Parts;

impl Hcm {
    /// Answers a request that passed the connection manager and its
    /// filters, by its route's action (`found`: the route it matched).
    pub(in crate::http) async fn route_request(
        &self,
        mut stream: Box<Stream>,
        parts: Parts,
        body: ProxyBody,
        table: Option<&RouteTable>,
        found: Found<'_>,
        upgrade: Option<Upgrade>,
    ) -> ProxyResponse {
        let st = &self.stats;
        st.rq_total.inc();
        let (Some(table), Some((vh, route))) = (table, found) else {
            st.no_route.inc();
            return self.local_reply(stream, 404, "route_not_found", "NR", None);
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
        match &route.action {
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
            Action::Forward(ra) => answered(self.forward(stream, parts, body, matched, ra, upgrade).await),
        }
    }
}
