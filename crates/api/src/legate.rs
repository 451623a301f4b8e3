//! Legate's own extension configs (`proto/legate`, in the same descriptor
//! set as Envoy's API), as typed structs.

/// `legate.lb.*`: load-balancing policies.
pub mod lb {
    pub mod v1 {
        use crate::pb::google::protobuf::Duration;

        /// `legate.lb.v1.LeastResponseTime`: power of two choices over each
        /// host's peak-EWMA latency times its outstanding requests.
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct LeastResponseTime {
            /// How fast a latency estimate forgets (default 10 s).
            #[prost(message, optional, tag = "1")]
            pub decay: Option<Duration>,
            /// The latency assumed before a host's first response (default 30 ms).
            #[prost(message, optional, tag = "2")]
            pub default_rtt: Option<Duration>,
        }

        impl ::prost::Name for LeastResponseTime {
            const NAME: &'static str = "LeastResponseTime";
            const PACKAGE: &'static str = "legate.lb.v1";
            fn full_name() -> String {
                "legate.lb.v1.LeastResponseTime".into()
            }
            fn type_url() -> String {
                "type.googleapis.com/legate.lb.v1.LeastResponseTime".into()
            }
        }
    }
}
