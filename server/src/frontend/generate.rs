//! Triton's generate extension: `POST /v2/models/<m>[/versions/<v>]/generate` takes a plain
//! JSON object and answers a JSON object; `.../generate_stream` answers every response of a
//! decoupled model as a server-sent event as soon as the backend sends it.
//!
//! A request field named like one of the model's inputs becomes that input (a scalar, or a
//! list, nested for more dimensions, in the input's datatype; strings for BYTES), padded with
//! leading dimensions of 1 up to the input's rank. Other fields with a scalar value, and the
//! members of a `parameters` object, are request parameters. A response is an object with
//! `model_name`, `model_version` and one field per output: a scalar when it holds one
//! element, else a flat list.

use std::convert::Infallible;

use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use ferrum_backend_api::{DataType, ParamValue, Parameter};
use ferrum_core::error::{Error, Result};
use ferrum_core::server::{
    Core, InferRequest, InferResponse, InputData, InputTensor, ResponseStream,
};
use serde_json::{Map, Value, json};

/// Builds the core request for a generate call on `model` from its JSON body.
pub fn request(
    core: &Core,
    model: &str,
    version: Option<i64>,
    body: &[u8],
) -> Result<InferRequest> {
    let fields: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => {
            return Err(Error::invalid(
                "a generate request must be a JSON object of inputs and parameters",
            ));
        }
        Err(e) => {
            return Err(Error::invalid(format!(
                "the request is not valid JSON: {e}"
            )));
        }
    };
    let metadata = core.model_metadata(model, version)?;
    let mut inputs = Vec::new();
    let mut parameters = Vec::new();
    let mut id = String::new();
    for (key, value) in fields {
        if let Some((name, datatype, dims)) = metadata.inputs.iter().find(|(n, _, _)| *n == key) {
            inputs.push(input(name, datatype, dims, &value)?);
            continue;
        }
        match (key.as_str(), value) {
            ("id", Value::String(s)) => id = s,
            ("parameters", Value::Object(members)) => {
                for (k, v) in members {
                    parameters.push(parameter(&k, &v, model)?);
                }
            }
            (_, value) => parameters.push(parameter(&key, &value, model)?),
        }
    }
    Ok(InferRequest {
        model_name: model.to_string(),
        model_version: version,
        id,
        parameters,
        inputs,
        outputs: Vec::new(),
        delivery: Vec::new(),
        allocator: None,
    })
}

/// A request parameter from a field that is not an input.
fn parameter(key: &str, value: &Value, model: &str) -> Result<Parameter> {
    let value = match value {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::String(s) => ParamValue::Str(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ParamValue::Int(i),
            None => ParamValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        _ => {
            return Err(Error::invalid(format!(
                "field '{key}' is not an input of model '{model}', and only a bool, number or \
                 string can be a parameter"
            )));
        }
    };
    Ok(Parameter {
        key: key.to_string(),
        value,
    })
}

/// Flattens a JSON value into its elements and shape.
fn flatten<'a>(
    value: &'a Value,
    name: &str,
    depth: usize,
    shape: &mut Vec<i64>,
    out: &mut Vec<&'a Value>,
) -> Result<()> {
    match value {
        Value::Array(items) => {
            let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
            match shape.get(depth) {
                Some(&d) if d != len => {
                    return Err(Error::invalid(format!(
                        "input '{name}' is a ragged list: its rows differ in length"
                    )));
                }
                Some(_) => {}
                None => shape.push(len),
            }
            for item in items {
                if item.is_array() != items.first().is_some_and(Value::is_array) {
                    return Err(Error::invalid(format!(
                        "input '{name}' mixes lists and single values"
                    )));
                }
                flatten(item, name, depth + 1, shape, out)?;
            }
            Ok(())
        }
        Value::Object(_) | Value::Null => Err(Error::invalid(format!(
            "input '{name}' must be a value or a list of values, not {}",
            if value.is_null() { "null" } else { "an object" }
        ))),
        _ => {
            out.push(value);
            Ok(())
        }
    }
}

/// The input tensor a field gives, in the input's datatype and rank.
fn input(name: &str, datatype: &str, dims: &[i64], value: &Value) -> Result<InputTensor> {
    let dtype = DataType::from_name(datatype).ok_or_else(|| {
        Error::internal(format!("input '{name}' has unknown datatype {datatype}"))
    })?;
    let (mut shape, mut elements) = (Vec::new(), Vec::new());
    flatten(value, name, 0, &mut shape, &mut elements)?;
    if shape.len() > dims.len() {
        return Err(Error::invalid(format!(
            "input '{name}' has {} dimensions in the request; the model takes {}",
            shape.len(),
            dims.len()
        )));
    }
    let mut full = vec![1; dims.len() - shape.len()];
    full.extend(shape);
    let mut data = Vec::new();
    if dtype == DataType::BYTES {
        for (i, e) in elements.iter().enumerate() {
            let text = match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let len = u32::try_from(text.len()).map_err(|_| {
                Error::invalid(format!(
                    "element {i} of input '{name}' is larger than 4 GiB"
                ))
            })?;
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(text.as_bytes());
        }
    } else {
        for (i, e) in elements.iter().enumerate() {
            encode(dtype, e, &mut data).ok_or_else(|| {
                Error::invalid(format!(
                    "element {i} of input '{name}' ({e}) is not a {datatype} value"
                ))
            })?;
        }
    }
    Ok(InputTensor {
        name: name.to_string(),
        datatype: dtype,
        shape: full,
        data: InputData::Owned(Bytes::from(data)),
    })
}

/// Appends one JSON value as an element of a fixed-size datatype; none when it does not fit.
fn encode(dtype: DataType, value: &Value, out: &mut Vec<u8>) -> Option<()> {
    macro_rules! int {
        ($t:ty) => {{
            let v = match value {
                Value::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))?,
                Value::Bool(b) => i128::from(*b),
                _ => return None,
            };
            out.extend_from_slice(&<$t>::try_from(v).ok()?.to_le_bytes());
        }};
    }
    match dtype {
        DataType::BOOL => out.push(u8::from(value.as_bool()?)),
        DataType::INT8 => int!(i8),
        DataType::INT16 => int!(i16),
        DataType::INT32 => int!(i32),
        DataType::INT64 => int!(i64),
        DataType::UINT8 => int!(u8),
        DataType::UINT16 => int!(u16),
        DataType::UINT32 => int!(u32),
        DataType::UINT64 => int!(u64),
        DataType::FP32 => out.extend_from_slice(&(value.as_f64()? as f32).to_le_bytes()),
        DataType::FP64 => out.extend_from_slice(&value.as_f64()?.to_le_bytes()),
        _ => return None,
    }
    Some(())
}

/// A response as the generate extension writes it.
pub fn response_json(response: &InferResponse) -> Value {
    let mut object = Map::new();
    object.insert("model_name".into(), json!(response.model_name));
    object.insert(
        "model_version".into(),
        json!(response.model_version.to_string()),
    );
    if !response.id.is_empty() {
        object.insert("id".into(), json!(response.id));
    }
    for output in &response.outputs {
        // The same element encoding as the infer response's `data`; a malformed BYTES output
        // (which the core refuses before it gets here) would show as an empty list.
        let encoded = serde_json::to_value(super::tensor_json::TensorJson {
            datatype: output.datatype,
            data: &output.data,
        });
        let value = match encoded {
            Ok(Value::Array(mut values)) if values.len() == 1 => {
                values.pop().unwrap_or(Value::Null)
            }
            Ok(value) => value,
            Err(_) => Value::Array(Vec::new()),
        };
        object.insert(output.name.clone(), value);
    }
    Value::Object(object)
}

/// The responses of a request as server-sent events: each response a `data:` event, an error
/// an `error` event (then the end), and the stream closed after the final flag. A client that
/// goes away cancels the request at once.
pub fn events(mut stream: ResponseStream) -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                // The client went away: dropping the stream cancels the request.
                () = tx.closed() => return,
            };
            let Some(item) = item else { return };
            match item {
                Ok(item) => {
                    if let Some(response) = &item.response {
                        let event = Event::default().data(response_json(response).to_string());
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    if item.is_final {
                        return;
                    }
                }
                Err(e) => {
                    let event = Event::default()
                        .event("error")
                        .data(json!({ "error": e.message }).to_string());
                    let _ = tx.send(Ok(event)).await;
                    return;
                }
            }
        }
    });
    let events: tokio_stream::wrappers::ReceiverStream<std::result::Result<Event, Infallible>> =
        tokio_stream::wrappers::ReceiverStream::new(rx);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
