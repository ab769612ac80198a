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
        let (inputs, outputs) = (ctx.tensor_names("input"), ctx.tensor_names("output"));
        if inputs.len() != outputs.len() {
            return Err(BackendError::invalid_argument(format!(
                "identity model '{}' needs as many outputs as inputs ({} vs {})",
                ctx.name,
                outputs.len(),
                inputs.len()
            )));
        }
        let pairs = inputs.into_iter().zip(outputs).collect();
        Ok(Identity { pairs })
    }

    /// Copies each input once, straight into the buffer the server allocated for its output.
    fn respond(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        for (input, output) in &self.pairs {
            response.output_copy_of(output, &request.require_input(input)?)?;
        }
        Ok(())
    }
}

export_model!(Identity);
