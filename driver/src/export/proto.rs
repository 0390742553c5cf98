//! The ONNX protobuf messages that an exported model uses, declared for `prost` with the
//! field numbers of `onnx/onnx.proto` (so no `protoc` runs at build time), and small
//! constructors for attributes, tensors and value infos.
//!
//! `onnx.proto` is proto2: repeated scalars are unpacked (`packed = "false"`), and the
//! scalar fields of an attribute are `optional`, so that `i: 0` is written, not left out.
//! Only the fields rfnc writes are declared; a reader ignores none that matters.

use prost::Message;

/// `TensorProto.DataType`.
pub const FLOAT: i32 = 1;
pub const INT32: i32 = 6;
pub const INT64: i32 = 7;

/// `AttributeProto.AttributeType`.
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_STRING: i32 = 3;
const ATTR_INTS: i32 = 7;

/// `TensorProto.DataLocation.EXTERNAL`.
pub const EXTERNAL: i32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
}

pub mod type_proto {
    /// `TypeProto.value`: only tensors are written.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(super::TensorTypeProto),
    }
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(oneof = "dimension::Value", tags = "1, 2")]
    pub value: Option<dimension::Value>,
}

pub mod dimension {
    /// A size, or the name of a size left symbolic.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(int64, tag = "1")]
        DimValue(i64),
        #[prost(string, tag = "2")]
        DimParam(String),
    }
}

/// One dimension of a declared type: known, or symbolic under a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Known(u64),
    Symbol(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INT,
        i: Some(value),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: impl IntoIterator<Item = u64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INTS,
        ints: values.into_iter().map(|v| v as i64).collect(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_FLOAT,
        f: Some(value),
        ..Default::default()
    }
}

pub fn attr_str(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_STRING,
        s: Some(value.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// An f32 tensor with its data inline, little-endian.
pub fn tensor_f32(name: &str, dims: &[u64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A 1-D int64 tensor with its data inline (shape arithmetic).
pub fn tensor_i64(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: INT64,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A named tensor value of element type `elem_type` and shape `dims`.
pub fn value_info(name: &str, elem_type: i32, dims: &[Dim], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Known(v) => dimension::Value::DimValue(*v as i64),
                Dim::Symbol(s) => dimension::Value::DimParam(s.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: doc.into(),
    }
}

/// A key/value entry (metadata, external data locations).
pub fn entry(key: &str, value: impl Into<String>) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire bytes of an attribute with `i = 0` and of unpacked dims, by hand: the tags
    /// are onnx.proto's and nothing that proto2 readers need is left out.
    #[test]
    fn fields_use_onnx_tags_and_proto2_encodings() {
        let a = attr_int("keepdims", 0).encode_to_vec();
        // name (1, string) "keepdims", i (3, varint) 0, type (20, varint) 2.
        let mut want = vec![0x0a, 8];
        want.extend_from_slice(b"keepdims");
        want.extend_from_slice(&[0xa0, 0x01, 2, 0x18, 0]);
        assert_eq!(sorted_fields(&a), sorted_fields(&want));
        let t = tensor_i64("c", &[5]).encode_to_vec();
        // dims (1, varint, unpacked) 1, data_type (2) 7, name (8) "c", raw_data (9) 8 bytes.
        assert_eq!(&t[..4], &[0x08, 1, 0x10, 7]);
        assert_eq!(&t[4..7], &[0x42, 1, b'c']);
        assert_eq!(&t[7..9], &[0x4a, 8]);
    }

    /// Splits an encoding into its fields (tag byte(s) + payload), sorted, so that field
    /// order (which protobuf leaves free) does not matter.
    fn sorted_fields(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut fields = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            let mut key = 0u64;
            let mut shift = 0;
            loop {
                key |= ((bytes[i] & 0x7f) as u64) << shift;
                shift += 7;
                i += 1;
                if bytes[i - 1] & 0x80 == 0 {
                    break;
                }
            }
            match key & 7 {
                0 => {
                    while bytes[i] & 0x80 != 0 {
                        i += 1;
                    }
                    i += 1;
                }
                2 => {
                    let len = bytes[i] as usize;
                    i += 1 + len;
                }
                other => panic!("wire type {other} not expected"),
            }
            fields.push(bytes[start..i].to_vec());
        }
        fields.sort();
        fields
    }

    #[test]
    fn symbolic_and_known_dims_encode_as_the_oneof() {
        let v = value_info("x", FLOAT, &[Dim::Symbol("N".into()), Dim::Known(3)], "");
        let back = ValueInfoProto::decode(v.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, v);
        let bytes = v.encode_to_vec();
        // dim_param "N" is field 2 of Dimension: 0x12 0x01 'N'.
        assert!(bytes.windows(3).any(|w| w == [0x12, 1, b'N']));
    }
}
