use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::Validate;
#[cfg(feature = "signatures")]
use crate::core::SignatureVerifier;
use crate::core::Validator;

/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// The default time allowed to read the whole body: 10 s.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub(crate) validator: Validator,
    pub(crate) max_body: u64,
    pub(crate) read_timeout: Duration,
    #[cfg(feature = "signatures")]
    pub(crate) signature: Option<SignatureVerifier>,
}

/// Builds [`Validate`] services.
#[derive(Clone, Debug)]
#[must_use]
pub struct ValidateLayer {
    shared: Arc<Shared>,
}

impl ValidateLayer {
    /// Validates with `validator`, a 1 MiB body limit and a 10 s read timeout.
    pub fn new(validator: Validator) -> Self {
        Self {
            shared: Arc::new(Shared {
                validator,
                max_body: DEFAULT_MAX_BODY,
                read_timeout: DEFAULT_READ_TIMEOUT,
                #[cfg(feature = "signatures")]
                signature: None,
            }),
        }
    }

    /// Refuses bodies larger than `bytes` (413).
    pub fn with_max_body(mut self, bytes: u64) -> Self {
        Arc::make_mut(&mut self.shared).max_body = bytes;
        self
    }

    /// Step 9 first: refuses (401) a request whose signature `verifier` does not accept, over
    /// the raw body bytes as received, before they are parsed. Feature `signatures`.
    #[cfg(feature = "signatures")]
    pub fn with_signature(mut self, verifier: SignatureVerifier) -> Self {
        Arc::make_mut(&mut self.shared).signature = Some(verifier);
        self
    }

    /// Refuses bodies not fully received within `timeout` of the call (408).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.shared).read_timeout = timeout;
        self
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate::new(inner, self.shared.clone())
    }
}
