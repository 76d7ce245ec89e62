//! Every integration test of the `apiary` binary, as modules of one test binary (one link, and
//! one place that decides what may run at the same time: see `common`). Each module's own doc
//! says what it covers and what it needs (root, iptables, iproute2, Chromium, Python).

mod common;

mod address;
mod backpressure;
mod ca_rotation;
mod catch_up;
mod cluster;
mod collector;
mod dashboard_ui;
mod dashboards;
mod disk_full;
mod docs;
mod export;
mod http2;
mod hybrid;
mod intensity;
mod mysql;
mod partition;
mod peers;
mod postgres;
mod predict;
mod predict_outputs;
mod probes;
mod profiles;
mod quickstart;
mod receiver;
mod redis;
mod security;
mod setup;
mod traces;
