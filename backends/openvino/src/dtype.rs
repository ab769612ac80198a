//! Tensor element types: Triton's names on one side, OpenVINO's on the other.

use ferrum_backend_api::DataType;
use openvino::ElementType;

/// The OpenVINO element type that holds a Triton data type, if both sides have it.
pub fn to_openvino(datatype: DataType) -> Option<ElementType> {
    Some(match datatype {
        DataType::BOOL => ElementType::Boolean,
        DataType::UINT8 => ElementType::U8,
        DataType::UINT16 => ElementType::U16,
        DataType::UINT32 => ElementType::U32,
        DataType::UINT64 => ElementType::U64,
        DataType::INT8 => ElementType::I8,
        DataType::INT16 => ElementType::I16,
        DataType::INT32 => ElementType::I32,
        DataType::INT64 => ElementType::I64,
        DataType::FP16 => ElementType::F16,
        DataType::BF16 => ElementType::Bf16,
        DataType::FP32 => ElementType::F32,
        DataType::FP64 => ElementType::F64,
        _ => return None,
    })
}

/// The Triton data type of an OpenVINO element type, if both sides have it.
pub fn from_openvino(element: ElementType) -> Option<DataType> {
    Some(match element {
        ElementType::Boolean => DataType::BOOL,
        ElementType::U8 => DataType::UINT8,
        ElementType::U16 => DataType::UINT16,
        ElementType::U32 => DataType::UINT32,
        ElementType::U64 => DataType::UINT64,
        ElementType::I8 => DataType::INT8,
        ElementType::I16 => DataType::INT16,
        ElementType::I32 => DataType::INT32,
        ElementType::I64 => DataType::INT64,
        ElementType::F16 => DataType::FP16,
        ElementType::Bf16 => DataType::BF16,
        ElementType::F32 => DataType::FP32,
        ElementType::F64 => DataType::FP64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fixed_size_type_round_trips() {
        for datatype in DataType::ALL {
            match to_openvino(datatype) {
                Some(element) => assert_eq!(from_openvino(element), Some(datatype)),
                None => assert_eq!(datatype, DataType::BYTES),
            }
        }
    }
}
