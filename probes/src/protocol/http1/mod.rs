//! HTTP/1.x: message starts captured by the probes, and the spans built from them.
//!
//! A request and its response are matched per connection (process, probe, fd or SSL object),
//! first in first out so that pipelined requests pair up. The side that read the request is the
//! server; the side that wrote it is the client.

mod matcher;
mod parse;
mod route;

pub use matcher::{exchange, Matcher};
pub(crate) use parse::valid_traceparent;
pub use parse::{parse_request, parse_status, Request};
pub use route::route_template;

#[cfg(test)]
mod tests;
