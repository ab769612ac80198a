//! The `identity` backend: every output is a copy of the input at the same position.
//! The smallest useful backend, and the template to copy when writing a new one.

use ferrum_backend_api::prelude::*;

/// A loaded identity model: the output name that answers each input.
struct Identity {
    /// (input name, output name) pairs, matched by position in the model config.
    pairs: Vec<(String, String)>,
}

impl SimpleModel for Identity {
    fn load(ctx: &ModelContext) -> Result<Self, BackendError> {
        let inputs = ctx.tensor_names("input");
        let outputs = ctx.tensor_names("output");
        if inputs.len() != outputs.len() {
            return Err(BackendError::invalid_argument(format!(
                "identity model '{}' needs as many outputs as inputs ({} vs {})",
                ctx.name,
                outputs.len(),
                inputs.len()
            )));
        }
        Ok(Identity {
            pairs: inputs.into_iter().zip(outputs).collect(),
        })
    }

    fn infer(&self, request: &Request<'_>) -> Result<Vec<OutputTensor>, BackendError> {
        self.pairs
            .iter()
            .map(|(input, output)| Ok(OutputTensor::copy_of(output, request.require_input(input)?)))
            .collect()
    }
}

export_model!(Identity);
