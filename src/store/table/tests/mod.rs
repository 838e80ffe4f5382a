//! Specifications of the client: against a real Azurite (`azurite`), and
//! against a scripted server where Azurite cannot show the behaviour
//! (`wire`: bearer tokens, throttling, retries).

mod azurite;
mod wire;
