//! Typed access to `google.protobuf.Any` payloads (`typed_config`).

use crate::pb::google::protobuf::Any;
use prost::Message;

/// Decodes `any` as `T` after checking its type URL names `T`.
pub fn unpack<T: Message + prost::Name + Default>(any: &Any) -> Result<T, String> {
    let want = T::full_name();
    let got = any.type_url.rsplit('/').next().unwrap_or("");
    if got != want {
        return Err(format!("expected {want}, got type URL '{}'", any.type_url));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {want}: {e}"))
}

/// Packs `msg` into an Any with Envoy's type URL.
pub fn pack<T: Message + prost::Name>(msg: &T) -> Any {
    Any { type_url: T::type_url(), value: msg.encode_to_vec() }
}

/// The message name of an Any's type URL.
pub fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or("")
}
