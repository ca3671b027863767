//! `tally.toml`: everything `tally serve`'s flags can set, and the limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Limits, ServerError, DEFAULT_LISTEN};

/// The default address of the metrics endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9878";

/// Where the engine's time comes from when serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSetting {
    Wall,
    Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// The data directory: log, checkpoints, certificates.
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// Where Prometheus metrics (`/metrics`) and a health summary (`/status`) are served over
    /// HTTP, or `off`.
    pub metrics: String,
    /// Program files installed at start (a version already installed is skipped).
    pub programs: Vec<PathBuf>,
    /// Install the built-in demo program (merchant `demo`).
    pub demo_program: bool,
    pub clock: ClockSetting,
    /// Take a checkpoint after this many logged commands (0: none).
    pub checkpoint_every: u64,
    /// Older checkpoints kept, with the log since the oldest, for `tally snapshot --as-of`.
    pub keep_checkpoints: usize,
    /// Threads a group's commands are applied on, merchants split between them.
    pub shards: usize,
    /// Names the development server certificate is valid for (made on first start).
    pub server_names: Vec<String>,
    pub limits: Limits,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data: PathBuf::from("tally-data"),
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            metrics: DEFAULT_METRICS.to_string(),
            programs: Vec::new(),
            demo_program: true,
            clock: ClockSetting::Wall,
            checkpoint_every: crate::ingest::CHECKPOINT_EVERY_COMMANDS,
            keep_checkpoints: 0,
            shards: crate::shards::default_count(),
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            limits: Limits::default(),
        }
    }
}

impl ServeConfig {
    pub fn from_toml(text: &str) -> Result<ServeConfig, ServerError> {
        let config: ServeConfig =
            toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))?;
        config.limits.check()?;
        config.metrics_address()?;
        if !(1..=crate::shards::MAX_SHARDS).contains(&config.shards) {
            return Err(ServerError::Config(format!(
                "shards: must be 1..={}",
                crate::shards::MAX_SHARDS
            )));
        }
        Ok(config)
    }

    /// The metrics address, or `None` when `metrics = "off"`.
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, ServerError> {
        match self.metrics.as_str() {
            "off" => Ok(None),
            text => text.parse().map(Some).map_err(|_| {
                ServerError::Config(format!(
                    "metrics: {text:?} is neither an address nor \"off\""
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_what_the_flags_set_and_the_limits() {
        let config = ServeConfig::from_toml(
            r#"
            data = "/srv/tally"
            listen = "0.0.0.0:7000"
            metrics = "127.0.0.1:9000"
            programs = ["coffee.toml"]
            demo_program = false
            clock = "event"
            checkpoint_every = 5000
            server_names = ["tally.example"]
            [limits]
            max_connections = 10
            queue_wait_ms = 20
            "#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.clock, ClockSetting::Event);
        assert_eq!(config.limits.max_connections, 10);
        assert_eq!(
            config.limits.max_streams_per_connection, 64,
            "defaults fill the rest"
        );
        assert!(ServeConfig::from_toml("listen = 3").is_err());
        assert!(ServeConfig::from_toml("unknown = 1").is_err());
        assert!(ServeConfig::from_toml("[limits]\nmax_frame_bytes = 0").is_err());
        assert!(ServeConfig::from_toml("shards = 0").is_err());
        assert_eq!(ServeConfig::from_toml("shards = 3").unwrap().shards, 3);
    }
}
