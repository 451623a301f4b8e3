//! The few messages of Apache SkyWalking's data collect protocol
//! (`language-agent/Tracing.proto` and `common/Common.proto`, package
//! `skywalking.v3`, Apache License 2.0, Copyright The Apache Software
//! Foundation) that the SkyWalking tracer sends: a `SegmentObject` per
//! request on `TraceSegmentReportService/collect`, answered with
//! `Commands`. Written as prost messages with the protocol's field numbers
//! and names; fields the tracer never sets (`isSizeLimited`) are kept so a
//! collector decodes what it receives.

/// `collect`'s method path.
pub const COLLECT_PATH: &str = "/skywalking.v3.TraceSegmentReportService/collect";

/// All spans of one request in one process.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SegmentObject {
    #[prost(string, tag = "1")]
    pub trace_id: String,
    #[prost(string, tag = "2")]
    pub trace_segment_id: String,
    #[prost(message, repeated, tag = "3")]
    pub spans: Vec<SpanObject>,
    #[prost(string, tag = "4")]
    pub service: String,
    #[prost(string, tag = "5")]
    pub service_instance: String,
    #[prost(bool, tag = "6")]
    pub is_size_limited: bool,
}

/// The link from a segment to its parent segment in another process.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SegmentReference {
    /// `RefType`: 0 CrossProcess, 1 CrossThread.
    #[prost(int32, tag = "1")]
    pub ref_type: i32,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub parent_trace_segment_id: String,
    #[prost(int32, tag = "4")]
    pub parent_span_id: i32,
    #[prost(string, tag = "5")]
    pub parent_service: String,
    #[prost(string, tag = "6")]
    pub parent_service_instance: String,
    #[prost(string, tag = "7")]
    pub parent_endpoint: String,
    #[prost(string, tag = "8")]
    pub network_address_used_at_peer: String,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SpanObject {
    #[prost(int32, tag = "1")]
    pub span_id: i32,
    #[prost(int32, tag = "2")]
    pub parent_span_id: i32,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "3")]
    pub start_time: i64,
    #[prost(int64, tag = "4")]
    pub end_time: i64,
    #[prost(message, repeated, tag = "5")]
    pub refs: Vec<SegmentReference>,
    #[prost(string, tag = "6")]
    pub operation_name: String,
    #[prost(string, tag = "7")]
    pub peer: String,
    /// `SpanType`: 0 Entry, 1 Exit, 2 Local.
    #[prost(int32, tag = "8")]
    pub span_type: i32,
    /// `SpanLayer`: 0 Unknown, 1 Database, 2 RPCFramework, 3 Http, 4 MQ, 5 Cache.
    #[prost(int32, tag = "9")]
    pub span_layer: i32,
    #[prost(int32, tag = "10")]
    pub component_id: i32,
    #[prost(bool, tag = "11")]
    pub is_error: bool,
    #[prost(message, repeated, tag = "12")]
    pub tags: Vec<KeyStringValuePair>,
    #[prost(message, repeated, tag = "13")]
    pub logs: Vec<Log>,
    #[prost(bool, tag = "14")]
    pub skip_analysis: bool,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Log {
    #[prost(int64, tag = "1")]
    pub time: i64,
    #[prost(message, repeated, tag = "2")]
    pub data: Vec<KeyStringValuePair>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct KeyStringValuePair {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `collect`'s answer.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Commands {
    #[prost(message, repeated, tag = "1")]
    pub commands: Vec<Command>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Command {
    #[prost(string, tag = "1")]
    pub command: String,
    #[prost(message, repeated, tag = "2")]
    pub args: Vec<KeyStringValuePair>,
}

pub const SPAN_TYPE_ENTRY: i32 = 0;
pub const SPAN_TYPE_EXIT: i32 = 1;
pub const SPAN_LAYER_HTTP: i32 = 3;
pub const REF_TYPE_CROSS_PROCESS: i32 = 0;
