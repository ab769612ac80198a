//! The `compat` backend: an identity model (INPUT0 → OUTPUT0, written straight into the
//! server's buffer) that also answers with the backend-api version it was built against, in
//! the response parameter `built_against`.

use ferrum_backend_api::prelude::*;

/// The model; it holds no state.
struct Compat;

impl SimpleModel for Compat {
    fn load(_ctx: &ModelContext) -> Result<Self, BackendError> {
        Ok(Compat)
    }

    fn respond(&self, request: &Request, response: &mut Response) -> Result<(), BackendError> {
        response.output_copy_of("OUTPUT0", &request.require_input("INPUT0")?)?;
        response.parameter(
            "built_against",
            ParamValue::Str(ferrum_backend_api::VERSION.to_string()),
        );
        Ok(())
    }
}

export_model!(Compat);
