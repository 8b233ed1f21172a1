//! Operations: what operators and their tools see and use: metrics, the admin port's
//! status, admin access and its audit log, systemd notification, and rate-limited logs.

pub mod access;
pub mod audit;
pub mod log_limit;
pub mod metrics;
pub mod notify;
pub mod status;
