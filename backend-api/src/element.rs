//! Typed access to tensor bytes.

use crate::request::Tensor;
use crate::types::{BackendError, DataType};

/// A fixed-size element type that can be read from and written to little-endian tensor bytes.
pub trait Element: Copy + Sized {
    /// The tensor data type of this element.
    const DATATYPE: DataType;
    /// Reads one element from exactly `size_of::<Self>()` bytes.
    fn read_le(bytes: &[u8]) -> Self;
    /// Appends the element's little-endian bytes.
    fn write_le(&self, out: &mut Vec<u8>);
}

macro_rules! numeric_element {
    ($($t:ty => $dt:ident),* $(,)?) => {$(
        impl Element for $t {
            const DATATYPE: DataType = DataType::$dt;
            fn read_le(bytes: &[u8]) -> Self {
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                buf.copy_from_slice(bytes);
                <$t>::from_le_bytes(buf)
            }
            fn write_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

numeric_element!(
    u8 => UINT8, u16 => UINT16, u32 => UINT32, u64 => UINT64,
    i8 => INT8, i16 => INT16, i32 => INT32, i64 => INT64,
    f32 => FP32, f64 => FP64,
);

impl Element for bool {
    const DATATYPE: DataType = DataType::BOOL;
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Tensor<'_> {
    /// The elements as a vector of `T`, checking the data type and the byte count.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, BackendError> {
        if self.datatype != T::DATATYPE {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' has type {}, expected {}",
                self.name(),
                self.datatype,
                T::DATATYPE
            )));
        }
        let size = std::mem::size_of::<T>();
        let data = self.data();
        if data.len() != self.element_count() * size {
            return Err(BackendError::invalid_argument(format!(
                "input '{}' holds {} bytes, its shape needs {}",
                self.name(),
                data.len(),
                self.element_count() * size
            )));
        }
        Ok(data.chunks_exact(size).map(T::read_le).collect())
    }
}
