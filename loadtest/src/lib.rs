//! The load generator and crypto-floor benchmark: simulated phones driving a
//! gateway over real QUIC + Noise + OPAQUE ([`run`]), what a run records and
//! reports ([`report`]), what it drives ([`target`]), and the CPU cost of the
//! cryptography a session cannot avoid ([`floor`]).

pub mod baseline;
pub mod flood;
pub mod floor;
pub mod plot;
pub mod report;
pub mod run;
pub mod target;
