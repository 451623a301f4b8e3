//! Conversions between the three forms of an Envoy message: JSON (as users
//! write it), the reflective `DynamicMessage` (read through the descriptor
//! pool) and the typed struct.

use crate::error::FieldError;
use crate::pool::pool;
use crate::{lenient, validate};
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};
use serde_json::Value;

/// Decodes `value` as the message `desc` with Envoy's leniencies; every problem
/// comes back with its field path.
pub fn decode(mut value: Value, desc: &MessageDescriptor) -> Result<DynamicMessage, Vec<FieldError>> {
    let mut errors = Vec::new();
    lenient::normalize(&mut value, desc, "", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(desc.clone(), de, &options).map_err(|e| {
        let path = track.path().to_string();
        vec![FieldError::new(if path == "." { String::new() } else { path }, e.to_string())]
    })
}

/// Decodes and validates a message of type `T` from a JSON value.
pub fn decode_typed<T: prost::Message + prost::Name + Default>(
    value: Value,
) -> Result<(T, DynamicMessage), Vec<FieldError>> {
    let desc = pool()
        .get_message_by_name(&T::full_name())
        .ok_or_else(|| vec![FieldError::new("", format!("{} is not in the API", T::full_name()))])?;
    let dynamic = decode(value, &desc)?;
    let errors = validate::validate(&dynamic, "");
    if !errors.is_empty() {
        return Err(errors);
    }
    let typed = dynamic
        .transcode_to::<T>()
        .map_err(|e| vec![FieldError::new("", format!("cannot transcode to {}: {e}", T::full_name()))])?;
    Ok((typed, dynamic))
}

/// The reflective form of a typed message (for dumps and support checks).
pub fn to_dynamic<T: prost::Message + prost::Name>(msg: &T) -> Option<DynamicMessage> {
    let desc = pool().get_message_by_name(&T::full_name())?;
    DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).ok()
}

/// JSON of a reflective message in Envoy's style (proto field names, no defaults).
pub fn to_json(msg: &DynamicMessage) -> Value {
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options).unwrap_or(Value::Null)
}
