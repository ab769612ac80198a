//! The `tokens` backend: a toy text generator for trying streaming (decoupled) models and
//! the generate extension. A request's `PROMPT` (BYTES, one element) comes back as words, one
//! response per word (`TEXT`, BYTES, one element), `delay_ms` apart: first the prompt's own
//! words, then "and so on" over and over, until `max_tokens` words were sent; then the final
//! flag. `max_tokens` and `delay_ms` are request parameters (the config's `parameters` give
//! the defaults). A cancelled request (the client went away) stops before its next word, and
//! the backend logs how many it sent.

use std::time::Duration;

use ferrum_backend_api::prelude::*;
use ferrum_backend_api::{ParamValue, bytes};

/// Words sent after the prompt's own, in turn.
const FILLER: [&str; 3] = ["and", "so", "on"];
/// Most words one request may ask for.
const MAX_TOKENS: i64 = 10_000;
/// Longest pause between words.
const MAX_DELAY_MS: i64 = 10_000;

/// A loaded token model: its defaults.
struct Tokens {
    /// Words per request when the request does not say.
    max_tokens: i64,
    /// Pause before each word, in milliseconds, when the request does not say.
    delay_ms: i64,
}

/// An integer setting from the config's parameters, or a default.
fn config_int(ctx: &ModelContext, key: &str, default: i64) -> Result<i64, BackendError> {
    match ctx.parameter(key) {
        None => Ok(default),
        Some(text) => text.trim().parse().map_err(|_| {
            BackendError::invalid_argument(format!(
                "model '{}': parameter {key} is '{text}', not an integer",
                ctx.name
            ))
        }),
    }
}

/// An integer request parameter within `0..=max`, or the default.
fn request_int(request: &Request, key: &str, default: i64, max: i64) -> Result<i64, BackendError> {
    let value = match request.parameter(key) {
        None => default,
        Some(ParamValue::Int(i)) => i,
        Some(ParamValue::Str(s)) => s.trim().parse().map_err(|_| {
            BackendError::invalid_argument(format!("parameter {key} is '{s}', not an integer"))
        })?,
        Some(_) => {
            return Err(BackendError::invalid_argument(format!(
                "parameter {key} must be an integer"
            )));
        }
    };
    if !(0..=max).contains(&value) {
        return Err(BackendError::invalid_argument(format!(
            "parameter {key} is {value}; it must be between 0 and {max}"
        )));
    }
    Ok(value)
}

/// One request's work, read before `execute` returns.
struct Job {
    /// The words to send.
    words: Vec<String>,
    /// Pause before each.
    delay: Duration,
}

impl Job {
    fn of(model: &Tokens, request: &Request) -> Result<Job, BackendError> {
        let prompt = request.require_input("PROMPT")?;
        let data = prompt.data();
        let items = bytes::decode(&data)?;
        let text: Vec<String> = items
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let max = request_int(request, "max_tokens", model.max_tokens, MAX_TOKENS)?;
        let delay = request_int(request, "delay_ms", model.delay_ms, MAX_DELAY_MS)?;
        let own = text
            .iter()
            .flat_map(|t| t.split_whitespace().map(str::to_string));
        let filler = FILLER.iter().cycle().map(|w| (*w).to_string());
        let words = own
            .chain(filler)
            .take(usize::try_from(max).unwrap_or(0))
            .collect();
        Ok(Job {
            words,
            delay: Duration::from_millis(u64::try_from(delay).unwrap_or(0)),
        })
    }

    /// Sends the words, stopping early when the request is cancelled.
    fn run(self, id: String, responder: Responder) {
        let total = self.words.len();
        for (i, word) in self.words.into_iter().enumerate() {
            std::thread::sleep(self.delay);
            if responder.is_cancelled() {
                ferrum_backend_api::log(
                    LogLevel::INFO,
                    &format!("request '{id}' cancelled after {i} of {total} tokens"),
                );
                responder.send_error(BackendError::new(ErrorCode::CANCELLED, "cancelled"), true);
                return;
            }
            let mut response = responder.response();
            let encoded = bytes::encode([word.as_bytes()]);
            match response.output_from("TEXT", DataType::BYTES, &[1], &encoded) {
                Ok(()) => response.send(false),
                Err(e) => return responder.send_error(e, true),
            }
        }
        responder.finish();
    }
}

/// An instance: a thread per request, so requests stream side by side.
struct TokensInstance {
    /// The model's defaults.
    defaults: (i64, i64),
}

impl Instance for TokensInstance {
    fn execute(&mut self, requests: Vec<Request>) -> Result<(), BackendError> {
        let model = Tokens {
            max_tokens: self.defaults.0,
            delay_ms: self.defaults.1,
        };
        for request in requests {
            let job = match Job::of(&model, &request) {
                Ok(job) => job,
                Err(e) => {
                    request.responder().send_error(e, true);
                    continue;
                }
            };
            let (id, responder) = (request.id().to_string(), request.responder());
            drop(request);
            std::thread::Builder::new()
                .name("tokens".into())
                .spawn(move || job.run(id, responder))
                .map_err(|e| BackendError::internal(format!("cannot start a thread: {e}")))?;
        }
        Ok(())
    }
}

/// The tokens backend.
struct TokensBackend;

impl Backend for TokensBackend {
    type Model = Tokens;

    fn new(_config: &serde_json::Value) -> Result<Self, BackendError> {
        Ok(TokensBackend)
    }

    fn load_model(&self, ctx: &ModelContext) -> Result<Tokens, BackendError> {
        if !ctx.is_decoupled() {
            return Err(BackendError::invalid_argument(format!(
                "model '{}' uses the tokens backend, which needs \
                 model_transaction_policy {{ decoupled: true }}",
                ctx.name
            )));
        }
        Ok(Tokens {
            max_tokens: config_int(ctx, "max_tokens", 16)?.clamp(0, MAX_TOKENS),
            delay_ms: config_int(ctx, "delay_ms", 50)?.clamp(0, MAX_DELAY_MS),
        })
    }
}

impl Model for Tokens {
    type Instance = TokensInstance;

    fn create_instance(&self, _ctx: &InstanceContext) -> Result<TokensInstance, BackendError> {
        Ok(TokensInstance {
            defaults: (self.max_tokens, self.delay_ms),
        })
    }
}

export_backend!(TokensBackend);
