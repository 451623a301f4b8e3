//! The resources users manage and what they compile to: Envoy resources as
//! documents, validated with the proxy's own loader before anything is stored
//! or published, and the higher-level kinds (Service, Gateway, Route) that
//! compile into them.

pub mod certinfo;
pub mod compile;
pub mod diff;
pub mod document;
pub mod expand;
pub mod isolate;
pub mod kind;
pub mod mesh;
pub mod redact;
pub mod references;
pub mod registered;
pub mod resource;
